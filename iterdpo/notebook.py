"""What the numbered notebooks need from the library besides the stages.

- ``ready(cfg, name, round, arm)``: is the run folder ready for this notebook, and are its papermill
  parameters ones it takes? If not, one line (``NotReady``) saying what to run first; IPython shows
  that line instead of a traceback, and "Run all" stops there.
- ``anchored(out)``: a relative run folder is resolved against the repository root, not Jupyter's
  working directory (``notebooks/`` when a notebook is opened there).
- ``hardware()``: the GPU, its memory, and which preset fits.
- ``run_rounds(cfg)`` and ``run_baseline(cfg)``: the quickstart's loop, built from the public stages.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from .config import RunConfig, auto_preset
from .runfolder import RunFolder

REPO = Path(__file__).resolve().parent.parent
ARMS = ("iterative", "offline_dpo")
# Free GPU memory a preset needs, in GiB (t4: Qwen2.5-0.5B in fp16 with LoRA, measured on a 15 GiB T4).
PRESET_GIB = {"t4": 12.0}


class NotReady(RuntimeError):
    """This notebook cannot run on this run folder yet, or was given a parameter it does not take."""

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead of a traceback
        return [f"NotReady: {self}"]


# ---------------------------------------------------------------- where the run folder is

def keep_runs_on_drive(repo: str | Path = REPO) -> Path:
    """Colab: mount Google Drive and make <repo>/runs a link to MyDrive/iterdpo/runs, so runs survive a disconnect."""
    from google.colab import drive

    drive.mount("/content/drive")
    target = Path("/content/drive/MyDrive/iterdpo/runs")
    target.mkdir(parents=True, exist_ok=True)
    link = Path(repo) / "runs"
    if not link.is_symlink():
        if link.exists():
            raise NotReady(f"{link} exists and is not a link to Drive; move it away to keep runs on Drive")
        link.symlink_to(target)
    print(f"runs/ is on Google Drive ({target}); a rerun after a disconnect resumes where it stopped")
    return target


def anchored(out: str) -> str:
    """`out` resolved against the repository root when relative (the working directory outside a checkout)."""
    if Path(out).is_absolute():
        return out
    root = REPO if (REPO / "notebooks").is_dir() else Path.cwd()
    return str(root / out)


# ---------------------------------------------------------------- is the run ready for this notebook

def missing(cfg: RunConfig, name: str, round: int | None = None, arm: str = "iterative") -> str | None:
    """What `name` (a notebook, e.g. '02_reward_model') needs first on cfg.out, in one line; None when ready."""
    rf = RunFolder(cfg.out)
    step = name[:2]
    if step in ("00", "01"):
        return None
    if not rf.done(rf.stage("sft")):
        return f"run 01_sft first: {rf.root} has no finished SFT stage"
    if step == "02":
        return None
    if not (rf.done(rf.stage("reward")) and rf.done(rf.eval(0))):
        return f"run 02_reward_model first: {rf.root} has no finished reward model"
    if step == "05":
        return None
    if step == "04" and arm not in ARMS:
        return f"arm={arm!r}: expected one of {ARMS}"
    if step == "04" and arm == "offline_dpo":
        return None if rf.decisions() else "run the rounds first (03_synthetic_preferences, then 04_dpo_round, round 1)"
    why = round_problem(cfg, round)
    if why:
        return why
    if step == "04" and not rf.done(rf.generate(round)):
        return f"run 03_synthetic_preferences with round={round} first"
    return None


def round_problem(cfg: RunConfig, rnd) -> str | None:
    """Why DPO round `rnd` does not follow the run's state (None when it does: the next round, or one under way)."""
    rf = RunFolder(cfg.out)
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1:
        return f"round={rnd!r}: DPO rounds are numbered from 1 (round 0 is the SFT policy, evaluated by 02_reward_model)"
    if rnd in rf.round_numbers() and (rf.done(rf.generate(rnd)) or rnd in rf.decisions()):
        return None  # started or finished: the stages resume or skip
    decided = rf.decisions()
    last = max(decided, default=0)
    if rnd > last + 1:
        ahead = last + 1
        todo = "04_dpo_round" if rf.done(rf.generate(ahead)) else "03_synthetic_preferences"
        return f"round={rnd} does not follow: round {last} is the last finished, so run {todo} with round={ahead} next"
    if rnd > cfg.max_rounds:
        return (f"round={rnd} is past this run's rounds={cfg.rounds}; to go on, pass overrides "
                f'{{"rounds": {rnd}}} to every notebook of the run')
    if last and decided[last]["stop"] and decided[last]["decision"] != "stop_budget":
        return (f"the controller stopped the run after round {last} ({decided[last]['decision']}); "
                "see decisions.jsonl, or start a new run folder")
    return None


