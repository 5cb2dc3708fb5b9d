import json
import random
import statistics

import pytest

from iterdpo.config import ControllerConfig
from iterdpo.controller.gates import best_round, collapse_check, converged, gates, weaknesses
from iterdpo.controller.log import evaluation as eval_metrics
from iterdpo.controller.report import iteration_log
from iterdpo.controller.verdict import decide as verdict_of
from iterdpo.controller.verdict import hard_prompts
from iterdpo.losses import base_perplexity, base_perplexity_ratio_se
from iterdpo.runfolder import RunFolder, StageFiles

CFG = ControllerConfig()


def decide(*args, **kw) -> dict:
    """The decision as its line of decisions.jsonl."""
    return verdict_of(*args, **kw).to_dict()
PARAMS = {"beta": 0.1, "learning_rate": 1e-3, "max_steps": 60}
GOOD = {"win_rate_vs_sft": 0.7, "kl_to_reference": 0.05, "capability_retention": 1.0}


def test_kl_violation_raises_beta_and_cuts_lr():
    hist = {0: {"win_rate_vs_sft": 0.5}, 1: {**GOOD, "kl_to_reference": 0.4}}
    d = decide(hist, 1, PARAMS, CFG, max_rounds=5, elapsed=0)
    assert d["decision"] == "adjust_retry"
    assert [t["name"] for t in d["triggers"]] == ["kl_violation"]
    assert d["changes"]["beta"] == [0.1, 0.1 * 1.5] and d["changes"]["learning_rate"] == [1e-3, 5e-4]
    assert d["next_start_round"] == 0  # the violating round is not eligible as a start


def test_capability_regression_rule_and_targeted_data():
    hist = {0: {"win_rate_vs_sft": 0.5}, 1: {**GOOD, "capability_retention": 0.8}}
    d = decide(hist, 1, PARAMS, CFG, 5, 0)
    assert d["changes"] == {"beta": [0.1, 0.2], "learning_rate": [1e-3, 5e-4], "max_steps": [60, 42]}
    assert d["targeted"]["capability_pairs"] is True


def test_weak_alignment_pushes_only_from_round_two():
    weak = {**GOOD, "win_rate_vs_sft": 0.52}
    gen = [{"prompt": f"p{i}", "rewards": [0.0, i / 10]} for i in range(8)]
    d1 = decide({0: {"win_rate_vs_sft": 0.5}, 1: weak}, 1, PARAMS, CFG, 5, 0, gen)
    assert d1["changes"] == {} and d1["targeted"]["hard_prompts"] == ["p0", "p1"]
    d2 = decide({0: {"win_rate_vs_sft": 0.5}, 1: weak, 2: weak}, 2, PARAMS, CFG, 5, 0, gen)
    assert d2["decision"] == "adjust_continue"
    assert d2["changes"]["learning_rate"][1] == pytest.approx(1.5e-3) and d2["changes"]["beta"][1] == pytest.approx(0.08)


def test_degrading_round_rolls_back_to_best():
    hist = {0: {"win_rate_vs_sft": 0.5}, 1: {**GOOD, "win_rate_vs_sft": 0.75}, 2: {**GOOD, "win_rate_vs_sft": 0.6}}
    d = decide(hist, 2, PARAMS, CFG, 5, 0)
    assert d["decision"] == "rollback" and d["best_round"] == 1 and d["next_start_round"] == 1


def test_rollback_and_best_round_act_only_clear_of_the_noise():
    # Round 2 scores 0.05 below round 1, within 1.645 standard errors of the difference (0.06 each, so about
    # 0.14): not degrading, and the later round is the best. The same drop with tight errors rolls back.
    noisy = {0: {"win_rate_vs_sft": 0.5}, 1: {**GOOD, "win_rate_vs_sft": 0.65, "win_rate_vs_sft_se": 0.06},
             2: {**GOOD, "win_rate_vs_sft": 0.60, "win_rate_vs_sft_se": 0.06}}
    d = decide(noisy, 2, PARAMS, CFG, 5, 0)
    assert not d["degrading"] and d["decision"] == "continue" and d["best_round"] == 2
    tight = {r: {**m, "win_rate_vs_sft_se": 0.005} for r, m in noisy.items()}
    d = decide(tight, 2, PARAMS, CFG, 5, 0)
    assert d["degrading"] and d["decision"] == "rollback" and d["best_round"] == 1
    # gate_z 0 acts on point estimates: the drop of 0.05 exceeds degrade_tol
    assert best_round(noisy, ControllerConfig(gate_z=0.0)) == 1


