"""The KL-matched verdict (controller.report.kl_matched), the held-out judge's split and gate, and the frontier
stage's checkpoint steps: pure functions on made-up figures."""

from __future__ import annotations

import math

import pytest

from iterdpo.config import ControllerConfig
from iterdpo.controller.gates import eligible, weaknesses
from iterdpo.controller.report import _front, kl_matched
from iterdpo.controller.verdict import adjust
from iterdpo.data import judge_split
from iterdpo.frontier import checkpoint_steps
from iterdpo.metrics import N, se

CURVE = [{"label": "SFT", "kl": 0.0, "score": 0.30, "score_se": 0.01},
         {"label": "a", "kl": 0.05, "score": 0.36, "score_se": 0.01},
         {"label": "b", "kl": 0.10, "score": 0.34, "score_se": 0.01},  # below a: not on the frontier
         {"label": "c", "kl": 0.20, "score": 0.40, "score_se": 0.02}]


def test_the_frontier_keeps_only_points_above_everything_nearer_sft():
    assert [p["label"] for p in _front(CURVE)] == ["SFT", "a", "c"]


def test_the_answer_is_read_against_the_frontier_interpolated_at_its_kl():
    km = kl_matched({"kl": 0.125, "score": 0.45, "score_se": 0.01}, CURVE, 1.645)
    # a (0.05, 0.36) to c (0.20, 0.40): at 0.125 halfway, 0.38; se halfway between 0.01 and 0.02
    assert km["offline_at_kl"] == pytest.approx(0.38)
    assert km["offline_at_kl_se"] == pytest.approx(0.015)
    assert km["lead"] == pytest.approx(0.07)
    assert km["lead_se"] == pytest.approx(math.hypot(0.01, 0.015))
    assert km["verdict"] == "loop_ahead" and km["beyond_offline"] is False
    assert [p["label"] for p in km["frontier"]] == ["SFT", "a", "c"]


@pytest.mark.parametrize("score,verdict", [(0.385, "tie"), (0.30, "offline_ahead"), (0.45, "loop_ahead")])
def test_the_verdict_needs_the_whole_interval_past_zero(score, verdict):
    km = kl_matched({"kl": 0.125, "score": score, "score_se": 0.01}, CURVE, 1.645)
    assert km["verdict"] == verdict


def test_beyond_the_curve_the_answer_meets_its_best_point_and_says_so():
    km = kl_matched({"kl": 0.5, "score": 0.41, "score_se": 0.0}, CURVE, 1.645)
    assert km["beyond_offline"] is True and km["offline_at_kl"] == 0.40 and km["lead"] == pytest.approx(0.01)


def test_between_the_last_frontier_point_and_a_lower_point_further_out_the_best_point_holds():
    curve = CURVE + [{"label": "d", "kl": 0.4, "score": 0.2, "score_se": 0.01}]
    km = kl_matched({"kl": 0.3, "score": 0.40, "score_se": 0.0}, curve, 1.645)
    assert km["beyond_offline"] is False and km["offline_at_kl"] == 0.40 and km["verdict"] == "tie"


def test_an_answer_at_sft_ties_and_a_missing_score_gives_none():
    assert kl_matched({"kl": 0.0, "score": 0.30, "score_se": 0.01}, CURVE, 1.645)["verdict"] == "tie"
    assert kl_matched({"kl": -0.001, "score": 0.30, "score_se": 0.01}, CURVE, 1.645)["offline_at_kl"] == 0.30
    assert kl_matched({"kl": 0.1, "score": None}, CURVE, 1.645) is None
    assert kl_matched({"kl": 0.1, "score": 0.3}, [], 1.645) is None


def test_judge_split_holds_back_its_share_disjointly_and_keeps_order():
    pairs = [{"prompt": str(i)} for i in range(100)]
    ens, judge = judge_split(pairs, 0.2, seed=7)
    assert len(judge) == 20 and len(ens) == 80
    assert sorted(int(p["prompt"]) for p in ens + judge) == list(range(100))
    assert [int(p["prompt"]) for p in ens] == sorted(int(p["prompt"]) for p in ens)
    assert judge_split(pairs, 0.2, seed=7) == (ens, judge)
    assert judge_split(pairs, 0.0, seed=7) == (pairs, [])
    assert judge_split(pairs[:1], 0.5, seed=7) == (pairs[:1], [])  # round(0.5) holds back none of one pair


