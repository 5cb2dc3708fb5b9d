"""The reward-KL frontier over one or several runs (the DPO paper's figure), and TensorBoard."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..controller.report import frontier_folder
from ..folder import read_json
from ..progress import live as is_live
from ..runfolder import RunFolder
from .frames import OFFLINE, SFT, _empty, _pretty, _save, eval_metrics
from ..metrics import N


# ---------------------------------------------------------------- the reward-KL frontier

ARM_MARKERS = {SFT: "o", "round": "^", OFFLINE: "s"}


def frontier_points(runs) -> pd.DataFrame:
    """One row per evaluated model of each run folder in `runs` (one folder or a list): run, beta, arm,
    label, kl and score. score is the oracle's where the run has a world, else the reward model's mean; kl
    is the policy's KL to SFT (kl_to_sft), or to its reference in runs that predate it."""
    rows = []
    for run in [runs] if isinstance(runs, (str, Path)) else list(runs):
        rf = RunFolder(run)
        beta = read_json(rf.config_path).get("dpo", {}).get("beta") if rf.exists() else None
        df = eval_metrics(run)
        if df.empty:
            continue
        score = N.oracle_score if N.oracle_score in df.columns else N.mean_reward
        kl = N.kl_to_sft if N.kl_to_sft in df.columns else N.kl_to_reference
        for label, row in df.iterrows():
            if pd.isna(row.get(score)) or pd.isna(row.get(kl)):
                continue
            arm = label if label in (SFT, OFFLINE) else "round"
            rows.append({"run": str(run), "beta": beta, "arm": arm, "label": label, "round": row["round"],
                         "kl": float(row[kl]), "score": float(row[score]), "score_name": score, "kl_name": kl})
    return pd.DataFrame(rows)


def frontier(runs, name: str = "frontier"):
    """The reward-KL frontier (the DPO paper's figure): score against KL to SFT for SFT, each iterative round
    and offline DPO, one marker per arm and one colour per run folder (labelled by its beta, darker for a smaller
    beta). Several run folders (the same preset at a few betas) draw the frontier: a dashed line joins SFT and the
    offline DPO points in order of KL, so each round can be read against offline DPO at the same KL. The figure
    goes to the first folder's plots/."""
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    df = frontier_points(runs)
    title = "Reward-KL frontier"
    if df.empty:
        return _empty(runs[0], name, title, "no evaluated models yet")
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    beta = {run: df.loc[df["run"] == str(run), "beta"].min() for run in runs}  # NaN: none recorded, or no points
    by_beta = sorted(runs, key=lambda r: (pd.isna(beta[r]), 0.0 if pd.isna(beta[r]) else beta[r]))
    palette = sns.color_palette("viridis", len(runs) + 1)[:len(runs)]  # without viridis's yellow end
    if len(runs) > 1:
        offline = df[df["arm"] == OFFLINE].sort_values("kl")
        sft = df[df["arm"] == SFT].head(1)
        if len(offline) > 1:
            curve = pd.concat([sft, offline])
            ax.plot(curve["kl"], curve["score"], color="grey", linestyle="--", linewidth=1.0,
                    label="offline DPO across β")
    for colour, run in zip(palette, by_beta):  # the legend in order of beta
        d = df[df["run"] == str(run)]
        if d.empty:
            continue
        tag = f"β={beta[run]:g}" if pd.notna(beta[run]) and len(runs) > 1 else Path(run).name if len(runs) > 1 else None
        path = d[d["arm"] != OFFLINE].sort_values("round")
        ax.plot(path["kl"], path["score"], color=colour, linewidth=1.2, alpha=0.7, label=tag)
        for _, p in d.iterrows():
            ax.scatter(p["kl"], p["score"], marker=ARM_MARKERS[p["arm"]], s=70, color=colour, edgecolor="black", zorder=3)
            text = "SFT" if p["arm"] == SFT else "offline" if p["arm"] == OFFLINE else f"r{p['round']}"
            ax.annotate(text, (p["kl"], p["score"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for arm, marker in ARM_MARKERS.items():
        ax.scatter([], [], marker=marker, color="white", edgecolor="black", label=arm if arm != "round" else "iterative round")
    score_name, kl_name = df["score_name"].iloc[0], df["kl_name"].iloc[0]
    if len(runs) == 1:
        title = _offline_curve(ax, runs[0], score_name) or title
    judge = "oracle" if score_name == N.oracle_score else "reward model (no oracle in this run)"
    ax.set(xlabel=f"{_pretty(kl_name)} (nats per token)", ylabel=f"{_pretty(score_name)}, judged by the {judge}",
           title=title)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, runs[0], name)


def _offline_curve(ax, run, score_name: str) -> str | None:
    """One run's offline-DPO frontier (summary.json's yardstick.kl_matched, iterdpo.frontier) on `ax`: every
    point the frontier stage evaluated (hollow where it failed a gate), the frontier as a grey line, and the answer's
    lead at its own KL as a vertical bar; returns a title with the verdict (None without a KL-matched record)."""
    rf = RunFolder(run)
    points = rf.metrics(frontier_folder(rf))["points"] if rf.done(frontier_folder(rf)) else []
    for p in (p for p in points if p["score_name"] == score_name and p.get(N.kl_to_sft) is not None):
        ax.scatter(p[N.kl_to_sft], p["score"], marker="s", s=22, color="grey" if p["eligible"] else "none",
                   edgecolor="grey", zorder=2)
    km = (rf.summary().get("yardstick") or {}).get("kl_matched") if rf.summary_path.exists() else None
    if not km or km.get("score_name") != score_name:
        return None
    front = km["frontier"]
    ax.plot([p["kl"] for p in front], [p["score"] for p in front], color="grey", linewidth=1.4,
            label="offline DPO frontier (betas, checkpoints)")
    ax.errorbar([p["kl"] for p in front], [p["score"] for p in front], yerr=[1.96 * (p.get("score_se") or 0) for p in front],
                fmt="none", ecolor="grey", elinewidth=0.8, capsize=2)
    at = km["answer_kl"]
    if km["beyond_offline"]:  # compared with the curve's best point, carried out to the answer's KL
        ax.plot([front[-1]["kl"], at], [km["offline_at_kl"]] * 2, color="grey", linestyle=":", linewidth=1.0)
    ax.plot([at, at], [km["offline_at_kl"], km["offline_at_kl"] + km["lead"]], color="black", linestyle=":",
            linewidth=1.2, label=f"lead at the answer's KL: {km['lead']:+.3f} ± {km['lead_se']:.3f}")
    beyond = " (beyond offline DPO's reach)" if km["beyond_offline"] else ""
    return f"Reward-KL frontier: {km['verdict'].replace('_', ' ')} at the same KL{beyond}"


def tensorboard(run: str | Path, live: bool | None = None):
    """TensorBoard on the run's logs in a live notebook (Colab included); the command to run it otherwise."""
    logs = RunFolder(run).logs
    if not logs.exists():
        return f"no TensorBoard logs in {logs}: set export.report_to to tensorboard (or auto, with tensorboard installed)"
    if (is_live() if live is None else live):
        try:
            from tensorboard import notebook as tb
        except ImportError:
            return f"tensorboard is not installed: pip install tensorboard, then tensorboard --logdir {logs}"
        tb.start(f"--logdir {logs}")
        return None
    return f"TensorBoard logs: {logs}; view them with: tensorboard --logdir {logs}"
