"""Capability: does alignment cost the model what it could already do?

Suites, each a list of items scored to an accuracy in [0, 1]:

- ``probes``: generated here, offline. Style ``toy`` asks the toy world's base skills (``add 3 4`` ->
  ``7``, ``repeat apple`` -> ``apple``); style ``chat`` asks the same in plain English, for any chat model
  (sums are scored as ``3 + 4 = 7``: chat models restate the sum, so a bare ``7`` as the first token
  is off their distribution; SmolLM2-135M-Instruct gets 10% on bare numbers, 95% on restated sums).
- ``gsm8k``: greedy generation; the last number in the output must equal the reference answer.
- ``mmlu``, ``arc``: multiple choice. The choices are listed in the prompt as ``A. ...``; the options
  scored are the letters.

Item schemas. Multiple choice: ``{"suite", "messages", "options": [str], "answer": int}``. GSM8K:
``{"suite", "messages", "answer_number": str}``. Every option is scored as the completion
``sep + option + eos``, where sep is a space unless the rendered prompt already ends in whitespace (a
chat template's ``assistant\n``); the end token makes ``1`` and ``18`` comparable where the tokenizer
splits digits.
"""

from __future__ import annotations

import csv
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import EvalConfig
from .data import DataError, iter_jsonl, render_prompt
from .losses import sequence_logprobs
from .progress import bar
from .toyworld import NUMBERS, WORDS

LETTERS = "ABCDEFGH"
MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
PAIR_SEED_OFFSET = 10_000  # training pairs never share a seed with the evaluation probes


# probes ------------------------------------------------------------------------------------------
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
        items.append({"suite": "probes", "messages": _user(q), "options": options, "answer": answer})
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


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# loaders -----------------------------------------------------------------------------------------
def load_suite(name: str, source: str, n: int, seed: int) -> list[dict]:
    """n items of a file-backed suite (gsm8k, mmlu, arc) from a local file/folder or a hub dataset name.

    A seeded sample of the test split (MMLU: round-robin over shuffled subjects). A malformed record
    raises DataError naming file and line.
    """
    suite = SUITES.get(name)
    if suite is None or suite.read_local is None:
        raise ValueError(f"unknown suite {name!r}: expected one of {sorted(k for k, v in SUITES.items() if v.read_local)}")
    rows = suite.read_local(Path(source)) if _is_local(source) else _read_hub(suite, source)
    return suite.draw(rows, n, random.Random(seed))


def _sample(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    return rng.sample(rows, min(n, len(rows)))


def _is_local(source: str) -> bool:
    if Path(source).exists():
        return True
    if source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".json", ".csv")):
        raise ValueError(f"{source}: no such file or folder")
    return False  # a hub name such as openai/gsm8k


def _read_jsonl_items(make):
    return lambda path: [make(rec, loc) for loc, rec in iter_jsonl(path)]


def _read_mmlu_folder(path: Path) -> list[dict]:
    files = sorted((path / "test").glob("*.csv"))
    if not files:
        raise DataError(f"{path}: no test/*.csv files (expected the MMLU folder with dev/ and test/)")
    return [item for f in files for item in _read_mmlu_csv(f)]


def _read_hub(suite: "Suite", source: str) -> list[dict]:
    from datasets import load_dataset

    config, split = suite.hub
    ds = load_dataset(source, config, split=split)
    return [suite.hub_item(r, f"{source}[{split}]:{i}") for i, r in enumerate(ds)]


def _arc_hub_item(r: dict, loc: str) -> dict:
    opts = [{"label": lab, "text": t} for lab, t in zip(r["choices"]["label"], r["choices"]["text"])]
    return _arc_item({"question": r["question"], "options": opts, "answer": r["answerKey"]}, loc)


def _mmlu_hub_item(r: dict, loc: str) -> dict:
    return _mmlu_item(r["question"], list(r["choices"]), int(r["answer"]), r["subject"], loc)


