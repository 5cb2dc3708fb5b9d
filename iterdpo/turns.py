"""Turn-taking between notebook kernels that the runner starts ahead of their turn.

Starting a kernel and importing torch, transformers, TRL and PEFT takes long enough to matter in a tiny run,
where eight notebooks run one after another. The runner therefore starts the next notebook while
the current one runs; that kernel gets ``ITERDPO_GATE=<folder>|<key>`` in its environment, imports
what the stages need, and waits in ``wait_turn`` (called by ``notebook.ready`` in every notebook's setup cell,
before it reads the run folder) until the runner
writes ``<folder>/<key>.go``, when the notebook before it has finished. ``<key>.abort`` makes it
raise instead (the notebook before failed, or the controller chose another next step). Without the
variable (Colab, nbval, the python engine) ``wait_turn`` returns at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "ITERDPO_GATE"


def files(folder: str | Path, key: str) -> tuple[Path, Path]:
    """(go, abort) flag files of one notebook's turn."""
    return Path(folder) / f"{key}.go", Path(folder) / f"{key}.abort"


def wait_turn(spec: str | None = None, poll_seconds: float = 0.1) -> None:
    """Return when this kernel's turn has come (at once outside the runner); raise if it was cancelled.

    spec: "<folder>|<key>", by default from the environment.
    """
    from_env = spec is None
    spec = os.environ.get(ENV) if from_env else spec
    if not spec:
        return
    folder, key = spec.rsplit("|", 1)
    go, abort = files(folder, key)
    if not go.exists() and from_env:
        _warm()
    while not go.exists():
        if abort.exists():
            raise RuntimeError(f"iterdpo runner cancelled this notebook: {abort.read_text()}")
        time.sleep(poll_seconds)


def _warm() -> None:
    """Import what the stages will need while the notebook before this one still runs."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    from transformers import AutoModel, AutoModelForCausalLM, Trainer  # noqa: F401
    from trl import DPOTrainer, SFTTrainer  # noqa: F401
