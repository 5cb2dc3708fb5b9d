"""Figures and tables of one run, each a function of the run folder.

Everything here reads the run folder through ``RunFolder`` (metrics, samples, train logs,
decisions), so it works on a finished run, a run in progress and a run copied from another machine.
Each figure is saved as ``RunFolder.plot(name)`` and returned.

Models are labelled ``SFT`` (round 0), ``round 1`` ... ``round N`` and ``offline DPO``, and keep
one colour everywhere: grey for SFT, a light-to-dark ramp for the rounds, orange for offline DPO.
The controller's story is drawn on every per-round figure: the best round gets a gold star, a round
the controller rejected (``adjust_retry``) a red cross, a rolled-back round (``rollback``) a red ring.
Figures judged by the reward model and by the toy world's oracle sit on separate axes: the first is
what the controller sees, the second is the truth it cannot see.
"""

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

from .export import best_round  # noqa: E402
from .runfolder import RunFolder  # noqa: E402

SFT, OFFLINE = "SFT", "offline DPO"
# Metrics shown first in tables, in this order; the rest follow alphabetically.
HEADLINE = ["oracle_score", "mean_reward", "win_rate_vs_sft", "win_rate_vs_previous", "oracle_win_rate_vs_sft",
            "preference_accuracy", "reward_margin", "kl_to_reference", "perplexity", "mean_length",
            "capability_score", "capability_retention"]
# (metric, panel title): judged by the reward model, judged by the oracle, and the held-out pairs.
TRAJECTORY = [("win_rate_vs_sft", "Win rate vs SFT, judged by the reward model"),
              ("oracle_win_rate_vs_sft", "Win rate vs SFT, judged by the oracle"),
              ("preference_accuracy", "Preference accuracy on held-out pairs")]
# The monitors the controller checks, with the config field that holds each one's threshold.
MONITORS = [("kl_to_reference", "max_kl"), ("capability_retention", "min_retention"), ("mean_length", None),
            ("perplexity", None)]
DPO_CURVES = ["loss", "rewards/accuracies", "rewards/margins"]
CHANCE = {"win_rate_vs_sft": 0.5, "oracle_win_rate_vs_sft": 0.5, "win_rate_vs_previous": 0.5,
          "preference_accuracy": 0.5, "rewards/accuracies": 0.5, "loss": math.log(2)}
FLAT = 0.02  # a training curve whose loss moves less than this share of its start is called flat
MARKS = {"best": dict(marker="*", s=260, color="gold", edgecolor="black", zorder=4),
         "rejected": dict(marker="X", s=120, color="tab:red", zorder=4),
         "rolled back": dict(marker="o", s=190, facecolor="none", edgecolor="tab:red", linewidth=2, zorder=4)}


# ---------------------------------------------------------------- reading the run folder

def model_folders(run: str | Path) -> list[tuple[str, int | str, Path]]:
    """(label, round, folder) for SFT, every round and the offline baseline that exist, in order."""
    rf = RunFolder(run)
    out = [(SFT if r == 0 else f"round {r}", r, rf.round_dir(r)) for r in rf.round_numbers()]
    if rf.round_dir("offline_dpo").is_dir():
        out.append((OFFLINE, "offline_dpo", rf.round_dir("offline_dpo")))
    return out


def eval_metrics(run: str | Path) -> pd.DataFrame:
    """One row per evaluated model (index = label), a `round` column and every scalar metric."""
    rf = RunFolder(run)
    rows = {}
    for label, r, _ in model_folders(run):
        if (rf.eval(r) / "metrics.json").exists():
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


# ---------------------------------------------------------------- tables

def comparison_table(run: str | Path, trend_metric: str | None = None) -> pd.DataFrame:
    """Eval metrics per model (rows SFT, round 1..N, offline DPO), a `status` and a `trend` column.

    `status` is the controller's view of each round (best, rejected, rolled back, kept); `trend` shows how
    the headline metric (oracle_score in the toy world, else mean_reward) moved: against the previous
    round for rounds, against SFT for the offline baseline.
    """
    df = eval_metrics(run)
    if df.empty:
        return df
    status = round_status(run)
    df.insert(1, "status", [status.get(int(r), "") if pd.notna(r) else "baseline" for r in df["round"]])
    metric = trend_metric or next((m for m in ("oracle_score", "mean_reward") if m in df.columns), None)
    if metric is None:
        return df
    trend, prev = [], None
    for label, value in df[metric].items():
        ref = df[metric].get(SFT) if label == OFFLINE else prev
        trend.append("" if ref is None or pd.isna(ref) or pd.isna(value) else _arrow(value - ref))
        if label != OFFLINE:
            prev = value
    return df.round(4).assign(trend=trend)