def _gsm8k_item(rec: dict, loc: str) -> dict:
    q, a = rec.get("question"), rec.get("answer")
    if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
        raise DataError(f"{loc}: expected {{'question': str, 'answer': str ending '#### N'}}")
    number = _normalise(a.rsplit("####", 1)[1].strip())
    if not re.fullmatch(r"-?\d+(\.\d+)?", number):
        raise DataError(f"{loc}: answer after '####' is not a number: {a.rsplit('####', 1)[1].strip()!r}")
    prompt = f"{q}\nSolve it step by step, then give the final answer as a number on the last line."
    return {"suite": "gsm8k", "messages": _user(prompt), "answer_number": number}


def _arc_item(rec: dict, loc: str) -> dict:
    opts, q, ans = rec.get("options"), rec.get("question"), rec.get("answer")
    if not isinstance(q, str) or not isinstance(opts, list) or not all(isinstance(o, dict) and {"label", "text"} <= set(o) for o in opts):
        raise DataError(f"{loc}: expected {{'question': str, 'options': [{{'label', 'text'}}], 'answer': label}}")
    labels = [str(o["label"]) for o in opts]
    if ans not in labels:
        raise DataError(f"{loc}: answer {ans!r} is not among the labels {labels}")
    return _mc_item("arc", q, [o["text"] for o in opts], labels.index(ans), "science")


def _read_mmlu_csv(path: Path) -> list[dict]:
    subject = path.stem.removesuffix("_test").replace("_", " ")
    items = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        if next(reader, None) != MMLU_HEADER:
            raise DataError(f"{path}:1: expected the header {','.join(MMLU_HEADER)}")
        for row in reader:
            loc = f"{path}:{reader.line_num}"  # the row's last line: a quoted field may span lines
            if len(row) != 6 or row[5] not in ("0", "1", "2", "3"):
                raise DataError(f"{loc}: expected 6 fields with answer 0-3, got {row!r}")
            items.append(_mmlu_item(row[0], row[1:5], int(row[5]), subject, loc))
    return items


def _mmlu_item(question: str, choices: list[str], answer: int, subject: str, loc: str) -> dict:
    if not 0 <= answer < len(choices):
        raise DataError(f"{loc}: answer {answer} out of range for {len(choices)} choices")
    return _mc_item("mmlu", question, choices, answer, subject)


def _mc_item(suite: str, question: str, choices: list[str], answer: int, subject: str) -> dict:
    """Choices listed as 'A. text' in the prompt; the options scored are the letters."""
    if len(choices) > len(LETTERS):
        raise DataError(f"{suite}: {len(choices)} choices, at most {len(LETTERS)} supported")
    letters = list(LETTERS[: len(choices)])
    listed = "\n".join(f"{l}. {c}" for l, c in zip(letters, choices))
    text = (f"The following is a multiple choice question about {subject}.\n\n{question}\n{listed}\n"
            f"Answer with the letter of the correct choice only.")
    return {"suite": suite, "messages": _user(text), "options": letters, "answer": answer, "subject": subject}


def _round_robin(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """Up to n rows, one subject at a time in a shuffled order, each subject's rows shuffled."""
    by_subject: dict[str, list[dict]] = {}
    for r in rows:
        by_subject.setdefault(r["subject"], []).append(r)
    queues = [by_subject[s] for s in sorted(by_subject)]
    rng.shuffle(queues)
    for q in queues:
        rng.shuffle(q)
    out = []
    while len(out) < n and any(queues):
        out += [q.pop() for q in queues if q][: n - len(out)]
    return out


# scoring -----------------------------------------------------------------------------------------
def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T), attention_mask (B, T)) with every sequence aligned on the right."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask


def _pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pid


def _prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer(render_prompt(messages, tokenizer), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def option_logprobs(model, tokenizer, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> torch.Tensor:
    """(B,) summed log p(completion | prompt) for one batch; only the completion positions get logits."""
    seqs = [p + c for p, c in zip(prompt_ids, completion_ids)]
    ids, mask = left_pad(seqs, _pad_id(tokenizer))
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
    pad = _pad_id(tokenizer)
    eos = {t for t in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)) if t is not None}
    eos = sorted({e for t in eos for e in (t if isinstance(t, list) else [t])})
    dev = next(model.parameters()).device
    correct = 0
    was_training = model.training
    model.eval()
    try:
        for s in bar(range(0, len(items), batch_size), "gsm8k generation"):
            batch = items[s: s + batch_size]
            ids, mask = left_pad([_prompt_ids(tokenizer, it["messages"]) for it in batch], pad)
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