def test_rounds_within_the_noise_of_each_other_cannot_drift_down():
    # Round 2 is within the noise of round 1 and becomes the best; round 3 is within the noise of round 2 but
    # clearly below round 1 (0.17 > 0.02 + 1.645 * 0.085): it degrades, and the run goes back to round 2.
    se = {"win_rate_vs_sft_se": 0.06}
    hist = {0: {"win_rate_vs_sft": 0.5}, 1: {**GOOD, **se, "win_rate_vs_sft": 0.75},
            2: {**GOOD, **se, "win_rate_vs_sft": 0.68}, 3: {**GOOD, **se, "win_rate_vs_sft": 0.58}}
    d = decide(hist, 3, PARAMS, CFG, 5, 0)
    assert d["degrading"] and d["decision"] == "rollback" and d["best_round"] == d["next_start_round"] == 2


def test_collapse_counts_as_degrading():
    hist = {0: {"win_rate_vs_sft": 0.5}, 1: {**GOOD, "collapsing": True}}
    assert decide(hist, 1, PARAMS, CFG, 5, 0)["decision"] == "rollback"


def test_convergence_and_budget():
    hist = {0: {"win_rate_vs_sft": 0.5}, 1: {**GOOD, "win_rate_vs_sft": 0.70}, 2: {**GOOD, "win_rate_vs_sft": 0.71},
            3: {**GOOD, "win_rate_vs_sft": 0.705}}
    assert converged(hist, CFG)
    d = decide(hist, 3, PARAMS, CFG, 10, 0)
    assert d["decision"] == "final_evaluation" and d["stop"]
    d = decide({0: {"win_rate_vs_sft": 0.5}, 1: GOOD}, 1, PARAMS, CFG, max_rounds=1, elapsed=0)
    assert d["decision"] == "stop_budget" and d["stop"]
    d = decide({0: {"win_rate_vs_sft": 0.5}, 1: GOOD}, 1, PARAMS, CFG, max_rounds=9, elapsed=CFG.max_seconds + 1)
    assert d["stop"]


def test_improving_round_continues():
    d = decide({0: {"win_rate_vs_sft": 0.5}, 1: GOOD}, 1, PARAMS, CFG, 5, 0)
    assert d["decision"] == "continue" and not d["stop"] and d["next_start_round"] == 1 and d["best_round"] == 1


def test_best_round_skips_ineligible():
    hist = {0: {"win_rate_vs_sft": 0.5}, 1: {**GOOD, "win_rate_vs_sft": 0.9, "kl_to_reference": 1.0}, 2: GOOD}
    assert best_round(hist, CFG) == 2
    assert weaknesses({"win_rate_vs_sft": 0.4}, CFG)[0].name == "weak_alignment"


def test_hard_prompts_are_smallest_gaps():
    gen = [{"prompt": "easy", "rewards": [0.0, 5.0]}, {"prompt": "hard", "rewards": [1.0, 1.1]},
           {"prompt": "mid", "rewards": [0.0, 1.0]}, {"prompt": "x", "rewards": [0.0, 2.0]}]
    assert hard_prompts(gen, 0.5) == ["hard", "mid"]


