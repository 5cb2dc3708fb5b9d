"""HumanEval (Chen et al., 2021): 164 Python functions to complete, each checked by running its tests.

A completion is checked by running ``prompt + completion + "\\n" + test + "\\n" + "check(entry_point)\\n"``
in the sandbox (``iterdpo.sandbox``), one fresh process per problem, as upstream human-eval does.

Problem schema, one JSON object a line (``.jsonl`` or ``.jsonl.gz``):
``{"task_id", "prompt", "canonical_solution", "test", "entry_point"}``, every field a string.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from .sandbox import Limits, Outcome, run_program

# Shared data lives beside the repository (../shared/data from the repo root) and is never copied into it.
DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "evals" / "humaneval" / "HumanEval.jsonl.gz"


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem, as in the upstream file."""

    task_id: str  # e.g. "HumanEval/0"
    prompt: str  # imports, signature and docstring; the completion continues it
    canonical_solution: str  # the reference body
    test: str  # defines check(candidate)
    entry_point: str  # the function's name, passed to check


def load_problems(path: str | Path = DEFAULT_PATH) -> list[Problem]:
    """Read problems from a ``.jsonl`` or ``.jsonl.gz`` file; a malformed line raises ValueError "path:line: ..."."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    names = [f.name for f in fields(Problem)]
    problems, seen = [], {}
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected an object, got {type(record).__name__}")
            missing = [n for n in names if not isinstance(record.get(n), str)]
            if missing:
                raise ValueError(f"{path}:{number}: field {missing[0]!r} missing or not a string")
            if record["task_id"] in seen:
                raise ValueError(f"{path}:{number}: task_id {record['task_id']!r} repeats line {seen[record['task_id']]}")
            seen[record["task_id"]] = number
            problems.append(Problem(**{n: record[n] for n in names}))
    if not problems:
        raise ValueError(f"{path}:1: no problems in the file")
    return problems


def program(problem: Problem, completion: str) -> str:
    """The program that checks ``completion``: the prompt, the completion, the tests and the call to check."""
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})\n"


def check(problem: Problem, completion: str, limits: Limits = Limits()) -> Outcome:
    """Run the problem's tests on ``completion`` in the sandbox."""
    return run_program(program(problem, completion), limits)


def check_all(problems: Sequence[Problem], completions: Sequence[str], limits: Limits = Limits()) -> list[dict]:
    """Check completions[i] against problems[i], one after another (the sandbox user is shared).

    Returns one row per problem, ``{"task_id", "status", "error", "seconds"}``; a failure, timeout or
    kill is a row, and the next problem runs regardless.
    """
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    rows = []
    for problem, completion in zip(problems, completions):
        outcome = check(problem, completion, limits)
        rows.append({"task_id": problem.task_id, "status": outcome.status, "error": outcome.error,
                     "seconds": round(outcome.seconds, 3)})
    return rows
