"""Turning scored samples into chosen/rejected pairs: the pairing strategies and the filters.

Every prompt either yields one pair or is dropped for a counted reason, so
``kept + sum(dropped.values()) == prompts`` always holds.
"""

from __future__ import annotations

import random
from collections import Counter

from .registry import STRATEGIES

def make_pairs(records: list[dict], strategy: str = "max_min", min_gap: float = 0.0, require_eos: bool = True,
               length_penalty: float = 0.0, seed: int = 0, source: str = "synthetic",
               min_agreement: float = 0.0) -> tuple[list[dict], Counter]:
    """One pair per generation record, or a drop reason: missing_eos, empty, identical, small_gap.

    Args:
        records: {"prompt", "responses": [K], "rewards": [K], "ended": [K], "n_tokens": [K]} rows.
        strategy: a name in iterdpo.registry.STRATEGIES (iterdpo/strategies/): max_min (best vs worst),
            max_random (best vs a random other), random (two at random, ordered by reward), max_min_length
            (max_min on reward - length_penalty * n_tokens).
        min_gap: pairs whose (possibly length-penalised) reward gap is below this are dropped.
        require_eos: responses that never ended are not candidates; empty responses never are.
        min_agreement: with a reward ensemble (records carry "member_rewards": [members][K]), the share of
            members that must rank chosen above rejected; the pair records that share as "agreement".
    Returns:
        (pairs, dropped): pairs carry prompt, chosen, rejected, source, reward_chosen, reward_rejected, gap.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown pairing strategy {strategy!r}; choose from {STRATEGIES.names()}")
    chosen_by = STRATEGIES[strategy]
    rng = random.Random(seed)
    pairs, dropped = [], Counter()
    for rec in records:
        resp, rewards = rec["responses"], rec["rewards"]
        scores = list(rewards)
        if chosen_by.length_penalised:
            scores = [r - length_penalty * n for r, n in zip(rewards, rec["n_tokens"])]
        cands = [i for i in range(len(resp)) if rec["ended"][i] or not require_eos]
        if len(cands) < 2:
            dropped["missing_eos"] += 1
            continue
        cands = [i for i in cands if resp[i].strip()]
        if len(cands) < 2:
            dropped["empty"] += 1
            continue
        distinct = list({resp[i].strip(): i for i in cands}.values())
        if len(distinct) < 2:
            dropped["identical"] += 1
            continue
        c, r = chosen_by.pick(scores, distinct, rng)
        gap = scores[c] - scores[r]
        if gap < min_gap or gap <= 0:
            dropped["small_gap"] += 1
            continue
        pair = {"prompt": rec["prompt"], "chosen": resp[c], "rejected": resp[r], "source": source,
                "reward_chosen": rewards[c], "reward_rejected": rewards[r], "gap": gap}
        if "member_rewards" in rec:
            pair["agreement"] = sum(m[c] > m[r] for m in rec["member_rewards"]) / len(rec["member_rewards"])
            if pair["agreement"] < min_agreement:
                dropped["ensemble_disagrees"] += 1
                continue
        if "oracle" in rec:
            pair["oracle_chosen"], pair["oracle_rejected"] = rec["oracle"][c], rec["oracle"][r]
        pairs.append(pair)
    return pairs, dropped