def _arrow(delta: float, tol: float = 1e-3) -> str:
    return f"{'↑' if delta > tol else '↓' if delta < -tol else '→'} {delta:+.3f}"


def responses_table(run: str | Path, n_prompts: int = 8, width: int = 80) -> pd.DataFrame:
    """Rows = the first `n_prompts` held-out prompts; one column per model: 'response  [reward, oracle]'."""
    s = eval_samples(run)
    if s.empty:
        return s
    s = s[s.prompt_id < n_prompts]
    scores = [c for c in ("reward", "oracle") if c in s.columns]
    cell = s.response.str.slice(0, width) + s[scores].apply(
        lambda row: "  [" + ", ".join(f"{c} {row[c]:.2f}" for c in scores) + "]", axis=1)
    table = s.assign(cell=cell).pivot(index="prompt_id", columns="model", values="cell")
    prompts = s.drop_duplicates("prompt_id").set_index("prompt_id").prompt.str.slice(0, width)
    order = [lab for lab, _, _ in model_folders(run) if lab in table.columns]
    return table[order].set_index(prompts.reindex(table.index).rename("prompt"))


def decisions_table(run: str | Path) -> pd.DataFrame:
    """The controller's decisions (decisions.jsonl), one row per round, nested fields written out briefly."""
    decisions = RunFolder(run).decisions()
    if not decisions:
        return pd.DataFrame()
    rows = [{k: _brief(k, v) for k, v in d.items() if k not in ("params", "next_params", "used_params")}
            for _, d in sorted(decisions.items())]
    return pd.DataFrame(rows).set_index("round")


def _brief(key: str, v):
    if key == "changes" and isinstance(v, dict):  # {name: [old, new]}
        return ", ".join(f"{k}: {a:g} → {b:g}" for k, (a, b) in v.items())
    if isinstance(v, dict):
        return ", ".join(f"{k}={x:g}" if isinstance(x, float) else f"{k}={_brief(k, x)}" for k, x in v.items())
    if isinstance(v, list):
        if len(v) > 4 and not all(isinstance(x, dict) for x in v):
            return f"{len(v)} items"
        return ", ".join(str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in v)
    return v


def pairs_table(run: str | Path, round: int, n: int = 5, width: int = 80) -> pd.DataFrame:
    """The first `n` pairs built for round `round`: prompt, chosen, rejected and their rewards."""
    rf = RunFolder(run)
    if not rf.pairs_file(round).exists():
        return pd.DataFrame()
    df = pd.DataFrame(rf.synthetic_pairs(round)[:n])
    text = [c for c in ("prompt", "chosen", "rejected") if c in df.columns]
    df[text] = df[text].apply(lambda col: col.str.slice(0, width))
    return df[[c for c in [*text, "reward_chosen", "reward_rejected", "gap", "source"] if c in df.columns]]


def response_viewer(run: str | Path, n_prompts: int = 32):
    """A prompt picker (ipywidgets) showing every model's response; the table when not in a live notebook."""
    from .notebook import live

    table = responses_table(run, n_prompts, width=400)
    if table.empty or not live():
        return table
    import ipywidgets as w

    pick = w.Dropdown(options=[(p[:80], i) for i, p in enumerate(table.index)], description="prompt",
                      layout=w.Layout(width="95%"))
    # An HTML widget, not an Output widget: capturing output into a widget hung a headless papermill run.
    view = w.HTML(table.iloc[0].rename("response  [score]").to_frame().to_html())

    def show(change):
        view.value = table.iloc[change["new"]].rename("response  [score]").to_frame().to_html()

    pick.observe(show, names="value")
    return w.VBox([pick, view])


def label_quality_table(run: str | Path) -> pd.DataFrame:
    """Per round: pairs kept and dropped (by reason), the reward gap, and in the toy world how often the
    reward model's choice agrees with the oracle, next to the seed labels' agreement."""
    rf = RunFolder(run)
    rows = []
    for r in rf.round_numbers():
        if r == 0 or not rf.done(rf.generate(r)):
            continue
        m = rf.metrics(rf.generate(r))
        row = {"round": r, "pairs": m["pairs"], "pair_success_rate": m["pair_success_rate"],
               "reward_gap_mean": m["reward_gap_mean"]}
        row.update({f"dropped_{k}": v for k, v in m.get("dropped", {}).items()})
        for k in ("synthetic_pair_oracle_agreement", "seed_label_oracle_agreement", "labels_worse_than_seed"):
            if k in m:
                row[k] = m[k]
        rows.append(row)
    return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame()


