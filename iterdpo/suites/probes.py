"""The ``probes`` suite, generated here, offline: arithmetic and instruction following. Style ``toy`` asks the
toy world's base skills (``add 3 4`` -> ``7``, ``repeat apple`` -> ``apple``); style ``chat`` asks the same in
plain English, for any chat model (sums are scored as ``3 + 4 = 7``: chat models restate the sum, so a bare
``7`` as the first token is off their distribution)."""

from __future__ import annotations

import random

from ..config import EvalConfig
from ..registry import SUITES
from ..worlds.toy import NUMBERS, WORDS
from .base import Suite, score_mc, user

PAIR_SEED_OFFSET = 10_000  # training pairs never share a seed with the evaluation probes


def probe_items(style: str, n: int, seed: int, keywords: list[str] | None = None) -> list[dict]:
    """n probes, alternating arithmetic and instruction following; deterministic in seed.

    toy: ``add a b`` (options "0".."18") and ``repeat w`` (options: keywords, by default every word of
    the toy world, toyworld.WORDS).
    chat: "What is a + b?" (options "a + b = 0".."a + b = 18") and "Repeat the word 'w' ..." (w and 3 others).
    """
    if style not in ("toy", "chat"):
        raise ValueError(f"probe style {style!r}: expected 'toy' or 'chat'")
    rng = random.Random(seed)
    keywords = list(keywords or WORDS)
    items = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            if style == "toy":
                q, options = f"add {a} {b}", list(NUMBERS)
            else:
                q, options = f"What is {a} + {b}?", [f"{a} + {b} = {s}" for s in NUMBERS]
            answer = a + b
        else:
            w = rng.choice(keywords)
            if style == "toy":
                q, options = f"repeat {w}", list(keywords)
            else:
                q = f"Repeat the word '{w}' and nothing else."
                options = rng.sample([x for x in WORDS if x != w], 3) + [w]
                rng.shuffle(options)
            answer = options.index(w)
        items.append({"suite": "probes", "messages": user(q), "options": options, "answer": answer})
    return items


def capability_pairs(style: str, n: int, seed: int) -> list[dict]:
    """n training pairs from the probe generator (seed + 10_000): chosen the right option, rejected a wrong one.

    The toy skill space is small (100 sums, a few dozen words), so pairs rehearse the skills the probes test
    rather than generalise beyond them; only the draws are independent.
    """
    rng = random.Random(seed + PAIR_SEED_OFFSET + 1)
    pairs = []
    for it in probe_items(style, n, seed + PAIR_SEED_OFFSET):
        wrong = rng.choice([j for j in range(len(it["options"])) if j != it["answer"]])
        pairs.append({"messages": it["messages"], "chosen": " " + it["options"][it["answer"]],
                      "rejected": " " + it["options"][wrong], "source": "capability"})
    return pairs


def _make(cfg: EvalConfig, style: str, seed: int) -> list[dict]:
    return probe_items(style, cfg.capability_n, seed)


SUITES.register("probes", Suite(score=score_mc, styles=frozenset({"toy", "chat"}), make=_make))
