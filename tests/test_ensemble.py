"""The reward ensemble (reward.ensemble, generation.min_agreement): members trained and saved, samples
scored by their mean, pairs kept only where enough members agree, every drop counted."""

import pytest

from iterdpo import pipeline
from iterdpo.config import load_preset
from iterdpo.pairs import make_pairs
from iterdpo.runfolder import RunFolder

TINY = {"toy.pretrain_docs": 300, "toy.pretrain_steps": 20, "data.train_pairs": 96, "data.heldout_pairs": 32,
        "data.heldout_prompts": 8, "data.gen_prompts": 32, "sft.max_steps": 4, "reward.max_steps": 10,
        "generation.prompts_per_round": 24, "generation.k": 4, "dpo.max_steps": 2, "dpo.batch_size": 4,
        "eval.capability_n": 4, "rounds": 1, "baseline.offline_dpo": False,
        "reward.ensemble": 3, "generation.min_agreement": 1.0}


def test_agreement_filter_counts_what_it_drops():
    rec = {"prompt": "p", "responses": ["a", "b", "c"], "rewards": [1.0, 0.5, 0.0], "ended": [True] * 3,
           "n_tokens": [1] * 3, "member_rewards": [[1.0, 0.0, 0.2], [0.9, 0.8, -0.1], [1.1, 0.7, 0.3]]}
    pairs, dropped = make_pairs([rec], "max_min", min_agreement=1.0)
    assert pairs[0]["chosen"] == "a" and pairs[0]["rejected"] == "c" and pairs[0]["agreement"] == 1.0
    split = dict(rec, member_rewards=[[1.0, 0.0, 0.2], [0.9, 0.8, 1.0], [1.1, 0.7, 0.3]])  # one member prefers c
    pairs, dropped = make_pairs([split], "max_min", min_agreement=1.0)
    assert not pairs and dict(dropped) == {"ensemble_disagrees": 1}
    pairs, _ = make_pairs([split], "max_min", min_agreement=0.6)
    assert pairs[0]["agreement"] == pytest.approx(2 / 3)


@pytest.mark.integration
def test_ensemble_members_score_and_filter_a_round(tmp_path):
    cfg = load_preset("tiny", {**TINY, "out": str(tmp_path / "run")})
    s = pipeline.run_all(cfg)
    rf = RunFolder(cfg.out)
    assert [p.name for p in rf.reward_models()] == ["model", "1", "2"]
    rm = s["reward_model"]
    assert rm["ensemble_size"] == 3 and 0 <= rm["ensemble_oracle_accuracy"] <= 1
    assert rm["label_estimate_pairs"] <= 32 and 0 <= rm["seed_label_accuracy_oracle"] <= 1
    records = rf.generation_records(1)
    for r in records:
        assert len(r["member_rewards"]) == 3
        for j, mean in enumerate(r["rewards"]):
            assert mean == pytest.approx(sum(m[j] for m in r["member_rewards"]) / 3)
    pairs = rf.synthetic_pairs(1)
    assert all(p["agreement"] == 1.0 for p in pairs)
    gen = rf.metrics(rf.generate(1))
    assert gen["pairs"] + sum(gen["dropped"].values()) == len(records)  # every prompt paired or counted
    d = rf.decisions()[1]  # the label gate was read (the toy world's oracle measures it) and its verdict recorded
    gain = gen["synthetic_pair_oracle_agreement"] - gen["seed_label_oracle_agreement"]
    gate = d["gates"]["labels_no_better_than_seed"]
    assert d["labels"]["label_check_source"] == "oracle" and gate["value"] == pytest.approx(gain)
    assert gate["interval"][0] < gain < gate["interval"][1] and gate["threshold"] == cfg.controller.min_label_gain
    fired = [t for t in d["triggers"] if t["name"] == "labels_no_better_than_seed"]
    assert bool(fired) == (not gate["passes"])
    identified = rm["ensemble_label_accuracy_est"] is not None and rm["seed_label_accuracy_est"] is not None
    assert ("label_gain_est" in d["labels"]) == identified  # the estimate is recorded where the data give one
