"""The stage graph is the one rule: the pipeline, the notebook runner and the notebooks' readiness checks agree
on which round may run, because they all ask iterdpo.stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from iterdpo import notebook, stages
from iterdpo.config import load_preset
from iterdpo.folder import append_jsonl, write_json
from iterdpo.runfolder import RunFolder


def _decide(rf: RunFolder, rnd: int, decision: str = "continue", stop: bool = False, reason: str | None = None) -> None:
    d = {"round": rnd, "decision": decision, "stop": stop, "best_round": rnd, "next_start_round": rnd}
    if reason is not None or stop:
        d["stop_reason"] = reason
    append_jsonl(rf.decisions_path, d)


def _reward_done(rf: RunFolder) -> None:
    for d in (rf.stage("sft"), rf.stage("reward"), rf.eval(0)):
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "metrics.json", {})


def _agree(rf: RunFolder, cfg) -> None:
    """Every way of asking gives the same answer for rounds 1 to 8."""
    nxt = stages.next_round(rf, cfg)
    for r in range(1, 9):
        allowed = notebook.round_problem(cfg, r) is None
        expected = r == nxt or r in rf.decisions()
        assert allowed == expected, (r, nxt, notebook.round_problem(cfg, r))
        ready = notebook.missing(cfg, "03_synthetic_preferences", r) is None
        assert ready == expected, (r, notebook.missing(cfg, "03_synthetic_preferences", r))


def test_a_stop_on_the_time_budget_stops_the_notebooks_too(tmp_path: Path) -> None:
    """The drift the architecture issue found: after a stop_budget decision on the time budget the command line
    stopped, while the notebooks' check accepted the next round (it looked only at the decision's name)."""
    cfg = load_preset("tiny", {"out": str(tmp_path), "rounds": "auto"})
    rf = RunFolder(tmp_path)
    _reward_done(rf)
    _decide(rf, 1)
    _decide(rf, 2, "stop_budget", stop=True, reason="time_budget")
    assert stages.next_round(rf, cfg) is None
    why = notebook.round_problem(cfg, 3)
    assert why is not None and "time_budget" in why and "\n" not in why
    _agree(rf, cfg)


@pytest.mark.parametrize("history", [
    [], [(1, "continue", False, None)],
    [(1, "continue", False, None), (2, "stop_budget", True, "round_budget")],  # a larger budget goes on
    [(1, "stop_converged", True, "converged")],
    [(1, "rollback", True, "non_finite")],
    [(1, "stop_budget", True, None)],  # written before stop_reason existed: read as the round budget
])
@pytest.mark.parametrize("rounds", [2, 3, "auto"])
def test_the_pipeline_and_the_notebooks_agree_on_the_next_round(tmp_path: Path, history, rounds) -> None:
    cfg = load_preset("tiny", {"out": str(tmp_path), "rounds": rounds})
    rf = RunFolder(tmp_path)
    _reward_done(rf)
    for rnd, decision, stop, reason in history:
        _decide(rf, rnd, decision, stop, reason)
    _agree(rf, cfg)


def test_the_runner_walks_the_same_graph(tmp_path: Path) -> None:
    cfg = load_preset("tiny", {"out": str(tmp_path), "rounds": 1})
    rf = RunFolder(tmp_path)
    walk, step = [], stages.first()
    while step is not None:
        walk.append(step)
        if step.notebook == "04_dpo_round" and step.arm == stages.ITERATIVE:
            _decide(rf, step.round, "stop_budget", True, "round_budget")
        step = stages.following(cfg, rf, step)
    assert [(s.notebook, s.round, s.arm) for s in walk] == [
        ("01_sft", None, "iterative"), ("02_reward_model", None, "iterative"),
        ("03_synthetic_preferences", 1, "iterative"), ("04_dpo_round", 1, "iterative"),
        ("04_dpo_round", None, "offline_dpo"), ("05_compare_iterations", None, "iterative")]
    assert [n for n in stages.NOTEBOOKS] == ["01_sft", "02_reward_model", "03_synthetic_preferences", "04_dpo_round",
                                              "05_compare_iterations"]
