"""The run folder: every path into a run, and every reader of it, in one place.

A run folder is the only state shared between stages, notebooks, plots and the summary. Nothing else
in the package builds a path into it; everything asks this type.

    config.json                   the RunConfig the run was started with (the truth on --resume)
    base/ data/ sft/ reward/      once per run
    round_0/eval/                 the SFT policy's evaluation
    round_r/{generate,dpo,eval}/  per round
    round_r/repair/               a gate-failing round moved back toward its start (iterdpo.repair)
    offline_dpo/{dpo,eval,repair}/  the baseline arm
    best/                         the controller's best round, exported
    decisions.jsonl               the controller's only state: one line per round
    summary.json  plots/  notebooks/  logs/

A *round* is an int (0 = SFT) or the name of an arm (``"offline_dpo"``). Where a round's repair chose a
policy, that policy and its evaluation stand for the round: ``policy(r)`` and ``eval(r)`` point into
``repair/``; ``trained_policy(r)`` and ``trained_eval(r)`` are the round as DPO left it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Union

from . import migrate, weights
from .config import RunConfig
from .data import PAIR_KEYS, check_records
from .folder import (CONFIG_FILE, DONE_FILE, MANIFEST_FILE, DamagedRun, check_stage, is_done, parse_jsonl, read_json,
                     read_jsonl)
from .metrics import N

Round = Union[int, str]
LOCK_FILE = ".lock"  # the process writing the run (pid, host, since when, its command)
OFFLINE_ARM = "offline_dpo"  # the baseline arm's folder and name, beside the numbered rounds
ARMS = (OFFLINE_ARM,)
SFT, OFFLINE = "SFT", "offline DPO"  # how tables, figures and judges label round 0 and the offline arm


def _finished(stage_dir: Path) -> bool:
    """Finished, or damaged after it finished (its manifest remains where its metrics.json went)."""
    return is_done(stage_dir) or (stage_dir / MANIFEST_FILE).exists()


class StageFiles:
    """The files inside one stage folder, finished or still being written (its temporary twin): the names
    the stage that writes them and every reader share."""

    CONFIG, METRICS = CONFIG_FILE, DONE_FILE

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    config = property(lambda self: self.folder / self.CONFIG)
    metrics = property(lambda self: self.folder / self.METRICS)
    train_log = property(lambda self: self.folder / "train_log.jsonl")
    samples = property(lambda self: self.folder / "samples.jsonl")  # generation records, or scored eval samples
    pairs = property(lambda self: self.folder / "pairs.jsonl")
    policy = property(lambda self: self.folder / "policy")  # merged weights, safetensors
    adapter = property(lambda self: self.folder / "adapter")  # the LoRA adapter beside them
    model = property(lambda self: self.folder / "model")  # the base model, or the reward model
    work = property(lambda self: self.folder / "trainer")  # the trainer's scratch folder, removed when done
    dataset = property(lambda self: self.folder / "dataset")  # a training set shared by several processes
    export_record = property(lambda self: self.folder / "export.json")
    members = property(lambda self: self.folder / "members")  # reward-ensemble members after the first

    def capability(self, suite: str) -> Path:
        """capability_<suite>.jsonl in an evaluation folder: the suite's rows, one per item, where it returns them."""
        return self.folder / f"capability_{suite}.jsonl"

    def data(self, name: str) -> Path:
        """data/<name>.jsonl: train_pairs, heldout_pairs, heldout_prompts, gen_prompts."""
        return self.folder / f"{name}.jsonl"


