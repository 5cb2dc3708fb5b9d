"""Stage folders that appear whole or not at all.

A stage writes into ``<name>.tmp-<pid>`` and renames it to ``<name>`` when done, so a killed run
leaves no half-written stage behind; the next run (``--resume``) skips stages whose folder exists and
removes stale temporary folders. Each finished folder holds ``config.json`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DONE_FILE = "metrics.json"


def is_done(path: str | Path) -> bool:
    return (Path(path) / DONE_FILE).exists()


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable))
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, default=_jsonable) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: str | Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_jsonable) + "\n")
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


def _jsonable(o: Any) -> Any:
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
    write_json(tmp / "config.json", config)
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
