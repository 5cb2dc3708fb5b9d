"""The verdict on one round: one function, ``judge``, from the round's evidence to its decision record.

It reads the evaluation that stands for the round (the repair's kept candidate's, where one was kept), runs
the collapse check and the label check, holds the metrics to the gates (iterdpo.controller.gates), and
decides by the design's matrix:

=====================  =========================================================================
decision               when
=====================  =========================================================================
rollback               the round degrades (score clearly below the top earlier round's, or it
                       collapsed, or its samples lost fluency): the next round restarts from the
                       best round
adjust_retry           KL violation or capability regression that the repair could not mend: new
                       hyper-parameters, restart from the best round
stop_budget            rounds or wall time used up: the best round is the result
final_evaluation       converged and every quality gate passes
stop_converged         converged, some gate still failing
adjust_continue        alignment still weak from round `weak_after_round` on: push harder
continue               improving, within budget
=====================  =========================================================================

A round's score is its win rate against the SFT baseline by the reward model; the oracle is never used to
decide. Everything here is pure: the run folder is read by iterdpo.controller.log, which gathers the
evidence and appends the verdict to decisions.jsonl.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..config import ADJUSTABLE, ControllerConfig, RunConfig
from ..metrics import N
from .gates import (DEGRADING, RETRY, Trigger, best_round, clearly_below, collapse_check, converged, gates, score,
                    top_round, weaknesses)


@dataclass
class Evidence:
    """What the verdict on round `round` reads (gathered from the run folder by controller.log.gather)."""

    round: int
    metrics: dict  # the evaluation that stands for the round, with its standard errors
    history: dict  # {earlier round: its metrics, with its collapsing flag}; 0 = SFT
    plan: dict  # where the round started and the hyper-parameters it used (controller.log.round_plan)
    elapsed: float  # wall seconds of the iterative arm so far
    max_rounds: int
    chosen_logratios: list = field(default_factory=list)  # per logged DPO step, nats (see collapse_check)
    rejected_logratios: list = field(default_factory=list)
    sft_mean_length: float = 0.0
    generation: dict = field(default_factory=dict)  # the round's generation-stage figures
    reward: dict = field(default_factory=dict)  # the reward stage's figures
    heldout_pairs: int = 1
    generation_records: list | None = None
    repair: dict | None = None  # the repair stage's record, where one ran


@dataclass
class Verdict:
    """One line of decisions.jsonl: what happened to a round and what the next one does (fields in line order)."""

    round: int
    decision: str
    failed: bool | None = None  # training went non-finite: nothing of the round was saved
    error: str | None = None
    triggers: list = field(default_factory=list)
    changes: dict = field(default_factory=dict)  # {param: [before, after]}
    params: dict = field(default_factory=dict)  # the carried hyper-parameters the round started with
    next_params: dict = field(default_factory=dict)
    targeted: dict = field(default_factory=dict)  # targeted data for the next round
    best_round: int = 0
    next_start_round: int = 0
    stop: bool = False
    stop_reason: str | None = None
    score: float | None = None
    degrading: bool = False
    elapsed_seconds: float = 0.0
    collapsing: bool = False
    collapse_reasons: list = field(default_factory=list)
    collapse_warnings: list = field(default_factory=list)
    gates: dict | None = None  # every gate's estimate, interval and threshold, triggered or not
    labels: dict | None = None
    used_params: dict = field(default_factory=dict)  # what the round trained with (a schedule entry included)
    start_round: int = 0
    repair: dict | None = None

    def to_dict(self) -> dict:
        """The JSON line; the parts a round may lack (failed, error, collapse reasons, gates, labels, repair) only
        when it has them."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items()
                if not (v is None and k in _WHEN_SET or isinstance(v, list) and not v and k in _WHEN_ANY)}

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_WHEN_SET = {"failed", "error", "gates", "labels", "repair"}  # written only when set
_WHEN_ANY = {N.collapse_reasons, N.collapse_warnings}


