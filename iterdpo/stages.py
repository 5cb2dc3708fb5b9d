"""The stage graph, written once: the stages of a run in order, the notebook that runs each, what each reads and
writes, and the rule for whether round r may run.

The in-process pipeline (iterdpo.pipeline.run_all), the notebook runner (iterdpo.runner) and the notebooks'
readiness checks (iterdpo.notebook.ready) all walk this graph; none keeps its own copy of the order:

    01_sft                    base/ data/ sft/
    02_reward_model           reward/ round_0/eval/
    03_synthetic_preferences  round_r/generate/                      } for each round the controller asks for
    04_dpo_round              round_r/{dpo,eval,repair}/, one line of decisions.jsonl   }
    04_dpo_round (offline)    offline_dpo/{dpo,eval,repair}/         when baseline.offline_dpo
    05_compare_iterations     summary.json plots/ best/
"""

from __future__ import annotations

from dataclasses import dataclass

from .migrate import stop_reason
from .runfolder import OFFLINE_ARM, RunFolder

ITERATIVE, OFFLINE = "iterative", OFFLINE_ARM
ARMS = (ITERATIVE, OFFLINE)


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    writes: str  # its folders in the run ({r}: the round)
    reads: tuple = ()  # the stages that must be finished before it runs
    scope: str = "run"  # run: once per run; round: once per round; offline: the offline arm


STAGES = (
    Stage("base", "01_sft", "base/"),
    Stage("data", "01_sft", "data/", ("base",)),
    Stage("sft", "01_sft", "sft/", ("data",)),
    Stage("reward", "02_reward_model", "reward/ round_0/eval/", ("sft",)),
    Stage("generate", "03_synthetic_preferences", "round_{r}/generate/", ("reward",), "round"),
    Stage("dpo", "04_dpo_round", "round_{r}/dpo/ round_{r}/eval/ round_{r}/repair/ decisions.jsonl", ("reward", "generate"),
          "round"),
    Stage("offline_dpo", "04_dpo_round", "offline_dpo/dpo/ offline_dpo/eval/ offline_dpo/repair/", ("reward", "dpo"),
          "offline"),
    Stage("report", "05_compare_iterations", "summary.json plots/ best/", ("reward",)),
)
BY_NAME = {s.name: s for s in STAGES}
NOTEBOOKS = tuple(dict.fromkeys(s.notebook for s in STAGES))


@dataclass(frozen=True)
class Step:
    """One notebook's run: the notebook, its round (per-round notebooks) and its arm (04_dpo_round)."""

    notebook: str
    round: int | None = None
    arm: str = ITERATIVE

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(s for s in STAGES if s.notebook == self.notebook
                     and (s.scope != "offline" or self.arm == OFFLINE) and (s.scope != "round" or self.arm == ITERATIVE))


def done(run: RunFolder, stage: str, rnd: int | None = None) -> bool:
    """Whether `stage` (of round `rnd`, for a per-round stage) is finished in `run`."""
    if stage in ("base", "data", "sft"):
        return run.done(run.stage(stage))
    if stage == "reward":
        return run.done(run.stage("reward")) and run.done(run.eval(0))
    if stage == "generate":
        return run.done(run.generate(rnd))
    if stage == "dpo":
        return bool(run.decisions()) if rnd is None else rnd in run.decisions()
    if stage == "offline_dpo":
        return run.done(run.eval(OFFLINE))
    if stage == "report":
        return run.summary_path.exists()
    raise ValueError(f"unknown stage {stage!r}; the stages are {list(BY_NAME)}")


def finished(run: RunFolder, step: Step) -> bool:
    """Whether every stage `step` makes is finished, so that its notebook need not run again. The offline arm and
    the report follow every round before them (more rounds mean more offline steps and another summary): they
    always run again, and their stages skip what is current."""
    return all(s.scope in ("run", "round") and s.name != "report" and done(run, s.name, step.round)
               for s in step.stages)


