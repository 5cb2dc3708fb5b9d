"""Progress bars on long loops: shown in a terminal and in a notebook someone is watching; off in kernels
nobody watches (the runner's and nbval's, ITERDPO_HEADLESS, or papermill's), where a bar would be saved
into the executed notebook frozen at 0%."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def quiet() -> bool:
    if os.environ.get("ITERDPO_HEADLESS"):
        return True
    if "ipykernel" not in sys.modules:
        return False
    from .notebook import live

    return not live()


def bar(iterable, desc: str):
    """tqdm over `iterable`, cleared when done, silent where nobody watches."""
    return tqdm(iterable, desc=desc, leave=False, disable=quiet())
