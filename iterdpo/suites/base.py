"""What every capability suite shares: the Suite record, reading items from a file or the hub, and
scoring multiple choice by log-probs.

Item schemas. Multiple choice: ``{"suite", "messages", "options": [str], "answer": int}``. GSM8K:
``{"suite", "messages", "answer_number": str}``. Every option is scored as the completion
``sep + option + eos``, where sep is a space unless the rendered prompt already ends in whitespace (a
chat template's ``assistant\n``); the end token makes ``1`` and ``18`` comparable where the tokenizer
splits digits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import EvalConfig
from ..data import DataError, iter_jsonl, render_prompt
from ..losses import sequence_logprobs
from ..progress import bar

LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Suite:
    """How one suite's items are had and scored; registered under its name in iterdpo.registry.SUITES."""

    score: Callable  # (model, tokenizer, items, EvalConfig) -> accuracy in [0, 1], or (accuracy, a row per item)
    styles: frozenset = frozenset({"chat"})  # the world styles it can serve (iterdpo.worlds.World.style)
    make: Callable | None = None  # (EvalConfig, style, seed) -> items, for a suite that finds its own (no path needed)
    read_local: Callable | None = None  # (path) -> items, for a file-backed suite
    hub: tuple[str, str] | None = None  # (config, split) when the source is a hub dataset name
    hub_item: Callable | None = None  # (hub row, location) -> item
    draw: Callable | None = None  # (items, n, Random) -> the n items scored; None: a seeded sample


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def read_suite(suite: Suite, name: str, source: str, n: int, seed: int) -> list[dict]:
    """n items of a file-backed suite from a local file/folder or a hub dataset name: a seeded sample of the
    test split (or the suite's own draw). A malformed record raises DataError naming file and line."""
    if suite.read_local is None:
        raise ValueError(f"suite {name!r} is not read from a file")
    rows = suite.read_local(Path(source)) if _is_local(source) else _read_hub(suite, source)
    rng = random.Random(seed)
    return suite.draw(rows, n, rng) if suite.draw else rng.sample(rows, min(n, len(rows)))


def _is_local(source: str) -> bool:
    if Path(source).exists():
        return True
    if source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".json", ".csv")):
        raise ValueError(f"{source}: no such file or folder")
    return False  # a hub name such as openai/gsm8k


def _read_hub(suite: Suite, source: str) -> list[dict]:
    from datasets import load_dataset

    config, split = suite.hub
    ds = load_dataset(source, config, split=split)
    return [suite.hub_item(r, f"{source}[{split}]:{i}") for i, r in enumerate(ds)]


def read_jsonl_items(make):
    return lambda path: [make(rec, loc) for loc, rec in iter_jsonl(path)]


def mc_item(suite: str, question: str, choices: list[str], answer: int, subject: str) -> dict:
    """Choices listed as 'A. text' in the prompt; the options scored are the letters."""
    if len(choices) > len(LETTERS):
        raise DataError(f"{suite}: {len(choices)} choices, at most {len(LETTERS)} supported")
    letters = list(LETTERS[: len(choices)])
    listed = "\n".join(f"{l}. {c}" for l, c in zip(letters, choices))
    text = (f"The following is a multiple choice question about {subject}.\n\n{question}\n{listed}\n"
            f"Answer with the letter of the correct choice only.")
    return {"suite": suite, "messages": user(text), "options": letters, "answer": answer, "subject": subject}


# scoring -----------------------------------------------------------------------------------------
def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T), attention_mask (B, T)) with every sequence aligned on the right."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask


def pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pid


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer(render_prompt(messages, tokenizer), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def option_logprobs(model, tokenizer, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> torch.Tensor:
    """(B,) summed log p(completion | prompt) for one batch; only the completion positions get logits."""
    seqs = [p + c for p, c in zip(prompt_ids, completion_ids)]
    ids, mask = left_pad(seqs, pad_id(tokenizer))
    width = max(len(c) for c in completion_ids) + 1  # the last prompt token predicts the first completion token
    cmask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in completion_ids])
    dev = next(model.parameters()).device
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(dev), logits_to_keep=width)
    return sequence_logprobs(out.logits[:, -width:], ids[:, -width:].to(dev), cmask.to(dev)).cpu()


def score_multiple_choice(model, tokenizer, items: list[dict], batch_size: int) -> float:
    """Accuracy: the option with the highest summed log-prob of ``sep + option + eos`` is the answer."""
    if not items:
        raise ValueError("no items to score")
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    flat = []  # (item index, prompt ids, completion ids)
    for i, it in enumerate(items):
        prompt = render_prompt(it["messages"], tokenizer)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sep = "" if prompt[-1:].isspace() else " "
        flat += [(i, p, tokenizer(sep + o, add_special_tokens=False)["input_ids"] + end) for o in it["options"]]
    scores = torch.empty(len(flat))
    was_training = model.training
    model.eval()
    try:
        for s in bar(range(0, len(flat), batch_size), f"{items[0]['suite']} log-probs"):
            chunk = flat[s: s + batch_size]
            scores[s: s + len(chunk)] = option_logprobs(model, tokenizer, [c[1] for c in chunk], [c[2] for c in chunk])
    finally:
        model.train(was_training)
    correct, k = 0, 0
    for it in items:
        n = len(it["options"])
        correct += int(scores[k: k + n].argmax()) == it["answer"]
        k += n
    return correct / len(items)


def score_mc(model, tokenizer, items, cfg: EvalConfig) -> float:
    return score_multiple_choice(model, tokenizer, items, cfg.batch_size)
