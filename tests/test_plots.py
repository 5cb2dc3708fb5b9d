"""iterdpo.plots on a fabricated run folder: every figure is written, non-empty and labelled."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from iterdpo import plots

PROMPTS = [f"write about apple{i} and pear" for i in range(6)]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        path.write_text(json.dumps(obj))


def _eval(folder: Path, quality: float, rng: random.Random) -> None:
    rows = [{"prompt": p, "response": f"apple{i} pear " + "um " * rng.randint(0, 3),
             "reward": quality + rng.gauss(0, 0.3), "oracle": quality / 2 + rng.gauss(0, 0.1), "n_tokens": 4}
            for i, p in enumerate(PROMPTS)]
    _write(folder / "samples.jsonl", rows)
    _write(folder / "metrics.json", {
        "preference_accuracy": 0.6 + quality / 10, "reward_margin": quality, "mean_reward": quality,
        "win_rate_vs_sft": 0.5 + quality / 10, "oracle_score": quality / 2, "kl_to_reference": 0.01 * quality,
        "perplexity": 5.0 - quality, "mean_length": 4.0, "capability_retention": 1.0, "note": "not a number",
        "converged": False})


def _dpo(folder: Path, steps: int = 20) -> None:
    log = [{"step": s, "loss": 0.69 - 0.01 * s, "rewards/accuracies": 0.5 + 0.02 * s,
            "rewards/margins": 0.05 * s, "rewards/chosen": 0.02 * s, "rewards/rejected": -0.03 * s}
           for s in range(2, steps + 1, 2)]
    _write(folder / "train_log.jsonl", log + [{"step": steps, "train_loss": 0.6, "train_runtime": 3.0}])
    _write(folder / "metrics.json", {"final_loss": log[-1]["loss"]})


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A run folder with SFT, two DPO rounds, the offline baseline and controller decisions."""
    rng = random.Random(0)
    _write(tmp_path / "sft" / "train_log.jsonl", [{"step": s, "loss": 3.0 - 0.001 * s, "learning_rate": 1e-3} for s in range(1, 9)])
    _eval(tmp_path / "round_0" / "eval", 0.0, rng)
    for r in (1, 2):
        _write(tmp_path / f"round_{r}" / "generate" / "samples.jsonl", [
            {"prompt": p, "responses": ["a", "b", "c", "d"], "rewards": [rng.gauss(0, 1) for _ in range(4)],
             "ended": [True] * 4, "n_tokens": [1] * 4} for p in PROMPTS])
        _write(tmp_path / f"round_{r}" / "generate" / "pairs.jsonl", [
            {"prompt": p, "chosen": "a", "rejected": "b", "reward_chosen": 1.0, "reward_rejected": rng.random()}
            for p in PROMPTS])
        _dpo(tmp_path / f"round_{r}" / "dpo")
        _eval(tmp_path / f"round_{r}" / "eval", float(r), rng)
    _dpo(tmp_path / "offline_dpo" / "dpo", steps=40)
    _eval(tmp_path / "offline_dpo" / "eval", 0.8, rng)
    _write(tmp_path / "decisions.jsonl", [
        {"round": 1, "decision": "adjust_retry", "triggers": [{"name": "kl_violation", "value": 0.2}],
         "changes": {"beta": [0.1, 0.15]}, "params": {"beta": 0.1}, "targeted": {"hard_prompts": PROMPTS},
         "stop": False, "best_round": 0, "next_start_round": 0},
        {"round": 2, "decision": "stop_budget", "triggers": [], "changes": {}, "params": {"beta": 0.15},
         "targeted": {}, "stop": True, "best_round": 2, "next_start_round": 2}])
    return tmp_path


FIGURES = [plots.reward_comparison, plots.reward_distributions, plots.improvement_trajectory,
           plots.dpo_training_curves, plots.eval_metric_grid, plots.stage_training_curves,
           lambda run: plots.generation_summary(run, 2)]


@pytest.mark.parametrize("make", FIGURES)
def test_figure_is_saved_and_labelled(run: Path, make) -> None:
    before = set((run / "plots").glob("*.png")) if (run / "plots").exists() else set()
    fig = make(run)
    new = set((run / "plots").glob("*.png")) - before
    assert len(new) == 1 and next(iter(new)).stat().st_size > 5000
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert visible
    for ax in visible:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_figures_on_an_empty_run_say_so(tmp_path: Path) -> None:
    fig = plots.reward_comparison(tmp_path)
    assert (tmp_path / "plots" / "reward_comparison.png").stat().st_size > 0
    assert "no eval metrics" in fig.axes[0].texts[0].get_text()


