"""Running the numbered notebooks with papermill, each executed copy kept in the run folder.

    01_sft -> 02_reward_model -> (03_synthetic_preferences, 04_dpo_round) for each round the
    controller asks for -> 04_dpo_round with arm="offline_dpo" -> 05_compare_iterations

in the order of the stage graph (iterdpo.stages), which decides each next notebook.

Every notebook gets the same parameters (preset, seed, out and the overrides that turn the preset
into this run's config), so each one rebuilds exactly the config of the run. Executed copies go to
``<run>/notebooks/`` under a temporary name and are renamed when they finish; with ``resume`` a
notebook whose executed copy exists is skipped (the stages inside are resumable on their own too).
A notebook that fails is kept as ``<name>.failed.ipynb`` beside them, with the traceback in it.

Starting a kernel and importing the libraries takes seconds per notebook, so the next notebook's kernel
starts while the current one runs and waits at its first stage for its turn (``iterdpo.turns``). When the
controller picks another next step than the one started (it stops early), that kernel is cancelled and
leaves nothing behind; when a notebook fails, the one waiting behind it is cancelled too.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import stages, turns
from .config import ConfigError, RunConfig, load_preset
from .controller import report
from .runfolder import RunFolder

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "python3"
# Kernels nobody watches: no progress widgets (saved, they show a frozen 0%, and they slow a tiny run; the
# runner prints one line per notebook instead); chat and pickers show tables.
HEADLESS_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                "ITERDPO_HEADLESS": "1"}
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


def check_parameters(name: str, parameters: dict, notebook_dir: Path = NOTEBOOK_DIR) -> None:
    """Refuse a parameter the notebook's `parameters` cell does not define (papermill itself only warns)."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook_dir / f"{name}.ipynb"))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ConfigError(f"{name}: unknown parameter(s) {unknown}; it takes {sorted(declared)}")


def _kernel_manager(env: dict, sockets: str):
    """A kernel manager class whose kernels start with `env` added to this process's environment.

    The kernels talk over IPC sockets in the folder `sockets` (the caller's, removed by it): over TCP each kernel
    logs an 'unencrypted TCP' warning to the terminal.
    """
    from jupyter_client.manager import AsyncKernelManager

    class KernelManagerWithEnv(AsyncKernelManager):
        extra_env = env

        def __init__(self, **kw):
            super().__init__(**kw)
            if os.name == "posix":
                # Each kernel its own socket prefix: IPC "ports" are numbered files next to the prefix, and two
                # kernels starting at once (the runner starts the next one ahead) would otherwise pick the same.
                self.transport = "ipc"
                self.ip = os.path.join(sockets, "kernel")

        async def start_kernel(self, **kw):
            kw["env"] = {**os.environ, **kw.get("env", {}), **env}
            return await super().start_kernel(**kw)

    return KernelManagerWithEnv


def execute(name: str, dest: Path, parameters: dict, resume: bool = False, notebook_dir: Path = NOTEBOOK_DIR,
            env: dict | None = None) -> Path:
    """Execute notebooks/<name>.ipynb into `dest` atomically; with `resume`, skip it if `dest` exists.

    `env` is added to the kernel's environment.
    """
    import papermill

    if resume and dest.exists():
        sys.stdout.write(f"skip {dest} (already executed)\n")  # one write: runner threads print side by side
        return dest
    check_parameters(name, parameters, notebook_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.stem}.tmp-*.ipynb"):  # left by a killed run (the run's lock keeps others out)
        stale.unlink()
    tmp = dest.with_name(f".{dest.stem}.tmp-{os.getpid()}.ipynb")
    failed = dest.with_name(f"{dest.stem}.failed.ipynb")
    extra = {**HEADLESS_ENV, **(env or {})}
    try:
        with tempfile.TemporaryDirectory(prefix="iterdpo-kernel-", ignore_cleanup_errors=True) as sockets:
            papermill.execute_notebook(str(notebook_dir / f"{name}.ipynb"), str(tmp), parameters=parameters,
                                       kernel_name=KERNEL, progress_bar=False, cwd=os.getcwd(),
                                       kernel_manager_class=_kernel_manager(extra, sockets))
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
        raise
    os.replace(tmp, dest)
    failed.unlink(missing_ok=True)
    return dest


