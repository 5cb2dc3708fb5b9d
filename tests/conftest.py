import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-model or long tests (run with -m slow)")
    config.addinivalue_line("markers", "integration: whole-pipeline tests on the tiny preset (minutes; -m 'not integration' skips them)")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (and what the test names, e.g. vLLM); skipped without")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is missing: the real-data tests need ../shared/data beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def toy_tokenizer():
    from iterdpo.config import ToyConfig
    from iterdpo.worlds.toy import ToyWorld, train_tokenizer

    w = ToyWorld(ToyConfig())
    return train_tokenizer(w, [" ".join(w.vocabulary())])


# Quick settings for the tiny preset: the stages before the rounds run once per test session, and
# each scenario copies them into its own run folder.
QUICK = {
    "toy.pretrain_docs": 4000, "toy.pretrain_steps": 500, "data.train_pairs": 1500, "data.heldout_pairs": 150,
    "data.heldout_prompts": 128, "data.gen_prompts": 512, "sft.max_steps": 60, "reward.max_steps": 250,
    "generation.prompts_per_round": 384, "generation.k": 8, "dpo.max_steps": 40, "eval.capability_n": 100,
    "baseline.frontier_betas": [0.25], "baseline.frontier_checkpoints": 1,
}


@pytest.fixture(scope="session")
def tiny_stages(tmp_path_factory):
    """A run folder holding base, data, SFT, reward model and the SFT evaluation, on quick settings."""
    from iterdpo import pipeline
    from iterdpo.config import load_preset

    cfg = load_preset("tiny", {**QUICK, "out": str(tmp_path_factory.mktemp("stages"))})
    pipeline.prepare(cfg)
    pipeline.run_sft(cfg)
    pipeline.run_reward(cfg)
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tiny_stages, tmp_path_factory):
    """tiny_run(**overrides) -> (cfg, summary): the rounds and the baseline on top of the shared stages."""
    import shutil

    from iterdpo import pipeline
    from iterdpo.config import load_preset
    from iterdpo.runfolder import RunFolder

    def run(name="run", **overrides):
        out = tmp_path_factory.mktemp(name)
        src = RunFolder(tiny_stages.out)
        for stage in ("base", "data", "sft", "reward", "round_0"):
            shutil.copytree(src.root / stage, out / stage)
        shutil.copy(src.config_path, out / "config.json")
        cfg = load_preset("tiny", {**QUICK, **{k.replace("__", "."): v for k, v in overrides.items()}, "out": str(out)})
        return cfg, pipeline.run_all(cfg)

    return run
