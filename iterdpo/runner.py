"""Running the numbered notebooks with papermill, each executed copy kept in the run folder.

    01_sft -> 02_reward_model -> (03_synthetic_preferences, 04_dpo_round) for each round the
    controller asks for -> 04_dpo_round with arm="offline_dpo" -> 05_compare_iterations

Every notebook gets the same parameters (preset, seed, out and the overrides that turn the preset
into this run's config), so each one rebuilds exactly the config of the run. Executed copies go to
``<run>/notebooks/`` under a temporary name and are renamed when they finish; with ``resume`` a
notebook whose executed copy exists is skipped (the stages inside are resumable on their own too).
A notebook that fails is kept as ``<name>.failed.ipynb`` beside them, with the traceback in it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from .config import ConfigError, RunConfig, load_preset

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "python3"
# Settings for executing every notebook quickly (CI, nbval): the toy world, one round, few steps.
TINY_OVERRIDES = {"rounds": 1, "toy.pretrain_steps": 60, "sft.max_steps": 20, "reward.max_steps": 30,
                  "dpo.max_steps": 10, "generation.prompts_per_round": 64, "data.heldout_prompts": 32,
                  "data.heldout_pairs": 32, "eval.capability_n": 8}


def _plain(d):
    """The JSON form of a config dict (what papermill and config.json carry: string keys, lists)."""
    return json.loads(json.dumps(d))


def _flatten(d: dict) -> dict:
    return {f"{k}.{f}" if isinstance(v, dict) else k: x
            for k, v in d.items() for f, x in (v.items() if isinstance(v, dict) else [(None, v)])}


def notebook_parameters(cfg: RunConfig, overrides: dict | None = None) -> dict:
    """Papermill parameters that rebuild `cfg` exactly: load_preset(preset, {**overrides, seed, out}).

    `overrides` (e.g. the command line's --set values) are used when they suffice; otherwise every
    field that differs from the preset is passed.
    """
    try:
        base = load_preset(cfg.preset)
        preset = cfg.preset
    except ConfigError:  # a preset given as a YAML path elsewhere: start from the defaults' preset
        preset = RunConfig().preset
        base = load_preset(preset)
    target = _plain(cfg.to_dict())
    params = {"preset": preset, "seed": cfg.seed, "out": cfg.out}
    if overrides is not None:
        given = {k: v for k, v in overrides.items() if k not in ("seed", "out", "preset")}
        if _plain(load_preset(preset, {**given, "seed": cfg.seed, "out": cfg.out}).to_dict()) == target:
            return {**params, "overrides": _plain(given)}
    now, was = _flatten(target), _flatten(_plain(base.to_dict()))
    diff = {k: v for k, v in now.items() if v != was.get(k) and k not in ("seed", "out", "preset")}
    return {**params, "overrides": diff}


def check_kernel(name: str = KERNEL) -> None:
    """Fail early, with the fix, when the Jupyter kernel `name` would not run this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise RuntimeError(f"no Jupyter kernel {name!r}: run `{sys.executable} -m ipykernel install --sys-prefix`") from None
    exe = spec.argv[0]
    if exe not in ("python", "python3") and Path(exe).resolve() != Path(sys.executable).resolve():
        raise RuntimeError(f"kernel {name!r} runs {exe}, not this environment's {sys.executable}; run "
                           f"`{sys.executable} -m ipykernel install --sys-prefix` (or remove the other kernelspec)")


def execute(name: str, dest: Path, parameters: dict, resume: bool = False, progress: bool = True,
            notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    """Execute notebooks/<name>.ipynb into `dest` atomically; with `resume`, skip it if `dest` exists."""
    import papermill

    if resume and dest.exists():
        print(f"skip {dest} (already executed)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.stem}.tmp-*.ipynb"):  # left by a killed run
        stale.unlink()
    tmp = dest.with_name(f".{dest.stem}.tmp-{os.getpid()}.ipynb")
    failed = dest.with_name(f"{dest.stem}.failed.ipynb")
    print(f"execute {name} -> {dest}", flush=True)
    t0 = time.perf_counter()
    # Headless kernels inherit this: per-step progress widgets, recorded into the executed notebook,
    # cost a quarter of a tiny run's time. The runner prints one line per notebook instead.
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        papermill.execute_notebook(str(notebook_dir / f"{name}.ipynb"), str(tmp), parameters=parameters,
                                   kernel_name=KERNEL, progress_bar=False, cwd=os.getcwd())
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    os.replace(tmp, dest)
    failed.unlink(missing_ok=True)
    return dest


def run_notebooks(cfg: RunConfig, resume: bool = False, rounds: int | str | None = None,
                  overrides: dict | None = None, progress: bool = True, notebook_dir: Path = NOTEBOOK_DIR) -> dict:
    """Run the whole loop as notebooks; returns summary.json.

    `rounds` (a number or 'auto') replaces cfg.rounds; `overrides` are the command line's --set values,
    shown in each notebook's parameters when they rebuild the config; `progress` shows papermill's
    progress bar per notebook.
    """
    from . import pipeline

    if rounds is not None:
        cfg = cfg.replace(rounds=rounds)
        overrides = {**(overrides or {}), "rounds": rounds}
    check_kernel()
    params = notebook_parameters(cfg, overrides)
    folder = Path(cfg.out) / "notebooks"

    def run(name: str, suffix: str = "", **extra) -> None:
        execute(name, folder / f"{name}{suffix}.ipynb", {**params, **extra}, resume, progress, notebook_dir)

    run("01_sft")
    run("02_reward_model")
    rnd = pipeline.next_round(cfg)
    while rnd is not None:
        run("03_synthetic_preferences", f"_r{rnd}", round=rnd)
        run("04_dpo_round", f"_r{rnd}", round=rnd, arm="iterative")
        print(pipeline.iteration_report(cfg, rnd), flush=True)
        nxt = pipeline.next_round(cfg)
        if nxt is not None and nxt <= rnd:
            raise RuntimeError(f"round {rnd} ran but the controller asks for round {nxt} next; see decisions.jsonl")
        rnd = nxt
    if cfg.baseline.offline_dpo:
        run("04_dpo_round", "_offline_dpo", arm="offline_dpo")
    run("05_compare_iterations")
    return json.loads((Path(cfg.out) / "summary.json").read_text())


def prepare_for_nbval(dest: str | Path, run: str | Path | None = None, preset: str = "tiny",
                      overrides: dict | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Parameter-injected copies of every notebook in `dest`, in execution order, for `pytest --nbval-lax`.

    All copies share one run folder (`dest`/run unless given), so executed in file-name order they
    form one tiny run: 01, 02, 03 and 04 for round 1, 04 for the offline baseline, 05.
    """
    import papermill

    dest = Path(dest).resolve()
    run = Path(run).resolve() if run else dest / "run"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    base = {"preset": preset, "out": str(run), "seed": 0,
            "overrides": TINY_OVERRIDES if overrides is None else overrides}
    plan = [("01_sft", "", {}), ("02_reward_model", "", {}), ("03_synthetic_preferences", "_r1", {"round": 1}),
            ("04_dpo_round", "_r1", {"round": 1, "arm": "iterative"}),
            ("04_dpo_round", "_offline_dpo", {"arm": "offline_dpo"}), ("05_compare_iterations", "", {})]
    written = []
    for step, (name, suffix, extra) in zip("abcdef", plan):  # the letter makes file-name order the run order
        out = dest / f"{step}_{name}{suffix}.ipynb"
        papermill.execute_notebook(str(notebook_dir / f"{name}.ipynb"), str(out), parameters={**base, **extra},
                                   prepare_only=True, kernel_name=KERNEL, progress_bar=False)
        written.append(out)
    return written
