"""The t4 preset keeps the quickstart's promises (issue 30): rounds until the controller stops, the offline-DPO
comparison, merged weights only in best/, and a budget the quickstart states in steps and examples."""

import importlib.util
from pathlib import Path

from iterdpo import notebook
from iterdpo.config import load_preset

BUILDER = Path(__file__).resolve().parents[1] / "notebooks" / "build_notebooks.py"


def _quickstart_text() -> str:
    spec = importlib.util.spec_from_file_location("build_notebooks", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return "\n".join(cell.source for cell in module.quickstart("main"))


def test_the_quickstart_promises_what_the_t4_preset_does():
    cfg, text = load_preset("t4"), _quickstart_text()
    assert "rounds until the controller stops" in text.lower() and cfg.rounds == "auto"
    assert "offline-DPO baseline" in text and cfg.baseline.offline_dpo
    assert cfg.model.merged == "best" and "only `best/` holds merged weights" in text
    # the numbers the prose gives are the preset's
    assert f"at most {cfg.max_rounds} rounds of {cfg.dpo.max_steps} DPO steps of {cfg.dpo.batch_size * cfg.dpo.grad_accum} pairs" in text
    assert f"{cfg.controller.max_seconds / 60:.0f} minutes" in text
    top = cfg.max_rounds * cfg.dpo.max_steps
    assert f"at most {top} steps, {top * cfg.dpo.batch_size * cfg.dpo.grad_accum:,} seed-pair examples" in text


def test_the_budget_states_the_offline_arm_against_the_rounds():
    cfg = load_preset("t4")
    text = notebook.budget(cfg)
    assert "until the controller stops: at most controller.max_rounds = 3" in text
    assert "150 DPO steps x 16 pairs = 2,400 pair-examples" in text
    assert "at most 3 x 150 = 450 steps x 16 = 7,200 pair-examples; no sampling" in text
    assert "offline frontier: 1 more arm as long, at beta x 0.25 (baseline.frontier_betas), 2 evaluations each" in text
    tiny = notebook.budget(load_preset("tiny"))
    assert tiny.startswith("rounds: 2, fewer") and "offline frontier: 2 more arms" in tiny
    assert "offline" not in notebook.budget(load_preset("tiny", {"baseline.offline_dpo": False}))
