"""The sandbox's child bootstrap: read the program, install the guard, run the program, write the verdict.

``iterdpo.sandbox`` reads this file's text and runs it in the child as ``python -I -S -B -c <text>
verdict_fd program_file`` (as ``-c`` text, not as a file path: the sandbox user may be unable to read the
package's folder, and a private mount namespace may cover it). Importing this module does nothing; only
running it as ``__main__`` installs the guard. Standard library only, and no other iterdpo module.

The guard, in the spirit of human-eval's ``reliability_guard``: ``os``/``posix`` process, signal, delete,
rename, chmod/chown, chdir and exec functions, ``shutil.rmtree``/``move``, ``subprocess`` and socket creation
raise PermissionError; ``open``/``os.open``/``os.mkdir`` refuse to write outside the working folder; the
``ctypes``, ``resource``, ``multiprocessing`` and ``pty`` imports (and a few more) are refused. It is the
floor, not the ceiling: code that means to can undo it from inside the same interpreter.

The verdict, one line on ``verdict_fd``: ``passed``, or ``error<TAB>ExceptionName: first line of its message``.
``os._exit`` ends the child, so the program's atexit hooks never run.
"""

import builtins
import faulthandler
import io
import os
import posix
import shutil
import socket
import subprocess
import sys
import traceback

import _socket

PROCESS = ("system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "setpgid", "setpgrp",
           "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid",
           "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv",
           "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn",
           "posix_spawnp", "putenv", "unsetenv", "chdir", "fchdir", "chroot")
FILES = ("remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate",
         "ftruncate", "link", "symlink", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown",
         "chflags", "lchflags", "mkfifo", "mknod")
REFUSED_IMPORTS = ("ctypes", "_ctypes", "resource", "multiprocessing", "_multiprocessing", "pty", "psutil",
                   "_posixsubprocess", "ipdb", "joblib", "tkinter")
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def refuse(name):
    def refused(*args, **kwargs):
        raise PermissionError(f"sandbox: {name} is disabled")
    return refused


def disable_functions():
    """Process, signal, file-changing and socket functions raise PermissionError; some imports are refused."""
    for module, names in ((os, PROCESS + FILES), (posix, PROCESS + FILES),
                          (shutil, ("rmtree", "move", "chown")),
                          (subprocess, ("Popen", "run", "call", "check_call", "check_output", "getoutput",
                                        "getstatusoutput")),
                          (socket, ("socket", "create_connection", "create_server", "socketpair", "fromfd")),
                          (_socket, ("socket", "socketpair"))):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, refuse(f"{module.__name__}.{name}"))
    for name in REFUSED_IMPORTS:
        sys.modules[name] = None


def confine_writes(workdir):
    """open, os.open and os.mkdir refuse to write or create anything outside `workdir`."""
    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True
        real = os.path.realpath(os.fsdecode(os.fspath(path)))
        return dir_fd is None and (real == workdir or real.startswith(workdir + os.sep))

    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir

    def guarded_open(file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+") and not inside(file):
            raise PermissionError(f"sandbox: writing {file!r} outside the working folder")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & WRITES and not inside(path, dir_fd):
            raise PermissionError(f"sandbox: writing {path!r} outside the working folder")
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def guarded_mkdir(path, mode=0o777, *, dir_fd=None):
        if not inside(path, dir_fd):
            raise PermissionError(f"sandbox: creating {path!r} outside the working folder")
        return real_mkdir(path, mode, dir_fd=dir_fd)

    builtins.open = io.open = guarded_open
    os.open = posix.open = guarded_os_open
    os.mkdir = posix.mkdir = guarded_mkdir


def run(source, program):
    """Run the program; its verdict line (without the newline)."""
    try:
        exec(compile(source, program, "exec"), {"__name__": "__main__", "__builtins__": builtins})
        return "passed"
    except BaseException as error:
        try:
            traceback.print_exception(type(error), error, error.__traceback__.tb_next)  # from the program's frame
            message = str(error).strip().splitlines()
        except BaseException:
            message = []
        return "error\t" + type(error).__name__ + (": " + message[0] if message else "")


def main():
    verdict_fd, program, write, leave = int(sys.argv[1]), sys.argv[2], os.write, os._exit
    with open(program, encoding="utf-8") as f:
        source = f.read()
    faulthandler.disable()
    disable_functions()
    confine_writes(os.path.realpath(os.getcwd()))
    verdict = run(source, program)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    write(verdict_fd, (verdict[:500] + "\n").encode("utf-8", "replace"))
    leave(0 if verdict == "passed" else 1)


if __name__ == "__main__":
    main()