class RunFolder:
    """Paths and readers of one run folder (`root`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # paths -----------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def decisions_path(self) -> Path:
        return self.root / "decisions.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def logs(self) -> Path:
        """Experiment-tracking logs (TensorBoard), one sub-folder per training stage."""
        return self.root / "logs"

    def log_dir(self, stage: str) -> Path:
        """TensorBoard logs of one training stage (base, sft, reward, dpo_round_<r>, offline_dpo)."""
        return self.logs / stage

    @property
    def gate_dir(self) -> Path:
        """The runner's turn-taking flags while notebooks run (iterdpo.gate); removed when the run ends."""
        return self.root / ".runner"

    def metrics_files(self) -> list[Path]:
        """Every finished stage's metrics.json."""
        return [p for p in self.root.glob(f"**/{StageFiles.METRICS}") if ".tmp-" not in str(p)]

    @property
    def best(self) -> Path:
        return self.root / "best"

    def stage(self, name: str) -> Path:
        """A once-per-run stage folder: base, data, sft or reward."""
        if name not in ("base", "data", "sft", "reward"):
            raise ValueError(f"unknown stage {name!r}: expected base, data, sft or reward")
        return self.root / name

    def round_dir(self, rnd: Round) -> Path:
        if isinstance(rnd, bool) or not (isinstance(rnd, int) and rnd >= 0 or rnd in ARMS):
            raise ValueError(f"round {rnd!r}: expected an int >= 0 or one of {ARMS}")
        return self.root / (f"round_{rnd}" if isinstance(rnd, int) else rnd)

    def generate(self, rnd: int) -> Path:
        return self.round_dir(rnd) / "generate"

    def dpo(self, rnd: Round) -> Path:
        return self.round_dir(rnd) / "dpo"

    def repair(self, rnd: Round) -> Path:
        """The repair stage of a round that failed a capability or KL gate (iterdpo.repair)."""
        return self.round_dir(rnd) / "repair"

    def repaired(self, rnd: Round) -> bool:
        """Whether round `rnd`'s repair chose a policy, which then stands for the round."""
        d = self.repair(rnd)
        return rnd != 0 and is_done(d) and read_json(StageFiles(d).metrics).get("alpha") is not None

    def eval(self, rnd: Round) -> Path:
        """The evaluation that stands for round `rnd`: its repair's where one was chosen."""
        return self.repair(rnd) / "eval" if self.repaired(rnd) else self.trained_eval(rnd)

    def trained_eval(self, rnd: Round) -> Path:
        """The evaluation of round `rnd` as DPO left it (what the repair starts from)."""
        return self.round_dir(rnd) / "eval"

    def policy(self, rnd: Round) -> Path:
        """The merged policy of round `rnd` (0 = SFT, 'offline_dpo' = the baseline arm); its repair's where one was
        chosen; rebuilt outside the run where its stage kept only its adapter (model.merged best: weights.py)."""
        repaired = self.repaired(rnd)
        return weights.loadable(self, rnd, StageFiles(self.repair(rnd)) if repaired else self._trained(rnd), repaired)

    def trained_policy(self, rnd: Round) -> Path:
        """The merged policy of round `rnd` as DPO (or SFT) left it (rebuilt where policy is)."""
        return weights.loadable(self, rnd, self._trained(rnd), False)

    def adapter(self, rnd: Round) -> Path:
        """The LoRA adapter that produced `policy(rnd)`, kept beside the merged weights (a repaired round's is its
        trained adapter with the step scaled, iterdpo.repair.scale_adapter)."""
        return StageFiles(self.repair(rnd)).adapter if self.repaired(rnd) else self._trained(rnd).adapter

    def trained_fingerprint(self, rnd: Round) -> str:
        """Which training of round `rnd` (not 0) its evaluation and repair were made from: a hash of its DPO stage's
        metrics.json (a new training writes new figures and timings)."""
        return hashlib.sha256(StageFiles(self.dpo(rnd)).metrics.read_bytes()).hexdigest()[:16]

    def made_from(self, stage_dir: Path, fingerprint: str) -> bool:
        """Whether the stage at `stage_dir` is done and was made from the training `fingerprint`
        (trained_fingerprint; a stage written before fingerprints were recorded counts as made from it)."""
        return is_done(stage_dir) and read_json(StageFiles(stage_dir).config).get("trained", fingerprint) == fingerprint

    def has_policy(self, rnd: Round) -> bool:
        return (self.policy(rnd) / "config.json").exists()

    def _trained(self, rnd: Round) -> StageFiles:
        return StageFiles(self.stage("sft") if rnd == 0 else self.dpo(rnd))

    def reward_model(self) -> Path:
        return StageFiles(self.stage("reward")).model

    def reward_models(self) -> list[Path]:
        """The reward ensemble: the first model, then its other members (reward.ensemble)."""
        members = StageFiles(self.stage("reward")).members
        rest = sorted(members.iterdir(), key=lambda p: int(p.name)) if members.is_dir() else []
        return [self.reward_model(), *rest]

    def base_model_in_run(self) -> str:
        """Where the base stage puts a model it makes, relative to the run (recorded so the run can move)."""
        return str(StageFiles(self.stage("base")).model.relative_to(self.root))

    def data_file(self, name: str) -> Path:
        """data/<name>.jsonl: train_pairs, heldout_pairs, heldout_prompts, gen_prompts."""
        return StageFiles(self.stage("data")).data(name)

    def pairs_file(self, rnd: int) -> Path:
        return StageFiles(self.generate(rnd)).pairs

    def train_log(self, stage_dir: Path) -> Path:
        return StageFiles(stage_dir).train_log

    @property
    def best_adapter(self) -> Path:
        return StageFiles(self.best).adapter

    # readers ---------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.exists()

    def is_run(self) -> bool:
        """Whether this folder holds an iterdpo run: a config.json that reads as a RunConfig (a model folder's
        config.json does not). --resume and --fresh ask the same question."""
        return self.not_a_run() is None

    def not_a_run(self) -> str | None:
        """Why this folder holds no iterdpo run, in a phrase naming config.json; None when it holds one."""
        if not self.config_path.exists():
            return f"{self.config_path}: missing"
        try:
            self.config()
        except DamagedRun as e:
            return str(e)
        except (OSError, ValueError, TypeError, KeyError) as e:
            return f"{self.config_path}: not an iterdpo run's config ({str(e).splitlines()[0][:160]})"
        return None

    @property
    def lock_path(self) -> Path:
        """The lock of the process writing the run (iterdpo.lock)."""
        return self.root / LOCK_FILE

    def _stage_order(self) -> list[tuple[Path, bool]]:
        """(stage folder, whether the run needs it) for every stage a run makes, in the order they are made; a
        repair is made only where a gate failed, and a round whose training went non-finite has no dpo or eval."""
        failed = {r for r, d in self.decisions().items() if d.get("failed")}
        out = [(self.stage(n), True) for n in ("base", "data", "sft", "reward")] + [(self.trained_eval(0), True)]
        for r in [r for r in self.round_numbers() if r > 0]:
            out += [(self.generate(r), True), (self.dpo(r), r not in failed), (self.trained_eval(r), r not in failed),
                    (self.repair(r), False)]
        return out + [(self.dpo(OFFLINE_ARM), True), (self.trained_eval(OFFLINE_ARM), True),
                      (self.repair(OFFLINE_ARM), False)]

    def stage_folders(self) -> list[Path]:
        """Every finished stage folder of the run, in the order they were made (one that lost its metrics.json
        still has its manifest, and counts: it is damaged, not unfinished)."""
        return [d for d, _ in self._stage_order() if _finished(d)]

    def check(self) -> list[str]:
        """What is damaged in the run, one line each, with what to do: a finished stage's file (folder.check_stage),
        a stage missing while stages made after it are finished, decisions.jsonl. Empty when the run is whole."""
        try:
            order = self._stage_order()
        except DamagedRun as e:
            return [str(e)]
        problems = []
        for i, (d, needed) in enumerate(order):
            later = [x for x, _ in order[i + 1:] if _finished(x)]
            todo = (f"start over with --fresh (or restore it: {later[0].relative_to(self.root)} and the stages after "
                    "it were made from it)" if later else f"delete {d} to have --resume redo it, or start over with --fresh")
            if _finished(d):
                problems += [f"{p}; {todo}" for p in check_stage(d)]
            elif needed and later:
                problems.append(f"{d}: missing, though stages made after it are finished; {todo}")
        return problems

    def config(self):
        """The run's own RunConfig, read back from config.json."""
        return RunConfig.from_dict(migrate.config(read_json(self.config_path)))

    def done(self, stage_dir: Path) -> bool:
        return is_done(stage_dir)

    def metrics(self, stage_dir: Path) -> dict:
        return read_json(StageFiles(stage_dir).metrics)

    def base_source(self) -> str:
        """Where the base model loads from: inside the run folder (toy, converted GGUF) or a hub name/path."""
        m = self.metrics(self.stage("base"))
        return str(self.root / m["path"]) if m.get("in_run") else m["path"]

    def pairs(self, name: str) -> list[dict]:
        """Seed pairs (data/<name>.jsonl), checked against the pair schema."""
        path = self.data_file(name)
        return check_records(read_jsonl(path), PAIR_KEYS, str(path))

    def synthetic_pairs(self, rnd: int) -> list[dict]:
        path = self.pairs_file(rnd)
        return check_records(read_jsonl(path), PAIR_KEYS, str(path))

    def prompts(self, name: str) -> list[str]:
        return [r["prompt"] for r in read_jsonl(self.data_file(name))]

    def samples(self, rnd: Round) -> list[dict] | None:
        """The scored evaluation samples of round `rnd`, or None before it is evaluated (a finished evaluation
        without them is damaged, not absent)."""
        return self._finished_rows(self.eval(rnd), StageFiles(self.eval(rnd)).samples, None)

    def generation_records(self, rnd: int) -> list[dict] | None:
        return self._finished_rows(self.generate(rnd), StageFiles(self.generate(rnd)).samples, None)

    def train_log_rows(self, stage_dir: Path) -> list[dict]:
        return self._finished_rows(stage_dir, self.train_log(stage_dir), [])

    def _finished_rows(self, stage_dir: Path, path: Path, before):
        """The rows of `path` in stage `stage_dir`; `before` while the stage is not finished; a finished stage
        without the file is a DamagedRun naming it."""
        if path.exists():
            return read_jsonl(path)
        if is_done(stage_dir):
            raise DamagedRun(f"{path}: missing from a finished stage; delete {stage_dir} to have --resume redo it, "
                             "or start over with --fresh")
        return before

    def plan(self, rnd: int) -> dict:
        """Round `rnd`'s plan (start round, hyper-parameters, targeted data), as its generation stage derived it."""
        return read_json(StageFiles(self.generate(rnd)).config)["plan"]

    def decisions(self) -> dict[int, dict]:
        """The controller's decisions by round (its only state)."""
        return {d["round"]: d for d in self._decision_lines() if "event" not in d}

    def events(self) -> list[dict]:
        """Lines of decisions.jsonl that record something other than a round's decision (a resumed config change)."""
        return [d for d in self._decision_lines() if "event" in d]

    def _decision_lines(self) -> list[dict]:
        """decisions.jsonl's lines. A last line cut short (an append that a full disk or a kill interrupted:
        no newline, not JSON) was never a decision: it is removed, with a line saying so, and the round is
        decided again. A bad line anywhere else is a DamagedRun naming it."""
        if not self.decisions_path.exists():
            return []
        raw = self.decisions_path.read_bytes()
        head, _, last = raw.rpartition(b"\n")
        if last.strip():
            try:
                json.loads(last)
            except ValueError:
                raw = head + b"\n" if head else b""
                self.decisions_path.write_bytes(raw)
                print(f"{self.decisions_path}: removed an unfinished last line (an interrupted append); the round "
                      "it was deciding is decided again")
        try:
            return parse_jsonl(raw.decode("utf-8").splitlines(), self.decisions_path)
        except UnicodeDecodeError as e:
            raise DamagedRun(f"{self.decisions_path}: not valid UTF-8 ({e.reason})") from None

    def summary(self) -> dict:
        return read_json(self.summary_path)

    def evaluated_rounds(self) -> list[int]:
        """Round numbers with a finished evaluation, in order (0 = SFT)."""
        out = []
        for p in self.root.glob("round_*"):
            tail = p.name.removeprefix("round_")
            if tail.isdigit() and is_done(p / "eval"):
                out.append(int(tail))
        return sorted(out)

    def elapsed(self) -> float:
        """Wall seconds of every finished stage of the iterative arm (the controller's time budget)."""
        return sum(read_json(p).get(N.wall_seconds, 0.0) or 0.0 for p in self.root.glob("**/metrics.json")
                   if "offline_dpo" not in p.parts and ".tmp-" not in str(p))

    # plots and export ------------------------------------------------------------------------------
    def plot(self, name: str) -> Path:
        """plots/<name>.png."""
        return self.plots / f"{name}.png"

    @property
    def model_card(self) -> Path:
        """best/README.md: the exported model's card."""
        return self.best / "README.md"

    def models(self) -> list[tuple[str, Round, Path]]:
        """(label, round, folder) for SFT, every round and the offline baseline that exist, in order."""
        out = [(SFT if r == 0 else f"round {r}", r, self.round_dir(r)) for r in self.round_numbers()]
        if self.round_dir("offline_dpo").is_dir():
            out.append((OFFLINE, "offline_dpo", self.round_dir("offline_dpo")))
        return out

    def round_numbers(self) -> list[int]:
        """Round numbers that have a folder, finished or not, in order (0 = SFT)."""
        tails = (p.name.removeprefix("round_") for p in self.root.glob("round_*") if p.is_dir())
        return sorted(int(t) for t in tails if t.isdigit())
