"""colab_setup.sh installs iterdpo's runtime libraries and leaves Colab's own torch and kernel stack alone.

The fast tests run the script with a fake `python` first in PATH: it records every `python -m pip` call
(its arguments and the files they name) instead of installing, and hands every other call to this
interpreter. The slow test runs the script for real in a fresh venv that holds only torch, as Colab does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "colab_setup.sh"
# Colab's running kernel and what it pins: replacing any of these under a live notebook breaks it.
KERNEL_STACK = {canonicalize_name(n) for n in (
    "ipykernel", "ipywidgets", "tornado", "pyzmq", "jupyter_client", "jupyter_core", "traitlets", "ipython",
    "notebook", "jupyterlab", "nbformat", "papermill", "widgetsnbextension", "jupyterlab_widgets")}
NEVER = KERNEL_STACK | {"torch"}
# What the notebooks import at run time beyond torch: the script must still install these.
RUNTIME = {"transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "gguf", "vadersentiment",
           "seaborn"}

FAKE_PYTHON = '''#!{real}
import json, os, sys
if sys.argv[1:3] == ["-m", "pip"]:
    args = sys.argv[3:]
    files = {{a: open(a).read() for a in args if os.path.isfile(a)}}
    with open({log!r}, "a") as f:
        f.write(json.dumps({{"cwd": os.getcwd(), "args": args, "files": files}}) + "\\n")
    sys.exit(int(os.environ.get("FAKE_PIP_RC", "0")))
os.execv({real!r}, [{real!r}] + sys.argv[1:])
'''


def read_requirements(path: Path, text: str | None = None) -> dict[str, Requirement]:
    """{name: requirement} of a requirements file, following its `-r` includes (relative to the file)."""
    out = {}
    for line in (path.read_text() if text is None else text).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            out.update(read_requirements(path.parent / line.split(None, 1)[1]))
        elif not line.startswith("-"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def run_with_fake_pip(tmp_path: Path, pip_rc: int = 0) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run colab_setup.sh with pip faked; returns the run and the recorded pip calls."""
    bin_dir, log = tmp_path / "bin", tmp_path / "pip_calls.jsonl"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON.format(real=sys.executable, log=str(log)))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_PIP_RC": str(pip_rc)}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def installs(calls: list[dict]) -> tuple[dict[str, Requirement], dict[str, Requirement]]:
    """({name: requirement} the pip calls install, {name: requirement} they constrain)."""
    wanted, constrained = {}, {}
    for call in calls:
        args = call["args"]
        assert args[0] == "install", args
        i = 1
        while i < len(args):
            arg = args[i]
            if arg in ("-r", "--requirement", "-c", "--constraint"):
                path = Path(call["cwd"]) / args[i + 1]
                reqs = read_requirements(path, call["files"].get(args[i + 1]))
                (constrained if arg in ("-c", "--constraint") else wanted).update(reqs)
                i += 2
            elif arg in ("-e", "--editable"):
                wanted["iterdpo"] = Requirement("iterdpo")
                i += 2
            elif arg.startswith("-"):
                i += 2 if arg == "--progress-bar" else 1
            else:
                wanted["iterdpo" if arg == "." else canonicalize_name(Requirement(arg).name)] = None
                i += 1
    return wanted, constrained


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return run_with_fake_pip(tmp_path_factory.mktemp("colab"))


def test_installs_the_runtime_and_never_torch_or_the_kernel_stack(recorded):
    proc, calls = recorded
    assert proc.returncode == 0, proc.stderr
    wanted, constrained = installs(calls)
    assert RUNTIME <= wanted.keys(), f"missing: {RUNTIME - wanted.keys()}"
    assert not NEVER & wanted.keys(), f"colab_setup.sh installs {sorted(NEVER & wanted.keys())}"
    # torch appears only as a constraint, pinned to the torch already there
    assert str(constrained["torch"].specifier) == f"=={torch.__version__}"


def test_pins_are_requirements_txt_pins(recorded):
    """One source of truth: what Colab gets is pinned exactly as a local `pip install -r requirements.txt`."""
    local = read_requirements(ROOT / "requirements.txt")
    wanted, _ = installs(recorded[1])
    for name, req in wanted.items():
        if name != "iterdpo":
            assert name in local and req.specifier == local[name].specifier, name
    # and a local install still gets the notebook stack that `python -m iterdpo run` needs
    assert {"torch", "papermill", "ipykernel", "nbformat"} <= local.keys()


def test_package_without_dependencies_and_pip_not_silenced(recorded):
    _, calls = recorded
    editable = [c["args"] for c in calls if "-e" in c["args"] or "--editable" in c["args"]]
    assert editable and all("--no-deps" in args for args in editable)
    assert not any(a in ("-q", "--quiet") or a.startswith("-qq") for c in calls for a in c["args"])


def test_a_failed_install_stops_the_script(tmp_path):
    proc, calls = run_with_fake_pip(tmp_path, pip_rc=1)
    assert proc.returncode != 0
    assert len(calls) == 1  # neither the package nor the import check ran after the failure
    assert "iterdpo" not in proc.stdout


@pytest.mark.slow
def test_fresh_venv_installs_and_imports(tmp_path):
    """colab_setup.sh in a fresh venv that holds only torch (as Colab's runtime does), from the package index
    pip is configured with; then the package imports from anywhere. About 3 minutes here (2 shared CPU cores,
    most wheels from a local mirror, the rest from PyPI); it downloads a few hundred MB where nothing is cached."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--progress-bar", "off", f"torch=={torch.__version__}"],
                   check=True)
    repo = tmp_path / "repo"  # a copy, so that the editable install writes nothing into the working tree
    shutil.copytree(ROOT / "iterdpo", repo / "iterdpo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("colab_setup.sh", "pyproject.toml", "requirements.txt", "requirements-colab.txt"):
        shutil.copy(ROOT / name, repo / name)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv), OMP_NUM_THREADS="1")
    subprocess.run(["bash", str(repo / "colab_setup.sh")], env=env, check=True, timeout=1800)

    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            check=True)
    installed = {canonicalize_name(d["name"]): d["version"] for d in json.loads(listed.stdout)}
    assert installed["torch"] == torch.__version__  # the runtime's torch, untouched
    assert not KERNEL_STACK & installed.keys(), sorted(KERNEL_STACK & installed.keys())
    assert RUNTIME <= installed.keys()
    out = subprocess.run([str(py), "-c", "import iterdpo.pipeline, iterdpo.plots; print(iterdpo.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(repo / "iterdpo" / "__init__.py")
