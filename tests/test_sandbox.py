"""The sandbox and HumanEval: canonical solutions pass, wrong ones fail, hostile programs stay contained.

Every hostile program ends by checking that its attack worked, so "failed" means it saw itself
contained; the test then checks from outside (the decoy, the listener, the run folder) and runs a
normal program to show the evaluation goes on. "Past the guard" programs re-import ctypes (the guard
only refuses the import) and call libc, to test the layers under the guard; they run only as root,
where those layers exist (not root, they would really delete the decoy).
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from iterdpo import sandbox
from iterdpo.humaneval import DEFAULT_PATH, Problem, check, check_all, load_problems, program
from iterdpo.sandbox import SANDBOX_USER, Limits, run_program, sandbox_processes

ROOT_USER = os.geteuid() == 0
QUICK = Limits(wall_seconds=3, cpu_seconds=3)
NORMAL = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
PAST_GUARD = textwrap.dedent("""\
    import sys
    for name in ("ctypes", "_ctypes"):
        sys.modules.pop(name, None)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    """)
needs_root = pytest.mark.skipif(not ROOT_USER, reason="past the guard only the root layers (namespaces, uid drop) contain this")


def _humaneval() -> list[Problem]:
    if not DEFAULT_PATH.exists():
        pytest.skip(f"HumanEval not found at {DEFAULT_PATH} (the shared data folder is not beside the repository)")
    return load_problems(DEFAULT_PATH)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def _contained(outcome, limits=QUICK):
    """The hostile program ended inside its limits, and a normal program still passes after it."""
    assert outcome.status in ("failed", "timed_out", "killed"), outcome
    assert outcome.seconds < limits.wall_seconds + 2, outcome
    assert run_program(NORMAL, QUICK).status == "passed"


# the record and the outcomes of ordinary programs -----------------------------------------------
def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="Limits.wall_seconds = 0"):
        Limits(wall_seconds=0)


@pytest.mark.parametrize("code, status, error", [
    (NORMAL, "passed", ""),
    ("assert sorted([2, 1]) == [2, 1]\n", "failed", "AssertionError"),
    ("print(x)\n", "failed", "NameError: name 'x' is not defined"),
    ("def f(:\n    pass\n", "failed", "SyntaxError: invalid syntax (program.py, line 1)"),
    ("raise ValueError('first line\\nsecond line')\n", "failed", "ValueError: first line"),
    ("import sys\nsys.exit(0)\n", "failed", "SystemExit: 0"),  # an exit is not a pass, as upstream
    ("import os\nos._exit(0)\n", "failed", "exited with status 0 before the program ended"),
    ("exit()\n", "failed", "NameError: name 'exit' is not defined"),  # -S: no site module, no exit()
])
def test_outcome_of_ordinary_programs(code, status, error):
    outcome = run_program(code, QUICK)
    assert (outcome.status, outcome.error) == (status, error)


def test_output_is_captured_and_bounded():
    outcome = run_program("print('x' * 100_000)\nprint('done')\n", Limits(output_bytes=1000))
    assert outcome.status == "passed" and outcome.output == "x" * 1000


def test_child_runs_in_a_private_folder_that_is_removed_even_on_timeout():
    code = "import os\nprint(os.getcwd(), os.getuid(), flush=True)\nwhile True:\n    pass\n"
    outcome = run_program(code, Limits(wall_seconds=1.5))
    folder, uid = outcome.output.split()
    assert outcome.status == "timed_out" and outcome.error == "wall-clock limit of 1.5 s"
    assert 1.5 <= outcome.seconds < 3.5
    assert Path(folder).name.startswith("iterdpo-sandbox-") and not Path(folder).exists()
    if ROOT_USER:
        assert int(uid) == SANDBOX_USER


def test_file_size_limit_stops_a_large_write():
    outcome = run_program("open('big', 'wb').write(b'x' * (2 << 20))\n", Limits(file_bytes=1 << 20))
    assert (outcome.status, outcome.error) == ("failed", "OSError: [Errno 27] File too large")


def test_cpu_limit_kills():
    outcome = run_program("while True:\n    pass\n", Limits(wall_seconds=20, cpu_seconds=1))
    assert (outcome.status, outcome.error) == ("killed", "SIGXCPU (CPU limit of 1 s)")
    assert outcome.seconds < 10


# hostile programs ---------------------------------------------------------------------------------
def test_infinite_loop_times_out():
    _contained(run_program("while True:\n    pass\n", QUICK))


def test_huge_allocation_is_killed():
    outcome = run_program("data = bytearray(10**10)\n", QUICK)
    assert (outcome.status, outcome.error) == ("killed", "MemoryError")
    _contained(outcome)


def test_fork_bomb_through_os_is_refused():
    outcome = run_program("import os\nwhile True:\n    os.fork()\n", QUICK)
    assert outcome.error == "PermissionError: sandbox: os.fork is disabled"
    _contained(outcome)


def test_process_limit_holds_past_the_guard():
    code = PAST_GUARD + textwrap.dedent("""\
        forked = 0
        while True:
            pid = libc.fork()
            if pid == 0:
                libc.pause()
            if pid < 0:
                break
            forked += 1
        print(forked)
        """)
    before = set(sandbox_processes())
    outcome = run_program(code, QUICK)
    assert outcome.status == "passed" and int(outcome.output) < QUICK.processes
    assert set(sandbox_processes()) <= before  # the paused children went with the process group


@needs_root
def test_fork_bomb_that_leaves_the_session_is_killed():
    # every child forks on and leaves the process group with setsid, so only the uid sweep finds them
    code = PAST_GUARD + "while True:\n    if libc.fork() == 0:\n        libc.setsid()\n"
    before = set(sandbox_processes())
    outcome = run_program(code, QUICK)
    assert set(sandbox_processes()) <= before
    _contained(outcome)


def _decoy(tmp_path) -> Path:
    decoy = tmp_path / "decoy"
    (decoy / "inner").mkdir(parents=True)
    (decoy / "keep.txt").write_text("keep me")
    (decoy / "inner" / "also.txt").write_text("and me")
    return decoy


DELETIONS = {
    "shutil.rmtree": "import shutil\nshutil.rmtree({decoy!r})\n",
    "os.system": "import os\nos.system('rm -rf {decoy}')\n",
    "os.remove": "import os\nos.remove({decoy!r} + '/keep.txt')\n",
    "pathlib.unlink": "import pathlib\npathlib.Path({decoy!r}, 'keep.txt').unlink()\n",
}


@pytest.mark.parametrize("how", sorted(DELETIONS))
def test_deletion_outside_the_sandbox_is_contained(tmp_path, how):
    decoy = _decoy(tmp_path)
    before = _snapshot(decoy)
    code = DELETIONS[how].format(decoy=str(decoy)) + f"assert 'keep.txt' not in __import__('os').listdir({str(decoy)!r})\n"
    _contained(run_program(code, QUICK))
    assert _snapshot(decoy) == before


@needs_root
def test_deletion_past_the_guard_is_contained(tmp_path):
    decoy = _decoy(tmp_path)
    before = _snapshot(decoy)
    code = PAST_GUARD + f"assert libc.system(b'rm -rf {decoy}') == 0\n"
    _contained(run_program(code, QUICK))
    assert _snapshot(decoy) == before


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.3)
    yield server
    server.close()


def _connect_past_the_guard(port: int) -> str:
    return PAST_GUARD + textwrap.dedent(f"""\
        import struct
        fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM
        address = struct.pack("<H", 2) + struct.pack(">H", {port}) + bytes([127, 0, 0, 1]) + bytes(8)
        assert libc.connect(fd, address, 16) == 0, ctypes.get_errno()
        """)


@pytest.mark.parametrize("past_guard", [False, pytest.param(True, marks=needs_root)])
def test_socket_to_a_local_listener_is_contained(listener, past_guard):
    port = listener.getsockname()[1]
    code = (_connect_past_the_guard(port) if past_guard else
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
    outcome = run_program(code, QUICK)
    if past_guard:  # ENETUNREACH: the namespace's loopback is down
        assert outcome.error == "AssertionError: 101"
    _contained(outcome)
    with pytest.raises(TimeoutError):
        listener.accept()


def test_environment_token_does_not_reach_the_child(monkeypatch):
    secret = "secret-" + os.urandom(8).hex()
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("GITHUB_TOKEN", secret)
    code = ("import os\nprint(dict(os.environ))\nprint(os.environ.get('HF_TOKEN'))\n"
            "assert any(value.startswith('secret-') for value in os.environ.values())\n")
    outcome = run_program(code, QUICK)
    assert outcome.error == "AssertionError" and "TOKEN" not in outcome.output and secret not in outcome.output
    _contained(outcome)


@needs_root
def test_parent_environment_is_unreadable_through_proc():
    # the evaluator gets the token at exec, as a real run would, so /proc/<evaluator>/environ holds it
    secret = "secret-" + os.urandom(8).hex()
    code = ("import os\ntext = open(f'/proc/{os.getppid()}/environ', 'rb').read()\nprint(text)\n"
            "assert b'secret-' in text\n")
    driver = f"from iterdpo.sandbox import run_program\no = run_program({code!r})\nprint(o.status, o.error, o.output)\n"
    result = subprocess.run([sys.executable, "-c", driver], env={**os.environ, "HF_TOKEN": secret},
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("failed PermissionError") and secret not in result.stdout


@pytest.mark.parametrize("how", ["open", "pathlib", "os.open", "past_guard"])
def test_writing_into_a_run_folder_is_contained(tmp_path, how):
    if how == "past_guard" and not ROOT_USER:
        pytest.skip("past the guard only the root layers (uid drop) contain this")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"win_rate": 0.5}')
    before = _snapshot(run)
    target = str(run / "metrics.json")
    code = {
        "open": f"open({target!r}, 'w').write('{{}}')\n",
        "pathlib": f"import pathlib\npathlib.Path({str(run)!r}, 'new.json').write_text('{{}}')\n",
        "os.open": f"import os\nos.write(os.open({target!r}, os.O_WRONLY | os.O_TRUNC), b'x')\n",
        "past_guard": PAST_GUARD + f"assert libc.fopen({target.encode()!r}, b'w')\n",
    }[how]
    _contained(run_program(code, QUICK))
    assert _snapshot(run) == before


def test_writing_inside_the_private_folder_works():
    code = "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n"
    assert run_program(code, QUICK).status == "passed"


def _runs_as(python: str, user: int) -> bool:
    try:
        check = [python, "-c", "import sys; assert sys.version_info >= (3, 10)"]
        return subprocess.run(check, user=user, group=user, extra_groups=[], capture_output=True).returncode == 0
    except OSError:  # e.g. the interpreter lies under /root, closed to other users
        return False


@needs_root
def test_not_root_the_guard_and_a_user_namespace_still_contain():
    """The fallback as a non-root evaluator: an evaluator process running as uid 65533 runs hostile code."""
    user = 65533
    python = next((p for p in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3") if _runs_as(p, user)), None)
    if python is None:
        pytest.skip(f"no Python >= 3.10 that uid {user} may run")
    driver = textwrap.dedent(f"""\
        import importlib.util, json, os, shutil, socket, sys, tempfile
        spec = importlib.util.spec_from_file_location("sandbox", {str(Path(sandbox.__file__))!r})
        sandbox = sys.modules["sandbox"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sandbox)
        home = tempfile.mkdtemp()
        os.makedirs(home + "/decoy")
        open(home + "/decoy/keep.txt", "w").write("keep me")
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.3)
        port = server.getsockname()[1]
        limits = sandbox.Limits(wall_seconds=1.5)
        hostile = [
            f"import shutil\\nshutil.rmtree({{home + '/decoy'!r}})\\n",
            f"import os\\nos.system('rm -rf {{home}}/decoy')\\n",
            f"open({{home + '/decoy/keep.txt'!r}}, 'w').write('gone')\\n",
            f"import socket\\nsocket.create_connection(('127.0.0.1', {{port}}), timeout=1)\\n",
            "while True:\\n    pass\\n",
        ]
        outcomes = [sandbox.run_program(code, limits) for code in hostile + ["assert 1 + 1 == 2"]]
        try:
            server.accept()
            accepted = True
        except TimeoutError:
            accepted = False
        decoy = open(home + "/decoy/keep.txt").read()
        shutil.rmtree(home)
        print(json.dumps({{"statuses": [o.status for o in outcomes], "errors": [o.error for o in outcomes],
                          "uid": os.getuid(), "accepted": accepted, "decoy": decoy}}))
        """)
    result = subprocess.run([python, "-I", "-c", driver], user=user, group=user, extra_groups=[], cwd="/",
                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["uid"] == user and report["decoy"] == "keep me" and not report["accepted"], report
    assert report["statuses"] == ["failed"] * 4 + ["timed_out", "passed"], report
    # the guard stopped each attack itself; a user+network namespace, where there is one, lies beneath it
    assert all(e.startswith("PermissionError: sandbox: ") for e in report["errors"][:4]), report


# HumanEval ----------------------------------------------------------------------------------------
def test_load_problems_reads_gzip_and_names_the_bad_line(tmp_path):
    good = {"task_id": "T/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
            "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    path = tmp_path / "problems.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(good) + "\n\n")
    assert load_problems(path) == [Problem(**good)]
    for bad_line, message in [("{not json", "not JSON"), (json.dumps({**good, "test": 3}), "field 'test'"),
                              (json.dumps(good), "task_id 'T/0' repeats line 1"), ("[1]", "expected an object")]:
        plain = tmp_path / "problems.jsonl"
        plain.write_text(json.dumps(good) + "\n" + bad_line + "\n")
        with pytest.raises(ValueError, match=f"^{plain}:2: {message}"):
            load_problems(plain)


def test_check_all_continues_after_failures_timeouts_and_kills():
    def problem(i, body):
        return Problem(f"T/{i}", "def f(x):\n", body, "def check(c):\n    assert c(2) == 4\n", "f")

    bodies = ["    return x * 2\n", "    while True:\n        pass\n", "    return x + 3\n",
              "    return len(bytearray(10**10))\n", "    return x + x\n"]
    problems = [problem(i, b) for i, b in enumerate(bodies)]
    rows = check_all(problems, bodies, Limits(wall_seconds=1.5))
    assert [r["status"] for r in rows] == ["passed", "timed_out", "failed", "killed", "passed"]
    assert [r["task_id"] for r in rows] == [f"T/{i}" for i in range(5)] and rows[2]["error"] == "AssertionError"
    assert program(problems[0], bodies[0]).endswith("\ncheck(f)\n")


def test_canonical_solutions_all_pass():
    problems = _humaneval()
    assert len(problems) == 164
    start = time.monotonic()
    rows = check_all(problems, [p.canonical_solution for p in problems])
    print(f"164 canonical solutions: {time.monotonic() - start:.1f} s")
    assert [r for r in rows if r["status"] != "passed"] == []


# Plausible wrong bodies: an off-by-one, a forgotten case, a sample instead of a population, a tie broken
# the wrong way; each passes the docstring's first example or looks right at a glance.
WRONG = {
    "HumanEval/2": "    return round(number % 1.0, 1)\n",
    "HumanEval/4": "    mean = sum(numbers) / len(numbers)\n    return sum(abs(x - mean) for x in numbers) / (len(numbers) - 1)\n",
    "HumanEval/12": "    if not strings:\n        return None\n    return sorted(strings, key=len)[-1]\n",
    "HumanEval/13": "    return min(a, b) if max(a, b) % min(a, b) == 0 else 1\n",
    "HumanEval/16": "    return len(set(string))\n",
    "HumanEval/23": "    count = 0\n    for _ in range(1, len(string)):\n        count += 1\n    return count\n",
    "HumanEval/28": "    return ' '.join(strings)\n",
    "HumanEval/35": "    m = l[0]\n    for i in range(len(l) - 1):\n        if l[i] > m:\n            m = l[i]\n    return m\n",
    "HumanEval/55": "    a, b = 1, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "HumanEval/60": "    return sum(range(n))\n",
}


def test_wrong_solutions_fail():
    problems = {p.task_id: p for p in _humaneval()}
    for task_id, body in WRONG.items():
        outcome = check(problems[task_id], body, QUICK)
        assert (outcome.status, outcome.error.split(":")[0]) == ("failed", "AssertionError"), (task_id, outcome)