class _Job:
    """One notebook executing in a thread; its stages wait for the gate (iterdpo.turns) to open."""

    def __init__(self, step: stages.Step, dest: Path, parameters: dict, gate_dir: Path, resume: bool, notebook_dir: Path,
                 run: RunFolder):
        self.step, self.dest, self.error = step, dest, None
        # resumed by stage: a notebook runs again unless every stage it makes is finished (its executed copy alone
        # says nothing: a stage deleted since, or rounds added, make it stale)
        self.key, self.skipped = dest.stem, resume and dest.exists() and stages.finished(run, step)
        self.go, self.abort = turns.files(gate_dir, self.key)
        env = {turns.ENV: f"{gate_dir}|{self.key}"}
        kw = dict(name=step.notebook, dest=dest, parameters=parameters, resume=self.skipped, notebook_dir=notebook_dir,
                  env=env)
        self.thread = threading.Thread(target=self._run, kwargs=kw, daemon=True)
        self.thread.start()

    def _run(self, **kw) -> None:
        try:
            execute(**kw)
        except BaseException as e:  # re-raised by finish()
            self.error = e

    def finish(self) -> None:
        """Open the gate, wait for the notebook, raise its error."""
        if not self.skipped:
            print(f"execute {self.step.notebook} -> {self.dest}", flush=True)
        t0 = time.perf_counter()
        self.go.write_text("go")
        self.thread.join()
        if self.error is not None:
            raise self.error
        if not self.skipped:
            print(f"  done in {time.perf_counter() - t0:.0f} s (its kernel started during the notebook before)",
                  flush=True)

    def cancel(self, why: str) -> None:
        """Stop a notebook started ahead of a turn that did not come; leave nothing of it behind."""
        self.abort.write_text(why)
        self.thread.join()
        self.dest.with_name(f"{self.dest.stem}.failed.ipynb").unlink(missing_ok=True)


def _job(step: stages.Step) -> tuple:
    """(notebook, the executed copy's suffix, the step's own parameters) of a step of the stage graph."""
    if step.round is not None:
        return step.notebook, f"_r{step.round}", {"round": step.round, **({"arm": step.arm} if step.notebook ==
                                                                          "04_dpo_round" else {})}
    if step.arm == stages.OFFLINE:
        return step.notebook, f"_{stages.OFFLINE}", {"arm": stages.OFFLINE}
    return step.notebook, "", {}


