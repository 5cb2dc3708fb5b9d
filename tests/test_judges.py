"""Other judges of a run's stored evaluation samples (iterdpo.judges), on hand-made run folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from iterdpo import judges
from iterdpo.config import ToyConfig
from iterdpo.worlds.sentiment import sentiment
from iterdpo.worlds.toy import ToyWorld

PROMPTS = ["p1", "p2", "p3", "p4"]
REPLIES = {  # model folder -> replies to PROMPTS
    "round_0": ["It is fine.", "I hate this awful day.", "ok", "Sure."],
    "round_1": ["It is great, I love it!", "What a wonderful day.", "ok", "Sure, happy to help!"],
    "offline_dpo": ["It is good.", "I hate this awful day.", "nice", "Sure."],
}


def _run(root: Path, oracle=sentiment, replies=REPLIES, prompts=PROMPTS) -> Path:
    for folder, texts in replies.items():
        d = root / folder / "eval"
        d.mkdir(parents=True)
        rows = [{"prompt": p, "response": t, "ended": True, "n_tokens": len(t.split()),
                 **({"oracle": oracle(t)} if oracle else {})} for p, t in zip(prompts, texts)]
        (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "metrics.json").write_text("{}")
    return root


def _row(t, judge, model):
    rows = t[(t["judge"] == judge) & (t["model"] == model)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_a_custom_judge_gives_means_and_win_rates_computed_by_hand(tmp_path):
    run = _run(tmp_path / "run")
    t = judges.table(run, [("words", lambda prompt, text, ended: len(text.split()))])
    assert list(t["model"]) == ["SFT", "round 1", "offline DPO"]
    r1 = _row(t, "words", "round 1")
    # words: SFT 3, 5, 1, 1; round 1 6, 4, 1, 4; offline 3, 5, 1, 1
    assert r1["mean"] == pytest.approx(15 / 4)
    assert r1["win_rate_vs_sft"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert r1["win_rate_vs_offline_dpo"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    off = _row(t, "words", "offline DPO")
    assert off["win_rate_vs_sft"] == pytest.approx(0.5)  # the same lengths everywhere: four ties
    assert off["win_rate_vs_sft_se"] == pytest.approx(0.0)


def test_vader_recomputed_equals_the_stored_oracle_and_sees_the_upbeat_round(tmp_path):
    t = judges.table(_run(tmp_path / "run"), ["oracle", "vader"])
    for model in ("SFT", "round 1", "offline DPO"):
        assert _row(t, "vader", model)["mean"] == pytest.approx(_row(t, "oracle", model)["mean"])
    r1 = _row(t, "vader", "round 1")
    assert r1["mean"] > _row(t, "vader", "SFT")["mean"] + 0.5
    assert r1["win_rate_vs_sft"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)


def test_several_runs_stack(tmp_path):
    runs = [_run(tmp_path / "a"), _run(tmp_path / "b")]
    t = judges.table(runs, ["oracle"])
    assert sorted(set(t["run"])) == sorted(str(r) for r in runs) and len(t) == 6


def test_bad_requests_fail_with_one_line_naming_the_problem(tmp_path, monkeypatch):
    from iterdpo.data import DataError

    with pytest.raises(ValueError, match="unknown judge 'gpt'"):
        judges.table(_run(tmp_path / "a"), ["gpt"])
    with pytest.raises(FileNotFoundError, match="no evaluated models"):
        judges.table(tmp_path / "typo", ["oracle"])
    no_oracle = _run(tmp_path / "b", oracle=None)
    with pytest.raises(DataError, match=r"round_0/eval/samples.jsonl:1: missing key\(s\) \['oracle'\]"):
        judges.table(no_oracle, ["oracle"])
    with pytest.raises(ValueError, match=r"round_0/eval/samples.jsonl:3: judge 'picky' cannot score this sample: division by zero"):
        judges.table(no_oracle, [("picky", lambda prompt, text, ended: 1 / 0 if text == "ok" else 1.0)])
    shifted = _run(tmp_path / "c", replies={"round_0": REPLIES["round_0"]})
    _run(tmp_path / "c2", replies={"round_1": REPLIES["round_1"]}, prompts=PROMPTS[::-1])
    (tmp_path / "c2" / "round_1").rename(shifted / "round_1")
    with pytest.raises(ValueError, match=r"round_1/eval/samples.jsonl:1: prompt differs from .*round_0/eval/samples.jsonl:1"):
        judges.table(shifted, ["oracle"])
    # An optional judge whose package is absent names the pinned install (None in sys.modules fails the import).
    monkeypatch.setitem(sys.modules, "afinn", None)
    with pytest.raises(ImportError, match=r"judge 'afinn' needs `pip install afinn==0.1`"):
        judges.table(_run(tmp_path / "d"), ["afinn"])


def test_a_failed_round_and_a_run_without_offline_dpo(tmp_path):
    """A round folder without an evaluation (its training failed) is left out; without an offline arm there are
    no win rates against it. A single judge name is one judge, not its letters."""
    run = _run(tmp_path / "run", replies={k: REPLIES[k] for k in ("round_0", "round_1")})
    (run / "round_2" / "generate").mkdir(parents=True)
    t = judges.table(run, "oracle")
    assert list(t["model"]) == ["SFT", "round 1"] and set(t["judge"]) == {"oracle"}
    assert "win_rate_vs_offline_dpo" not in t.columns
    assert list(t.columns) == ["run", "judge", "model", "round", "mean", "win_rate_vs_sft", "win_rate_vs_sft_se"]
    empty = judges.table(run, [])  # a run without a world: no judges, an empty table with the same columns
    assert empty.empty and list(empty.columns) == ["run", "judge", "model", "round", "mean"]


def test_a_judge_is_called_like_an_oracle_with_the_prompt_and_whether_the_reply_ended(tmp_path):
    run = _run(tmp_path / "run")
    d = run / "round_1" / "eval" / "samples.jsonl"
    rows = [json.loads(x) for x in d.read_text().splitlines()]
    rows[1]["ended"] = False
    d.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = judges.table(run, [("first prompt", lambda prompt, text, ended: float(prompt == "p1")),
                           ("ended", lambda prompt, text, ended: float(ended))])
    assert set(t[t["judge"] == "first prompt"]["mean"]) == {0.25}
    assert _row(t, "ended", "round 1")["mean"] == pytest.approx(0.75)
    assert _row(t, "ended", "round 1")["win_rate_vs_sft"] == pytest.approx((0.5 + 0 + 0.5 + 0.5) / 4)


def test_the_toy_worlds_exact_and_coverage_readings_by_hand():
    w, p = ToyWorld(ToyConfig()), "user: list 3 fruit\nassistant:"
    cases = {  # reply: (oracle, exact, coverage)
        "apple lemon plum": (1.0, 1.0, 1.0),
        "apple lemon plum um": (1 - 0.15, 0.0, 1.0),
        "apple apple lemon": (2 / 3 - 0.15, 0.0, 2 / 3),
        "apple lemon tiger": (2 / 3 - 0.15, 0.0, 2 / 3),
        "apple lemon": (2 / 3, 0.0, 2 / 3),
    }
    for reply, (oracle, exact, coverage) in cases.items():
        assert (w.oracle(p, reply), w.exact(p, reply), w.coverage(p, reply)) == pytest.approx((oracle, exact, coverage)), reply
    assert (w.oracle(p, "apple lemon plum", False), w.exact(p, "apple lemon plum", False),
            w.coverage(p, "apple lemon plum", False)) == (0.0, 0.0, 0.0)


def test_for_run_asks_each_worlds_own_judges_and_names_missing_packages(monkeypatch, capsys):
    from iterdpo.config import load_preset

    toy = judges.for_run(load_preset("tiny"))
    assert toy[0] == "oracle" and [name for name, _ in toy[1:]] == ["exact", "coverage"]
    assert toy[1][1].__func__ is ToyWorld.exact and toy[2][1].__func__ is ToyWorld.coverage
    assert judges.for_run(load_preset("smollm2-hh")) == []
    assert "has no oracle" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "afinn", None)
    monkeypatch.setitem(sys.modules, "textblob", None)
    assert judges.for_run(load_preset("smollm2-sentiment")) == ["oracle"]
    assert "afinn, textblob not installed, so not asked (pip install afinn==0.1 textblob==0.20.1)" in capsys.readouterr().out


def test_the_afinn_and_textblob_judges_read_sentiment_without_the_length():
    """The real lexicons (requirements-dev.txt): positive above negative, and AFINN's mean valence does not grow
    when a reply repeats itself."""
    for name in ("afinn", "textblob"):
        judge = judges.scorer(name)
        good, bad = judge("p", "What a wonderful, happy day!", True), judge("p", "What an awful, terrible day.", True)
        assert good > 0 > bad, (name, good, bad)
    afinn = judges.scorer("afinn")
    once = afinn("p", "I love it.", True)
    assert afinn("p", "I love it. I love it. I love it.", True) == pytest.approx(once)
