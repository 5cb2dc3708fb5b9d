"""Tables of one run: the comparison, responses side by side, decisions, pairs, label quality."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..progress import live
from ..runfolder import RunFolder
from .frames import OFFLINE, SFT, eval_metrics, eval_samples, model_folders, round_status
from ..metrics import N


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
    metric = trend_metric or next((m for m in (N.oracle_score, N.mean_reward) if m in df.columns), None)
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
        row = {"round": r, N.pairs: m[N.pairs], N.pair_success_rate: m[N.pair_success_rate],
               N.reward_gap_mean: m[N.reward_gap_mean]}
        row.update({f"dropped_{k}": v for k, v in m.get(N.dropped, {}).items()})
        for k in (N.synthetic_pair_oracle_agreement, N.seed_label_oracle_agreement, N.labels_worse_than_seed):
            if k in m:
                row[k] = m[k]
        rows.append(row)
    return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame()
