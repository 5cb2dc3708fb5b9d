"""Stage folders that appear whole or not at all.

A stage writes into ``<name>.tmp-<pid>`` and renames it to ``<name>`` when done, so a killed run
leaves no half-written stage behind; the next run (``--resume``) skips stages whose folder exists and
removes stale temporary folders. Each finished folder holds ``config.json`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DONE_FILE = "metrics.json"  # written last: a stage folder holding it is finished
CONFIG_FILE = "config.json"


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
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from e
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


@contextmanager
def stage_folder(path: str | Path, config: dict, force: bool = False) -> Iterator[Path | None]:
    """Yield a temporary folder to write the stage into, or None when the stage is already done.

    On success the folder is renamed to `path`; on error it is removed and nothing is left behind.
    The body must write metrics.json last (``write_json(tmp / 'metrics.json', ...)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
