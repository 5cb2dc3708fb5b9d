"""Writes parameter-injected copies of all six notebooks for nbval, on the tiny preset.

    python tests/nbval_prepare.py build/nbval
    pytest --nbval-lax --current-env build/nbval

00_quickstart runs the whole loop in its own run folder; the others share one, named so that file-name
order is the run order (01, 02, 03 r1, 04 r1, 04 offline, 05). The conftest.py written beside them makes
the kernels headless and keeps every executed notebook in build/nbval/executed/, which
tests/test_notebooks.py then checks for stderr, tracebacks and frozen progress bars.
"""

import sys

from iterdpo.runner import prepare_for_nbval

if __name__ == "__main__":
    for path in prepare_for_nbval(sys.argv[1] if len(sys.argv) > 1 else "build/nbval"):
        print(path)
