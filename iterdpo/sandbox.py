"""The sandbox: run one untrusted Python program (model-written code) in a fresh, limited process.

``run_program(code, limits)`` writes ``code`` into a private temporary folder and runs it there with
``sys.executable -I -S`` (standard library only), stdin closed, output to an unnamed file, and returns an
:class:`Outcome`. The folder is removed afterwards, also after a timeout. Standard library only; no
other iterdpo module is imported, so the evaluator can use it anywhere.

Layers, outermost first:

- **Own session, wall clock.** The child leads a new session; at ``Limits.wall_seconds`` its whole
  process group is killed. When the evaluator is root, every process of the sandbox user started
  during the run is killed afterwards too (a child that left the group with ``setsid``).
- **Resource limits** set in the child before exec: ``RLIMIT_CPU`` (SIGXCPU, then SIGKILL a second
  later), ``RLIMIT_AS`` (an allocation past it raises MemoryError), ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``
  (largest file written, the program's output included), ``RLIMIT_CORE`` = 0; ``no_new_privs`` so no
  setuid binary gives privileges back.
- **Clean environment**: only PATH, HOME and TMPDIR (the temporary folder), LANG and
  OMP_NUM_THREADS reach the child; no token or other variable of the evaluator.
- **As root** (Colab, containers), before exec: a new network namespace (only a loopback that is down,
  so no connection can be made, not even to 127.0.0.1) and IPC namespace, then the child drops to
  uid/gid ``SANDBOX_USER`` (nobody) with no supplementary groups: ``RLIMIT_NPROC`` binds only a
  non-root user, and as nobody the program may write or delete only what any user may. When the
  interpreter sits in a folder others cannot enter (pyenv under ``/root``), the child gets a private
  mount namespace in which that folder is covered by an empty tmpfs and only the interpreter's folders
  are bound back (which also hides the rest of ``/root``, e.g. cached tokens).
- **Not root**: ``RLIMIT_NPROC`` counts all the evaluator user's processes (with many of them the
  program cannot fork at all); a user plus network namespace is tried (it needs unprivileged user
  namespaces); where that fails a warning says so, and only the guard stops sockets.
- **The guard** (``iterdpo/sandbox_guard.py``), in the child before the program runs, in the spirit of
  human-eval's ``reliability_guard``: ``os``/``posix`` process, signal, delete, rename, chmod/chown, chdir
  and exec functions, ``shutil.rmtree``/``move``, ``subprocess`` and socket creation raise PermissionError;
  ``open``/``os.open``/``os.mkdir`` refuse to write outside the temporary folder; the ``ctypes``,
  ``resource``, ``multiprocessing`` and ``pty`` imports are refused; ``-S`` leaves out ``exit``/``quit``.
  The guard is the floor, not the ceiling: code that means to can undo it from inside the same
  interpreter (it can also forge a pass), so against deliberate code only the layers above count.

Not guarded against:

- kernel exploits (there is no seccomp filter: every system call is allowed), side channels (timing,
  ``/proc`` of other processes: command lines are world readable), and using memory or CPU below the
  limits while the evaluator runs;
- reading: the program may read whatever the sandbox user may (as root: world-readable files, e.g. the
  dataset with its tests; not root: all the evaluator's files, ``/proc/<parent>/environ`` included);
- when not root and past the guard: writing or deleting anything the evaluator's user may, and a process
  that leaves the session with ``setsid`` survives the run (only as root are such processes found);
- filling the disk with many files each below ``RLIMIT_FSIZE``, or files left in other world-writable
  places (``/tmp``, ``/dev/shm``): only the temporary folder is removed;
- two evaluations at once as root share ``SANDBOX_USER``: their process counts add up, and one's
  clean-up may kill the other's processes. Run one at a time per machine (``check_all`` does).
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

PASSED, FAILED, TIMED_OUT, KILLED = "passed", "failed", "timed_out", "killed"
SANDBOX_USER = 65534  # uid and gid of the child when the evaluator is root (nobody)
PROGRAM = "program.py"  # the program's file name in the temporary folder, as tracebacks and SyntaxErrors name it

# Linux constants (sched.h, sys/mount.h, sys/prctl.h); Python 3.11 has no os.unshare or os.mount.
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x08000000, 0x10000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
MNT_DETACH, PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 2, 1, 38


@dataclass(frozen=True)
class Limits:
    """What one program may use. The defaults fit a HumanEval problem (a fraction of a second each)."""

    wall_seconds: float = 10.0  # the whole process group is killed at this wall-clock time
    cpu_seconds: int = 10  # RLIMIT_CPU: SIGXCPU at this many CPU seconds, SIGKILL one second later
    memory_bytes: int = 1 << 30  # RLIMIT_AS: address space; an allocation past it raises MemoryError
    processes: int = 8  # RLIMIT_NPROC: processes and threads of the sandbox user, the program's own included
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file the program may write, its output included
    output_bytes: int = 64 << 10  # how much of the program's output the outcome keeps

    def __post_init__(self):
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"Limits.{f.name} = {getattr(self, f.name)!r}: must be positive")


@dataclass(frozen=True)
class Outcome:
    """How one program ended.

    status: ``passed`` (ran to its end), ``failed`` (an exception, an assertion or an early exit),
    ``timed_out`` (killed at the wall-clock limit) or ``killed`` (stopped by a resource limit: a signal
    such as SIGXCPU, or a MemoryError at the address-space limit). A write past ``RLIMIT_FSIZE`` raises
    OSError (Python ignores SIGXFSZ), which the program may catch, so it counts as ``failed``.
    """

    status: str
    error: str  # first line of the error, e.g. "NameError: name 'x' is not defined"; "" when passed
    seconds: float  # wall-clock time from start to the end of clean-up
    output: str = ""  # the program's stdout and stderr, the first Limits.output_bytes of them

    @property
    def passed(self) -> bool:
        return self.status == PASSED


# The child's bootstrap, run as ``python -c _BOOTSTRAP verdict_fd program_file``: iterdpo/sandbox_guard.py,
# read as text from beside this file (so this module still imports no other module of the package).
_BOOTSTRAP = (Path(__file__).resolve().parent / "sandbox_guard.py").read_text(encoding="utf-8")

_warned: set[str] = set()


def run_program(code: str, limits: Limits = Limits()) -> Outcome:
    """Run ``code`` (Python source, str) in a fresh sandboxed process; return how it ended.

    Raises RuntimeError only when the sandbox itself cannot be set up (e.g. as root, the interpreter is
    unreadable to the sandbox user and no mount namespace is available); the program's own failures,
    timeouts and kills are outcomes. The child is set up between fork and exec (``preexec_fn``), which
    Python calls unsafe when the evaluator has threads holding locks; the set-up takes no lock of its own.
    """
    root = os.geteuid() == 0
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="iterdpo-sandbox-")
    try:
        with open(os.path.join(workdir, PROGRAM), "w", encoding="utf-8") as f:
            f.write(code)
        covers, reveals = _interpreter_reveal() if root else ([], [])
        stages = []
        if reveals:  # staging mount points, root's own, so the program cannot touch them
            os.mkdir(os.path.join(workdir, ".mounts"), 0o700)
            stages = [os.path.join(workdir, ".mounts", str(i)) for i in range(len(reveals))]
            for s in stages:
                os.mkdir(s, 0o700)
        if root:
            os.chown(workdir, SANDBOX_USER, SANDBOX_USER)
        with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as verdict:
            since = _boot_ticks()
            child = _spawn(workdir, output, verdict, limits, root, covers, reveals, stages)
            timed_out = not _wait_unreaped(child.pid, limits.wall_seconds)
            try:  # the leader is a zombie until reaped, so its group id cannot have been reused yet
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            returncode = child.wait()
            if root:
                _kill_strays(SANDBOX_USER, since)
            notes, last = _read_verdict(verdict)
            output.seek(0)
            text = output.read(limits.output_bytes).decode("utf-8", "replace")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for note in notes:
        if note not in _warned:
            _warned.add(note)
            warnings.warn(f"sandbox: {note}", RuntimeWarning, stacklevel=2)
    status, error = _classify(timed_out, returncode, last, limits)
    return Outcome(status, error, time.monotonic() - start, text)


def _spawn(workdir, output, verdict, limits, root, covers, reveals, stages) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1"}
    libc = _libc()  # loaded before the fork: the child between fork and exec should not load libraries

    def enter():  # runs in the child between fork and exec, as the evaluator's user
        def fail(what):
            err = ctypes.get_errno()
            os.write(verdict.fileno(), f"note\t{what} failed: {os.strerror(err)}\n".encode())
            raise OSError(err, what)

        def mount(source, target, fstype, flags, data=None):
            def c(text):
                return None if text is None else os.fsencode(text)

            if libc.mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(data)) != 0:
                fail(f"mount {source} on {target}")

        os.umask(0o022)  # the folders made on the tmpfs below must be enterable by the sandbox user
        if root:
            if covers:
                if libc.unshare(CLONE_NEWNS) != 0:
                    fail(f"unshare(CLONE_NEWNS), needed because {covers[0]} is closed to uid {SANDBOX_USER},")
                mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
                for path, stage in zip(reveals, stages):
                    mount(path, stage, None, MS_BIND | MS_REC)
                for cover in covers:
                    mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
                for path, stage in zip(reveals, stages):
                    os.makedirs(path, exist_ok=True)
                    mount(stage, path, None, MS_BIND | MS_REC)
                    libc.umount2(os.fsencode(stage), MNT_DETACH)
            if libc.unshare(CLONE_NEWNET | CLONE_NEWIPC) != 0:
                os.write(verdict.fileno(), b"note\tno network namespace as root: only the guard stops sockets\n")
        elif libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC) != 0:
            os.write(verdict.fileno(), b"note\tno user+network namespace: only the guard stops sockets\n")
        for which, value in ((resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)),
                             (resource.RLIMIT_AS, (limits.memory_bytes,) * 2),
                             (resource.RLIMIT_NPROC, (limits.processes,) * 2),
                             (resource.RLIMIT_FSIZE, (limits.file_bytes,) * 2),
                             (resource.RLIMIT_CORE, (0, 0))):
            hard = resource.getrlimit(which)[1]  # not root, a hard limit can only be lowered
            resource.setrlimit(which, value if hard == resource.RLIM_INFINITY else tuple(min(v, hard) for v in value))
        if root:
            os.setgroups([])
            os.setgid(SANDBOX_USER)
            os.setuid(SANDBOX_USER)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # after setuid, which clears it
        os.umask(0o077)

    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-c", _BOOTSTRAP, str(verdict.fileno()), PROGRAM],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=workdir, env=env,
            start_new_session=True, umask=0o077, pass_fds=(verdict.fileno(),), preexec_fn=enter)
    except subprocess.SubprocessError as error:
        notes, _ = _read_verdict(verdict)
        raise RuntimeError(f"sandbox: could not start the child: {'; '.join(notes) or error}") from None


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _wait_unreaped(pid: int, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``pid`` to exit without reaping it; True if it exited in time."""
    deadline, pause = time.monotonic() + seconds, 0.001
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.02)