def test_collapse_flag_on_synthetic_log_prob_trace():
    # log pi - log pi_ref per logging step: both sides sink far below the reference
    falling_c = [-0.5, -2.0, -5.0, -7.0, -9.0]
    falling_r = [-1.0, -4.0, -8.0, -11.0, -14.0]
    out = collapse_check(falling_c, falling_r, mean_length=5.0, sft_mean_length=5.0, cfg=CFG)
    assert out["collapsing"] and "both fell" in out["collapse_reasons"][0]
    healthy = collapse_check([0.0, 0.3, 0.5, 0.4], [-1.0, -4.0, -8.0, -11.0], 5.0, 5.0, CFG)
    assert not healthy["collapsing"]  # only the rejected side falls: what DPO should do
    displaced = collapse_check([-1.0, -2.0, -2.5], [-3.0, -6.0, -9.0], 5.0, 5.0, CFG)
    assert not displaced["collapsing"]  # a modest fall of the chosen side is common in DPO, not a collapse
    short = collapse_check([0.0, 0.0], [-1.0, -1.0], mean_length=1.0, sft_mean_length=5.0, cfg=CFG)
    assert short["collapsing"] and "shrank" in short["collapse_reasons"][0]


def test_a_log_prob_fall_needs_the_samples_to_confirm_it():
    # sentiment seed 3's round 2: both sides about 7.5 and 9.2 nats down over 48-token replies, yet the base model
    # read its samples at 1.35x SFT's perplexity, and the oracle scored it above round 1
    c, r = [-6.1, -4.5, -11.9], [-7.7, -6.6, -13.3]
    fluent = collapse_check(c, r, 46.0, 48.0, CFG, perplexity_ratio=1.35)
    assert not fluent["collapsing"] and "not a collapse" in fluent["collapse_warnings"][0]
    assert collapse_check(c, r, 46.0, 48.0, CFG, perplexity_ratio=1.8)["collapsing"]  # confirmed by the samples
    assert collapse_check(c, r, 46.0, 48.0, CFG)["collapsing"]  # not measured: the fall alone decides, as before
    shrunk = collapse_check(c, r, 4.0, 48.0, CFG, perplexity_ratio=1.0)
    assert shrunk["collapsing"] and len(shrunk["collapse_reasons"]) == 2 and not shrunk["collapse_warnings"]


def test_fluency_collapse_is_a_gate_that_knows_its_noise():
    noisy = {**GOOD, "base_perplexity_ratio_vs_sft": 1.67, "base_perplexity_ratio_vs_sft_se": 0.185}  # offline, seed 2
    clear = {**GOOD, "base_perplexity_ratio_vs_sft": 2.4, "base_perplexity_ratio_vs_sft_se": 0.2}
    assert gates(noisy, CFG)["fluency_collapse"]["passes"] and weaknesses(noisy, CFG) == []
    assert [t.name for t in weaknesses(clear, CFG)] == ["fluency_collapse"]
    hist = {0: {"win_rate_vs_sft": 0.5}, 1: {**GOOD, "win_rate_vs_sft": 0.6}, 2: {**clear, "win_rate_vs_sft": 0.9}}
    d = decide(hist, 2, PARAMS, CFG, 5, 0)
    assert d["decision"] == "rollback" and d["best_round"] == d["next_start_round"] == 1


def test_gates_act_only_on_drops_clear_of_the_noise():
    # the seed-1 round: retention 0.919 on 200 probes is within the noise of 0.95; 0.80 is not
    noisy = {**GOOD, "capability_retention": 0.919, "capability_retention_se": 0.045}
    clear = {**GOOD, "capability_retention": 0.80, "capability_retention_se": 0.045}
    assert weaknesses(noisy, CFG) == []
    (t,) = weaknesses(clear, CFG)
    assert t.name == "capability_regression" and t.interval[1] == pytest.approx(0.80 + 1.645 * 0.045)
    assert t.to_dict()["interval"] == list(t.interval) and t.to_dict()["threshold"] == CFG.min_retention
    # without a standard error the gate reads the point estimate, as before
    point = {**GOOD, "capability_retention": 0.94}
    assert [t.name for t in weaknesses(point, CFG)] == ["capability_regression"]
    assert [t.name for t in weaknesses(point, ControllerConfig(gate_z=0.0))] == ["capability_regression"]
    kl = {**GOOD, "kl_to_reference": 0.12, "kl_to_reference_se": 0.02}  # 0.12 - 1.645 * 0.02 < 0.1: not clear
    assert weaknesses(kl, CFG) == [] and gates(kl, CFG)["kl_violation"]["passes"]


