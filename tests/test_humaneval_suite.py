"""The humaneval capability suite: registered on the seam, refused where the world cannot write code, its answers
extracted and checked in the sandbox, and its per-problem rows kept in the evaluation folder.

No model is downloaded: a stub "model" answers each problem with text written here (HumanEval's reference body,
a whole function followed by a usage example, or a wrong function) through a character-level stub tokenizer.
"""

from __future__ import annotations

import json

import pytest
import torch

from iterdpo import evaluate, pipeline
from iterdpo.config import ConfigError, EvalConfig, load_preset
from iterdpo.humaneval import DEFAULT_PATH
from iterdpo.metrics import Evaluation
from iterdpo.registry import SUITES
from iterdpo.runfolder import RunFolder, StageFiles
from iterdpo.suites import capability_results, suite_items
from iterdpo.suites import humaneval as suite

needs_data = pytest.mark.skipif(not DEFAULT_PATH.exists(), reason=f"HumanEval's data is absent: {DEFAULT_PATH}")


class CharTokenizer:
    """One token per character (its code point); 0 pads and ends. No chat template: prompts use HH's format."""

    pad_token_id = eos_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids if i)


class AnsweringModel:
    """Answers each problem it finds in a prompt with answers[task_id] (then a closing fence and prose)."""

    def __init__(self, problems, answers):
        self.problems, self.answers = problems, answers
        self.training, self.generation_config = True, type("G", (), {"eos_token_id": 0})()
        self.prompts = []

    def parameters(self):
        return iter([torch.zeros(1)])

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        replies = []
        for row in input_ids.tolist():
            prompt = "".join(chr(i) for i in row if i)
            self.prompts.append(prompt)
            task = next(p.task_id for p in self.problems if p.prompt in prompt)
            text = self.answers[task] + "```\n\nThis function does what was asked."
            replies.append([ord(c) for c in text][:max_new_tokens] + [0])
        width = max(len(r) for r in replies)
        return torch.cat([input_ids, torch.tensor([r + [0] * (width - len(r)) for r in replies])], dim=1)


def answers_for(problems) -> dict:
    """The reference body; a whole function followed by a usage example and a failing assert of its own (which the
    extraction drops); a wrong function; the reference body again."""
    p0, p1, p2, p3 = problems
    return {p0.task_id: p0.canonical_solution,
            p1.task_id: f"{p1.prompt.strip()}\n{p1.canonical_solution}\n\nprint({p1.entry_point})\nassert False\n",
            p2.task_id: f"def {p2.entry_point}(*args):\n    return None\n",
            p3.task_id: p3.canonical_solution}


def test_the_suite_is_registered_for_chat_worlds_only():
    assert "humaneval" in SUITES.names()
    assert SUITES["humaneval"].styles == {"chat"}
    with pytest.raises(ConfigError, match="'humaneval' cannot serve the toy world"):
        load_preset("tiny", {"eval.capability": ["probes", "humaneval"]})
    assert load_preset("smollm2-hh", {"eval.capability": ["probes", "humaneval"]}).eval.capability == ["probes", "humaneval"]
    assert "humaneval" in load_preset("t4").eval.capability


def test_extraction_keeps_the_code_up_to_the_fence_and_only_definitions_at_the_top():
    text = ("import math\n\n@staticmethod\ndef f(x):\n    return math.sqrt(x)\n\nprint(f(4))\nassert f(4) == 3\n"
            "if __name__ == '__main__':\n    f(1)\n```\nprose ```more```")
    assert suite.extract(text) == "\nimport math\n\n@staticmethod\ndef f(x):\n    return math.sqrt(x)\n"
    assert suite.extract("    return x + 1\n```\nprose") == "\n    return x + 1\n"  # a body alone continues the stub
    assert suite.extract("def f(x):\n    return (x +\n```") == "\ndef f(x):\n    return (x +\n"  # cut short: kept
    assert suite.extract("print('hello')\n") == ""


def test_a_missing_file_is_a_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "HumanEval.jsonl.gz"
    cfg = EvalConfig(capability=["humaneval"], capability_paths={"humaneval": str(missing)})
    with pytest.raises(FileNotFoundError) as error:
        suite_items("humaneval", cfg, "chat", seed=0)
    assert str(missing) in str(error.value) and "\n" not in str(error.value)


@needs_data
def test_the_same_seed_draws_the_same_problems():
    cfg = EvalConfig(capability=["humaneval"], capability_n=5)
    ids = [[it["problem"].task_id for it in suite.make_items(cfg, "chat", seed)] for seed in (1, 1, 2)]
    assert ids[0] == ids[1] != ids[2] and len(set(ids[0])) == 5


@needs_data
def test_answers_are_checked_and_each_problem_gets_a_row():
    cfg = EvalConfig(capability=["humaneval"], capability_n=4, humaneval_max_new_tokens=4096)  # a token a character
    items = suite_items("humaneval", cfg, "chat", seed=3)
    problems = [it["problem"] for it in items]
    model = AnsweringModel(problems, answers_for(problems))
    scores, rows = capability_results(model, CharTokenizer(), cfg, "chat", seed=3)
    assert scores["humaneval"] == scores["capability_score"] == 0.75 and model.training
    assert all(prompt.endswith("\n" + suite.OPEN) for prompt in model.prompts)  # the answer starts in a code block
    got = rows["humaneval"]
    assert [r["task_id"] for r in got] == [p.task_id for p in problems]
    assert [r["status"] for r in got] == ["passed", "passed", "failed", "passed"]
    assert got[2]["error"].startswith("AssertionError") and got[0]["error"] == ""
    assert "assert False" not in got[1]["completion"] and all(r["seconds"] > 0 for r in got)


@needs_data
def test_the_evaluation_stage_writes_the_rows_beside_the_samples(tmp_path, monkeypatch):
    cfg = load_preset("smollm2-hh", {"eval.capability": ["humaneval"], "eval.capability_n": 4,
                                     "eval.humaneval_max_new_tokens": 4096, "out": str(tmp_path / "run")})
    items = suite_items("humaneval", cfg.eval, "chat", seed=cfg.seed)
    problems = [it["problem"] for it in items]
    model = AnsweringModel(problems, answers_for(problems))

    def fake_evaluate_policy(cfg_, run, rnd, ref=None, beta=None, policy=None):
        scores, rows = capability_results(model, CharTokenizer(), cfg_.eval, "chat", cfg_.seed)
        return Evaluation.from_dict({"capability_humaneval": scores["humaneval"]}), [{"prompt": "p"}], rows

    monkeypatch.setattr(evaluate, "evaluate_policy", fake_evaluate_policy)
    metrics = pipeline.evaluate_round(cfg, 0)
    folder = StageFiles(RunFolder(cfg.out).trained_eval(0))
    rows = [json.loads(line) for line in folder.capability("humaneval").read_text().splitlines()]
    assert folder.samples.exists() and metrics["capability_humaneval"] == 0.75
    assert folder.capability("humaneval").name == "capability_humaneval.jsonl"
    assert [r["task_id"] for r in rows] == [p.task_id for p in problems]
    assert [r["status"] for r in rows] == ["passed", "passed", "failed", "passed"]
    assert set(rows[0]) == {"task_id", "status", "error", "seconds", "completion"}
