"""plots.frontier on fabricated run folders: one point per evaluated model, the right axes, one file."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

from iterdpo import plots


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _run(root: Path, beta: float, scores: dict, kl_key: str = "kl_to_sft", score_key: str = "oracle_score") -> Path:
    """A run folder with config.json and one eval metrics.json per model: scores maps round -> (kl, score)."""
    _write(root / "config.json", {"dpo": {"beta": beta}})
    for rnd, (kl, score) in scores.items():
        folder = root / ("offline_dpo" if rnd == "offline_dpo" else f"round_{rnd}") / "eval"
        _write(folder / "metrics.json", {kl_key: kl, score_key: score, "kl_to_reference": kl / 2, "mean_reward": 0.0})
    return root


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    return [_run(tmp_path / "b01", 0.1, {0: (0.0, 0.30), 1: (0.2, 0.45), 2: (0.5, 0.60), "offline_dpo": (0.3, 0.40)}),
            _run(tmp_path / "b05", 0.5, {0: (0.0, 0.30), 1: (0.05, 0.35), 2: (0.1, 0.40), "offline_dpo": (0.08, 0.33)})]


def test_frontier_points_read_kl_to_sft_and_the_oracle(runs):
    df = plots.frontier_points(runs)
    assert len(df) == 8
    assert sorted(df["beta"].unique()) == [0.1, 0.5]
    r2 = df[(df["beta"] == 0.1) & (df["label"] == "round 2")].iloc[0]
    assert (r2["kl"], r2["score"], r2["arm"]) == (0.5, 0.60, "round")
    off = df[(df["beta"] == 0.5) & (df["label"] == plots.OFFLINE)].iloc[0]
    assert (off["kl"], off["score"], off["arm"]) == (0.08, 0.33, plots.OFFLINE)
    assert set(df["score_name"]) == {"oracle_score"} and set(df["kl_name"]) == {"kl_to_sft"}


def test_frontier_falls_back_to_kl_to_reference_and_the_reward_model(tmp_path):
    run = _run(tmp_path / "old", 0.2, {0: (0.0, 0.1), 1: (0.4, 0.2)}, kl_key="other", score_key="other_score")
    df = plots.frontier_points(run)
    assert list(df["kl"]) == [0.0, 0.2]  # kl_to_reference = kl / 2
    assert set(df["score_name"]) == {"mean_reward"} and set(df["kl_name"]) == {"kl_to_reference"}


def test_frontier_figure_has_one_marker_per_model_and_is_saved_in_the_first_run(runs):
    fig = plots.frontier(runs)
    ax = fig.axes[0]
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert len(points) == 8
    assert "KL to SFT" in ax.get_xlabel() and "oracle" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"β=0.1", "β=0.5", "SFT", "iterative round", plots.OFFLINE} <= set(labels)
    assert {"r1", "r2", "SFT", "offline"} <= {t.get_text() for t in ax.texts}
    assert (runs[0] / "plots" / "frontier.png").stat().st_size > 0
    assert not (runs[1] / "plots").exists()
    dashed = [line for line in ax.lines if line.get_label() == "offline DPO across β"]
    assert len(dashed) == 1 and list(dashed[0].get_xdata()) == [0.0, 0.08, 0.3]  # SFT, then offline by KL
    assert "offline DPO across β" in labels


def test_colours_and_legend_follow_beta_whatever_the_order_of_the_runs(runs, tmp_path):
    no_beta = _run(tmp_path / "nob", None, {0: (0.0, 0.30), 1: (0.1, 0.36), "offline_dpo": (0.05, 0.32)})
    ax = plots.frontier([runs[1], no_beta, runs[0]]).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [x for x in labels if x.startswith("β=") or x == "nob"] == ["β=0.1", "β=0.5", "nob"]  # no "β=nan"
    colour = {line.get_label(): line.get_color() for line in ax.lines}
    lightness = lambda c: sum(matplotlib.colors.to_rgb(c))
    assert lightness(colour["β=0.1"]) < lightness(colour["β=0.5"]) < lightness(colour["nob"])  # darker: smaller beta


def test_one_run_draws_no_offline_curve(runs):
    ax = plots.frontier(runs[0]).axes[0]
    assert all(line.get_label() != "offline DPO across β" for line in ax.lines)


def test_frontier_of_an_empty_folder_says_so(tmp_path):
    fig = plots.frontier(tmp_path)
    assert "no evaluated models" in fig.axes[0].texts[0].get_text()
    assert (tmp_path / "plots" / "frontier.png").exists()


def test_one_run_draws_its_offline_frontier_and_the_verdict(runs):
    front = [{"label": "SFT", "kl": 0.0, "score": 0.30, "score_se": 0.01},
             {"label": "offline", "kl": 0.3, "score": 0.40, "score_se": 0.01}]
    km = {"answer_kl": 0.5, "offline_at_kl": 0.40, "offline_at_kl_se": 0.01, "lead": 0.2, "lead_se": 0.014,
          "verdict": "loop_ahead", "beyond_offline": True, "frontier": front, "score_name": "oracle_score"}
    _write(runs[0] / "summary.json", {"yardstick": {"kl_matched": km}})
    ax = plots.frontier(runs[0]).axes[0]
    assert ax.get_title() == "Reward-KL frontier: loop ahead at the same KL (beyond offline DPO's reach)"
    curve = [line for line in ax.lines if line.get_label().startswith("offline DPO frontier")]
    assert len(curve) == 1 and list(curve[0].get_xdata()) == [0.0, 0.3]
    lead = [line for line in ax.lines if line.get_label().startswith("lead at the answer's KL: +0.200")]
    assert len(lead) == 1 and list(lead[0].get_ydata()) == [0.40, pytest.approx(0.60)]
    assert any(list(line.get_xdata()) == [0.3, 0.5] for line in ax.lines)  # the best point carried to the answer's KL
