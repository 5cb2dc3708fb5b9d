"""Gather the wheels the device check needs on a GPU machine that reaches no package index.

    python -m iterdpo.wheelhouse --describe > device.json        # on the device: its Python, CUDA and pip freeze
    python -m iterdpo.wheelhouse DIR --device device.json [--packages trl==1.16.0 ...] [--max-mib 64]

The target Python is read from the device (--device, or --python-version given by hand); nothing is assumed.

Downloads x86-64 Linux wheels (``pip download --only-binary=:all: --no-deps --platform manylinux...``) of the
packages asked for and of everything they require, transitively, for the target Python, then builds the
project's own wheel into DIR. A requirement is skipped when the device already satisfies it: by the versions
in a ``pip freeze`` taken there (--skip-installed-from), or, without one, when it is torch, transformers, peft,
accelerate or something they require (the device is said to have those four). Prints each wheel and the total,
and fails when the folder is over --max-mib.

bitsandbytes ships one library per CUDA version (about 40 MiB in all); --bnb-cuda keeps only the one for the
device's ``torch.version.cuda``. On the device:

    pip install --no-index --find-links DIR iterdpo trl datasets gguf bitsandbytes
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
MIB = 2 ** 20
# What the device check imports beyond torch, transformers, peft and accelerate, pinned as in requirements.txt.
DEFAULT_PACKAGES = ["trl==1.16.0", "datasets==5.2.0", "gguf==0.19.0", "bitsandbytes==0.50.2", "pyyaml>=6.0",
                    "tqdm>=4.66", "safetensors>=0.4", "tokenizers>=0.22"]
ON_DEVICE = ["torch", "transformers", "peft", "accelerate"]
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_28_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_freeze(path: Path) -> dict[str, str]:
    """{normalised name: version} from `pip freeze` (or `pip list --format=freeze`) output; editable and URL lines
    count as installed at any version."""
    out = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "==" in line:
            name, version = line.split("==", 1)
            out[norm(name)] = version.split(";")[0].strip()
        elif " @ " in line:
            out[norm(line.split(" @ ", 1)[0])] = ""
    return out


def local_closure(names: list[str]) -> dict[str, str]:
    """{name: version} of installed `names` and everything they require, read from this machine's metadata."""
    seen: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist.version
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def marker_env(python_version: str) -> dict:
    full = python_version if python_version.count(".") == 2 else python_version + ".0"
    return {"python_version": ".".join(full.split(".")[:2]), "python_full_version": full, "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "platform_python_implementation": "CPython", "implementation_name": "cpython", "extra": ""}


def wheel_requires(path: Path, env: dict) -> list:
    """The requirements a wheel declares (METADATA Requires-Dist) that apply on the target."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(l.split(":", 1)[1].strip()) for l in lines if l.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def download(spec: str, dest: Path, python_version: str) -> Path:
    """One wheel (no dependencies) for x86-64 Linux and the target Python; returns its path."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version",
           python_version, "--implementation", "cp", "-d", str(dest), spec]
    for p in PLATFORMS:
        cmd[5:5] = ["--platform", p]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    new = set(dest.glob("*.whl")) - before
    if new:
        return new.pop()
    name = norm(re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0])
    return next(w for w in dest.glob("*.whl") if norm(w.name.split("-")[0]) == name)  # already there


def gather(dest: Path, packages: list[str], python_version: str, installed: dict[str, str]) -> list[str]:
    """Download `packages` and their requirements not met by `installed` ({name: version}); returns the log."""
    env = marker_env(python_version)
    todo = [Requirement(p) for p in packages]
    have: dict[str, str] = {}  # gathered: name -> version
    log = []
    while todo:
        req = todo.pop(0)
        name = norm(req.name)
        if name in have:
            if not req.specifier.contains(have[name], prereleases=True):
                log.append(f"CONFLICT: {req} but {name}=={have[name]} was gathered")
            continue
        if name in installed and (not installed[name] or req.specifier.contains(installed[name], prereleases=True)):
            continue
        why = f" (device has {installed[name]})" if name in installed else ""
        wheel = download(f"{req.name}{req.specifier}", dest, python_version)
        have[name] = wheel.name.split("-")[1]
        log.append(f"{wheel.name}{why}")
        todo += wheel_requires(wheel, env)
    return log


