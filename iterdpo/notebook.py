"""What the numbered notebooks need from the library besides the stages.

- ``ready(cfg, name, round, arm)``: is the run folder ready for this notebook, and are its papermill
  parameters ones it takes? If not, one line (``NotReady``) saying what to run first; IPython shows
  that line instead of a traceback, and "Run all" stops there.
- ``anchored(out)``: a relative run folder is resolved against the repository root, not Jupyter's
  working directory (``notebooks/`` when a notebook is opened there).
- ``hardware()``: the GPU, its memory, and which preset fits.
- ``budget(cfg)``: what the run will train, in steps and examples (the rounds, the offline arm).
- ``run_baseline(cfg)``: the offline arm where the config asks for it (the quickstart's rounds are
  ``pipeline.run_rounds``).
"""

from __future__ import annotations

from pathlib import Path

from . import pipeline, stages
from .dpo import offline_steps
from .config import ConfigError, RunConfig, auto_preset, load_preset
from .models import hub_telemetry
from .progress import ipython, injected, live  # noqa: F401 (live: the notebooks ask it)
from .runfolder import RunFolder
from .turns import wait_turn

REPO = Path(__file__).resolve().parent.parent
ITERATIVE = stages.ITERATIVE
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

def missing(cfg: RunConfig, name: str, round: int | None = None, arm: str = ITERATIVE) -> str | None:
    """What `name` (a notebook, e.g. '02_reward_model') needs first on cfg.out, in one line; None when ready
    (the stage graph's rule, iterdpo.stages.missing)."""
    return stages.missing(RunFolder(cfg.out), cfg, stages.Step(name, round, arm))


def round_problem(cfg: RunConfig, rnd) -> str | None:
    """Why DPO round `rnd` may not run now (None when it may): the stage graph's rule (iterdpo.stages)."""
    return stages.round_problem(RunFolder(cfg.out), cfg, rnd)


def config(preset: str, seed: int, out: str, overrides) -> RunConfig:
    """The run's config from a notebook's parameters: the preset, then `overrides` ({"section.field": value}),
    the seed and the run folder (anchored). A parameter of the wrong kind (papermill's ``-p overrides '...'``
    passes a string) is one line, not a traceback."""
    if not isinstance(overrides, dict):
        raise NotReady(f"overrides={overrides!r}: expected a mapping of section.field to value, e.g. "
                       "-y '{overrides: {dpo.beta: 0.2}}' with papermill (-p passes a string)")
    try:
        return load_preset(preset, {**overrides, "seed": seed, "out": anchored(out)})
    except ConfigError as e:
        raise NotReady(str(e)) from None


def ready(cfg: RunConfig, name: str, round: int | None = None, arm: str = ITERATIVE) -> None:
    """Wait for this notebook's turn when the runner started it ahead (iterdpo.turns), then raise NotReady (shown
    as one line) when its parameters or the run folder are not right for it."""
    wait_turn()
    if not live():  # nobody watches: a progress bar would be saved into the notebook frozen at 0%
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    check_parameters()
    hub_telemetry(cfg.export.telemetry)
    why = missing(cfg, name, round, arm)
    if why:
        raise NotReady(why)


# ---------------------------------------------------------------- papermill parameters

def check_parameters() -> None:
    """A papermill parameter the notebook does not take (a typo: `-p rounds 3`) is an error, not a warning."""
    ip = ipython()
    found = injected(list(ip.user_ns.get("_ih", []))) if ip is not None else None
    if found:
        given, declared = found
        unknown = sorted(given - declared)
        if unknown and declared:
            raise NotReady(f"unknown parameter(s) {', '.join(unknown)}: this notebook takes {', '.join(sorted(declared))}")


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

def budget(cfg: RunConfig) -> str:
    """What the run will train, in steps and examples: the rounds (and what ends them), and the offline arm."""
    d, g = cfg.dpo, cfg.generation
    pairs, seed = d.batch_size * d.grad_accum, cfg.data.train_pairs
    evals = "one evaluation" + (f" (up to {len(cfg.controller.repair_alphas)} more where a repair is tried)"
                                if cfg.controller.repair_alphas else "")
    if cfg.rounds == "auto":
        rounds = (f"until the controller stops: at most controller.max_rounds = {cfg.max_rounds}, and none starts after "
                  f"controller.max_seconds = {cfg.controller.max_seconds:g} s of the loop")
    else:
        rounds = f"{cfg.rounds}, fewer if the controller stops"
    lines = [f"rounds: {rounds}",
             f"each round: {g.prompts_per_round:,} prompts x {g.k} samples = {g.prompts_per_round * g.k:,} sampled "
             f"responses; {d.max_steps} DPO steps x {pairs} pairs = {d.max_steps * pairs:,} pair-examples "
             f"(the controller may change the steps); {evals}"]
    if cfg.baseline.offline_dpo:
        top = cfg.max_rounds * d.max_steps
        lines.append(f"offline DPO: the seed pairs only ({seed:,}), as many DPO steps as the rounds together: at most "
                     f"{cfg.max_rounds} x {d.max_steps} = {top} steps x {pairs} = {top * pairs:,} pair-examples; no "
                     f"sampling; {evals}")
        if cfg.baseline.frontier_betas:
            n, b = len(cfg.baseline.frontier_betas), cfg.baseline
            lines.append(f"offline frontier: {n} more arm{'s' if n > 1 else ''} as long, at beta x "
                         f"{', '.join(f'{f:g}' for f in b.frontier_betas)} (baseline.frontier_betas), "
                         f"{b.frontier_checkpoints} evaluation{'s' if b.frontier_checkpoints > 1 else ''} each")
    return "\n".join(lines)


def run_baseline(cfg: RunConfig) -> dict | None:
    """The offline-DPO arm when the config asks for it (baseline.offline_dpo), after a line saying what it trains;
    None otherwise."""
    if not cfg.baseline.offline_dpo:
        print("the offline-DPO baseline is off in this config (baseline.offline_dpo)")
        return None
    run = RunFolder(cfg.out)
    steps, rounds = offline_steps(run)
    if steps:  # else run_offline_baseline says to run the rounds first
        pairs, seed = cfg.dpo.batch_size * cfg.dpo.grad_accum, run.metrics(run.stage("data"))["train_pairs"]
        which = f"round {rounds[0]}'s" if len(rounds) == 1 else f"rounds {', '.join(map(str, rounds))} together"
        print(f"offline DPO: {steps} DPO steps ({which}) x {pairs} pairs = "
              f"{steps * pairs:,} pair-examples from the {seed:,} seed pairs; no sampling; one evaluation")
    return pipeline.run_offline_baseline(cfg)