# ---------------------------------------------------------------- figures

def _mark_bars(ax, labels, status_of: dict) -> None:
    """Hatch the bars of rejected and rolled-back rounds, star the best one."""
    for bar, label in zip(ax.patches, labels):
        st = status_of.get(label, "")
        if st in ("rejected", "rolled back"):
            bar.set_hatch("//")
            bar.set_edgecolor("tab:red")
        if st == "best":
            ax.scatter(bar.get_x() + bar.get_width() / 2, bar.get_height(), **MARKS["best"])


def reward_comparison(run: str | Path):
    """Per model: mean reward (judged by the reward model) and, in the toy world, oracle score, on separate axes."""
    df = eval_metrics(run)
    panels = [(m, t) for m, t in (("mean_reward", "Judged by the reward model: mean reward"),
                                  ("oracle_score", "Judged by the oracle: mean score")) if m in df.columns]
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
    """Win rates and preference accuracy by round (0 = SFT): chance at 0.5, the controller's marks, offline DPO dashed."""
    df = eval_metrics(run)
    panels = [(m, t) for m, t in metrics if m in df.columns and df[m].notna().any()]
    if not panels:
        return _empty(run, "trajectory", "Improvement by round", "no eval metrics yet")
    fig, axes = _grid(len(panels), 3, size=(4.6, 3.6))
    _lines(run, df, panels, axes)
    fig.suptitle("Improvement over rounds (round 0 = SFT). What the controller sees is the reward model's judgement.")
    return _save(fig, run, "trajectory")


def eval_metric_grid(run: str | Path):
    """The controller's monitors by round: KL to the reference, capability retention, length, perplexity,
    each with its threshold where the controller has one, on axes that keep a flat line flat."""
    df = eval_metrics(run)
    panels = [(m, _pretty(m)) for m, _ in MONITORS if m in df.columns and df[m].notna().any()]
    if not panels:
        return _empty(run, "eval_metrics", "Monitors by round", "no eval metrics yet")
    fig, axes = _grid(len(panels), 4, size=(3.8, 3.2))
    _lines(run, df, panels, axes)
    limits = _controller_limits(run)
    for ax, (m, _) in zip(axes, panels):
        field = dict(MONITORS)[m]
        if field and field in limits:
            ax.axhline(limits[field], color="tab:red", ls="--", lw=1, label=f"controller limit ({field})")
    fig.suptitle("What the controller watches, by round (dashed red: its limits)")
    return _save(fig, run, "eval_metrics")


def _controller_limits(run) -> dict:
    rf = RunFolder(run)
    return rf.config().controller.to_dict() if rf.exists() else {}


def _lines(run, df: pd.DataFrame, panels: list[tuple[str, str]], axes) -> None:
    """Metric against round on each axis, points coloured per model, the controller's marks, offline DPO dashed."""
    rounds = df[df["round"].notna()].sort_values("round")
    colours = palette(df.index)
    status = round_status(run)
    for ax, (m, title) in zip(axes, panels):
        ax.plot(rounds["round"], rounds[m], color="0.35", zorder=1)
        for label, row in rounds.iterrows():
            ax.scatter(row["round"], row[m], color=colours[label], s=45, zorder=2, label=label)
            st = status.get(int(row["round"]), "")
            if st in MARKS and pd.notna(row[m]) and (st != "best" or int(row["round"]) > 0 or len(rounds) > 1):
                ax.scatter(row["round"], row[m], label=f"{st} round", **MARKS[st])
        if OFFLINE in df.index and pd.notna(df.loc[OFFLINE, m]):
            ax.axhline(df.loc[OFFLINE, m], ls="--", color=colours[OFFLINE], label=OFFLINE)
        _chance(ax, m)
        _honest_ylim(ax, [*rounds[m], *([df.loc[OFFLINE, m]] if OFFLINE in df.index else [])], m)
        ax.set(xlabel="round", ylabel=_pretty(m), title=title)
        ax.title.set_fontsize(9)
        ax.set_xticks(rounds["round"].astype(int).tolist())
        ax.set_xlim(rounds["round"].min() - 0.3, rounds["round"].max() + 0.3)
    handles = {h: a for ax in axes for a, h in zip(*ax.get_legend_handles_labels())}
    axes[0].figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(len(handles), 5),
                          frameon=False, fontsize=8)


