"""A NaN mid-round: nothing non-finite reaches the disk, the stage is not done, the controller rolls back
with a lower learning rate, and the run goes on. Also: a kill -9 mid-round, then --resume (slow)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from iterdpo.__main__ import main
from iterdpo.guard import FAULT_ENV
from iterdpo.runfolder import RunFolder

from conftest import QUICK, ROOT

pytestmark = pytest.mark.integration


def test_nan_mid_round_rolls_back_and_the_run_finishes(tiny_run, monkeypatch, capsys):
    monkeypatch.setenv(FAULT_ENV, "nan@dpo_round_1:5")  # one LoRA weight set to NaN before step 5 of round 1
    cfg, s = tiny_run("nan", rounds=2, baseline__offline_dpo=False)
    rf = RunFolder(cfg.out)
    d1 = rf.decisions()[1]
    assert d1["decision"] == "rollback" and d1["failed"] and d1["next_start_round"] == 0
    assert [t["name"] for t in d1["triggers"]] == ["non_finite"] and "step 5" in d1["error"]
    before, after = d1["changes"]["learning_rate"]
    assert after == pytest.approx(before * cfg.controller.non_finite_lr_mult)
    assert not rf.dpo(1).exists() and not list(rf.root.glob("**/*.tmp-*"))  # the stage is not done, nothing half-written
    for f in rf.root.glob("**/*.safetensors"):  # no non-finite weight anywhere on disk
        assert all(t.isfinite().all() for t in load_file(str(f)).values()), f
    r2 = s["rounds"][2]
    assert s["rounds"][1]["failed"] and r2["start_round"] == 0
    assert r2["params"]["learning_rate"] == pytest.approx(after)  # round 2 trained gentler, from the best round
    assert math.isfinite(r2["metrics"]["oracle_score"])
    monkeypatch.delenv(FAULT_ENV)
    assert main(["run", "--out", cfg.out, "--resume", "--engine", "python"]) == 0  # nothing left to redo
    assert rf.summary()["rounds"] == s["rounds"]


def _cli(out, *extra):
    sets = [a for k, v in {**QUICK, "baseline.offline_dpo": "false"}.items() for a in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "iterdpo", "run", "--engine", "python", "--rounds", "2", "--out", str(out), *sets, *extra]


@pytest.mark.slow
def test_kill_mid_dpo_round_then_resume_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(_cli(tmp_path / "whole"), check=True, env=env, cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(_cli(tmp_path / "killed"), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rf = RunFolder(tmp_path / "killed")
    deadline = time.time() + 900
    while not list(rf.root.glob("round_1/dpo.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(2)  # inside the round's training
    assert proc.poll() is None, "the run ended before its first DPO round could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not rf.done(rf.dpo(1))
    subprocess.run(_cli(tmp_path / "killed", "--resume"), check=True, env=env, cwd=ROOT, capture_output=True)
    strip = lambda s: json.loads(json.dumps(s).replace('"wall_seconds"', '"_"'))  # noqa: E731
    whole, resumed = (RunFolder(tmp_path / n).summary() for n in ("whole", "killed"))
    for a, b in zip(whole["rounds"], resumed["rounds"]):
        a["metrics"].pop("wall_seconds"), b["metrics"].pop("wall_seconds")
        assert a == b


def test_fp16_training_keeps_trainable_weights_in_fp32():
    """TRL casts QLoRA adapters to bf16; under fp16 (a T4) the gradient scaler cannot unscale bf16 gradients
    (found by the device check on a GPU). training.fp16_safe_adapters puts them back in fp32 under fp16 only."""
    from types import SimpleNamespace

    import torch

    from iterdpo.training import fp16_safe_adapters

    def trainer(fp16):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
        model[0].requires_grad_(False)  # a frozen base layer keeps its dtype
        return SimpleNamespace(args=SimpleNamespace(fp16=fp16), model=model)

    t = trainer(fp16=True)
    assert fp16_safe_adapters(t) == 2
    assert [p.dtype for p in t.model[1].parameters()] == [torch.float32] * 2
    assert t.model[0].weight.dtype == torch.bfloat16
    t = trainer(fp16=False)  # bf16 or fp32 training: the trainer's choice stands
    assert fp16_safe_adapters(t) == 0 and t.model[1].weight.dtype == torch.bfloat16