def test_labels_no_better_than_seed_is_a_weakness_with_a_tighter_pair_filter_next_round():
    worse = {**GOOD, "label_gain": -0.10, "label_gain_se": 0.03, "label_median_gap": 0.4}
    noisy = {**GOOD, "label_gain": -0.03, "label_gain_se": 0.03, "label_median_gap": 0.4}  # within the noise
    (t,) = weaknesses(worse, CFG)
    assert t.name == "labels_no_better_than_seed" and t.interval[1] == pytest.approx(-0.10 + 1.645 * 0.03)
    assert weaknesses(noisy, CFG) == []
    d = decide({0: GOOD, 1: worse}, 1, PARAMS, CFG, max_rounds=3, elapsed=0.0)
    assert d["triggers"][0]["name"] == "labels_no_better_than_seed" and d["targeted"]["min_reward_gap"] == 0.4
    assert "min_reward_gap" not in decide({0: GOOD, 1: noisy}, 1, PARAMS, CFG, max_rounds=3, elapsed=0.0)["targeted"]
    # without a standard error the point value decides
    assert [t.name for t in weaknesses({**GOOD, "label_gain": -0.01}, CFG)] == ["labels_no_better_than_seed"]


def test_label_estimates_recover_seed_and_ensemble_accuracy_from_held_out_pairs():
    """Three independent labellers (seed labels 70% right, two reward-model halves 85% right each): the
    oracle-free estimates land near the truth that the flipped flags give."""
    import torch

    from iterdpo.reward import label_estimates

    g = torch.Generator().manual_seed(0)
    n = 4000
    flipped = torch.rand(n, generator=g) < 0.3
    truth = torch.where(flipped, -1.0, 1.0)  # +1: the seed label's chosen is really better
    members = []
    for _ in range(4):
        right = torch.rand(n, generator=g) < 0.85
        gap = torch.where(right, truth, -truth) * (0.5 + torch.rand(n, generator=g))
        members.append(torch.cat([gap, torch.zeros(n)]))  # rewards of the chosen, then of the rejected sides
    heldout = [{"flipped": bool(f)} for f in flipped]
    est = label_estimates(members, heldout, min_agreement=0.0)
    assert est["seed_label_accuracy_oracle"] == pytest.approx(0.7, abs=0.02)
    assert est["seed_label_accuracy_est"] == pytest.approx(est["seed_label_accuracy_oracle"], abs=0.03)
    assert est["ensemble_label_accuracy_est"] == pytest.approx(est["ensemble_label_accuracy_oracle"], abs=0.04)
    gain = est["ensemble_label_accuracy_oracle"] - est["seed_label_accuracy_oracle"]
    assert 0 < est["label_gain_est_se"] < 0.05 and est["label_gain_est_defined_share"] == 1.0
    assert abs(est["ensemble_label_accuracy_est"] - est["seed_label_accuracy_est"] - gain) < 3 * est["label_gain_est_se"]
    strict = label_estimates(members, heldout, min_agreement=1.0)
    assert strict["label_estimate_pairs"] < n and strict["ensemble_label_accuracy_oracle"] > est["ensemble_label_accuracy_oracle"]
    # two halves that contradict each other identify nothing: no estimate, not a made-up one
    split = label_estimates([members[0], -members[0]], heldout, 0.0)
    assert split["seed_label_accuracy_est"] is None and split["ensemble_label_accuracy_est"] is None


def _fluency_draw(rng, n, shared=0.0):
    """n prompts' paired samples (the policy's, SFT's), log-prob per token about -2.3 and -2.2; `shared` is the sd
    of a per-prompt effect both policies' samples share (a hard prompt is hard for both)."""
    pol, sft = [], []
    for _ in range(n):
        effect = rng.gauss(0.0, shared)
        for out, mu in ((pol, 2.3), (sft, 2.2)):
            t = rng.randint(10, 48)
            out.append({"base_logp": -t * (rng.gauss(mu, 0.3) + effect), "base_tokens": t})
    return pol, sft


