"""Progress bars on long loops: shown in a terminal and in a notebook someone is watching; off in kernels
nobody watches (the runner's and nbval's, ITERDPO_HEADLESS, or papermill's), where a bar would be saved
into the executed notebook frozen at 0%. ``live()`` tells which."""

from __future__ import annotations

import ast
import os
import sys

from tqdm.auto import tqdm


def quiet() -> bool:
    if os.environ.get("ITERDPO_HEADLESS"):
        return True
    if "ipykernel" not in sys.modules:
        return False
    return not live()


def bar(iterable, desc: str):
    """tqdm over `iterable`, cleared when done, silent where nobody watches."""
    return tqdm(iterable, desc=desc, leave=False, disable=quiet())


def _names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {t.id for s in tree.body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)}


def injected(history: list[str]) -> tuple[set[str], set[str]] | None:
    """(names papermill injected, names the notebook's parameters cell defines) from the kernel's input
    history; None when no parameters were injected. Papermill runs its cell right after the tagged one."""
    for i, src in enumerate(history):
        if i and src.startswith("# Parameters\n"):
            return _names(src), _names(history[i - 1])
    return None


def ipython():
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


def live() -> bool:
    """True in a notebook someone is looking at. False outside IPython, in kernels the runner or nbval
    start (ITERDPO_HEADLESS, see runner.HEADLESS_ENV), and under papermill (parameters injected)."""
    ip = ipython()
    if ip is None or "ipykernel" not in sys.modules or os.environ.get("ITERDPO_HEADLESS"):
        return False
    return injected(list(ip.user_ns.get("_ih", []))) is None