# the registry: one entry per suite ---------------------------------------------------------------
@dataclass(frozen=True)
class Suite:
    """How one suite's items are had and scored. Adding a suite is one entry in SUITES (and its name in
    config.CAPABILITY_SUITES, which a test keeps equal, so a misspelt suite fails when the config is built)."""

    score: Callable  # (model, tokenizer, items, EvalConfig) -> accuracy in [0, 1]
    read_local: Callable | None = None  # (path) -> items; None: generated here (no file)
    hub: tuple[str, str] | None = None  # (config, split) when the source is a hub dataset name
    hub_item: Callable | None = None  # (hub row, location) -> item
    draw: Callable = _sample  # (items, n, Random) -> the n items scored


def _score_mc(model, tokenizer, items, cfg: EvalConfig) -> float:
    return score_multiple_choice(model, tokenizer, items, cfg.batch_size)


def _score_gsm8k(model, tokenizer, items, cfg: EvalConfig) -> float:
    return score_gsm8k(model, tokenizer, items, cfg.gsm8k_max_new_tokens, cfg.batch_size)


SUITES = {
    "probes": Suite(score=_score_mc),
    "gsm8k": Suite(score=_score_gsm8k, read_local=_read_jsonl_items(_gsm8k_item), hub=("main", "test"),
                   hub_item=_gsm8k_item),
    "mmlu": Suite(score=_score_mc, read_local=_read_mmlu_folder, hub=("all", "test"), hub_item=_mmlu_hub_item,
                  draw=_round_robin),
    "arc": Suite(score=_score_mc, read_local=_read_jsonl_items(_arc_item), hub=("ARC-Challenge", "test"),
                 hub_item=_arc_hub_item),
}


def suite_items(name: str, cfg: EvalConfig, style: str, seed: int) -> list[dict]:
    """The items suite `name` scores: generated probes, or a seeded sample of its file or hub dataset."""
    if name not in SUITES:
        raise ValueError(f"eval.capability: unknown suite {name!r}; expected some of {list(SUITES)}")
    if SUITES[name].read_local is None:
        return probe_items(style, cfg.capability_n, seed)
    if style == "toy":
        raise ValueError(f"eval.capability: suite {name!r} needs a real model; the toy world has only 'probes'")
    if name not in cfg.capability_paths:
        raise ValueError(f"eval.capability includes {name!r} but eval.capability_paths has no {name!r} key; "
                         f"set eval.capability_paths.{name} to a local file/folder or a hub dataset name")
    return load_suite(name, str(cfg.capability_paths[name]), cfg.capability_n, seed)


def capability_scores(model, tokenizer, cfg: EvalConfig, style: str, seed: int) -> dict:
    """{suite: accuracy for each suite in cfg.capability, "capability_score": their mean}."""
    scores = {name: SUITES[name].score(model, tokenizer, suite_items(name, cfg, style, seed), cfg)
              for name in cfg.capability}
    scores["capability_score"] = sum(scores.values()) / len(scores) if scores else float("nan")
    return scores


def score_se(scores: dict, n: int) -> float:
    """Standard error of capability_score, the mean of the suites' accuracies, each a binomial share of n items."""
    accs = [v for k, v in scores.items() if k != "capability_score"]
    return math.sqrt(sum(p * (1 - p) / n for p in accs)) / len(accs) if accs and n > 0 else 0.0


def retention_se(score: float, score_se_: float, baseline: float, baseline_se: float) -> float:
    """Standard error of retention(score, baseline) by the delta method, the two scores taken as independent.
    They are read on the same items, so this overstates the noise: a gate that waits for a drop clear of it
    errs on the side of not rejecting a round."""
    if baseline <= 0 or score <= 0:
        return 0.0
    return (score / baseline) * math.sqrt((score_se_ / score) ** 2 + (baseline_se / baseline) ** 2)


def retention(score: float, baseline: float) -> float:
    """score / baseline; 1.0 when baseline is 0 (a capability the baseline lacked cannot regress)."""
    if math.isnan(score) or math.isnan(baseline) or score < 0 or baseline < 0:
        raise ValueError(f"retention needs non-negative scores, got score={score}, baseline={baseline}")
    return 1.0 if baseline == 0 else score / baseline
