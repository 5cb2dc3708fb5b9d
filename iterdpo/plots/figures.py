"""Figures of one run: rewards by model, the trajectory, the controller's monitors, training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.transforms import offset_copy

from ..runfolder import RunFolder
from .frames import (
    DPO_CURVES, FLAT, LIMIT, MARKS, MONITORS, OFFLINE, TRAJECTORY, _chance, _empty, _grid, _honest_ylim, _pretty,
    _save, eval_metrics, eval_samples, palette, round_status, train_logs,
)
from ..metrics import N, se


# ---------------------------------------------------------------- figures

def _mark_bars(ax, labels, status_of: dict) -> None:
    """Hatch the bars of rejected and rolled-back rounds, star the best one beyond its value label (22 points
    past the bar's end, the label sits within 14), with room made for it on the axis."""
    for bar, label in zip(ax.patches, labels):
        st = status_of.get(label, "")
        if st in ("rejected", "rolled back"):
            bar.set_hatch("//")
            bar.set_edgecolor("tab:red")
        if st == "best":
            h = bar.get_y() + bar.get_height()
            away = offset_copy(ax.transData, fig=ax.figure, y=22 if h >= 0 else -22, units="points")
            ax.scatter(bar.get_x() + bar.get_width() / 2, h, transform=away, **MARKS["best"])
            ax.margins(y=0.25)


def reward_comparison(run: str | Path):
    """Per model: mean reward (judged by the reward model) and, in the toy world, oracle score, on separate axes."""
    df = eval_metrics(run)
    panels = [(m, t) for m, t in ((N.mean_reward, "Judged by the reward model: mean reward"),
                                  (N.oracle_score, "Judged by the oracle: mean score")) if m in df.columns]
    if not panels:
        return _empty(run, "reward_comparison", "Reward by model", "no eval metrics yet")
    fig, axes = _grid(len(panels), 2, size=(5, 3.6))
    colours = palette(df.index)
    status = round_status(run)
    status_of = {lab: status.get(int(r), "") for lab, r in df["round"].items() if pd.notna(r)}
    for ax, (m, title) in zip(axes, panels):
        sns.barplot(x=df.index, y=df[m], hue=df.index, palette=colours, legend=False, ax=ax)
        for bars in ax.containers:
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
        _mark_bars(ax, list(df.index), status_of)
        ax.set(xlabel="model (★ best round, hatched: rejected or rolled back)", ylabel=_pretty(m), title=title)
        ax.tick_params(axis="x", rotation=30)
    return _save(fig, run, "reward_comparison")


def reward_distributions(run: str | Path):
    """Histograms of the held-out samples' reward (and oracle score) per model, one colour per model."""
    s = eval_samples(run)
    if s.empty:
        return _empty(run, "reward_distributions", "Reward distributions", "no eval samples yet")
    metrics = [m for m in ("reward", "oracle") if m in s.columns]
    fig, axes = _grid(len(metrics), 2, size=(5.5, 3.6))
    colours = palette(s.model.unique())
    names = {"reward": "reward-model score", "oracle": "oracle score"}
    for ax, m in zip(axes, metrics):
        sns.histplot(s, x=m, hue="model", palette=colours, element="step", stat="density", common_norm=False,
                     fill=False, bins=20, linewidth=1.6, ax=ax)
        for label, mean in s.groupby("model", sort=False)[m].mean().items():
            ax.axvline(mean, color=colours[label], ls=":", lw=1.4)  # each model's mean, dotted
        ax.set(xlabel=f"{names[m]} of a held-out sample", ylabel="density",
               title=f"Distribution of the {names[m]} (dotted: means)")
    return _save(fig, run, "reward_distributions")


def improvement_trajectory(run: str | Path, metrics: list[tuple[str, str]] = TRAJECTORY):
    """Win rates and preference accuracy (against the seed labels and, where the world has an oracle, its labels)
    by round (0 = SFT): chance at 0.5, the controller's marks, offline DPO dashed, standard errors as bars."""
    df = eval_metrics(run)
    panels = [(m, t) for m, t in metrics if m in df.columns and df[m].notna().any()]
    if not panels:
        return _empty(run, "trajectory", "Improvement by round", "no eval metrics yet")
    fig, axes = _grid(len(panels), 4, size=(4.6, 3.6))
    _lines(run, df, panels, axes)
    _legend(axes)
    fig.suptitle("Improvement over rounds (round 0 = SFT). What the controller sees is the reward model's judgement.")
    return _save(fig, run, "trajectory")


def eval_metric_grid(run: str | Path):
    """The monitors by round: KL to SFT (the drift), KL to the DPO reference (what the max_kl gate checks;
    one panel with KL to SFT when the reference is SFT), capability retention, length, perplexity. A limit
    the controller checks is drawn dotted grey on its own metric's axis, which is widened to show it; offline
    DPO is dashed in its colour; error bars are the recorded standard errors."""
    df = eval_metrics(run)
    limits, reference = _controller_limits(run)
    panels = [(m, _monitor_title(m, reference)) for m, _ in MONITORS if m in df.columns and df[m].notna().any()
              and not (m == N.kl_to_reference and reference == "sft" and N.kl_to_sft in df.columns)]
    if not panels:
        return _empty(run, "eval_metrics", "Monitors by round", "no eval metrics yet")
    fig, axes = _grid(len(panels), 3, size=(4.2, 3.2))
    _lines(run, df, panels, axes)
    for ax, (m, _) in zip(axes, panels):
        field = dict(MONITORS)[m] or ("max_kl" if m == N.kl_to_sft and reference == "sft" else None)
        if field and field in limits:
            ax.axhline(limits[field], **LIMIT, label=f"controller limit ({field})")
            lo, hi = ax.get_ylim()
            pad = 0.08 * (max(hi, limits[field]) - min(lo, limits[field]))
            ax.set_ylim(min(lo, limits[field] - pad), max(hi, limits[field] + pad))
    _legend(axes)
    fig.suptitle("What the controller watches, by round (dotted grey: its limits; dashed: offline DPO)")
    return _save(fig, run, "eval_metrics")


def _monitor_title(metric: str, reference: str | None) -> str:
    if metric == N.kl_to_sft:
        return "KL to SFT" + (" (the DPO reference): max_kl gate" if reference == "sft" else "")
    if metric == N.kl_to_reference:
        return ("KL to the DPO reference (the round before): max_kl gate" if reference == "previous"
                else "KL to the DPO reference: max_kl gate")
    return _pretty(metric)


def _controller_limits(run) -> tuple[dict, str | None]:
    """(the controller's config fields, dpo.reference) of the run; ({}, None) where it has no config yet."""
    rf = RunFolder(run)
    if not rf.exists():
        return {}, None
    cfg = rf.config()
    return cfg.controller.to_dict(), cfg.dpo.reference


def _lines(run, df: pd.DataFrame, panels: list[tuple[str, str]], axes) -> None:
    """Metric against round on each axis, points coloured per model, the controller's marks, offline DPO dashed."""
    rounds = df[df["round"].notna()].sort_values("round")
    colours = palette(df.index)
    status = round_status(run)
    for ax, (m, title) in zip(axes, panels):
        ax.plot(rounds["round"], rounds[m], color="0.35", zorder=1)
        err = rounds[se(m)].astype(float).fillna(0.0) if se(m) in rounds.columns else None
        if err is not None:
            ax.errorbar(rounds["round"], rounds[m], yerr=err, fmt="none", ecolor="0.35", capsize=3, lw=1, zorder=1,
                        label="± 1 standard error")
        for label, row in rounds.iterrows():
            ax.scatter(row["round"], row[m], color=colours[label], s=45, zorder=2, label=label)
            st = status.get(int(row["round"]), "")
            if st in MARKS and pd.notna(row[m]) and (st != "best" or int(row["round"]) > 0 or len(rounds) > 1):
                ax.scatter(row["round"], row[m], label=f"{st} round", **MARKS[st])
        shown = [*rounds[m], *([] if err is None else [*(rounds[m] - err), *(rounds[m] + err)])]
        if OFFLINE in df.index and pd.notna(df.loc[OFFLINE, m]):
            y, e = df.loc[OFFLINE, m], df[se(m)].get(OFFLINE) if se(m) in df.columns else None
            ax.axhline(y, ls="--", color=colours[OFFLINE], label=OFFLINE)
            if e is not None and pd.notna(e):
                ax.axhspan(y - e, y + e, color=colours[OFFLINE], alpha=0.15, lw=0)
                shown += [y - e, y + e]
            shown.append(y)
        _chance(ax, m)
        _honest_ylim(ax, shown, m)
        ax.set(xlabel="round", ylabel=_pretty(m), title=title)
        ax.title.set_fontsize(9)
        ax.set_xticks(rounds["round"].astype(int).tolist())
        ax.set_xlim(rounds["round"].min() - 0.3, rounds["round"].max() + 0.3)


def _legend(axes) -> None:
    """One legend under the figure, each label once."""
    handles = {h: a for ax in axes for a, h in zip(*ax.get_legend_handles_labels())}
    axes[0].figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(len(handles), 5),
                          frameon=False, fontsize=8)


