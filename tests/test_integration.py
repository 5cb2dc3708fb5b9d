"""Two rounds of the whole loop on the tiny preset, quick settings: weights change, metrics move."""

import json

import pytest
import torch
from safetensors.torch import load_file

from iterdpo import pipeline


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run(rounds=2)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_every_stage_folder_is_complete(run):
    cfg, summary = run
    root = pipeline.run_dir(cfg)
    for stage in ["base", "data", "sft", "reward", "round_0/eval", "round_1/generate", "round_1/dpo", "round_1/eval",
                  "round_2/generate", "round_2/dpo", "round_2/eval", "offline_dpo/dpo", "offline_dpo/eval"]:
        assert (root / stage / "config.json").exists() and (root / stage / "metrics.json").exists(), stage
    assert not list(root.glob("**/*.tmp-*"))
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert json.loads((root / "summary.json").read_text()) == summary
    assert len((root / "decisions.jsonl").read_text().splitlines()) == 2


def test_training_changed_the_weights(run):
    cfg, _ = run
    base = _weights(pipeline.run_dir(cfg) / "base" / "model")
    sft = _weights(pipeline.policy_path(cfg, 0))
    r1 = _weights(pipeline.policy_path(cfg, 1))
    r2 = _weights(pipeline.policy_path(cfg, 2))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[key], sft[key])
    assert not torch.equal(sft[key], r1[key])
    assert not torch.equal(r1[key], r2[key]) or json.loads(
        (pipeline.run_dir(cfg) / "round_2/dpo/metrics.json").read_text())["start_round"] != 1


def test_generation_records_its_precision(run):
    cfg, _ = run
    for rnd in (1, 2):  # the tiny preset pins float32, so its figures do not depend on the CPU's AMX units
        metrics = pipeline.run_dir(cfg) / f"round_{rnd}" / "generate" / "metrics.json"
        assert json.loads(metrics.read_text())["precision"] == "float32"


def test_metrics_moved_the_right_way(run):
    _, s = run
    sft, r1, r2 = (r["metrics"] for r in s["rounds"])
    # 40% of labels are flipped, so even the oracle would score 0.6 on the noisy held-out labels
    assert s["reward_model"]["heldout_accuracy"] > 0.5
    assert s["reward_model"]["oracle_accuracy"] > 0.5
    # the loop's premise: pairs the reward model picks from the policy's samples are labelled better
    # than the seed pairs are
    assert r1["synthetic_pair_oracle_agreement"] > s["data"]["seed_label_oracle_agreement"]
    for m in (r1, r2):
        assert m["mean_reward"] > sft["mean_reward"]  # what DPO on reward-model pairs optimises
        assert m["win_rate_vs_sft"] > 0.5
        assert m["preference_accuracy"] > 0.5  # implicit reward ranks held-out pairs
        assert m["pair_success_rate"] > 0.5
    assert max(r1["oracle_score"], r2["oracle_score"]) > sft["oracle_score"]  # the ground truth improved


def test_summary_schema(run):
    _, s = run
    assert {"preset", "seed", "rounds", "best_round", "baselines"} <= set(s)
    keys = {"preference_accuracy", "reward_margin", "mean_reward", "win_rate_vs_sft", "pair_success_rate",
            "wall_seconds", "oracle_score", "oracle_win_rate_vs_sft", "win_rate_vs_offline_dpo",
            "synthetic_pair_oracle_agreement", "kl_to_reference", "perplexity", "capability_retention"}
    assert keys <= set(s["rounds"][2]["metrics"])
    assert "oracle_score" in s["baselines"]["offline_dpo"]


def test_resume_skips_finished_stages(run):
    cfg, summary = run
    before = {p: p.stat().st_mtime for p in pipeline.run_dir(cfg).glob("**/metrics.json")}
    again = pipeline.run_all(cfg)
    after = {p: p.stat().st_mtime for p in pipeline.run_dir(cfg).glob("**/metrics.json")}
    assert before == after and again["rounds"] == summary["rounds"]
