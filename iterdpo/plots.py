"""Figures and tables of one run, each a function of the run folder.

Everything here reads only the files the stages wrote (``round_*/eval/metrics.json``,
``samples.jsonl``, ``train_log.jsonl``, ...), so it works on a finished run, a run in progress and a
run copied from another machine. Each figure is saved as a PNG in ``<run>/plots/`` and returned.

Models are labelled ``SFT`` (round 0), ``round 1`` ... ``round N`` and ``offline DPO``, and keep
one colour everywhere: grey for SFT, a light-to-dark ramp for the rounds, orange for offline DPO.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # headless by default; a notebook keeps its inline backend

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .folder import read_json, read_jsonl  # noqa: E402

SFT, OFFLINE = "SFT", "offline DPO"
# Metrics shown first in tables, in this order; the rest follow alphabetically.
HEADLINE = ["oracle_score", "mean_reward", "win_rate_vs_sft", "win_rate_vs_previous", "oracle_win_rate_vs_sft",
            "preference_accuracy", "reward_margin", "kl_to_reference", "perplexity", "mean_length",
            "capability_score", "capability_retention"]
TRAJECTORY = ["win_rate_vs_sft", "oracle_score", "preference_accuracy"]
DPO_CURVES = ["loss", "rewards/accuracies", "rewards/margins"]


# ---------------------------------------------------------------- reading the run folder

def model_folders(run: str | Path) -> list[tuple[str, int | None, Path]]:
    """(label, round, folder) for SFT, every round and the offline baseline that exist, in order."""
    run = Path(run)
    found = [(int(m.group(1)), p) for p in run.glob("round_*") if (m := re.fullmatch(r"round_(\d+)", p.name))]
    out = [(SFT if r == 0 else f"round {r}", r, p) for r, p in sorted(found)]
    if (run / "offline_dpo").is_dir():
        out.append((OFFLINE, None, run / "offline_dpo"))
    return out


def eval_metrics(run: str | Path) -> pd.DataFrame:
    """One row per evaluated model (index = label), a `round` column and every scalar metric."""
    rows = {}
    for label, r, folder in model_folders(run):
        path = folder / "eval" / "metrics.json"
        if path.exists():
            m = read_json(path)
            rows[label] = {"round": r, **{k: v for k, v in m.items() if _is_number(v)}}
    df = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    if "round" in df.columns:
        df["round"] = df["round"].astype("Int64")
    return df.reindex(columns=_order_columns(df.columns))


def eval_samples(run: str | Path) -> pd.DataFrame:
    """Every evaluated model's held-out samples: model, round, prompt_id, prompt, response, reward, ..."""
    frames = []
    for label, r, folder in model_folders(run):
        path = folder / "eval" / "samples.jsonl"
        if path.exists():
            df = pd.DataFrame(read_jsonl(path))
            frames.append(df.assign(model=label, round=r, prompt_id=range(len(df))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def train_logs(run: str | Path, stage: str = "dpo") -> pd.DataFrame:
    """The `stage` train_log.jsonl of every model that has one, with a `model` column."""
    frames = []
    for label, r, folder in model_folders(run):
        path = folder / stage / "train_log.jsonl"
        if path.exists():
            frames.append(pd.DataFrame(read_jsonl(path)).assign(model=label, round=r))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
    out = Path(run) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
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
    return " ".join({"sft": "SFT", "kl": "KL", "dpo": "DPO"}.get(w, w) for w in words)


def _empty(run, name: str, title: str, why: str):
    fig, ax = plt.subplots(figsize=(6, 2.5), layout="constrained")
    ax.text(0.5, 0.5, why, ha="center", va="center")
    ax.set(title=title, xlabel="", ylabel="", xticks=[], yticks=[])
    return _save(fig, run, name)


# ---------------------------------------------------------------- tables

def comparison_table(run: str | Path, trend_metric: str | None = None) -> pd.DataFrame:
    """Eval metrics per model (rows SFT, round 1..N, offline DPO) and a `trend` column.

    `trend` shows how the headline metric (oracle_score in the toy world, else mean_reward) moved:
    against the previous round for rounds, against SFT for the offline baseline.
    """
    df = eval_metrics(run)
    if df.empty:
        return df
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
    path = Path(run) / "decisions.jsonl"
    if not path.exists():
        return pd.DataFrame()
    rows = [{k: _brief(k, v) for k, v in d.items() if k != "params"} for d in read_jsonl(path)]
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
    path = Path(run) / f"round_{round}" / "generate" / "pairs.jsonl"
    if not path.exists():
        return pd.DataFrame()
    df = pd.DataFrame(read_jsonl(path)[:n])
    text = [c for c in ("prompt", "chosen", "rejected") if c in df.columns]
    df[text] = df[text].apply(lambda col: col.str.slice(0, width))
    return df[[c for c in [*text, "reward_chosen", "reward_rejected", "gap", "source"] if c in df.columns]]


def response_viewer(run: str | Path, n_prompts: int = 32):
    """A prompt picker (ipywidgets) showing every model's response; the table when not in a notebook."""
    table = responses_table(run, n_prompts, width=400)
    try:
        import ipywidgets as w
        from IPython import get_ipython
        from IPython.display import display
        if get_ipython() is None or "ipykernel" not in sys.modules or table.empty:
            raise ImportError
    except ImportError:
        return table
    pick = w.Dropdown(options=[(p[:80], i) for i, p in enumerate(table.index)], description="prompt",
                      layout=w.Layout(width="95%"))
    # An HTML widget, not an Output widget: capturing output into a widget hung a headless papermill run.
    view = w.HTML(table.iloc[0].rename("response  [score]").to_frame().to_html())

    def show(change):
        view.value = table.iloc[change["new"]].rename("response  [score]").to_frame().to_html()

    pick.observe(show, names="value")
    return w.VBox([pick, view])


# ---------------------------------------------------------------- figures

def reward_comparison(run: str | Path):
    """Bars of mean reward (and oracle score in the toy world) for SFT, each round and offline DPO."""
    df = eval_metrics(run)
    metrics = [m for m in ("mean_reward", "oracle_score") if m in df.columns]
    if not metrics:
        return _empty(run, "reward_comparison", "Reward by model", "no eval metrics yet")
    fig, axes = _grid(len(metrics), 2)
    colours = palette(df.index)
    for ax, m in zip(axes, metrics):
        sns.barplot(x=df.index, y=df[m], hue=df.index, palette=colours, legend=False, ax=ax)
        for bars in ax.containers:
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set(xlabel="model", ylabel=_pretty(m), title=f"{_pretty(m)} on held-out prompts")
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
        ax.set(xlabel=f"{names[m]} of a held-out sample", ylabel="density", title=f"Distribution of the {names[m]} (dotted: means)")
    return _save(fig, run, "reward_distributions")


def improvement_trajectory(run: str | Path, metrics: list[str] = TRAJECTORY):
    """Headline metrics against the round (0 = SFT); the offline-DPO arm as a dashed line."""
    df = eval_metrics(run)
    metrics = [m for m in metrics if m in df.columns]
    if not metrics:
        return _empty(run, "trajectory", "Improvement by round", "no eval metrics yet")
    fig, axes = _grid(len(metrics), 3)
    _lines(df, metrics, axes)
    fig.suptitle("Improvement over rounds (round 0 = SFT)")
    return _save(fig, run, "trajectory")


def eval_metric_grid(run: str | Path):
    """Every numeric eval metric against the round, one small panel each."""
    df = eval_metrics(run)
    metrics = [c for c in df.columns if c != "round" and not c.endswith("seconds") and df[c].notna().any()]
    if not metrics:
        return _empty(run, "eval_metrics", "Eval metrics by round", "no eval metrics yet")
    fig, axes = _grid(len(metrics), 4, size=(3.6, 2.8))
    _lines(df, metrics, axes)
    fig.suptitle("Every eval metric by round (round 0 = SFT)")
    return _save(fig, run, "eval_metrics")


def _lines(df: pd.DataFrame, metrics: list[str], axes) -> None:
    """Metric against round on each axis, points coloured per model, offline DPO dashed; one figure legend."""
    rounds = df[df["round"].notna()].sort_values("round")
    colours = palette(df.index)
    for ax, m in zip(axes, metrics):
        ax.plot(rounds["round"], rounds[m], color="0.35", zorder=1)
        for label, row in rounds.iterrows():
            ax.scatter(row["round"], row[m], color=colours[label], s=45, zorder=2, label=label)
        if OFFLINE in df.index and pd.notna(df.loc[OFFLINE, m]):
            ax.axhline(df.loc[OFFLINE, m], ls="--", color=colours[OFFLINE], label=OFFLINE)
        ax.set(xlabel="round", ylabel=_pretty(m), title=_pretty(m))
        ax.set_xticks(rounds["round"].astype(int).tolist())
        ax.set_xlim(rounds["round"].min() - 0.3, rounds["round"].max() + 0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    axes[0].figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(len(handles), 6),
                          frameon=False)


def dpo_training_curves(run: str | Path, keys: list[str] = DPO_CURVES):
    """DPO loss, preference accuracy and margin against the step, one colour per round."""
    log = train_logs(run, "dpo")
    keys = [k for k in keys if k in log.columns]
    if not keys:
        return _empty(run, "dpo_training_curves", "DPO training", "no DPO train logs yet")
    fig, axes = _grid(len(keys), 3)
    colours = palette(log.model.unique())
    for ax, k in zip(axes, keys):
        sns.lineplot(log.dropna(subset=[k]), x="step", y=k, hue="model", palette=colours, marker="o",
                     markersize=3, ax=ax)
        ax.set(xlabel="optimizer step", ylabel=_pretty(k), title=f"DPO {_pretty(k)}")
        ax.legend(fontsize=7, title=None)
    return _save(fig, run, "dpo_training_curves")


def stage_training_curves(run: str | Path, stage: str = "sft"):
    """Every numeric series of `<run>/<stage>/train_log.jsonl` (e.g. sft, reward) against the step."""
    path = Path(run) / stage / "train_log.jsonl"
    log = pd.DataFrame(read_jsonl(path)) if path.exists() else pd.DataFrame()
    if "step" not in log.columns:
        return _empty(run, f"{stage}_training_curves", f"{stage} training", "no train log yet")
    skip = {"step", "epoch"}
    keys = [c for c in log.columns if c not in skip and not c.startswith("train_")
            and pd.api.types.is_numeric_dtype(log[c]) and log[c].notna().sum() > 1]
    fig, axes = _grid(max(len(keys), 1), 3)
    for ax, k in zip(axes, keys):
        sns.lineplot(log.dropna(subset=[k]), x="step", y=k, marker="o", markersize=3, ax=ax)
        ax.set(xlabel="optimizer step", ylabel=_pretty(k), title=_pretty(k))
    fig.suptitle({"sft": "SFT training", "reward": "Reward-model training"}.get(stage, f"{stage} training"))
    return _save(fig, run, f"{stage}_training_curves")


def generation_summary(run: str | Path, round: int):
    """Round `round`'s sampled rewards (all K per prompt) and its pairs' chosen-minus-rejected gap."""
    folder = Path(run) / f"round_{round}" / "generate"
    if not (folder / "samples.jsonl").exists():
        return _empty(run, f"generation_r{round}", f"Round {round} generation", "no samples yet")
    rewards = [r for row in read_jsonl(folder / "samples.jsonl") for r in row["rewards"]]
    pairs = read_jsonl(folder / "pairs.jsonl") if (folder / "pairs.jsonl").exists() else []
    gaps = [p["reward_chosen"] - p["reward_rejected"] for p in pairs if "reward_chosen" in p]
    fig, axes = _grid(2, 2, size=(5, 3.4))
    sns.histplot(x=rewards, bins=30, ax=axes[0])
    axes[0].set(xlabel="reward model score", ylabel="responses", title=f"Round {round}: {len(rewards)} sampled responses")
    sns.histplot(x=gaps, bins=30, color="tab:green", ax=axes[1])
    axes[1].set(xlabel="reward(chosen) - reward(rejected)", ylabel="pairs", title=f"Round {round}: {len(pairs)} pairs kept")
    return _save(fig, run, f"generation_r{round}")


def all_figures(run: str | Path) -> dict:
    """Every run-level figure, by name (what 05_compare_iterations shows)."""
    return {f.__name__: f(run) for f in (reward_comparison, reward_distributions, improvement_trajectory,
                                        dpo_training_curves, eval_metric_grid)}


def label_quality_table(run: str | Path) -> pd.DataFrame:
    """Per round: pairs kept and dropped (by reason), the reward gap, and in the toy world how often the
    reward model's choice agrees with the oracle, next to the seed labels' agreement."""
    rows = []
    for folder in sorted(Path(run).glob("round_*/generate"), key=lambda p: int(p.parent.name.split("_")[1])):
        m = read_json(folder / "metrics.json")
        row = {"round": int(folder.parent.name.split("_")[1]), "pairs": m["pairs"],
               "pair_success_rate": m["pair_success_rate"], "reward_gap_mean": m["reward_gap_mean"]}
        row.update({f"dropped_{k}": v for k, v in m.get("dropped", {}).items()})
        for k in ("synthetic_pair_oracle_agreement", "seed_label_oracle_agreement", "labels_worse_than_seed"):
            if k in m:
                row[k] = m[k]
        rows.append(row)
    return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame()
