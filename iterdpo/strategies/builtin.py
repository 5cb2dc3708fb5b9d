"""The built-in pairing strategies: best against worst (on reward, or on length-penalised reward), best
against a random other, and two at random ordered by reward."""

from __future__ import annotations

import random

from ..registry import STRATEGIES
from . import Strategy


def _max_min(scores: list[float], cands: list[int], rng: random.Random) -> tuple[int, int]:
    return max(cands, key=lambda i: scores[i]), min(cands, key=lambda i: scores[i])


def _max_random(scores: list[float], cands: list[int], rng: random.Random) -> tuple[int, int]:
    best = max(cands, key=lambda i: scores[i])
    return best, rng.choice([i for i in cands if i != best])


def _random(scores: list[float], cands: list[int], rng: random.Random) -> tuple[int, int]:
    a, b = rng.sample(cands, 2)
    return (a, b) if scores[a] >= scores[b] else (b, a)


STRATEGIES.register("max_min", Strategy(_max_min))
STRATEGIES.register("max_random", Strategy(_max_random))
STRATEGIES.register("random", Strategy(_random))
STRATEGIES.register("max_min_length", Strategy(_max_min, length_penalised=True))
