"""The world seam: where a run's base model, prompts and seed pairs come from, and whether an oracle scores
any response. ``data.source`` names the world; each is one module of this package, registered in
``iterdpo.registry.WORLDS``:

- ``toy`` (:mod:`.toy`): a language invented here, a tiny Llama trained from scratch, an exact oracle;
- ``sentiment`` (:mod:`.sentiment`): SmolLM2 on real HH-RLHF requests, VADER's sentiment as the oracle;
- ``hh`` and ``pairs`` (:mod:`.files`): seed pairs read from files, no oracle (the figures that need one are
  left out).

What differs between worlds is a method of the world (:class:`World`), never a branch on the source's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from ..config import ConfigError
from ..data import preflight
from ..models import import_base
from ..registry import WORLDS
from ..runfolder import RunFolder, StageFiles


class SeedData(NamedTuple):
    """What a world's data stage writes: rendered prompts, and pairs ``{prompt, chosen, rejected, source, ...}``
    (a world with an oracle labels them by it and flips a share, ``flipped: True``)."""

    train: list[dict]
    heldout: list[dict]
    heldout_prompts: list[str]
    gen_prompts: list[str]
    metrics: dict  # at least skipped; with an oracle, seed_label_oracle_agreement (1 - the held-out flipped share)


class World:
    """The interface every world follows; the defaults fit a real chat model read from the hub or a folder."""

    style = "chat"  # how capability probes and pairs are phrased: "chat" (plain English) or "toy"
    oracle: Callable[[str, str, bool], float] | None = None  # (rendered prompt, response, ended) -> true score

    def __init__(self, cfg):
        self.cfg = cfg  # the RunConfig

    @classmethod
    def for_run(cls, cfg) -> "World":
        """The world of the run `cfg` (the RunConfig)."""
        return cls(cfg)

    @classmethod
    def check(cls, cfg) -> None:
        """Refuse, when the config is built, what this world cannot serve (raise ConfigError)."""
        if not cfg.data.path:
            raise ConfigError(f"data.source={cfg.data.source!r} needs data.path (local files or a hub name)")

    @property
    def has_oracle(self) -> bool:
        return self.oracle is not None

    def judges(self) -> list[tuple[str, Callable]]:
        """Other readings of the task that neither training nor the controller uses (iterdpo.judges)."""
        return []

    def make_base(self, cfg, dest: Path) -> dict:
        """The base stage: the base model referenced, or converted into `dest` (a GGUF becomes safetensors)."""
        m = import_base(cfg.model, StageFiles(dest).model)
        if m["path"] == str(StageFiles(dest).model):  # converted into the run folder: recorded relative to the run
            m.update(path=RunFolder(cfg.out).base_model_in_run(), in_run=True)
        return m

    def preflight(self, cfg) -> None:
        """Cheap checks before any model loads (data files readable and large enough)."""
        preflight(cfg)

    def seed_data(self, cfg, tokenizer, base: str) -> SeedData:
        """Prompts and seed pairs for the run `cfg`, rendered with `tokenizer`; `base` is where the base model
        loads from (a world may sample its seed replies from it)."""
        raise NotImplementedError

    def example_prompts(self, cfg, n: int) -> list[str]:
        """User messages to try the exported model on."""
        return ["What is direct preference optimization, in two sentences?", "Give me three tips for a job interview.",
                "How do I politely decline an invitation?", "Explain photosynthesis to a child.",
                "Write a haiku about the sea."][:n]

    def hub_base(self, cfg) -> str | None:
        """The base model's hub name, for the model card (None for a local or home-made base)."""
        return None if Path(cfg.model.name_or_path).exists() else cfg.model.name_or_path

    def describe(self, cfg) -> tuple[str, str]:
        """(the base model, the seed data) in a phrase each, for the model card."""
        return f"`{cfg.model.name_or_path}`", ", ".join(cfg.data.path) or cfg.data.source


def world_class(source: str) -> type[World]:
    return WORLDS[source]


def world_of(cfg) -> World:
    """The run's world (`cfg`: the RunConfig)."""
    return world_class(cfg.data.source).for_run(cfg)