def _first_needed(run: RunFolder, stage: Stage, rnd: int | None, made_here: tuple = ()) -> str | None:
    """What stage `stage` (of round `rnd`) needs first, in one line; None when its reads are finished or are among
    `made_here` (the stages the same notebook runs before it)."""
    texts = {"sft": f"run 01_sft first: {run.root} has no finished SFT stage",
             "reward": f"run 02_reward_model first: {run.root} has no finished reward model",
             "generate": f"run 03_synthetic_preferences with round={rnd} first",
             "dpo": "run the rounds first (03_synthetic_preferences, then 04_dpo_round, round 1)"}
    for name in stage.reads:
        if BY_NAME[name] in made_here:
            continue
        if not done(run, name, rnd if BY_NAME[name].scope == "round" and stage.scope == "round" else None):
            return texts.get(name, f"run {BY_NAME[name].notebook} first: stage {name} is not finished")
    return None


# the rule for rounds ---------------------------------------------------------------------------------
def next_round(run: RunFolder, cfg) -> int | None:
    """The next round to run, or None when the controller (or the round budget) says stop (`cfg`: RunConfig)."""
    decided = run.decisions()
    if not decided:
        return 1
    last = max(decided)
    # a stop on the round budget holds only while the budget does: a resumed run with more rounds goes on
    budget_only = stop_reason(decided[last]) == "round_budget"
    if (decided[last]["stop"] and not budget_only) or last >= cfg.max_rounds:
        return None
    return last + 1


def round_problem(run: RunFolder, cfg, rnd) -> str | None:
    """Why round `rnd` may not run now, in one line; None when it may: the next round by next_round's rule, or one
    already started or finished (its stages resume or skip)."""
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1:
        return f"round={rnd!r}: DPO rounds are numbered from 1 (round 0 is the SFT policy, evaluated by 02_reward_model)"
    decided = run.decisions()
    if rnd in decided or run.done(run.generate(rnd)):
        return None
    last = max(decided, default=0)
    if rnd > last + 1:
        todo = "04_dpo_round" if run.done(run.generate(last + 1)) else "03_synthetic_preferences"
        return f"round={rnd} does not follow: round {last} is the last finished, so run {todo} with round={last + 1} next"
    if next_round(run, cfg) == rnd:
        return None
    why = stop_reason(decided[last]) if last else None
    if why and why != "round_budget":
        return (f"the controller stopped the run after round {last} ({decided[last]['decision']}, {why}); "
                "see decisions.jsonl, or start a new run folder")
    return (f"round={rnd} is past this run's rounds={cfg.rounds}; to go on, pass overrides "
            f'{{"rounds": {rnd}}} to every notebook of the run')


# the walk ----------------------------------------------------------------------------------------------
def missing(run: RunFolder, cfg, step: Step) -> str | None:
    """What `step` needs first on `run`, in one line; None when it is ready."""
    if step.notebook not in NOTEBOOKS:
        return None  # not a stage notebook (the quickstart runs them all)
    if step.arm not in ARMS:
        return f"arm={step.arm!r}: expected one of {ARMS}"
    for stage in step.stages:
        if stage.scope == "round":
            why = _first_needed(run, BY_NAME["reward"], None) or round_problem(run, cfg, step.round)
            if why:
                return why
        why = _first_needed(run, stage, step.round, step.stages)
        if why:
            return why
    return None


def first() -> Step:
    return Step(NOTEBOOKS[0])


def _round_or_tail(cfg, rnd: int | None) -> Step | None:
    if rnd is not None:
        return Step("03_synthetic_preferences", rnd)
    return Step("04_dpo_round", None, OFFLINE) if cfg.baseline.offline_dpo else Step("05_compare_iterations")


def following(cfg, run: RunFolder, step: Step, guess: bool = False) -> Step | None:
    """The step after `step`; None after the last. With `guess`, before `step` has finished: a round's next
    round is taken to be round + 1 (the controller decides after the round), and the first round 1."""
    if step.notebook == "01_sft":
        return Step("02_reward_model")
    if step.notebook == "02_reward_model":
        return _round_or_tail(cfg, 1 if guess else next_round(run, cfg))
    if step.notebook == "03_synthetic_preferences":
        return Step("04_dpo_round", step.round, ITERATIVE)
    if step.notebook == "04_dpo_round" and step.arm == ITERATIVE:
        if guess:
            return _round_or_tail(cfg, step.round + 1 if step.round < cfg.max_rounds else None)
        nxt = next_round(run, cfg)
        if nxt is not None and nxt <= step.round:
            raise RuntimeError(f"round {step.round} ran but the controller asks for round {nxt} next; see decisions.jsonl")
        return _round_or_tail(cfg, nxt)
    if step.notebook == "04_dpo_round":
        return Step("05_compare_iterations")
    return None