def _round(judge: float, judge_se: float) -> dict:
    return {N.win_rate_vs_sft: 0.70, se(N.win_rate_vs_sft): 0.02, N.judge_win_rate_vs_sft: judge,
            se(N.judge_win_rate_vs_sft): judge_se}


def test_the_judge_saying_worse_than_sft_is_over_optimisation_and_excludes_the_round():
    c = ControllerConfig()
    caught = _round(0.44, 0.02)  # 0.44 + 1.645 * 0.02 = 0.473 < 0.5
    assert [t.name for t in weaknesses(caught, c)] == ["over_optimisation"]
    assert not eligible(caught, c)
    new, changes = adjust({"beta": 0.1, "learning_rate": 1e-4, "max_steps": 10}, weaknesses(caught, c), 1, c)
    assert new["beta"] == pytest.approx(0.1 * c.kl_beta_mult) and "beta" in changes


def test_a_judge_within_its_noise_of_sft_does_not_trigger():
    c = ControllerConfig()
    assert weaknesses(_round(0.47, 0.03), c) == []  # 0.47 + 0.049 > 0.5
    assert eligible(_round(0.47, 0.03), c)
    assert eligible({N.win_rate_vs_sft: 0.7}, c)  # a run without a judge: the gate is not measured


@pytest.mark.parametrize("steps,n,want", [(120, 3, [40, 80, 120]), (5, 3, [2, 3, 5]), (2, 4, [1, 2]), (60, 1, [60])])
def test_checkpoint_steps_are_evenly_spaced_and_end_at_the_last(steps, n, want):
    assert checkpoint_steps(steps, n) == want


def test_a_judge_at_chance_on_the_held_out_seed_pairs_cannot_veto():
    from iterdpo.losses import informative

    assert informative(0.62, 200, 1.645) and not informative(0.52, 200, 1.645)  # 0.5 + 1.645 * 0.035 = 0.558
    c = ControllerConfig()
    at_chance = {**_round(0.40, 0.01), N.judge_informative: False}
    assert weaknesses(at_chance, c) == [] and eligible(at_chance, c)
    assert [t.name for t in weaknesses({**at_chance, N.judge_informative: True}, c)] == ["over_optimisation"]


def test_a_frontier_point_that_fails_the_capability_gate_gets_the_rounds_repair(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from iterdpo import frontier
    from iterdpo.config import load_preset
    from iterdpo.metrics import Evaluation

    cfg = load_preset("tiny")
    scores = iter([{N.capability_retention: 0.7, se(N.capability_retention): 0.01, N.kl_to_sft: 0.08, N.oracle_score: 0.4},
                   {N.capability_retention: 0.8, se(N.capability_retention): 0.01, N.kl_to_sft: 0.03, N.oracle_score: 0.35},
                   {N.capability_retention: 0.99, se(N.capability_retention): 0.01, N.kl_to_sft: 0.01, N.oracle_score: 0.3}])
    tried = []
    monkeypatch.setattr(frontier.evaluate, "evaluate_policy",
                        lambda *a, **k: (Evaluation.from_dict(next(scores)), [], {}))
    monkeypatch.setattr(frontier, "interpolate", lambda start, end, alpha, dest: tried.append(alpha) or dest.mkdir() or dest)
    pts = frontier._judged(cfg, SimpleNamespace(), tmp_path / "candidate", "sft", 0.05, beta=0.05, step=40)
    assert tried == [0.5, 0.25]  # 0.5 still fails the gate, 0.25 passes
    assert [p["eligible"] for p in pts] == [False, True] and pts[1][N.repair_alpha] == 0.25
    assert pts[0]["failed"] == ["capability_regression"] and pts[1][N.kl_to_sft] == 0.01 and pts[1]["score"] == 0.3
