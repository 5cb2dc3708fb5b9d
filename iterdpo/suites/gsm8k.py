"""The ``gsm8k`` suite: greedy generation; the last number in the output must equal the reference answer."""

from __future__ import annotations

import re

import torch

from ..config import EvalConfig
from ..data import DataError
from ..progress import bar
from ..registry import SUITES
from .base import Suite, left_pad, pad_id, prompt_ids, read_jsonl_items, user


def _gsm8k_item(rec: dict, loc: str) -> dict:
    q, a = rec.get("question"), rec.get("answer")
    if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
        raise DataError(f"{loc}: expected {{'question': str, 'answer': str ending '#### N'}}")
    number = _normalise(a.rsplit("####", 1)[1].strip())
    if not re.fullmatch(r"-?\d+(\.\d+)?", number):
        raise DataError(f"{loc}: answer after '####' is not a number: {a.rsplit('####', 1)[1].strip()!r}")
    prompt = f"{q}\nSolve it step by step, then give the final answer as a number on the last line."
    return {"suite": "gsm8k", "messages": user(prompt), "answer_number": number}


def last_number(text: str) -> str | None:
    """The last number in text, without thousands separators or a trailing '.0'; None if there is none."""
    found = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return _normalise(found[-1]) if found else None


def _normalise(number: str) -> str:
    number = number.replace(",", "").rstrip(".")
    return re.sub(r"\.0+$", "", number)


@torch.no_grad()
def score_gsm8k(model, tokenizer, items: list[dict], max_new_tokens: int, batch_size: int) -> float:
    """Exact-match accuracy of the last number in the greedy output against answer_number."""
    if not items:
        raise ValueError("no items to score")
    pad = pad_id(tokenizer)
    eos = {t for t in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)) if t is not None}
    eos = sorted({e for t in eos for e in (t if isinstance(t, list) else [t])})
    dev = next(model.parameters()).device
    correct = 0
    was_training = model.training
    model.eval()
    try:
        for s in bar(range(0, len(items), batch_size), "gsm8k generation"):
            batch = items[s: s + batch_size]
            ids, mask = left_pad([prompt_ids(tokenizer, it["messages"]) for it in batch], pad)
            out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
            texts = [_decode_until(tokenizer, row.tolist(), set(eos) | {pad}) for row in out[:, ids.shape[1]:]]
            correct += sum(last_number(t) == it["answer_number"] for t, it in zip(texts, batch))
    finally:
        model.train(was_training)
    return correct / len(items)


def _decode_until(tokenizer, ids: list[int], stop: set[int]) -> str:
    """Text up to the first stop token (what follows the answer's end is not the answer)."""
    cut = next((i for i, t in enumerate(ids) if t in stop), len(ids))
    return tokenizer.decode(ids[:cut], skip_special_tokens=False)


def _score(model, tokenizer, items, cfg: EvalConfig) -> float:
    return score_gsm8k(model, tokenizer, items, cfg.gsm8k_max_new_tokens, cfg.batch_size)


SUITES.register("gsm8k", Suite(score=_score, read_local=read_jsonl_items(_gsm8k_item), hub=("main", "test"),
                               hub_item=_gsm8k_item))