def test_models_are_ordered_and_coloured_apart(run: Path) -> None:
    labels = [lab for lab, _, _ in plots.model_folders(run)]
    assert labels == ["SFT", "round 1", "round 2", "offline DPO"]
    assert len(set(plots.palette(labels).values())) == len(labels)


def test_comparison_table_rows_metrics_and_trend(run: Path) -> None:
    table = plots.comparison_table(run)
    assert list(table.index) == ["SFT", "round 1", "round 2", "offline DPO"]
    assert "note" not in table.columns and "converged" not in table.columns
    assert table.columns[:3].tolist() == ["round", "status", "oracle_score"]
    assert table["status"].tolist() == ["kept", "rejected", "best", "baseline"]
    assert table.loc["round 1", "trend"].startswith("↑") and table.loc["SFT", "trend"] == ""
    assert table.loc["offline DPO", "trend"] == "↑ +0.400"  # against SFT


def test_responses_table_has_a_column_per_model(run: Path) -> None:
    table = plots.responses_table(run, n_prompts=4)
    assert table.shape == (4, 4) and list(table.columns) == ["SFT", "round 1", "round 2", "offline DPO"]
    assert table.index[0] == PROMPTS[0] and "[reward " in table.iloc[0, 0] and ", oracle " in table.iloc[0, 0]


def test_response_viewer_falls_back_to_the_table_outside_a_notebook(run: Path) -> None:
    assert plots.response_viewer(run, n_prompts=3).data.shape == (3, 4)


def test_decisions_table_writes_nested_fields_briefly(run: Path) -> None:
    table = plots.decisions_table(run)
    assert list(table.index) == [1, 2] and "params" not in table.columns
    assert table.loc[1, "triggers"] == "kl_violation" and table.loc[1, "changes"] == "beta: 0.1 → 0.15"
    assert table.loc[1, "targeted"] == "hard_prompts=6 items"


def test_pairs_table(run: Path) -> None:
    table = plots.pairs_table(run, 1, n=3)
    assert table.shape[0] == 3 and list(table.columns[:3]) == ["prompt", "chosen", "rejected"]


def test_the_controller_story_is_drawn(run: Path) -> None:
    fig = plots.improvement_trajectory(run)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert any("reward model" in t for t in titles) and not any("oracle" in t and "reward model" in t for t in titles)
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"best round", "rejected round", "chance (0.5)", "offline DPO"} <= labels
    assert plots.round_status(run) == {0: "kept", 1: "rejected", 2: "best"}


def test_reward_and_oracle_judgements_are_on_separate_axes(run: Path) -> None:
    fig = plots.reward_comparison(run)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and "reward model" in axes[0].get_title() and "oracle" in axes[1].get_title()
    assert any(bar.get_hatch() == "//" for bar in axes[0].patches)  # round 1 was rejected


def test_a_flat_training_curve_is_called_out(run: Path) -> None:
    fig = plots.stage_training_curves(run, "sft")
    assert any("FLAT" in t.get_text() for t in fig.axes[0].texts)
    assert plots.training_note(run, "sft").startswith("FLAT")
    assert plots.flat_note([3.0, 2.0]) is None


def test_monitors_are_few_and_keep_flat_lines_flat(run: Path) -> None:
    fig = plots.eval_metric_grid(run)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) <= 4
    length = next(ax for ax in axes if ax.get_title() == "mean length")  # 4.0 in every model
    lo, hi = length.get_ylim()
    assert hi - lo >= 0.2


def test_the_flat_check_reads_the_whole_curve() -> None:
    dip = [0.693, 0.68, 0.66, 0.645, 0.64, 0.645, 0.66, 0.675, 0.685, 0.69]  # ends where it began, dipped 8%
    assert plots.flat_note(dip) is None
    noise = [0.693 + (0.01 if i % 2 else -0.01) for i in range(20)]  # wobbles, never falls
    assert plots.flat_note(noise).startswith("FLAT")
    assert plots.flat_note([3.0 - 0.1 * i for i in range(10)]) is None


