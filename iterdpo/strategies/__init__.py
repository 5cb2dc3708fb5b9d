"""The pairing seam: how one prompt's scored samples become a chosen/rejected pair (``generation.strategy``).

A strategy picks (chosen, rejected) among a prompt's candidate samples from their scores; pairs.make_pairs
does everything else (candidates, filters, counts). Adding one is one new module here that registers a
:class:`Strategy` in ``iterdpo.registry.STRATEGIES``; the built-in ones are in :mod:`.builtin`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Strategy:
    pick: Callable[[list[float], list[int], random.Random], tuple[int, int]]  # (scores, candidates, rng) -> (i, j)
    length_penalised: bool = False  # score each sample as reward - generation.length_penalty * its tokens
