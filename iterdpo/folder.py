"""Stage folders that appear whole or not at all, and that can say when they were damaged since.

A stage writes into ``<name>.tmp-<pid>`` and renames it to ``<name>`` when done, so a killed run
leaves no half-written stage behind; the next run (``--resume``) skips stages whose folder exists and
removes the temporary folders of processes that are gone (never a live one's). Each finished folder holds
``config.json``, ``metrics.json`` and ``files.json``, the manifest of what it holds (sizes, and a hash of
the small files), which ``check_stage`` reads back to name a file that went missing, was cut short or
was overwritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DONE_FILE = "metrics.json"  # written last: a stage folder holding it is finished
CONFIG_FILE = "config.json"
MANIFEST_FILE = "files.json"  # what a finished stage holds, written as it is renamed into place
HASHED_BYTES = 4 * 2**20  # files up to this size are hashed in the manifest; larger ones (weights) by size


class DamagedRun(ValueError):
    """A finished stage's file is missing, cut short or not what was written; the message names it."""


def is_done(path: str | Path) -> bool:
    return (Path(path) / DONE_FILE).exists()


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(dumps(obj, indent=2))
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(dumps(r) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: str | Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | Path) -> Any:
    """JSON from a file; a file that is not valid JSON is a DamagedRun naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedRun(f"{path}: not valid JSON ({getattr(e, 'msg', e)})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8", errors="strict") as f:
        return parse_jsonl(f, path)


def parse_jsonl(lines, path: str | Path) -> list[dict]:
    """The rows of JSONL `lines` (blank lines skipped); a bad line is a DamagedRun naming `path` and the line."""
    rows = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DamagedRun(f"{path}:{i}: not valid JSON ({e.msg})") from None
    return rows


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (no NaN or Infinity tokens, which most JSON readers refuse): see :func:`strict`."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False)


def strict(o: Any) -> Any:
    """`o` as plain JSON values; a non-finite float becomes null, and in a dict a ``<key>_reason`` beside it
    says why (``{"kl": nan}`` -> ``{"kl": null, "kl_reason": "non-finite (nan)"}``)."""
    o = _plain(o)
    if isinstance(o, dict):
        out: dict = {}
        for k, v in o.items():
            v = _plain(v)
            if _non_finite(v):
                out[k] = None
                out.setdefault(f"{k}_reason", f"non-finite ({v})")
            else:
                out[k] = strict(v)
        return out
    if isinstance(o, (list, tuple)):
        return [strict(v) for v in o]
    return None if _non_finite(o) else o


def _non_finite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def _plain(o: Any) -> Any:
    """numpy/torch scalars and arrays, objects with to_dict() and paths as plain Python values."""
    if isinstance(o, (str, int, float, bool, dict, list, tuple)) or o is None:
        return o
    if hasattr(o, "tolist") and getattr(o, "ndim", 0) > 0:
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Remove ``<path>.tmp-<pid>`` folders whose process is gone; another live process's are left alone."""
    for tmp in path.parent.glob(path.name + ".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: Path) -> dict:
    """{relative path: {"size", and "sha256" for files up to HASHED_BYTES}} of every file under `folder`."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST_FILE:
            size = p.stat().st_size
            out[str(p.relative_to(folder))] = {"size": size, **({"sha256": _sha256(p)} if size <= HASHED_BYTES else {})}
    return out


def check_stage(folder: str | Path) -> list[str]:
    """What is wrong with a finished stage folder, one line each (empty when it is whole): against its
    manifest where it has one (a file missing, of another size, or with other content); every JSON and JSONL
    file must parse, and every safetensors file must be as long as its header says."""
    folder = Path(folder)
    problems, listed = [], {}
    if (folder / MANIFEST_FILE).exists():
        try:
            listed = read_json(folder / MANIFEST_FILE)
        except DamagedRun as e:
            return [str(e)]
    for rel, want in listed.items():
        p = folder / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, {want['size']} when the stage finished (cut short or overwritten)")
        elif "sha256" in want and _sha256(p) != want["sha256"]:
            problems.append(f"{p}: not what the stage wrote (its content changed)")
    for p in sorted(folder.rglob("*")) if not problems else []:
        why = _unreadable(p) if p.is_file() else None
        if why:
            problems.append(f"{p}: {why}")
    return problems


def _unreadable(p: Path) -> str | None:
    """Why a JSON, JSONL or safetensors file cannot be read, or None."""
    try:
        if p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))
        elif p.suffix == ".jsonl":
            read_jsonl(p)
        elif p.suffix == ".safetensors":
            with open(p, "rb") as f:
                head = f.read(8)
                n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
                header = json.loads(f.read(n)) if 0 < n < 100 * 2**20 else None
            ends = [t["data_offsets"][1] for k, t in (header or {}).items() if k != "__metadata__"]
            if header is None or 8 + n + max(ends, default=0) != p.stat().st_size:
                return "not a whole safetensors file (cut short, or not safetensors)"
    except (ValueError, UnicodeDecodeError, struct.error, KeyError, TypeError) as e:
        return f"not readable ({str(e).split(chr(10))[0][:120]})"
    return None


@contextmanager
def stage_folder(path: str | Path, config: dict, force: bool = False) -> Iterator[Path | None]:
    """Yield a temporary folder to write the stage into, or None when the stage is already done.

    On success the folder is renamed to `path`; on error it is removed and nothing is left behind.
    The body must write metrics.json last (``write_json(tmp / 'metrics.json', ...)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if is_done(path) and not force:
        yield None
        return
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.mkdir()
    write_json(tmp / CONFIG_FILE, config)
    try:
        yield tmp
        if not (tmp / DONE_FILE).exists():
            raise RuntimeError(f"stage {path.name} wrote no {DONE_FILE}")
        write_json(tmp / MANIFEST_FILE, manifest(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
