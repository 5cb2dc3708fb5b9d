"""Tables of one run: the comparison, responses side by side, decisions, pairs, label quality."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import yaml

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


def responses_table(run: str | Path, n_prompts: int = 8, width: int | None = None) -> pd.DataFrame:
    """Rows = the first `n_prompts` held-out prompts; one column per model: 'response  [reward, oracle]', the
    response whole (or its first `width` characters). Show it with `wide` so nothing is cut."""
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


def pairs_table(run: str | Path, round: int, n: int = 5, width: int | None = None) -> pd.DataFrame:
    """The first `n` pairs built for round `round`: prompt, chosen, rejected (whole, or their first `width`
    characters) and their rewards. Show it with `wide` so nothing is cut."""
    rf = RunFolder(run)
    if not rf.pairs_file(round).exists():
        return pd.DataFrame()
    df = pd.DataFrame(rf.synthetic_pairs(round)[:n])
    text = [c for c in ("prompt", "chosen", "rejected") if c in df.columns]
    df[text] = df[text].apply(lambda col: col.str.slice(0, width))
    return df[[c for c in [*text, "reward_chosen", "reward_rejected", "gap", "source"] if c in df.columns]]


def response_viewer(run: str | Path, n_prompts: int = 32):
    """A prompt picker (ipywidgets) showing every model's response; the table when not in a live notebook."""
    table = responses_table(run, n_prompts)
    if table.empty or not live():
        return wide(table)
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


# ---------------------------------------------------------------- display

WRAP = {"white-space": "pre-wrap", "text-align": "left", "vertical-align": "top"}


def wide(df: pd.DataFrame):
    """`df` for display with every cell whole: text wrapped at real line breaks and the page's width, nothing
    cut at pandas' column width (a Styler, so no display option changes for other tables)."""
    # CSS by selector, not per cell: a table of held-out prompts may repeat one (a non-unique index).
    return (df.style.set_table_styles([{"selector": "td, th", "props": list(WRAP.items())}])
            .format(precision=4, escape="html").format_index(escape="html"))


def config_table(cfg, *sections: str) -> pd.DataFrame:
    """A config as a table, one row per field: its value and help text. `cfg` is one section (``cfg.dpo``) or
    the run's config; for the run's config, its own plain fields and then `sections`' fields (``dpo.beta``)."""
    rows = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value):  # values as text: a column of mixed types would print 120 as 120.0
            rows.append((f.name, value if isinstance(value, str) else json.dumps(value), f.metadata.get("help", "")))
        elif f.name in sections:
            rows += [(f"{f.name}.{n}", v, h) for n, v, h in config_table(value).itertuples()]
    return pd.DataFrame(rows, columns=["field", "value", "help"]).set_index("field")


def card_markdown(card: str) -> str:
    """A model card for display: its YAML front matter (the hub's metadata), which Markdown would run together
    into one line of text, as a small table above the body."""
    if not card.startswith("---\n") or "\n---\n" not in card[4:]:
        return card
    front, body = card[4:].split("\n---\n", 1)
    rows = [f"| {k} | {', '.join(map(str, v)) if isinstance(v, list) else v} |"
            for k, v in (yaml.safe_load(front) or {}).items()]
    return "\n".join(["| card metadata | |", "|---|---|", *rows, "", body.lstrip()])
