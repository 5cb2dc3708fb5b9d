"""The controller's behaviour on real tiny-preset runs: KL violation, rollback, convergence."""

import pytest

from iterdpo import pipeline
from iterdpo.runfolder import RunFolder

pytestmark = pytest.mark.integration


def _decisions(cfg):
    return [d for _, d in sorted(RunFolder(cfg.out).decisions().items())]


def test_kl_violation_raises_beta_and_cuts_lr(tiny_run, capsys):
    cfg, summary = tiny_run("kl", rounds=2, dpo__beta=0.01, dpo__learning_rate=3e-3, baseline__offline_dpo=False)
    first = _decisions(cfg)[0]
    assert summary["rounds"][1]["metrics"]["kl_to_reference"] > cfg.controller.max_kl
    assert "kl_violation" in [t["name"] for t in first["triggers"]]
    before, after = first["changes"]["beta"]
    assert after > before
    lr_before, lr_after = first["changes"]["learning_rate"]
    assert lr_after < lr_before
    assert summary["rounds"][2]["params"]["beta"] == after  # round 2 trained with the raised beta
    log = capsys.readouterr().out
    assert "=== Iteration 1 ===" in log and "kl_violation" in log and "beta:" in log


def test_harmful_round_is_rolled_back(tiny_run):
    cfg, summary = tiny_run("rollback", rounds=3, dpo__schedule={2: {"learning_rate": 0.05}}, baseline__offline_dpo=False)
    d = {x["round"]: x for x in _decisions(cfg)}
    assert d[2]["decision"] == "rollback" and d[2]["degrading"]
    assert d[2]["next_start_round"] != 2
    assert summary["rounds"][3]["start_round"] == d[2]["best_round"]  # round 3 restarts from the best round
    assert summary["best_round"] != 2


def test_converging_run_stops_by_itself(tiny_run):
    cfg, summary = tiny_run("converge", rounds="auto", dpo__learning_rate=1e-5, controller__converge_tol=0.05,
                            controller__max_rounds=6, baseline__offline_dpo=False)
    d = _decisions(cfg)
    assert d[-1]["decision"] in ("stop_converged", "final_evaluation") and d[-1]["stop"]
    assert len(d) < cfg.controller.max_rounds  # stopped before the budget
    assert pipeline.next_round(cfg) is None
