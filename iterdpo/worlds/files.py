"""Seed pairs read from files, without an oracle: ``hh`` (HH-RLHF transcripts, chosen against rejected) and
``pairs`` (explicit ``{prompt, chosen, rejected}`` JSONL). The held-out split is seeded; held-out and
generation prompts are the pairs' own prompts. Pairs that cannot be used are skipped and counted."""

from __future__ import annotations

from ..data import load_pairs, split_heldout, unique
from ..registry import WORLDS
from . import SeedData, World


@WORLDS.register("hh")
@WORLDS.register("pairs")
class FilePairs(World):
    def seed_data(self, cfg, tokenizer, base: str) -> SeedData:
        d = cfg.data
        pairs, skips = load_pairs(d.source, d.path, tokenizer, d.max_prompt_tokens, d.max_response_tokens, d.hub_split,
                                  limit=(d.train_pairs + d.heldout_pairs) * 2)
        train, heldout = split_heldout(pairs, d.heldout_pairs, d.train_pairs, cfg.seed_for("split"), skips)
        held_prompts = unique([p["prompt"] for p in heldout])[: d.heldout_prompts]
        gen_prompts = unique([p["prompt"] for p in train])[: d.gen_prompts]
        if skips.total:
            print(f"data: skipped {skips.total} pairs: {dict(skips.counts)} (first: {skips.where})")
        return SeedData(train, heldout, held_prompts, gen_prompts, {"skipped": skips.to_dict()})
