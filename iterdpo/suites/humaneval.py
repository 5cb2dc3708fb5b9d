"""The ``humaneval`` suite: greedy pass@1 on a seeded sample of HumanEval problems, each run in the sandbox.

Items: ``eval.capability_n`` problems drawn with the run seed, so every round is scored on the same ones, from
``eval.capability_paths.humaneval`` (a ``.jsonl``/``.jsonl.gz`` file, or a hub name such as
``openai/openai_humaneval``), else ``iterdpo.humaneval.DEFAULT_PATH``. Chat worlds only: the toy world's model
cannot write Python.

The prompt: a user message shows the problem's code (imports, signature, docstring) in a Python code block and
asks for the function to be completed; the assistant's turn is started with the block's opening fence
(``OPEN``), so the model answers in code at once, and it writes the whole function. Why not start its turn with the
signature and docstring, as HumanEval prompts a base model? An instruct model as small as SmolLM2-135M-Instruct
then takes the block it was shown for a finished answer and closes the fence before writing a body.

The completion is the code up to the closing fence, with only the imports, functions and classes at its top
level (a usage example or an assert of the model's own would run with the tests). It is checked after the
prompt (``iterdpo.humaneval.check_all``): a function of the same name replaces the prompt's stub, the prompt's
imports and helpers stay in force, and indented lines (a body alone) continue the stub. The score is
``(pass@1, rows)``, one row per problem ``{task_id, status, error, seconds, completion}``, which the evaluation
keeps as ``capability_humaneval.jsonl``: a round that lost code capability can be read problem by problem.
"""

from __future__ import annotations

import ast
import random
from dataclasses import fields
from pathlib import Path

import torch

from ..config import EvalConfig
from ..data import render_prompt
from ..humaneval import DEFAULT_PATH, Problem, check_all, load_problems
from ..progress import bar
from ..registry import SUITES
from ..sandbox import PASSED
from .base import Suite, left_pad, pad_id, user

NAME = "humaneval"
FENCE = "```"
OPEN = FENCE + "python\n"  # a Python code block's opening fence; it also starts the assistant's turn
INSTRUCTION = "Complete the following Python function."
KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)  # a completion's top level


def read_problems(source: str) -> list[Problem]:
    """HumanEval's problems from a local file, or from a hub dataset's test split."""
    path = Path(source).expanduser()
    if path.exists():
        return load_problems(path)
    if source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".gz", ".json")):
        raise FileNotFoundError(f"{NAME}: {source}: no such file (set eval.capability_paths.{NAME} to "
                                f"HumanEval.jsonl.gz or a hub name such as openai/openai_humaneval)")
    from datasets import load_dataset

    names = [f.name for f in fields(Problem)]
    return [Problem(**{n: row[n] for n in names}) for row in load_dataset(source, split="test")]


def make_items(cfg: EvalConfig, style: str, seed: int) -> list[dict]:
    """capability_n problems, a sample seeded by `seed` (the run's: the same problems every round)."""
    problems = read_problems(str(cfg.capability_paths.get(NAME, DEFAULT_PATH)))
    picked = random.Random(seed).sample(problems, min(cfg.capability_n, len(problems)))
    return [{"suite": NAME, "messages": user(f"{INSTRUCTION}\n\n{OPEN}{p.prompt}{FENCE}"),
             "problem": p} for p in picked]


def extract(text: str) -> str:
    """The code of a generated answer, as it is appended to the prompt: the text up to the closing fence, less
    every top-level statement other than an import, function or class. Code that does not parse (a body alone,
    or a function cut short) is kept as it is: appended to the prompt, a body continues the stub, and the
    sandbox reports a syntax error."""
    code = text.split(FENCE, 1)[0]
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return "\n" + code
    lines = code.split("\n")
    spans = [(min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])]), n.end_lineno)
             for n in tree.body if isinstance(n, KEPT)]
    return "".join("\n" + "\n".join(lines[a - 1: b]) + "\n" for a, b in spans)


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of `prompts` (rendered text), each decoded up to its first end token."""
    pad = pad_id(tokenizer)
    eos = {t for t in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)) if t is not None}
    eos = sorted({e for t in eos for e in (t if isinstance(t, list) else [t])})
    stop = set(eos) | {pad}
    dev = next(model.parameters()).device
    texts = []
    was_training = model.training
    model.eval()
    try:
        for s in bar(range(0, len(prompts), batch_size), f"{NAME} generation"):
            ids, mask = left_pad([tokenizer(p, add_special_tokens=False)["input_ids"]
                                  for p in prompts[s: s + batch_size]], pad)
            out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                 stop_strings=[FENCE], tokenizer=tokenizer)
            for row in out[:, ids.shape[1]:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stop), len(row))
                texts.append(tokenizer.decode(row[:cut], skip_special_tokens=False))
    finally:
        model.train(was_training)
    return texts


def check_completions(items: list[dict], texts: list[str]) -> tuple[float, list[dict]]:
    """(pass@1, one row per problem) of the generated `texts`, each checked in the sandbox."""
    completions = [extract(t) for t in texts]
    rows = check_all([it["problem"] for it in items], completions)
    for row, completion in zip(rows, completions):
        row["completion"] = completion
    return sum(r["status"] == PASSED for r in rows) / len(rows), rows


def _answer_start(prompt: str) -> str:
    """The rendered prompt and the opening fence, on a line of its own (a chat template ends in a newline)."""
    return prompt + ("" if prompt[-1:].isspace() else "\n") + OPEN


def score(model, tokenizer, items: list[dict], cfg: EvalConfig) -> tuple[float, list[dict]]:
    if not items:
        raise ValueError("no items to score")
    prompts = [_answer_start(render_prompt(it["messages"], tokenizer)) for it in items]
    return check_completions(items, complete(model, tokenizer, prompts, cfg.humaneval_max_new_tokens, cfg.batch_size))


SUITES.register(NAME, Suite(score=score, make=make_items, styles=frozenset({"chat"})))
