"""A run folder nobody can corrupt: damage named in one line, one writer at a time, --fresh only on a run, and
nothing sent over the network unasked."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iterdpo.__main__ import main
from iterdpo.folder import MANIFEST_FILE
from iterdpo.runfolder import RunFolder
from iterdpo.runner import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
QUICKEST = {**TINY_OVERRIDES, "rounds": 1}  # the nbval settings: a whole run in well under a minute


def _one_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err


def _values(summary: dict) -> dict:
    """summary.json without timings and the run folder's own path."""
    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items() if "seconds" not in k and k != "reference"}
        return [walk(v) for v in x] if isinstance(x, list) else x
    return walk(summary)


# --fresh ----------------------------------------------------------------------------------------------------------
def test_fresh_refuses_a_model_folder(tmp_path, capsys):
    """A Hugging Face model folder holds a config.json too: --fresh asks what --resume asks, and deletes nothing."""
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "notes.txt").write_text("mine")
    assert main(["run", "--out", str(model), "--fresh", "--engine", "python"]) == 2
    _one_line(capsys, "not a run folder")
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert (model / "model.safetensors").read_bytes() == b"weights"


# damage -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tiny_run):
    cfg, summary = tiny_run("finished", rounds=1)
    return cfg, summary


def _copy(cfg, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out)
    return out