def label_gain(gen: dict, rm: dict, mode: str, n_heldout: int) -> dict:
    """How much better the round's synthetic labels are than the seed labels (label_gain, with its standard
    error), for the labels gate; both measures where they exist.

    oracle: the share of the round's pairs the world's oracle agrees with, minus the seed labels' share (binomial
    standard errors). estimate: the reward ensemble's accuracy minus its seed-label accuracy on held-out seed
    pairs (losses.label_estimates; a bootstrap standard error): oracle-free."""
    if mode == "off":
        return {}
    out: dict = {}
    if N.synthetic_pair_oracle_agreement in gen and gen.get(N.pairs):
        a, s = gen[N.synthetic_pair_oracle_agreement], gen[N.seed_label_oracle_agreement]
        out[N.label_gain_oracle] = a - s
        out[N.label_gain_oracle_se] = (a * (1 - a) / gen[N.pairs] + s * (1 - s) / max(1, n_heldout)) ** 0.5
    if rm.get(N.ensemble_label_accuracy_est) is not None and rm.get(N.seed_label_accuracy_est) is not None:
        out[N.label_gain_est] = rm[N.ensemble_label_accuracy_est] - rm[N.seed_label_accuracy_est]
        out[N.label_gain_est_se] = rm.get(N.label_gain_est_se)
    source = ("oracle" if N.label_gain_oracle in out else "estimate") if mode == "auto" else mode
    if source == "oracle" and N.label_gain_oracle in out:
        out.update({N.label_gain: out[N.label_gain_oracle], N.label_gain_se: out[N.label_gain_oracle_se]})
    elif source == "estimate" and N.label_gain_est in out:
        out.update({N.label_gain: out[N.label_gain_est], N.label_gain_se: out[N.label_gain_est_se]})
    out[N.label_check_source] = source if N.label_gain in out else "none (no oracle, or reward.ensemble < 2)"
    out[N.label_median_gap] = gen.get(N.reward_gap_quantiles, {}).get("0.5")
    return out


def adjust(params: dict, triggers: list[Trigger], rnd: int, cfg: ControllerConfig) -> tuple[dict, dict]:
    """New hyper-parameters and the changes {param: [before, after]}, by the design's rules."""
    new = dict(params)
    names = {t.name for t in triggers}
    if names & {"kl_violation", "over_optimisation"}:
        new["beta"] *= cfg.kl_beta_mult
        new["learning_rate"] *= cfg.kl_lr_mult
    if "capability_regression" in names:
        new["beta"] *= cfg.cap_beta_mult
        new["learning_rate"] *= cfg.cap_lr_mult
        new["max_steps"] = max(1, int(round(new["max_steps"] * cfg.cap_steps_mult)))
    if "weak_alignment" in names and rnd >= cfg.weak_after_round and not names & RETRY:
        new["learning_rate"] *= cfg.weak_lr_mult
        new["beta"] *= cfg.weak_beta_mult
    changes = {k: [params[k], new[k]] for k in ADJUSTABLE if new[k] != params[k]}
    return new, changes


def hard_prompts(generation_records: list[dict], share: float) -> list[str]:
    """Prompts whose best and worst samples the reward model barely separates (the hardest share)."""
    gaps = [(max(r["rewards"]) - min(r["rewards"]), r["prompt"]) for r in generation_records if r["rewards"]]
    gaps.sort(key=lambda g: g[0])
    return [p for _, p in gaps[: max(1, int(len(gaps) * share))]]


def _targeted(m: dict, names: set, cfg: ControllerConfig, generation_records) -> dict:
    targeted: dict = {}
    if "capability_regression" in names:
        targeted["capability_pairs"] = True
    if "weak_alignment" in names and generation_records:
        targeted["hard_prompts"] = hard_prompts(generation_records, cfg.hard_prompt_share)
    if "labels_no_better_than_seed" in names and m.get(N.label_median_gap) is not None:
        targeted["min_reward_gap"] = m[N.label_median_gap]  # keep the more confident half of the next round's pairs
    return targeted


def _decision(history: dict, rnd: int, names: set, changes: dict, cfg: ControllerConfig, out_of_budget: bool,
              gates_pass: bool) -> tuple[str, int, bool]:
    """(decision, the round the next one starts from, degrading) by the matrix in the module docstring."""
    best = best_round(history, cfg)
    # Against the earlier rounds' top, not their best: rounds each within the noise of the one before must not
    # drift down unchecked.
    prev_top = top_round({r: v for r, v in history.items() if r != rnd}, cfg)
    degrading = bool(names & DEGRADING) or clearly_below(history[rnd], history[prev_top], cfg)
    if degrading:
        return "rollback", best, True
    if names & RETRY:
        return "adjust_retry", best, False
    if out_of_budget:
        return "stop_budget", best, False
    if converged(history, cfg):
        return ("final_evaluation" if gates_pass else "stop_converged"), best, False
    return ("adjust_continue" if changes else "continue"), rnd, False


