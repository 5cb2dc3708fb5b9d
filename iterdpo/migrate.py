"""Old run folders, read as today's: every shim for a file written by an earlier version, in one place.

Each function takes what was read from disk and returns it as the current code expects it; nothing else
in the package knows that older formats existed.
"""

from __future__ import annotations

from typing import Callable

from .losses import base_perplexity_ratio_se
from .metrics import N, se


def config(d: dict) -> dict:
    """config.json: a run started before the repair existed had none, so a resumed run treats both arms alike."""
    ctl = d.get("controller")
    if isinstance(ctl, dict) and "repair_alphas" not in ctl:
        return {**d, "controller": {**ctl, "repair_alphas": []}}
    return d


def stop_reason(d: dict) -> str | None:
    """Why the run stopped after decision `d` (round_budget, time_budget, converged, non_finite), or None.
    Decisions written before stop_reason was recorded: a stop_budget decision is read as the round budget."""
    if "stop_reason" in d:
        return d["stop_reason"]
    return "round_budget" if d.get("stop") and d.get("decision") == "stop_budget" else ("converged" if d.get("stop") else None)


def fluency_se(m: dict, samples: Callable[[], tuple[list | None, list | None]]) -> dict:
    """An evaluation's metrics `m` with the fluency gate's standard error: evaluations written before it existed
    get it from their stored samples (`samples()` gives the round's and SFT's; read only then), so an old run
    folder's gate knows its noise too."""
    ratio = N.base_perplexity_ratio_vs_sft
    if ratio not in m or se(ratio) in m:
        return m
    mine, sft = (x or [] for x in samples())
    if not mine or len(mine) != len(sft) or not all("base_logp" in s for s in mine + sft):
        return m
    return {**m, se(ratio): base_perplexity_ratio_se(mine, sft)}


def reward_pooling(meta: dict | None) -> str:
    """A reward model's pooling; one saved before pooling existed read the last token."""
    return meta["pooling"] if meta else "last"
