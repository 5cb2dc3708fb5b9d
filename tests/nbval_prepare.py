"""Writes parameter-injected copies of every notebook for nbval, all sharing one tiny run folder.

    python tests/nbval_prepare.py build/nbval
    pytest --nbval-lax --current-env build/nbval

The copies are named so that file-name order is the run order (01, 02, 03 r1, 04 r1, 04 offline, 05).
"""

import sys

from iterdpo.runner import prepare_for_nbval

if __name__ == "__main__":
    for path in prepare_for_nbval(sys.argv[1] if len(sys.argv) > 1 else "build/nbval"):
        print(path)
