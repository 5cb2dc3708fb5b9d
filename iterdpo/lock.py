"""One writer at a time: the lock on a run folder.

The process that runs a stage holds ``<run>/.lock`` (its pid, host, start time and command) for the whole
run and gives it back at exit. A second process is refused in one line that names the holder; a lock whose
process is gone (killed with -9) is said once and taken over.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path

from .folder import alive


class RunFolderBusy(RuntimeError):
    """Another live process writes this run folder."""


def holder(path: Path) -> dict | None:
    """Who holds the lock at `path` ({pid, host, started, command}), or None when nobody does. A lock left by a
    process that is gone is said once and removed."""
    try:
        who = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        who = {}
    if who.get("host") == socket.gethostname() and isinstance(who.get("pid"), int) and alive(who["pid"]):
        return who
    print(f"{path}: a stale lock (process {who.get('pid', '?')} is gone); taken over")
    path.unlink(missing_ok=True)
    return None


def acquire(path: Path) -> None:
    """Take the lock at `path` for this process (given back at exit); RunFolderBusy naming the holder when
    another live process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)[:300]}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            who = holder(path)
            if who is not None and who["pid"] != os.getpid():
                raise RunFolderBusy(f"{path.parent} is in use by process {who['pid']} (since {who.get('started')}: "
                                    f"{who.get('command', '?')}); wait for it to finish, or stop it") from None
            if who is not None:
                return
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        atexit.register(release, path)
        return


def release(path: Path) -> None:
    """Give the lock at `path` back, if this process holds it."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