def _classify(timed_out: bool, returncode: int, verdict: str, limits: Limits) -> tuple[str, str]:
    if timed_out:
        return TIMED_OUT, f"wall-clock limit of {limits.wall_seconds:g} s"
    if returncode < 0:
        name = signal.Signals(-returncode).name
        why = {signal.SIGXCPU: f" (CPU limit of {limits.cpu_seconds} s)",
               signal.SIGXFSZ: f" (file size limit of {limits.file_bytes} bytes)"}.get(-returncode, "")
        return KILLED, name + why
    if verdict == "passed" and returncode == 0:
        return PASSED, ""
    if verdict.startswith("error\t"):
        error = verdict[len("error\t"):]
        # MemoryError means the address-space limit stopped the program: a limit, not a wrong answer.
        return (KILLED if error.split(":")[0] == "MemoryError" else FAILED), error
    return FAILED, f"exited with status {returncode} before the program ended"


def _read_verdict(verdict) -> tuple[list[str], str]:
    """(notes from the child's set-up, the last verdict line) from the child's verdict file."""
    verdict.seek(0)
    lines = verdict.read(64 << 10).decode("utf-8", "replace").splitlines()
    notes = [line.split("\t", 1)[1] for line in lines if line.startswith("note\t")]
    verdicts = [line for line in lines if not line.startswith("note\t")]
    return notes, (verdicts[-1] if verdicts else "")


