"""The sentiment world: controlled sentiment generation on a real model, the DPO paper's first experiment.

Prompts are the first human turns of HH-RLHF's helpful-base file (real user requests), rendered with the
model's chat template and split, once per run, into three disjoint sets: held-out prompts (evaluation),
generation prompts (the rounds' sampling pool) and seed-pair prompts. The oracle is VADER's compound
sentiment of the reply, in [-1, 1]: the goal is a positive, upbeat reply. VADER's lexicon ships inside
the ``vadersentiment`` package; nothing is downloaded.

Seed pairs are two replies per seed-pair prompt sampled from the base model, labelled by the oracle
(ties, mostly two neutral replies, are dropped and counted), then a fixed share ``sentiment.label_noise``
of the held-out and of the training pairs flipped (marked ``flipped``). SFT trains on the chosen side; the
reward model learns only from these pairs and never calls the oracle.

A reply cut off at ``generation.max_new_tokens`` is scored on what it says (unlike the toy world, which
gives it 0): the share of replies that end is a monitor of its own, reported beside the score.
"""

from __future__ import annotations

import random

from ..data import DataError, Skips, iter_source, render_prompt, split_hh
from ..lexicons import installed, sentiment
from ..metrics import N
from ..models import inference_precision, resolve_precision
from ..progress import bar
from ..registry import WORLDS
from ..samplers import load as load_sampler
from . import SeedData, World

# Extra seed-pair prompts drawn beyond the pairs asked for, to make up for oracle ties (mostly two neutral
# replies both scoring 0), which are skipped.
TIE_MARGIN = 0.2


def first_turns(paths: list[str]) -> list[str]:
    """The first human turn of every HH transcript in `paths` (its ``chosen`` side), in file order, unique."""
    seen: dict[str, None] = {}
    for loc, rec in iter_source(paths):
        if "chosen" not in rec:
            raise DataError(f"{loc}: missing key 'chosen'; expected an HH-RLHF record")
        messages, _ = split_hh(rec["chosen"], loc)
        text = messages[0]["content"].strip()
        if text:
            seen.setdefault(text, None)
    return list(seen)


@WORLDS.register("sentiment")
class SentimentWorld(World):
    """Prompts, seed pairs and the oracle of the sentiment world for one RunConfig."""

    def oracle(self, prompt: str, response: str, ended: bool = True) -> float:
        """VADER's compound sentiment of the reply; the prompt and `ended` do not enter (see the module notes)."""
        return sentiment(response)

    def judges(self) -> list:
        """Two other sentiment lexicons, AFINN and TextBlob, where installed (iterdpo.judges): the loop never sees them."""
        return installed(("afinn", "textblob"))

    def split_prompts(self, tokenizer) -> tuple[list[str], list[str], list[str], Skips]:
        """(held-out prompts, generation prompts, seed-pair prompts, skips): disjoint, rendered, seeded.

        Turns whose rendered prompt exceeds data.max_prompt_tokens are skipped and counted."""
        d = self.cfg.data
        n_pool = d.train_pairs + d.heldout_pairs
        sizes = [d.heldout_prompts, d.gen_prompts, n_pool + int(n_pool * TIE_MARGIN) + 2]
        turns = first_turns(d.path)
        random.Random(self.cfg.seed_for("split")).shuffle(turns)
        kept, skips = [], Skips()
        for i, text in enumerate(turns):
            if len(kept) == sum(sizes):
                break
            prompt = render_prompt([{"role": "user", "content": text}], tokenizer)
            if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > d.max_prompt_tokens:
                skips.add("prompt_too_long", f"turn {i}")
                continue
            kept.append(prompt)
        if len(kept) < sum(sizes[:2]) + n_pool:
            raise DataError(f"{', '.join(d.path)}: {len(kept)} usable first turns ({skips.total} too long), but "
                            f"data.heldout_prompts + gen_prompts + train_pairs + heldout_pairs need {sum(sizes[:2]) + n_pool}")
        a, b = sizes[0], sizes[0] + sizes[1]
        return kept[:a], kept[a:b], kept[b:], skips

    def label(self, records: list[dict], n: int, skips: Skips) -> list[dict]:
        """Up to `n` pairs from sampled records (two replies each), labelled by the oracle; ties are skipped."""
        pairs = []
        for rec in bar(records, "seed labels (oracle)"):
            if len(pairs) == n:
                break
            (a, b), scores = rec["responses"][:2], [self.oracle(rec["prompt"], x) for x in rec["responses"][:2]]
            if not a.strip() or not b.strip() or a.strip() == b.strip():
                skips.add("empty_or_identical_replies", rec["prompt"][-60:])
                continue
            if scores[0] == scores[1]:
                skips.add("oracle_tie", rec["prompt"][-60:])
                continue
            chosen, rejected = (a, b) if scores[0] > scores[1] else (b, a)
            pairs.append({"prompt": rec["prompt"], "chosen": chosen, "rejected": rejected, "source": "seed",
                          "flipped": False})
        return pairs

    def flip(self, pairs: list[dict], rng: random.Random) -> None:
        """Flip exactly round(label_noise * len(pairs)) labels, chosen at random, in place."""
        for i in rng.sample(range(len(pairs)), round(self.cfg.sentiment.label_noise * len(pairs))):
            p = pairs[i]
            pairs[i] = dict(p, chosen=p["rejected"], rejected=p["chosen"], flipped=True)

    def seed_data(self, cfg, tokenizer, base: str) -> SeedData:
        """Prompts split three ways; two replies per seed-pair prompt from the base model (through the
        sampler seam, at the generation settings), labelled by the oracle, a share flipped."""
        d, g = cfg.data, cfg.generation
        held_prompts, gen_prompts, pool, skips = self.split_prompts(tokenizer)
        precision = inference_precision(g.precision, resolve_precision(cfg.model.precision))
        model = load_sampler(g.backend, base, cfg.model, precision, g.batch_size)
        records = model.sample(pool, 2, g.max_new_tokens, g.temperature, g.top_p, seed=cfg.seed_for("seed_pairs"),
                               desc="seed replies (base model)")
        model.close()
        del model
        pairs = self.label(records, d.train_pairs + d.heldout_pairs, skips)
        if len(pairs) <= d.heldout_pairs:
            raise DataError(f"sentiment world: only {len(pairs)} labelled seed pairs; data.heldout_pairs="
                            f"{d.heldout_pairs} needs more ({skips.total} skipped: {dict(skips.counts)})")
        heldout, train = pairs[: d.heldout_pairs], pairs[d.heldout_pairs:]
        rng = random.Random(cfg.seed_for("seed_pairs"))
        self.flip(heldout, rng)
        self.flip(train, rng)
        scores = [self.oracle(r["prompt"], x) for r in records for x in r["responses"]]
        ended = [e for r in records for e in r["ended"]]
        m = {N.seed_label_oracle_agreement: 1 - sum(p["flipped"] for p in heldout) / len(heldout),
             "skipped": skips.to_dict(), "seed_reply_oracle_mean": sum(scores) / len(scores),
             "seed_reply_ended_share": sum(ended) / len(ended), "seed_prompts_sampled": len(records),
             "seed_label_noise": cfg.sentiment.label_noise}
        return SeedData(train, heldout, held_prompts, gen_prompts, m)
