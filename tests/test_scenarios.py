"""The controller's behaviour on real tiny-preset runs: KL violation, repair, rollback, convergence."""

import pytest
import torch
from safetensors.torch import load_file

from iterdpo import evaluate, pipeline, repair, stages
from iterdpo.runfolder import RunFolder, StageFiles

pytestmark = pytest.mark.integration


def _decisions(cfg):
    return [d for _, d in sorted(RunFolder(cfg.out).decisions().items())]


def test_kl_violation_raises_beta_and_cuts_lr(tiny_run, capsys):
    # without the repair (test_a_gate_failing_round_is_repaired_toward_its_start), the retry rule acts
    cfg, summary = tiny_run("kl", rounds=2, dpo__beta=0.01, dpo__learning_rate=3e-3, baseline__offline_dpo=False,
                            controller__repair_alphas=[])
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
    assert stages.next_round(RunFolder(cfg.out), cfg) is None


def test_a_gate_failing_round_is_repaired_toward_its_start(tiny_run, capsys, monkeypatch):
    # a KL bound far below the quick settings' round 1 (KL 0.013 measured) and offline arm (0.010 ± 0.004)
    cfg, summary = tiny_run("repair", rounds=1, controller__max_kl=0.001)
    run = RunFolder(cfg.out)
    d = run.decisions()[1]
    rep = d["repair"]
    assert rep["trained"]["kl_to_reference"] > cfg.controller.max_kl and rep["start_round"] == 0
    assert [t["alpha"] for t in rep["tried"]] == cfg.controller.repair_alphas[: len(rep["tried"])]
    assert all(not t["passes"] for t in rep["tried"][:-1])  # tried largest first, until one passes
    if rep["alpha"] is not None:  # the kept candidate stands for the round, and the controller reads it
        assert rep["tried"][-1]["passes"] and run.repaired(1) and d["decision"] != "adjust_retry"
        assert run.metrics(run.eval(1))["repair_alpha"] == rep["alpha"] == summary["rounds"][1]["repair"]["alpha"]
        assert summary["rounds"][1]["metrics"]["kl_to_reference"] == rep["tried"][-1]["kl_to_reference"]
    else:
        assert d["decision"] == "adjust_retry" and run.policy(1) == run.trained_policy(1)
    offline = summary["yardstick"]["offline_dpo"]
    assert run.done(run.repair("offline_dpo")) and offline["repair"]["start_round"] == 0  # the same repair, toward SFT
    assert offline["repair"]["trained"]["kl_to_reference"] > cfg.controller.max_kl
    assert "repair toward round 0 after kl_violation" in capsys.readouterr().out

    # The same round with thresholds set from what was measured, so that each branch is taken for certain.
    m = run.metrics(run.trained_eval(1))
    a, kl_a = rep["tried"][0]["alpha"], rep["tried"][0]["kl_to_reference"]
    ref, beta = str(run.policy(0)), cfg.dpo.beta

    def with_gates(max_kl, min_retention=0.0):
        return cfg.replace(**{"controller.max_kl": max_kl, "controller.gate_z": 0.0,
                              "controller.min_retention": min_retention})

    assert kl_a < m["kl_to_reference"]
    passing = with_gates((kl_a + m["kl_to_reference"]) / 2)  # the round fails, its first step back passes
    got = pipeline.repair_round(passing, 1, 0, m, ref, beta, force=True)
    assert run.repaired(1) and got["repair_alpha"] == a and got["kl_to_reference"] == pytest.approx(kl_a, rel=1e-5)
    mixed = load_file(str(run.policy(1) / "model.safetensors"))
    want = repair.interpolate_state(load_file(str(run.policy(0) / "model.safetensors")),
                                    load_file(str(run.trained_policy(1) / "model.safetensors")), a)
    assert all(torch.equal(mixed[k], want[k]) for k in want)

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a finished repair is read back, not evaluated again")

    monkeypatch.setattr(evaluate, "evaluate_policy", no_evaluation)
    assert pipeline.repair_round(passing, 1, 0, m, ref, beta) == got  # resumed
    trained = StageFiles(run.dpo(1)).metrics
    before = trained.read_text()
    trained.write_text(before.replace("{", '{"retrained": true, ', 1))  # as if the round had been trained again
    with pytest.raises(AssertionError, match="evaluated again"):  # so the repair of the old weights is not kept
        pipeline.repair_round(passing, 1, 0, m, ref, beta)
    with pytest.raises(AssertionError, match="evaluated again"):  # nor the evaluation of the old weights
        pipeline.evaluate_round(passing, 1, ref=ref, beta=beta)
    trained.write_text(before)
    monkeypatch.undo()

    nothing_passes = with_gates(0.0, min_retention=10.0)
    got = pipeline.repair_round(nothing_passes, 1, 0, m, ref, beta, force=True)
    assert got == m and not run.repaired(1) and run.policy(1) == run.trained_policy(1)
    assert [t["passes"] for t in run.metrics(run.repair(1))["tried"]] == [False] * len(cfg.controller.repair_alphas)

    nothing_fails = with_gates(10.0)
    assert pipeline.repair_round(nothing_fails, 1, 0, m, ref, beta, force=True) == m
    assert not run.repair(1).exists()  # a repair of a round that no longer needs one is removed