def _interpreter_reveal() -> tuple[list[str], list[str]]:
    """(covers, reveals): folders the sandbox user cannot enter on the way to the interpreter, to be
    covered by an empty tmpfs, and the interpreter's folders to bind back under them. Empty when the
    interpreter is already reachable (e.g. /usr/bin/python3)."""
    needed = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    covers, reveals = set(), set()
    for path in needed:
        path = os.path.realpath(path)
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            ancestor = "/" + "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                if ancestor == path:
                    raise RuntimeError(f"sandbox: {path} is closed to other users, so uid {SANDBOX_USER} cannot run Python from it")
                covers.add(ancestor)
                reveals.add(path)
                break
    covers = {c for c in covers if not any(c.startswith(o + "/") for o in covers)}
    reveals = {r for r in reveals if not any(r.startswith(o + "/") for o in reveals)}
    return sorted(covers), sorted(reveals)


def _boot_ticks() -> int:
    """Now, in clock ticks since boot: the unit of a process's start time in /proc/<pid>/stat."""
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")) - 1


def sandbox_processes(uid: int = SANDBOX_USER, since: int = 0) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid`` and that started at or after ``since``
    (clock ticks since boot)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                real_uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            with open(f"/proc/{entry}/stat") as f:
                after_name = f.read().rsplit(")", 1)[1].split()
        except (OSError, StopIteration, IndexError):
            continue  # it ended while we looked
        state, started = after_name[0], int(after_name[19])
        if real_uid == uid and state not in "ZX" and started >= since:
            found.append(int(entry))
    return found


def _kill_strays(uid: int, since: int) -> None:
    """Kill the sandbox user's processes from this run that left the process group (setsid)."""
    for _ in range(200):  # each pass kills what the last one missed, e.g. a fork in between
        pids = sandbox_processes(uid, since)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
    warnings.warn(f"sandbox: processes of uid {uid} still alive after the run: {sandbox_processes(uid, since)}",
                  RuntimeWarning, stacklevel=3)
