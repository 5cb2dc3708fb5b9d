"""Models are released between stages: no model object a stage created outlives the stage.

On a 16 GB T4 the policy, the reference and the reward model must not sit in memory together. A
helper cannot delete its caller's references, so this checks the outcome: every model built during a
stage (recorded through a weak reference when it is constructed) is collected once the stage returns.
"""

import gc
import weakref

import pytest
from transformers.modeling_utils import PreTrainedModel

from iterdpo import pipeline
from iterdpo.config import load_preset

TINY = {"toy.pretrain_docs": 300, "toy.pretrain_steps": 5, "data.train_pairs": 64, "data.heldout_pairs": 16,
        "data.heldout_prompts": 8, "data.gen_prompts": 16, "sft.max_steps": 2, "reward.max_steps": 2,
        "generation.prompts_per_round": 8, "generation.k": 2, "dpo.max_steps": 2, "dpo.batch_size": 4,
        "eval.capability_n": 4, "rounds": 1, "baseline.offline_dpo": False}


@pytest.fixture
def tracked(monkeypatch):
    """A list of weak references to every transformers model constructed while the test runs."""
    refs = []
    post_init = PreTrainedModel.post_init

    def record(self, *a, **kw):
        refs.append(weakref.ref(self))
        return post_init(self, *a, **kw)

    monkeypatch.setattr(PreTrainedModel, "post_init", record)
    return refs


def _alive(refs) -> int:
    gc.collect()
    return sum(r() is not None for r in refs)


def test_every_stage_releases_its_models(tracked, tmp_path):
    cfg = load_preset("tiny", {**TINY, "out": str(tmp_path / "run")})
    steps = [("prepare", lambda: pipeline.prepare(cfg)), ("sft", lambda: pipeline.run_sft(cfg)),
             ("reward + SFT evaluation", lambda: pipeline.run_reward(cfg)),
             ("generation", lambda: pipeline.run_generation(cfg, 1)), ("dpo + evaluation", lambda: pipeline.run_dpo_round(cfg, 1))]
    for name, step in steps:
        before = len(tracked)
        step()
        assert len(tracked) > before, f"{name} built no model: the check would prove nothing"
        assert _alive(tracked) == 0, f"{name} left {_alive(tracked)} model(s) alive"
