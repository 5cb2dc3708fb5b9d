import pytest

from iterdpo.pairs import STRATEGIES, make_pairs


def rec(responses, rewards, ended=None, n_tokens=None):
    return {"prompt": "p", "responses": responses, "rewards": rewards, "ended": ended or [True] * len(responses),
            "n_tokens": n_tokens or [len(r.split()) + 1 for r in responses]}


def test_max_min_picks_best_and_worst():
    pairs, dropped = make_pairs([rec(["a", "b", "c"], [0.1, 0.9, -0.5])], "max_min")
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("b", "c") and not dropped
    assert pairs[0]["gap"] == pytest.approx(1.4)


def test_max_random_keeps_best_as_chosen():
    for seed in range(5):
        pairs, _ = make_pairs([rec(["a", "b", "c", "d"], [0.1, 0.9, -0.5, 0.3])], "max_random", seed=seed)
        assert pairs[0]["chosen"] == "b" and pairs[0]["rejected"] in {"a", "c", "d"}


def test_random_orders_by_reward():
    for seed in range(5):
        pairs, _ = make_pairs([rec(["a", "b", "c", "d"], [0.1, 0.9, -0.5, 0.3])], "random", seed=seed)
        rw = dict(zip("abcd", [0.1, 0.9, -0.5, 0.3]))
        assert rw[pairs[0]["chosen"]] > rw[pairs[0]["rejected"]]


def test_length_penalty_changes_the_choice():
    r = rec(["short one", "a very very long answer here"], [1.0, 1.2], n_tokens=[3, 7])
    assert make_pairs([r], "max_min")[0][0]["chosen"] == "a very very long answer here"
    pairs, _ = make_pairs([r], "max_min_length", length_penalty=0.1)
    assert pairs[0]["chosen"] == "short one"  # 1.0 - 0.3 > 1.2 - 0.7


def test_filters_count_every_drop():
    records = [
        rec(["a", "b"], [1.0, 0.0], ended=[True, False]),  # one ended response: missing_eos
        rec(["same", "same "], [1.0, 0.0]),  # identical after stripping
        rec(["a", "b"], [0.50, 0.49]),  # gap 0.01 < 0.05
        rec(["a", " "], [0.0, 1.0]),  # an empty response is never a candidate
        rec(["a", "b"], [1.0, 0.0]),  # kept
    ]
    pairs, dropped = make_pairs(records, "max_min", min_gap=0.05)
    assert len(pairs) == 1
    assert dict(dropped) == {"missing_eos": 1, "identical": 1, "small_gap": 1, "empty": 1}
    assert len(pairs) + sum(dropped.values()) == len(records)


def test_require_eos_off_keeps_unended():
    pairs, dropped = make_pairs([rec(["a", "b"], [1.0, 0.0], ended=[True, False])], require_eos=False)
    assert len(pairs) == 1 and not dropped


def test_unknown_strategy():
    with pytest.raises(ValueError, match="max_min"):
        make_pairs([], "best_of")


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_orders_its_pair_by_reward(strategy):
    records = [rec([f"r{i}{j}" for j in range(5)], [(7 * i + 3 * j) % 5 / 4 for j in range(5)], n_tokens=[3] * 5)
               for i in range(20)]
    pairs, dropped = make_pairs(records, strategy, seed=1)
    assert len(pairs) + sum(dropped.values()) == len(records)
    assert pairs and all(p["reward_chosen"] > p["reward_rejected"] and p["gap"] > 0 for p in pairs)
    if strategy in ("max_min", "max_min_length"):  # equal lengths: the length penalty changes nothing
        assert all(p["reward_chosen"] == 1.0 and p["reward_rejected"] == 0.0 for p in pairs)


def test_synthetic_share_repeats_the_synthetic_pairs_up_to_the_share(tmp_path):
    from iterdpo.config import load_preset
    from iterdpo.dpo import training_pairs

    class Run:  # the two readers training_pairs uses
        def pairs(self, name):
            return [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(100)]

        def synthetic_pairs(self, r):
            return [{"prompt": f"r{r}-{i}", "chosen": "a", "rejected": "b", "source": f"round_{r}"} for i in range(15)]

    plain = training_pairs(load_preset("tiny"), Run(), 2)
    assert len(plain) == 130 and sum(p["source"] == "seed" for p in plain) == 100
    half = training_pairs(load_preset("tiny", {"dpo.synthetic_share": 0.5}), Run(), 2)
    synthetic = [p for p in half if p["source"] != "seed"]
    assert len(half) - len(synthetic) == 100 and len(synthetic) == 30 * 4  # ceil(100 / 30) copies of each
    assert len(synthetic) / len(half) >= 0.5 and len({p["prompt"] for p in synthetic}) == 30


def test_the_conservative_ensemble_score_ranks_disagreement_lower():
    from iterdpo.generate import conservative

    scores = [[1.0, 3.0], [2.0, 2.0], [5.0]]  # [responses][members]: same mean, one contested; one member alone
    assert conservative(scores, 0.0) == [2.0, 2.0, 5.0]
    assert conservative(scores, 1.0) == [1.0, 2.0, 5.0]  # 2 - 1 x std(1, 3)
    assert conservative(scores, 2.0)[0] == 0.0