def slim_wheel(dest: Path, dist: str, drop, why: str) -> str | None:
    """Rewrite DIR's wheel of `dist` without the files `drop(name)` selects (and their RECORD rows)."""
    wheels = list(dest.glob(f"{dist}-*.whl"))
    if not wheels:
        return None
    src = wheels[0]
    tmp = src.with_suffix(".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        dropped = {n for n in zin.namelist() if n != record and drop(n)}
        for info in zin.infolist():
            if info.filename not in dropped and info.filename != record:
                zout.writestr(info, zin.read(info.filename))
        rows = [r for r in zin.read(record).decode().splitlines() if r.split(",", 1)[0] not in dropped]
        zout.writestr(record, "\n".join(rows) + "\n")
    before = src.stat().st_size
    tmp.replace(src)
    return f"{src.name}: dropped {len(dropped)} files ({why}), {before / MIB:.1f} -> {src.stat().st_size / MIB:.1f} MiB"


def slim_bitsandbytes(dest: Path, cuda: str) -> str | None:
    """Only the library for CUDA `cuda` (e.g. 12.8): bitsandbytes loads the one matching torch.version.cuda."""
    keep = f"libbitsandbytes_cuda{cuda.replace('.', '')}.so"
    gpu_lib = re.compile(r"libbitsandbytes_(cuda|rocm|xpu)\w*\.so$")
    for w in dest.glob("bitsandbytes-*.whl"):
        if not any(n.endswith(keep) for n in zipfile.ZipFile(w).namelist()):
            raise SystemExit(f"{w.name} has no {keep} (is {cuda} the device's torch.version.cuda?)")
    return slim_wheel(dest, "bitsandbytes", lambda n: bool(gpu_lib.search(n)) and not n.endswith(keep),
                      f"GPU libraries other than {keep}")


# pyarrow's parts that datasets and TRL do not load: Arrow Flight (RPC), S3, C++ headers, tests (pyarrow.lib links Substrait).
PYARROW_UNUSED = re.compile(r"(flight|_s3|s3fs|^pyarrow/include/|^pyarrow/tests/)")


def slim_pyarrow(dest: Path) -> str | None:
    return slim_wheel(dest, "pyarrow", lambda n: bool(PYARROW_UNUSED.search(n)),
                      "Flight, S3, headers and tests, which datasets does not load")


def describe() -> dict:
    """This machine as the wheelhouse needs it (run on the device): Python version, torch's CUDA, installed versions."""
    freeze = {d.metadata["Name"]: d.version for d in md.distributions() if d.metadata["Name"]}
    cuda = None
    try:
        import torch

        cuda = torch.version.cuda
    except ImportError:
        pass
    return {"python_version": platform.python_version(), "cuda": cuda,
            "freeze": [f"{k}=={v}" for k, v in sorted(freeze.items())]}


def build_project(dest: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp, str(ROOT)],
                       check=True, stdout=subprocess.DEVNULL)
        wheel = next(Path(tmp).glob("iterdpo-*.whl"))
        target = dest / wheel.name
        target.unlink(missing_ok=True)
        wheel.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iterdpo.wheelhouse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", help="folder for the wheels (created)")
    p.add_argument("--describe", action="store_true", help="print this machine's Python, CUDA and installed "
                   "versions as JSON (run it on the device) and exit")
    p.add_argument("--device", type=Path, help="--describe's output from the device: its Python, its pip freeze "
                   "(what is installed is skipped) and its CUDA (for --bnb-cuda)")
    p.add_argument("--python-version", help="the device's Python, e.g. 3.12, when there is no --device file")
    p.add_argument("--packages", nargs="+", default=DEFAULT_PACKAGES, help="requirements to gather, with their "
                   "dependencies (default: %(default)s)")
    p.add_argument("--skip-installed-from", type=Path, help="`pip freeze` output from the device: requirements its "
                   "versions satisfy are not gathered")
    p.add_argument("--bnb-cuda", help="keep only bitsandbytes' library for this CUDA version (torch.version.cuda "
                   "on the device, e.g. 12.8)")
    p.add_argument("--slim-pyarrow", action="store_true", help="drop pyarrow's Flight and S3 "
                   "libraries, headers and tests (about 17 MiB; datasets does not load them)")
    p.add_argument("--no-project", action="store_true", help="do not build the iterdpo wheel")
    p.add_argument("--max-mib", type=float, default=64.0, help="fail when the folder is larger (default 64)")
    a = p.parse_args(argv)
    if a.describe:
        print(json.dumps(describe(), indent=1))
        return 0
    if not a.dir or not (a.device or a.python_version):
        p.error("give DIR and the device's Python: --device FILE (from --describe on the device) or --python-version")
    dev = json.loads(a.device.read_text()) if a.device else {}
    a.python_version = a.python_version or dev["python_version"]
    a.bnb_cuda = a.bnb_cuda or dev.get("cuda")
    dest = Path(a.dir)
    dest.mkdir(parents=True, exist_ok=True)
    if dev:
        installed = {norm(l.split("==")[0]): l.split("==")[1] for l in dev["freeze"]}
        source = f"the device's installed versions ({a.device}), Python {a.python_version}"
    elif a.skip_installed_from:
        installed = read_freeze(a.skip_installed_from)
        source = f"the device's pip freeze ({a.skip_installed_from})"
    else:
        installed = {k: "" for k in local_closure(ON_DEVICE)}
        source = "assumed on the device: " + ", ".join(ON_DEVICE) + " and what they require here"
    print(f"skipping what is installed: {source}")
    for line in gather(dest, a.packages, a.python_version, installed):
        print("  " + line)
    if a.bnb_cuda:
        msg = slim_bitsandbytes(dest, a.bnb_cuda)
        print("  " + (msg or "no bitsandbytes wheel to slim"))
    if a.slim_pyarrow:
        print("  " + (slim_pyarrow(dest) or "no pyarrow wheel to slim"))
    if not a.no_project:
        print(f"  {build_project(dest).name} (the project)")
    wheels = sorted(dest.glob("*.whl"), key=lambda w: -w.stat().st_size)
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels[:5]:
        print(f"  {w.stat().st_size / MIB:7.1f} MiB  {w.name}")
    print(f"{len(wheels)} wheels, {total / MIB:.1f} MiB in {dest} (limit {a.max_mib:g} MiB)")
    if total > a.max_mib * MIB:
        print("too large: leave out what the device has (--device), slim bitsandbytes (--bnb-cuda), "
              "or gather fewer --packages", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