def _damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: max(len(data) // 2, 1)] if len(data) > 1 else b"")
    else:
        path.write_bytes(b"\x00garbage\xff" * 3)


def _stage_files(out: Path) -> list[Path]:
    run = RunFolder(out)
    return [p for d in run.stage_folders() for p in sorted(d.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE]


def test_every_file_of_every_stage_damaged_is_one_line_naming_it(finished, tmp_path, capsys):
    """The damage matrix: each file of each finished stage, missing, truncated or garbage; a resume never exits 0
    and never shows a traceback, and its one line names the file."""
    cfg, _ = finished
    clean = _copy(cfg, tmp_path / "clean")
    files = [p.relative_to(clean) for p in _stage_files(clean)]
    assert len(files) > 40 and any(f.name == "samples.jsonl" for f in files) and any(f.suffix == ".safetensors" for f in files)
    for i, rel in enumerate(files):
        for how in ("missing", "truncated", "garbage"):
            out = tmp_path / f"case{i}-{how}"
            shutil.copytree(clean, out)
            _damage(out / rel, how)
            assert main(["run", "--resume", "--out", str(out), "--engine", "python"]) == 2, (rel, how)
            _one_line(capsys, str(out / rel))
            shutil.rmtree(out)


def test_deleted_offline_samples_are_named_not_read_as_no_offline_arm(finished, tmp_path, capsys):
    cfg, _ = finished
    out = _copy(cfg, tmp_path)
    (out / "offline_dpo" / "eval" / "samples.jsonl").unlink()
    before = (out / "summary.json").read_text()
    assert main(["run", "--resume", "--out", str(out), "--engine", "python"]) == 2
    _one_line(capsys, "offline_dpo/eval/samples.jsonl", "missing")
    assert (out / "summary.json").read_text() == before
    with pytest.raises(ValueError, match="samples.jsonl: missing from a finished stage"):  # and so does every reader
        RunFolder(out).samples("offline_dpo")


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_run_config_is_one_line(finished, tmp_path, capsys, how):
    cfg, _ = finished
    out = _copy(cfg, tmp_path)
    _damage(out / "config.json", how)
    assert main(["run", "--resume", "--out", str(out), "--engine", "python"]) == 2
    _one_line(capsys, "config.json")


def test_an_interrupted_append_to_decisions_is_decided_again(finished, tmp_path, capsys):
    """What a full disk leaves after an append: a last line cut short. It was never a decision: it is removed,
    said in one line, and the round is decided again, to the same figures."""
    cfg, summary = finished
    out = _copy(cfg, tmp_path)
    lines = (out / "decisions.jsonl").read_bytes()
    (out / "decisions.jsonl").write_bytes(lines[: len(lines) - 40])
    assert main(["run", "--resume", "--out", str(out), "--engine", "python"]) == 0
    assert "removed an unfinished last line" in capsys.readouterr().out
    assert _values(RunFolder(out).summary()) == _values(summary)
    assert RunFolder(out).check() == []


def test_a_garbage_decision_line_is_one_line(finished, tmp_path, capsys):
    cfg, _ = finished
    out = _copy(cfg, tmp_path)
    (out / "decisions.jsonl").write_text("not json\n" + (out / "decisions.jsonl").read_text())
    assert main(["run", "--resume", "--out", str(out), "--engine", "python"]) == 2
    _one_line(capsys, "decisions.jsonl:1", "not valid JSON")


def test_a_full_disk_while_saving_weights_is_one_line(tmp_path, capsys, monkeypatch):
    """safetensors reports a full disk as its own error; the stage says it in one line, naming the stage."""
    from safetensors import SafetensorError

    from iterdpo import pipeline
    from iterdpo.config import load_preset

    def full(tmp):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')

    cfg = load_preset("tiny", {"out": str(tmp_path / "run")})
    with pytest.raises(OSError, match="no space left on the device .* stage sft"):
        pipeline.stage(RunFolder(cfg.out).stage("sft"), {}, False, full)
    assert not (tmp_path / "run" / "sft").exists()


# one writer at a time -----------------------------------------------------------------------------------------------
def _command(out: Path, *extra: str) -> list[str]:
    sets = [f"--set={k}={json.dumps(v)}" for k, v in QUICKEST.items() if k != "rounds"]
    return [sys.executable, "-m", "iterdpo", "run", "--engine", "python", "--rounds", "1", "--out", str(out), *sets,
            *extra]


def test_a_second_process_is_refused_and_the_first_finishes_as_if_alone(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    first = subprocess.Popen(_command(tmp_path / "shared"), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lock = tmp_path / "shared" / ".lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert lock.exists(), "the first run never took the lock"
    time.sleep(3)  # well into its first stages: their temporary folders exist now
    second = subprocess.run(_command(tmp_path / "shared", "--resume"), cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 2
    assert len(second.stderr.strip().splitlines()) == 1 and f"in use by process {first.pid}" in second.stderr
    out, _ = first.communicate(timeout=900)
    assert first.returncode == 0, out[-3000:]
    assert not lock.exists()  # given back at exit
    alone = subprocess.run(_command(tmp_path / "alone"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert alone.returncode == 0, alone.stdout[-3000:]
    assert _values(RunFolder(tmp_path / "shared").summary()) == _values(RunFolder(tmp_path / "alone").summary())


def test_a_stale_lock_is_named_and_taken_over(tmp_path, capsys):
    from iterdpo import lock

    path = tmp_path / ".lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then", "command": "x"}))
    lock.acquire(path)
    assert f"process {dead.pid} is gone" in capsys.readouterr().out
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release(path)
    assert not path.exists()


# nothing sent unasked ---------------------------------------------------------------------------------------------
def test_a_run_opens_no_network_connection(tmp_path, monkeypatch):
    """The tiny preset at CI size with the network blocked at the socket level: no connection is attempted (TRL's
    trainers send hub telemetry at every start unless it is off)."""
    from iterdpo import pipeline
    from iterdpo.config import load_preset

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if len(args) > 1 else args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    cfg = load_preset("tiny", {**QUICKEST, "out": str(tmp_path / "run")})
    pipeline.run_all(cfg)
    time.sleep(1)  # telemetry is sent from a background thread
    assert attempts == []


def test_a_deleted_stage_with_later_stages_is_named_and_a_deleted_last_stage_is_redone(finished, tmp_path, capsys):
    """A stage folder deleted by hand: the stages made after it came from it, so resume refuses in one line; the
    last stage (offline DPO's evaluation) is simply redone, to the same figures."""
    cfg, summary = finished
    out = _copy(cfg, tmp_path / "a")
    shutil.rmtree(out / "sft")
    assert main(["run", "--resume", "--out", str(out), "--engine", "python"]) == 2
    _one_line(capsys, f"{out / 'sft'}: missing, though stages made after it are finished", "--fresh")
    out = _copy(cfg, tmp_path / "b")
    (out / "offline_dpo" / "eval" / "samples.jsonl").write_text("{}\n")
    assert main(["run", "--resume", "--out", str(out), "--engine", "python"]) == 2
    _one_line(capsys, f"delete {out / 'offline_dpo' / 'eval'} to have --resume redo it")
    shutil.rmtree(out / "offline_dpo" / "eval")
    assert main(["run", "--resume", "--out", str(out), "--engine", "python"]) == 0
    assert _values(RunFolder(out).summary()) == _values(summary) and RunFolder(out).check() == []