def decide(history: dict, rnd: int, carried: dict, cfg: ControllerConfig, max_rounds: int, elapsed: float,
           generation_records: list | None = None) -> Verdict:
    """The decision after round `rnd`, from every evaluated round so far (`history`, 0 = SFT; round `rnd`'s metrics
    carry its collapse and label checks) and the hyper-parameters it carried."""
    m = history[rnd]
    out_of_budget = rnd >= max_rounds or elapsed >= cfg.max_seconds
    reason = "round_budget" if rnd >= max_rounds else "time_budget" if elapsed >= cfg.max_seconds else None
    if cfg.enabled:
        triggers = weaknesses(m, cfg)
        names = {t.name for t in triggers}
        new, changes = adjust(carried, triggers, rnd, cfg)
        decision, start, degrading = _decision(history, rnd, names, changes, cfg, out_of_budget, not triggers)
        stop = out_of_budget or decision in ("final_evaluation", "stop_converged")  # the budget stops whatever else
        best, targeted = best_round(history, cfg), _targeted(m, names, cfg, generation_records)
        reason = reason or ("converged" if stop else None)
    else:
        triggers, new, changes, targeted = [], carried, {}, {}
        decision, start, degrading, best, stop = "continue", rnd, False, rnd, rnd >= max_rounds
        reason = "round_budget" if stop else None
    return Verdict(round=rnd, decision=decision, triggers=[t.to_dict() for t in triggers], changes=changes,
                   params=carried, next_params=new, targeted=targeted, best_round=best, next_start_round=start, stop=stop,
                   stop_reason=reason, score=score(m), degrading=degrading, elapsed_seconds=elapsed,
                   collapsing=bool(m.get(N.collapsing, False)), gates=gates(m, cfg))


def judge(ev: Evidence, cfg: RunConfig) -> Verdict:
    """The verdict on round `ev.round`: its collapse and label checks, then the decision (decide) with the gates,
    the repair it had and the settings it used."""
    c, m = cfg.controller, ev.metrics
    collapse = collapse_check(ev.chosen_logratios, ev.rejected_logratios, m[N.mean_length], ev.sft_mean_length, c,
                              m.get(N.base_perplexity_ratio_vs_sft))
    m = {**m, **collapse, **label_gain(ev.generation, ev.reward, c.label_check, ev.heldout_pairs)}
    v = decide({**ev.history, ev.round: m}, ev.round, ev.plan["carried"], c, ev.max_rounds, ev.elapsed,
               ev.generation_records)
    labels = {k: m[k] for k in (N.label_check_source, N.label_gain_oracle, N.label_gain_oracle_se, N.label_gain_est,
                                N.label_gain_est_se) if k in m}
    return dataclasses.replace(v, collapse_reasons=collapse[N.collapse_reasons],
                               collapse_warnings=collapse[N.collapse_warnings], labels=labels,
                               used_params=ev.plan["params"], start_round=ev.plan["start"], repair=ev.repair)


def non_finite(ev: Evidence, cfg: RunConfig, error, failed_in_a_row: int) -> Verdict:
    """Round `ev.round`'s training went non-finite (guard.NonFiniteError): nothing of it was saved. A rollback to
    the best round with a lower learning rate, or a stop after controller.max_non_finite such rounds in a row."""
    c, rnd = cfg.controller, ev.round
    best = best_round(ev.history, c)
    params = dict(ev.plan["carried"])
    new = {**params, "learning_rate": params["learning_rate"] * c.non_finite_lr_mult}
    stop = failed_in_a_row >= c.max_non_finite or rnd >= ev.max_rounds
    reason = "non_finite" if failed_in_a_row >= c.max_non_finite else "round_budget" if stop else None
    trigger = Trigger("non_finite", error.what, float(error.step), 0.0)
    return Verdict(round=rnd, decision="rollback", failed=True, error=str(error), triggers=[trigger.to_dict()],
                   changes={"learning_rate": [params["learning_rate"], new["learning_rate"]]}, params=params,
                   next_params=new, targeted={}, best_round=best, next_start_round=best, stop=stop, stop_reason=reason,
                   score=None, degrading=True, elapsed_seconds=ev.elapsed, used_params=ev.plan["params"],
                   start_round=ev.plan["start"])