def ready(cfg: RunConfig, name: str, round: int | None = None, arm: str = "iterative") -> None:
    """Wait for this notebook's turn when the runner started it ahead (iterdpo.gate), then raise NotReady (shown
    as one line) when its parameters or the run folder are not right for it."""
    from .gate import wait_turn

    wait_turn()
    if not live():  # nobody watches: a progress bar would be saved into the notebook frozen at 0%
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    check_parameters()
    why = missing(cfg, name, round, arm)
    if why:
        raise NotReady(why)


# ---------------------------------------------------------------- papermill parameters

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


def check_parameters() -> None:
    """A papermill parameter the notebook does not take (a typo: `-p rounds 3`) is an error, not a warning."""
    ip = _ipython()
    found = injected(list(ip.user_ns.get("_ih", []))) if ip is not None else None
    if found:
        given, declared = found
        unknown = sorted(given - declared)
        if unknown and declared:
            raise NotReady(f"unknown parameter(s) {', '.join(unknown)}: this notebook takes {', '.join(sorted(declared))}")


def _ipython():
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


def live() -> bool:
    """True in a notebook someone is looking at. False outside IPython, in kernels the runner or nbval
    start (ITERDPO_HEADLESS, see runner.HEADLESS_ENV), and under papermill (parameters injected)."""
    ip = _ipython()
    if ip is None or "ipykernel" not in sys.modules or os.environ.get("ITERDPO_HEADLESS"):
        return False
    return injected(list(ip.user_ns.get("_ih", []))) is None


# ---------------------------------------------------------------- the machine

def hardware(preset: str = "auto") -> str:
    """The GPU and its free memory, which preset fits, and a warning when `preset` does not."""
    import torch

    if not torch.cuda.is_available():
        line = "No CUDA GPU: the tiny preset (the CPU toy world) fits; t4 needs a GPU (Colab: Runtime > Change runtime type > T4 GPU)."
        fits = {"tiny"}
    else:
        free, total = (x / 2**30 for x in torch.cuda.mem_get_info())
        name = torch.cuda.get_device_name()
        fits = {"tiny"} | ({"t4"} if free >= PRESET_GIB["t4"] else set())
        line = (f"GPU: {name}, {free:.1f} of {total:.1f} GiB free. Fits: " + ", ".join(sorted(fits))
                + ("" if "t4" in fits else f" (t4 wants {PRESET_GIB['t4']:.0f} GiB free; or set model.load_in_4bit)"))
    chosen = auto_preset() if preset == "auto" else preset
    if chosen in PRESET_GIB and chosen not in fits:
        line += f"\nWARNING: preset {chosen!r} will not fit here; use preset 'auto' or 'tiny'."
    return line + f"\npreset {preset!r} runs as {chosen!r}."


# ---------------------------------------------------------------- the quickstart's loop

def run_rounds(cfg: RunConfig) -> dict:
    """Generation and DPO rounds until the controller stops (finished rounds are skipped); the last decision."""
    from . import pipeline

    return pipeline.run_rounds(cfg)


def run_baseline(cfg: RunConfig) -> dict | None:
    """The offline-DPO arm when the config asks for it (baseline.offline_dpo); None otherwise."""
    from . import pipeline

    if not cfg.baseline.offline_dpo:
        print("the offline-DPO baseline is off in this config (baseline.offline_dpo)")
        return None
    return pipeline.run_offline_baseline(cfg)
