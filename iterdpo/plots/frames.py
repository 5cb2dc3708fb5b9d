"""Reading the run folder into frames, and what every figure shares: labels, colours, marks, limits."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # headless by default; a notebook keeps its inline backend

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..export import best_round  # noqa: E402
from ..runfolder import OFFLINE, SFT, RunFolder  # noqa: E402
from ..metrics import N

# Metrics shown first in tables, in this order; the rest follow alphabetically.
HEADLINE = [N.oracle_score, N.mean_reward, N.win_rate_vs_sft, N.win_rate_vs_previous, N.oracle_win_rate_vs_sft,
            N.preference_accuracy, N.preference_accuracy_oracle, N.reward_margin, N.kl_to_reference, N.perplexity,
            N.mean_length, N.capability_score, N.capability_retention]
# (metric, panel title): judged by the reward model, judged by the oracle, and the held-out pairs.
TRAJECTORY = [(N.win_rate_vs_sft, "Win rate vs SFT, judged by the reward model"),
              (N.oracle_win_rate_vs_sft, "Win rate vs SFT, judged by the oracle"),
              (N.preference_accuracy, "Preference accuracy on held-out pairs, seed labels (noisy)"),
              (N.preference_accuracy_oracle, "Preference accuracy on held-out pairs, oracle's labels")]
# The monitors, with the controller config field that holds the limit the controller checks on that metric.
# KL to SFT is the drift to read; the max_kl gate acts on KL to the DPO reference (the round before, with
# dpo.reference: previous), so that panel is drawn too when the two differ.
MONITORS = [(N.kl_to_sft, None), (N.kl_to_reference, "max_kl"), (N.capability_retention, "min_retention"),
            (N.mean_length, None), (N.perplexity, None)]
DPO_CURVES = ["loss", "rewards/accuracies", "rewards/margins"]
CHANCE = {N.win_rate_vs_sft: 0.5, N.oracle_win_rate_vs_sft: 0.5, N.win_rate_vs_previous: 0.5,
          N.preference_accuracy: 0.5, N.preference_accuracy_oracle: 0.5, "rewards/accuracies": 0.5,
          "loss": math.log(2)}
FLAT = 0.02  # a training curve whose smoothed loss never falls this share of its start below it is called flat
LIMIT = dict(color="0.2", ls=":", lw=1.6)  # a controller limit: dotted dark grey (baselines: dashed, own colour)
MARKS = {"best": dict(marker="*", s=260, color="gold", edgecolor="black", zorder=4),
         "rejected": dict(marker="X", s=120, color="tab:red", zorder=4),
         "rolled back": dict(marker="o", s=190, facecolor="none", edgecolor="tab:red", linewidth=2, zorder=4)}


# ---------------------------------------------------------------- reading the run folder

def model_folders(run: str | Path) -> list[tuple[str, int | str, Path]]:
    """(label, round, folder) for SFT, every round and the offline baseline that exist, in order."""
    return RunFolder(run).models()


def eval_metrics(run: str | Path) -> pd.DataFrame:
    """One row per evaluated model (index = label), a `round` column and every scalar metric."""
    rf = RunFolder(run)
    rows = {}
    for label, r, _ in model_folders(run):
        if rf.done(rf.eval(r)):
            m = rf.metrics(rf.eval(r))
            rows[label] = {"round": r if isinstance(r, int) else None, **{k: v for k, v in m.items() if _is_number(v)}}
    df = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    if "round" in df.columns:
        df["round"] = df["round"].astype("Int64")
    return df.reindex(columns=_order_columns(df.columns))


def eval_samples(run: str | Path) -> pd.DataFrame:
    """Every evaluated model's held-out samples: model, round, prompt_id, prompt, response, reward, ..."""
    rf = RunFolder(run)
    frames = []
    for label, r, _ in model_folders(run):
        rows = rf.samples(r)
        if rows:
            df = pd.DataFrame(rows)
            frames.append(df.assign(model=label, round=r, prompt_id=range(len(df))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def train_logs(run: str | Path, stage: str = "dpo") -> pd.DataFrame:
    """The DPO train_log.jsonl of every round (and the offline arm) that has one, with a `model` column."""
    rf = RunFolder(run)
    frames = []
    for label, r, _ in model_folders(run):
        if r == 0:
            continue
        rows = rf.train_log_rows(rf.dpo(r))
        if rows:
            frames.append(pd.DataFrame(rows).assign(model=label, round=r))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def round_status(run: str | Path) -> dict[int, str]:
    """Round -> 'best', 'rejected' (adjust_retry), 'rolled back' (rollback) or 'kept', from decisions.jsonl."""
    decisions = RunFolder(run).decisions()
    status = {0: "kept"}
    status.update({r: {"rollback": "rolled back", "adjust_retry": "rejected"}.get(d["decision"], "kept")
                   for r, d in decisions.items()})
    status[best_round(run)] = "best"
    return status


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _order_columns(cols) -> list[str]:
    rest = sorted(c for c in cols if c not in HEADLINE and c != "round")
    return ["round"] * ("round" in cols) + [c for c in HEADLINE if c in cols] + rest


def palette(labels) -> dict[str, tuple]:
    """A fixed colour per model label: grey SFT, a blue ramp for rounds, orange offline DPO."""
    rounds = [lab for lab in labels if lab not in (SFT, OFFLINE)]
    ramp = sns.color_palette("crest", max(len(rounds), 1)) if len(rounds) > 1 else [sns.color_palette("crest")[3]]
    colours = {SFT: (0.55, 0.55, 0.55), OFFLINE: sns.color_palette("Oranges", 5)[3]}
    colours.update(dict(zip(rounds, ramp)))
    return {lab: colours[lab] for lab in labels}


def _save(fig, run: str | Path, name: str):
    path = RunFolder(run).plot(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)  # returned for display; closing keeps notebooks from drawing it twice
    return fig


def _grid(n: int, ncols: int, size=(4.2, 3.2)):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _pretty(name: str) -> str:
    words = name.replace("/", ": ").split("_")
    return " ".join({"sft": "SFT", "kl": "KL", "dpo": "DPO", "vs": "vs"}.get(w, w) for w in words)


def _empty(run, name: str, title: str, why: str):
    fig, ax = plt.subplots(figsize=(6, 2.5), layout="constrained")
    ax.text(0.5, 0.5, why, ha="center", va="center")
    ax.set(title=title, xlabel="", ylabel="", xticks=[], yticks=[])
    return _save(fig, run, name)


def _chance(ax, metric: str, horizontal: bool = True) -> None:
    if metric in CHANCE:
        label = "ln 2 (no preference learned)" if metric == "loss" else "chance (0.5)"
        (ax.axhline if horizontal else ax.axvline)(CHANCE[metric], color="0.4", ls=":", lw=1.2, label=label)


def _honest_ylim(ax, values, metric: str) -> None:
    """Keep a flat series flat: at least ±5% of its level (or ±0.05 on a 0-1 scale) around it, never a zoom on noise."""
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return
    lo, hi = v.min(), v.max()
    if metric in CHANCE and metric != "loss":
        lo, hi = min(lo, CHANCE[metric]), max(hi, CHANCE[metric])
    pad = max(0.05 * abs(v.mean()), 0.05 if hi <= 1.5 else 0.0, 1e-3)
    mid = (lo + hi) / 2
    half = max((hi - lo) / 2 * 1.15, pad)
    ax.set_ylim(mid - half, mid + half)
