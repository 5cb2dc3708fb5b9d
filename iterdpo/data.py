"""Preference data: HH-RLHF text pairs, explicit pairs, the toy world; validation and the held-out split.

Record schemas, checked where they are read:

- pair: ``{"prompt", "chosen", "rejected", "source"}`` (the prompt already rendered with the chat
  template; chosen/rejected are completions), plus optional provenance keys.
- generation record: ``{"prompt", "responses": [K], "rewards": [K], "ended": [K], "n_tokens": [K]}``.

Bad input never disappears: a malformed line or a missing key raises an error naming the file and
line; an empty, identical or over-long pair is skipped and counted in a :class:`Skips`.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
PAIR_KEYS = ("prompt", "chosen", "rejected")
GEN_KEYS = ("prompt", "responses", "rewards", "ended", "n_tokens")


class DataError(ValueError):
    """Input that cannot be read; the message names the file and line."""


@dataclass
class Skips:
    """Counts of skipped records by reason, with the first few locations of each, for metrics.json."""

    counts: Counter = field(default_factory=Counter)
    where: dict = field(default_factory=dict)

    def add(self, reason: str, location: str) -> None:
        self.counts[reason] += 1
        self.where.setdefault(reason, [])
        if len(self.where[reason]) < 5:
            self.where[reason].append(location)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.where}


# reading -------------------------------------------------------------------------------------------
def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(location 'file:line', record) for every non-blank line; a bad line raises DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with _open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            loc = f"{path}:{i}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{loc}: malformed JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(rec, dict):
                raise DataError(f"{loc}: expected a JSON object, got {type(rec).__name__}")
            yield loc, rec


def iter_source(paths: list[str], split: str = "train") -> Iterator[tuple[str, dict]]:
    """Records from local .jsonl/.jsonl.gz files, or from one hub dataset name."""
    for p in paths:
        if Path(p).exists() or p.endswith((".jsonl", ".jsonl.gz", ".json")):
            yield from iter_jsonl(p)
        else:
            from datasets import load_dataset

            for i, rec in enumerate(load_dataset(p, split=split)):
                yield f"{p}[{split}]:{i}", dict(rec)


def require(rec: dict, keys: tuple[str, ...], loc: str, types=(str,)) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DataError(f"{loc}: missing key(s) {missing}; expected {list(keys)}, found {sorted(rec)}")
    bad = [k for k in keys if not isinstance(rec[k], types)]
    if bad:
        raise DataError(f"{loc}: key(s) {bad} must be {'/'.join(t.__name__ for t in types)}")


# HH-RLHF ---------------------------------------------------------------------------------------------
def split_hh(text: str, loc: str = "") -> tuple[list[dict], str]:
    """Split an HH transcript at its last Assistant turn: (history as chat messages, final reply).

    ``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant: d"`` ->
    ``([user a, assistant b, user c], "d")``.
    """
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise DataError(f"{loc}: no '\\n\\nAssistant:' turn in the transcript")
    history, reply = text[:cut], text[cut + len(ASSISTANT):]
    messages = []
    for chunk in history.split(HUMAN)[1:] if history.startswith(HUMAN) else [None]:
        if chunk is None:
            raise DataError(f"{loc}: transcript does not start with '\\n\\nHuman:'")
        human, *assistants = chunk.split(ASSISTANT)
        messages.append({"role": "user", "content": human.strip()})
        messages += [{"role": "assistant", "content": a.strip()} for a in assistants]
    return messages, reply.strip()


def hh_pair(rec: dict, loc: str) -> tuple[list[dict], str, str] | str:
    """(messages, chosen, rejected) from an HH record, or a skip reason."""
    require(rec, ("chosen", "rejected"), loc)
    m_c, chosen = split_hh(rec["chosen"], loc)
    m_r, rejected = split_hh(rec["rejected"], loc)
    if m_c != m_r:
        return "prompt_mismatch"
    return m_c, chosen, rejected


def render_prompt(messages: list[dict], tokenizer) -> str:
    """The prompt as the model sees it: its chat template, or HH's plain format without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = [(HUMAN if m["role"] == "user" else ASSISTANT) + " " + m["content"] for m in messages]
    return "".join(turns) + ASSISTANT


def as_completion(prompt: str, text: str) -> str:
    """`text` as it follows `prompt`: after a space, unless the prompt already ends in whitespace
    (a chat template's ``assistant\n``), where a space would be off the model's distribution."""
    text = text.strip()
    return text if not prompt or prompt[-1].isspace() else " " + text


def check_pair(prompt: str, chosen: str, rejected: str, tokenizer, max_prompt: int, max_response: int) -> str | None:
    """A skip reason, or None when the pair is usable."""
    if not chosen.strip() or not rejected.strip():
        return "empty_response"
    if chosen.strip() == rejected.strip():
        return "identical_responses"
    if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > max_prompt:
        return "prompt_too_long"
    if max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in (chosen, rejected)) > max_response:
        return "response_too_long"
    return None


def load_pairs(source: str, paths: list[str], tokenizer, max_prompt: int, max_response: int,
               split: str = "train", limit: int | None = None) -> tuple[list[dict], Skips]:
    """Pairs from HH-format (`source='hh'`) or explicit `{prompt, chosen, rejected}` records."""
    pairs, skips = [], Skips()
    for loc, rec in iter_source(paths, split):
        if source == "hh":
            got = hh_pair(rec, loc)
            if isinstance(got, str):
                skips.add(got, loc)
                continue
            messages, chosen, rejected = got
        else:
            require(rec, PAIR_KEYS, loc)
            messages, chosen, rejected = [{"role": "user", "content": rec["prompt"]}], rec["chosen"], rec["rejected"]
        prompt = render_prompt(messages, tokenizer)
        reason = check_pair(prompt, chosen, rejected, tokenizer, max_prompt, max_response)
        if reason:
            skips.add(reason, loc)
            continue
        pairs.append({"prompt": prompt, "chosen": as_completion(prompt, chosen), "rejected": as_completion(prompt, rejected),
                      "source": "seed", "origin": loc})
        if limit and len(pairs) >= limit:
            break
    return pairs, skips


def check_records(rows: list[dict], keys: tuple[str, ...], path: str) -> list[dict]:
    """Check a list of records against a schema where it is read."""
    for i, r in enumerate(rows, 1):
        missing = [k for k in keys if k not in r]
        if missing:
            raise DataError(f"{path}:{i}: missing key(s) {missing}")
    return rows


def split_heldout(pairs: list[dict], n_heldout: int, n_train: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A fixed, seeded split: (train, heldout). Prompts in the held-out pairs never appear in training."""
    if len(pairs) < n_heldout + 1:
        raise DataError(f"only {len(pairs)} usable pairs; need more than data.heldout_pairs={n_heldout}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    heldout = [pairs[i] for i in order[:n_heldout]]
    held_prompts = {p["prompt"] for p in heldout}
    train = [pairs[i] for i in order[n_heldout:] if pairs[i]["prompt"] not in held_prompts][:n_train]
    return train, heldout


def unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