@pytest.mark.parametrize("shared", [0.0, 0.6])
def test_the_fluency_gate_standard_error_matches_the_spread_over_fresh_draws(shared):
    # with a shared per-prompt effect, only a bootstrap that keeps the pairs gets the (smaller) spread right
    rng = random.Random(0)
    same, _ = _fluency_draw(rng, 48)
    assert base_perplexity_ratio_se(same, same) == 0.0
    ratios, ses = [], []
    for _ in range(200):
        pol, sft = _fluency_draw(rng, 48, shared)
        ratios.append(base_perplexity(pol) / base_perplexity(sft))
        if len(ses) < 20:
            ses.append(base_perplexity_ratio_se(pol, sft))
    spread = statistics.stdev(ratios)
    assert 0.75 * spread < statistics.mean(ses) < 1.33 * spread, (statistics.mean(ses), spread)


def test_an_old_run_folder_gets_the_fluency_standard_error_from_its_samples(tmp_path):
    run = RunFolder(tmp_path)
    pol, sft = _fluency_draw(random.Random(1), 48)
    for rnd, samples, m in ((0, sft, {"base_perplexity_ratio_vs_sft": 1.0}),
                            (1, pol, {"base_perplexity_ratio_vs_sft": base_perplexity(pol) / base_perplexity(sft)})):
        files = StageFiles(run.eval(rnd))
        files.folder.mkdir(parents=True)
        files.metrics.write_text(json.dumps(m))
        files.samples.write_text("".join(json.dumps(x) + "\n" for x in samples))
    m = eval_metrics(run, 1)
    assert m["base_perplexity_ratio_vs_sft_se"] == pytest.approx(base_perplexity_ratio_se(pol, sft))
    assert 0.0 < m["base_perplexity_ratio_vs_sft_se"] < 0.2


def test_the_iteration_log_prints_a_collapse_warning():
    d = {"round": 2, "triggers": [], "changes": {}, "decision": "continue", "best_round": 2, "next_start_round": 2,
         "stop": False, "collapse_warnings": ["log-probs fell; not a collapse: fluent"]}
    log = iteration_log(d, {"win_rate_vs_sft": 0.9}, {"beta": 0.1})
    assert "status:   no weaknesses; warning: log-probs fell; not a collapse: fluent" in log


def test_movement_notes_a_lead_bought_by_moving_much_further_than_offline_dpo():
    from iterdpo.controller.report import movement

    ratio = ControllerConfig().movement_note_ratio
    lead, behind = {"oracle_score": 0.49}, {"oracle_score": 0.36}
    far = movement({"kl_to_sft": 0.30, **lead}, {"kl_to_sft": 0.06, **behind}, ratio)
    assert far["kl_to_sft_ratio"] == pytest.approx(5.0)
    assert "5.0x as far" in far["note"] and "oracle_score 0.490 against 0.360" in far["note"] and "dpo.beta" in far["note"]
    near = movement({"kl_to_sft": 0.06 * (ratio - 0.01), **lead}, {"kl_to_sft": 0.06, **behind}, ratio)
    assert near["note"] is None and near["kl_to_sft_ratio"] < ratio
    # no lead, no note: moving further and still scoring less is not a lead to explain
    assert movement({"kl_to_sft": 0.30, **behind}, {"kl_to_sft": 0.06, **lead}, ratio)["note"] is None
    # a run without an oracle compares the win rate against SFT
    wr = movement({"kl_to_sft": 0.3, "win_rate_vs_sft": 0.7}, {"kl_to_sft": 0.1, "win_rate_vs_sft": 0.6}, ratio)
    assert "win_rate_vs_sft 0.700 against 0.600" in wr["note"]
    # offline DPO did not move (a sampled KL can be 0 or below): no ratio, a note only if the answer moved and leads
    still = movement({"kl_to_sft": 0.1, **lead}, {"kl_to_sft": -0.001, **behind}, ratio)
    assert still["kl_to_sft_ratio"] is None and "offline DPO did not" in still["note"] and "inf" not in still["note"]
    assert movement({"kl_to_sft": 0.0, **lead}, {"kl_to_sft": 0.0, **behind}, ratio)["note"] is None
    assert movement({"kl_to_sft": None}, {"kl_to_sft": 0.1}, ratio) is None and movement({}, {"kl_to_sft": 0.1}, ratio) is None