def test_every_dpo_arm_gets_the_flat_check(run: Path) -> None:
    flat = [{"step": s, "loss": 0.693 + 0.001 * (s % 2)} for s in range(1, 21)]
    _write(run / "offline_dpo" / "dpo" / "train_log.jsonl", flat)
    note = " ".join(t.get_text() for t in plots.dpo_training_curves(run).axes[0].texts)
    assert "offline DPO" in note and "round 1" not in note


def _with_limits(run: Path, reference: str) -> Path:
    from iterdpo.config import load_preset

    cfg = load_preset("tiny", {"out": str(run), "dpo.reference": reference, "controller.max_kl": 0.5})
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    for folder in ("round_0", "round_1", "round_2", "offline_dpo"):
        m = json.loads((run / folder / "eval" / "metrics.json").read_text())
        m.update(kl_to_sft=m["kl_to_reference"] * 3, kl_to_reference_se=0.002, win_rate_vs_sft_se=0.04,
                 preference_accuracy_oracle=0.7)
        (run / folder / "eval" / "metrics.json").write_text(json.dumps(m))
    return run


@pytest.mark.parametrize("reference", ["previous", "sft"])
def test_monitors_show_kl_to_sft_and_the_limit_where_it_applies(run: Path, reference: str) -> None:
    axes = [ax for ax in plots.eval_metric_grid(_with_limits(run, reference)).axes if ax.get_visible()]
    kl = {ax.get_title(): ax for ax in axes if "KL" in ax.get_title()}
    assert any(t.startswith("KL to SFT") for t in kl) and len(kl) == (2 if reference == "previous" else 1)
    gated = [ax for t, ax in kl.items() if "max_kl" in t]
    assert len(gated) == 1 and (reference == "sft") == gated[0].get_title().startswith("KL to SFT")
    limit = [ln for ln in gated[0].lines if ln.get_label().startswith("controller limit")]
    assert len(limit) == 1 and limit[0].get_linestyle() == ":" and limit[0].get_ydata()[0] == 0.5
    assert gated[0].get_ylim()[1] > 0.5  # the limit is on the axis
    offline = [ln for ax in axes for ln in ax.lines if ln.get_label() == "offline DPO"]
    assert offline and all(ln.get_linestyle() == "--" for ln in offline)


def test_standard_errors_are_drawn(run: Path) -> None:
    fig = plots.improvement_trajectory(_with_limits(run, "previous"))
    win = next(ax for ax in fig.axes if ax.get_title().startswith("Win rate vs SFT, judged by the reward"))
    assert any(c.get_label() == "± 1 standard error" for c in win.containers)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert any("seed labels" in t for t in titles) and any("oracle's labels" in t for t in titles)


def test_the_best_rounds_star_leaves_the_bar_labels_readable(run: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.reward_comparison(run)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.canvas.draw()
    for ax in (a for a in fig.axes if a.get_visible()):
        stars = [c for c in ax.collections if c.get_paths() and len(c.get_offsets()) == 1]
        assert stars
        for star in stars:
            x, y = star.get_offset_transform().transform(star.get_offsets()[0])
            r = star.get_sizes()[0] ** 0.5 / 2 * fig.dpi / 72  # marker radius in pixels
            for text in ax.texts:
                box = text.get_window_extent(renderer)
                assert not (box.x0 - r < x < box.x1 + r and box.y0 - r < y < box.y1 + r), text.get_text()


def test_wide_tables_show_every_cell_whole(run: Path) -> None:
    table = plots.responses_table(run, n_prompts=2)
    table.iloc[0, 0] = "line one\nline two <b> " + "word " * 60
    html = plots.wide(pd.concat([table, table])).to_html()  # a repeated prompt: a non-unique index
    assert "word " * 60 in html and "pre-wrap" in html and "&lt;b&gt;" in html


def test_config_and_card_display() -> None:
    from iterdpo.config import load_preset

    cfg = load_preset("tiny", {})
    table = plots.config_table(cfg, "dpo")
    assert table.loc["dpo.beta", "value"] == str(cfg.dpo.beta) and table.loc["seed", "help"]
    assert "model.name" not in table.index and plots.config_table(cfg.dpo).shape[0] == table.shape[0] - 4
    card = "---\nlibrary_name: transformers\ntags:\n- dpo\n- iterdpo\n---\n\n# iterdpo\n"
    assert plots.card_markdown(card).splitlines()[2:4] == ["| library_name | transformers |", "| tags | dpo, iterdpo |"]
    assert plots.card_markdown(card).endswith("# iterdpo\n")