def run_notebooks(cfg: RunConfig, resume: bool = False, rounds: int | str | None = None,
                  overrides: dict | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> dict:
    """Run the whole loop as notebooks; returns summary.json.

    `rounds` (a number or 'auto') replaces cfg.rounds; `overrides` are the command line's --set values,
    shown in each notebook's parameters when they rebuild the config. While one notebook runs, the next
    one's kernel starts and imports (iterdpo.turns); its stages wait until the one before has finished.
    Each notebook prints one line when its turn comes and one with its time.
    """
    if rounds is not None:
        cfg = cfg.replace(rounds=rounds)
        overrides = {**(overrides or {}), "rounds": rounds}
    check_kernel()
    # Notebooks anchor a relative run folder to the repository root; the command line means the working directory.
    params = {**notebook_parameters(cfg, overrides), "out": str(Path(cfg.out).resolve())}
    folder = RunFolder(cfg.out).notebooks
    gate_dir = RunFolder(cfg.out).gate_dir
    shutil.rmtree(gate_dir, ignore_errors=True)
    gate_dir.mkdir(parents=True)

    run = RunFolder(cfg.out)

    def start(step: stages.Step) -> _Job:
        name, suffix, extra = _job(step)
        return _Job(step, folder / f"{name}{suffix}.ipynb", {**params, **extra}, gate_dir, resume, notebook_dir, run)

    job = start(stages.first())
    ahead = None
    try:
        while job is not None:
            guess = stages.following(cfg, run, job.step, guess=True)
            ahead = start(guess) if guess is not None else None
            job.finish()
            if job.step.notebook == "04_dpo_round" and job.step.arm == stages.ITERATIVE:
                print(report.iteration_report(run, cfg, job.step.round), flush=True)
            actual = stages.following(cfg, run, job.step)
            if ahead is not None and actual != ahead.step:
                ahead.cancel(f"the next notebook is {actual and ''.join(_job(actual)[:2])}, not {''.join(_job(guess)[:2])}")
                ahead = None
            job = ahead if ahead is not None else (start(actual) if actual is not None else None)
            ahead = None
    finally:
        if ahead is not None and ahead.thread.is_alive():
            ahead.cancel("the notebook before it failed")
        shutil.rmtree(gate_dir, ignore_errors=True)
    return RunFolder(cfg.out).summary()


NBVAL_CONFTEST = '''"""Written by iterdpo.runner.prepare_for_nbval: headless kernels, each executed notebook kept in executed/."""
import os
from pathlib import Path

import nbformat

os.environ.update({headless!r})  # the kernels nbval starts inherit this environment
_NOTEBOOKS = {{}}


def pytest_runtest_teardown(item):
    if getattr(item, "test_outputs", None) is not None and hasattr(item, "cell"):
        item.cell.outputs = [nbformat.from_dict(o) for o in item.test_outputs]
        _NOTEBOOKS[str(item.parent.fspath)] = item.parent.nb


def pytest_sessionfinish(session):
    for path, nb in _NOTEBOOKS.items():
        dest = Path(path).parent / "executed" / Path(path).name
        dest.parent.mkdir(exist_ok=True)
        nbformat.write(nb, str(dest))
'''


def prepare_for_nbval(dest: str | Path, run: str | Path | None = None, preset: str = "tiny",
                      overrides: dict | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Parameter-injected copies of every notebook in `dest`, in execution order, for `pytest --nbval-lax`.

    00_quickstart runs the whole loop in its own run folder (`dest`/quickstart). The others share one
    run folder (`dest`/run unless given), so executed in file-name order they form one tiny run: 01, 02,
    03 and 04 for round 1, 04 for the offline baseline, 05. `dest`/conftest.py makes the kernels
    headless and keeps each executed notebook in `dest`/executed/ (tests/test_notebooks.py reads them).
    """
    import papermill

    dest = Path(dest).resolve()
    run = Path(run).resolve() if run else dest / "run"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / "conftest.py").write_text(NBVAL_CONFTEST.format(headless=HEADLESS_ENV))
    base = {"preset": preset, "out": str(run), "seed": 0,
            "overrides": TINY_OVERRIDES if overrides is None else overrides}
    plan = [("00_quickstart", "", {"out": str(dest / "quickstart")}), ("01_sft", "", {}), ("02_reward_model", "", {}),
            ("03_synthetic_preferences", "_r1", {"round": 1}), ("04_dpo_round", "_r1", {"round": 1, "arm": "iterative"}),
            ("04_dpo_round", "_offline_dpo", {"arm": "offline_dpo"}), ("05_compare_iterations", "", {})]
    written = []
    for step, (name, suffix, extra) in zip("abcdefg", plan):  # the letter makes file-name order the run order
        out = dest / f"{step}_{name}{suffix}.ipynb"
        check_parameters(name, {**base, **extra}, notebook_dir)
        papermill.execute_notebook(str(notebook_dir / f"{name}.ipynb"), str(out), parameters={**base, **extra},
                                   prepare_only=True, kernel_name=KERNEL, progress_bar=False)
        written.append(out)
    return written