def flat_note(series: pd.Series, what: str = "loss") -> str | None:
    """'FLAT: ...' when a training curve did not clearly fall, else None; the same rule for every curve drawn
    (SFT, the reward model, each DPO round and offline DPO).

    The rule reads the whole curve, not its two ends: smooth it with a centred rolling mean over a fifth of its
    points; it fell by `start - min`, from the smoothed start to the smoothed minimum. It is flat when that fall
    is below FLAT (2%) of the start, or below twice the noise of a smoothed point (the residuals' standard
    deviation around the smoothed curve over the square root of the window): a dip that noise could make is
    not learning. A curve that dips and comes back up therefore counts as having learned (its rise is another
    story: overfitting or too high a learning rate).
    """
    v = pd.Series(series, dtype=float).dropna().reset_index(drop=True)
    if len(v) < 2 or v.iloc[0] == 0:
        return None
    window = max(1, len(v) // 5)
    smooth = v.rolling(window, center=True, min_periods=1).mean()
    start, low = smooth.iloc[0], smooth.min()
    noise = (v - smooth).std(ddof=0) / window ** 0.5
    fell = start - low
    if fell >= max(FLAT * abs(start), 2 * noise):
        return None
    return (f"FLAT: the {what} fell at most {fell / abs(start):.1%} (smoothed, from {start:.3f} to {low:.3f}; "
            f"noise {noise:.3f}), so this stage learned little; more steps or a higher learning rate may help")


def _call_out(ax, note: str | None) -> None:
    if note:
        ax.text(0.5, 0.96, note.split(", so")[0], transform=ax.transAxes, ha="center", va="top", fontsize=8,
                color="tab:red", bbox=dict(facecolor="white", edgecolor="tab:red", alpha=0.9))


def dpo_training_curves(run: str | Path, keys: list[str] = DPO_CURVES):
    """DPO loss (ln 2 where it starts), preference accuracy (chance 0.5) and margin against the step, one colour per round."""
    log = train_logs(run, "dpo")
    keys = [k for k in keys if k in log.columns]
    if not keys:
        return _empty(run, "dpo_training_curves", "DPO training", "no DPO train logs yet")
    fig, axes = _grid(len(keys), 3)
    colours = palette(log.model.unique())
    for ax, k in zip(axes, keys):
        sns.lineplot(log.dropna(subset=[k]), x="step", y=k, hue="model", palette=colours, marker="o",
                     markersize=3, ax=ax)
        _chance(ax, k)
        ax.set(xlabel="optimizer step", ylabel=_pretty(k), title=f"DPO {_pretty(k)}")
        ax.legend(fontsize=7, title=None)
    flat = [m for m, g in log.dropna(subset=["loss"]).groupby("model", sort=False)
            if flat_note(g["loss"])] if "loss" in log.columns else []
    _call_out(axes[0], f"FLAT loss: {', '.join(flat)}" if flat else None)
    return _save(fig, run, "dpo_training_curves")


def stage_training_curves(run: str | Path, stage: str = "sft"):
    """The loss of the `stage` (sft or reward) against the step; a flat curve is called out on the figure."""
    rf = RunFolder(run)
    log = pd.DataFrame(rf.train_log_rows(rf.stage(stage)))
    if "step" not in log.columns or "loss" not in log.columns:
        return _empty(run, f"{stage}_training_curves", f"{stage} training", "no train log yet")
    log = log.dropna(subset=["loss"])
    name = {"sft": "SFT", "reward": "Reward-model"}.get(stage, stage)
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    sns.lineplot(log, x="step", y="loss", marker="o", markersize=3, ax=ax)
    if stage == "reward":
        _chance(ax, "loss")  # Bradley-Terry loss of a reward model that cannot tell the two apart
        ax.legend(fontsize=8)
    _call_out(ax, flat_note(log["loss"]))
    ax.set(xlabel="optimizer step", ylabel="training loss", title=f"{name} training loss")
    return _save(fig, run, f"{stage}_training_curves")


def training_note(run: str | Path, stage: str = "sft") -> str:
    """One sentence on a stage's training curve: flat (and what to try) or how far the loss fell."""
    rf = RunFolder(run)
    log = pd.DataFrame(rf.train_log_rows(rf.stage(stage)))
    if "loss" not in log.columns:
        return f"{stage}: no training log yet"
    loss = log["loss"].dropna()
    return flat_note(loss) or f"{stage}: the loss fell from {loss.iloc[0]:.3f} to {loss.iloc[-1]:.3f}"


def generation_summary(run: str | Path, round: int):
    """Round `round`'s sampled rewards (all K per prompt) and its pairs' chosen-minus-rejected gap."""
    rf = RunFolder(run)
    records = rf.generation_records(round)
    if records is None:
        return _empty(run, f"generation_r{round}", f"Round {round} generation", "no samples yet")
    rewards = [r for row in records for r in row["rewards"]]
    pairs = rf.synthetic_pairs(round) if rf.pairs_file(round).exists() else []
    gaps = [p["reward_chosen"] - p["reward_rejected"] for p in pairs if "reward_chosen" in p]
    fig, axes = _grid(2, 2, size=(5, 3.4))
    sns.histplot(x=rewards, bins=30, ax=axes[0])
    axes[0].set(xlabel="reward model score", ylabel="responses", title=f"Round {round}: {len(rewards)} sampled responses")
    sns.histplot(x=gaps, bins=30, color="tab:green", ax=axes[1])
    axes[1].set(xlabel="reward(chosen) - reward(rejected)", ylabel="pairs", title=f"Round {round}: {len(pairs)} pairs kept")
    return _save(fig, run, f"generation_r{round}")