def flat_note(series: pd.Series, what: str = "loss") -> str | None:
    """'flat: ...' when a training curve's `what` moved less than FLAT of its first value, else None."""
    v = pd.Series(series, dtype=float).dropna()
    if len(v) < 2 or v.iloc[0] == 0:
        return None
    moved = (v.iloc[0] - v.iloc[-1]) / abs(v.iloc[0])
    if abs(moved) >= FLAT:
        return None
    return (f"FLAT: the {what} moved {moved:+.1%} from {v.iloc[0]:.3f} to {v.iloc[-1]:.3f}, "
            "so this stage learned little; more steps or a higher learning rate may help")


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


# ---------------------------------------------------------------- the reward-KL frontier

ARM_MARKERS = {SFT: "o", "round": "^", OFFLINE: "s"}


def frontier_points(runs) -> pd.DataFrame:
    """One row per evaluated model of each run folder in `runs` (one folder or a list): run, beta, arm,
    label, kl and score. score is the oracle's where the run has a world, else the reward model's mean; kl
    is the policy's KL to SFT (kl_to_sft), or to its reference in runs that predate it."""
    from .folder import read_json

    rows = []
    for run in [runs] if isinstance(runs, (str, Path)) else list(runs):
        rf = RunFolder(run)
        beta = read_json(rf.config_path).get("dpo", {}).get("beta") if rf.exists() else None
        df = eval_metrics(run)
        if df.empty:
            continue
        score = "oracle_score" if "oracle_score" in df.columns else "mean_reward"
        kl = "kl_to_sft" if "kl_to_sft" in df.columns else "kl_to_reference"
        for label, row in df.iterrows():
            if pd.isna(row.get(score)) or pd.isna(row.get(kl)):
                continue
            arm = label if label in (SFT, OFFLINE) else "round"
            rows.append({"run": str(run), "beta": beta, "arm": arm, "label": label, "round": row["round"],
                         "kl": float(row[kl]), "score": float(row[score]), "score_name": score, "kl_name": kl})
    return pd.DataFrame(rows)


def frontier(runs, name: str = "frontier"):
    """The reward-KL frontier (the DPO paper's figure): score against KL to SFT for SFT, each iterative round
    and offline DPO, one marker per arm and one colour per run folder (labelled by its beta). Several run
    folders (the same preset at a few betas) draw the frontier; the figure goes to the first folder's plots/."""
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    df = frontier_points(runs)
    title = "Reward-KL frontier"
    if df.empty:
        return _empty(runs[0], name, title, "no evaluated models yet")
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    colours = sns.color_palette("colorblind", len(runs))
    for colour, run in zip(colours, runs):
        d = df[df["run"] == str(run)]
        if d.empty:
            continue
        beta = d["beta"].iloc[0]
        tag = f"β={beta:g}" if beta is not None and len(runs) > 1 else Path(run).name if len(runs) > 1 else None
        path = d[d["arm"] != OFFLINE].sort_values("round")
        ax.plot(path["kl"], path["score"], color=colour, linewidth=1.2, alpha=0.7, label=tag)
        for _, p in d.iterrows():
            ax.scatter(p["kl"], p["score"], marker=ARM_MARKERS[p["arm"]], s=70, color=colour, edgecolor="black", zorder=3)
            text = "SFT" if p["arm"] == SFT else "offline" if p["arm"] == OFFLINE else f"r{p['round']}"
            ax.annotate(text, (p["kl"], p["score"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for arm, marker in ARM_MARKERS.items():
        ax.scatter([], [], marker=marker, color="white", edgecolor="black", label=arm if arm != "round" else "iterative round")
    score_name, kl_name = df["score_name"].iloc[0], df["kl_name"].iloc[0]
    judge = "oracle" if score_name == "oracle_score" else "reward model (no oracle in this run)"
    ax.set(xlabel=f"{_pretty(kl_name)} (nats per token)", ylabel=f"{_pretty(score_name)}, judged by the {judge}",
           title=title)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, runs[0], name)


def all_figures(run: str | Path) -> dict:
    """Every run-level figure, by name (what 05_compare_iterations shows)."""
    return {f.__name__: f(run) for f in (reward_comparison, reward_distributions, improvement_trajectory,
                                        dpo_training_curves, eval_metric_grid)}


def tensorboard(run: str | Path, live: bool | None = None):
    """TensorBoard on the run's logs in a live notebook (Colab included); the command to run it otherwise."""
    from .notebook import live as is_live

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
