"""The world seam: a task that supplies its own prompts, seed pairs and an oracle, chosen by ``data.source``.

A *world* is what makes a run measurable: besides the reward model (which never sees it), an oracle
scores any response, so every stage can report how good its outputs really are. Two worlds exist:

- ``toy`` (:mod:`iterdpo.toyworld`): a language invented here, a tiny Llama trained from scratch;
- ``sentiment`` (:mod:`iterdpo.sentiment`): SmolLM2 on real HH-RLHF requests, VADER's sentiment as the oracle.

Sources without a world (``hh``, ``pairs``) read their seed pairs from files and have no oracle: the
figures that need one are left out. Adding a world is one module with a class that follows
:class:`World` and one line in ``WORLDS``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class SeedData(NamedTuple):
    """What a world's data stage writes: rendered prompts, and pairs ``{prompt, chosen, rejected, source,
    flipped}`` labelled by the oracle, a share of them flipped (``flipped: True``)."""

    train: list[dict]
    heldout: list[dict]
    heldout_prompts: list[str]
    gen_prompts: list[str]
    metrics: dict  # at least seed_label_oracle_agreement (1 - the held-out pairs' flipped share) and skipped


class World(Protocol):
    def oracle(self, prompt: str, response: str, ended: bool = True) -> float:
        """The true score of `response` to the rendered `prompt` (`ended`: it finished with an EOS token)."""
        ...

    # Optional: judges() -> [(name, judge(prompt, response, ended))], other readings of the task that neither
    # training nor the controller uses; iterdpo.judges scores every model's evaluation samples with them.

    def seed_data(self, cfg, tokenizer, base: str) -> SeedData:
        """Prompts and labelled seed pairs for the run `cfg` (the RunConfig), rendered with `tokenizer`;
        `base` is where the base model loads from (a world may sample its seed replies from it)."""
        ...


def _toy(cfg) -> World:
    from .toyworld import ToyWorld

    return ToyWorld(cfg.toy)


def _sentiment(cfg) -> World:
    from .sentiment import SentimentWorld

    return SentimentWorld(cfg)


WORLDS = {"toy": _toy, "sentiment": _sentiment}


def has_world(cfg) -> bool:
    """Whether the run's data source is a world (has an oracle)."""
    return cfg.data.source in WORLDS


def world_of(cfg) -> World | None:
    """The run's world (its oracle and seed data), or None for file-based sources (`cfg`: the RunConfig)."""
    return WORLDS[cfg.data.source](cfg) if has_world(cfg) else None
