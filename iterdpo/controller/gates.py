"""The quality gates, as data, and the rules that read them: which round is eligible, the best, converged.

A gate compares one metric of a round's evaluation with a threshold from ControllerConfig, clear of the
metric's noise: it triggers only when the whole interval value -/+ gate_z standard errors is past the
threshold. The same yardstick holds for every arm (a round, a repair candidate, the offline baseline).
Everything here is a pure function of metric records (dicts keyed by iterdpo.metrics names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ControllerConfig
from ..metrics import N, se


@dataclass(frozen=True)
class Gate:
    name: str  # the trigger's name in decisions.jsonl
    metric: str
    threshold: str  # the ControllerConfig field that holds the threshold
    direction: str  # "below": triggers when the interval is under the threshold; "above": over it


GATES = (Gate("capability_regression", N.capability_retention, "min_retention", "below"),
         Gate("weak_alignment", N.win_rate_vs_sft, "min_win_rate", "below"),
         Gate("kl_violation", N.kl_to_reference, "max_kl", "above"),
         Gate("labels_no_better_than_seed", N.label_gain, "min_label_gain", "below"),
         Gate("fluency_collapse", N.base_perplexity_ratio_vs_sft, "collapse_max_perplexity_ratio", "above"),
         Gate("over_optimisation", N.judge_win_rate_vs_sft, "min_judge_win_rate", "below"))
COLLAPSE = "collapse"  # the collapse check's trigger (collapse_check), not a gate on one metric
# triggers that make a round ineligible as the best round, and a rollback
DEGRADING = {COLLAPSE, "fluency_collapse"}
# triggers that make a round ineligible, and a retry with gentler settings (after a repair, iterdpo.repair);
# over_optimisation: the labelling ensemble says better where the held-out judge says worse than SFT
RETRY = {"capability_regression", "kl_violation", "over_optimisation"}


@dataclass
class Trigger:
    name: str
    metric: str
    value: float
    threshold: float
    interval: tuple[float, float] | None = None  # the gate's interval: value -/+ gate_z standard errors

    def to_dict(self) -> dict:
        d = {"name": self.name, "metric": self.metric, "value": self.value, "threshold": self.threshold}
        return {**d, "interval": list(self.interval)} if self.interval else d


def gates(m: dict, cfg: ControllerConfig) -> dict:
    """Each gate on metrics `m`: {gate: {metric, value, interval, threshold, passes}}; a metric without a
    standard error acts on its point estimate."""
    out = {}
    for g in GATES:
        if not isinstance(m.get(g.metric), (int, float)) or (g.metric == N.judge_win_rate_vs_sft
                                                             and m.get(N.judge_informative) is False):
            continue  # not measured; or a judge at chance on the held-out seed pairs, which carries no evidence
        v, half = m[g.metric], cfg.gate_z * (m.get(se(g.metric)) or 0.0)
        lo, hi, t = v - half, v + half, getattr(cfg, g.threshold)
        out[g.name] = {"metric": g.metric, "value": v, "interval": [lo, hi], "threshold": t,
                       "passes": not (hi < t if g.direction == "below" else lo > t)}
    return out


def weaknesses(m: dict, cfg: ControllerConfig) -> list[Trigger]:
    """The gates that metrics `m` fail, and a collapse where `m` records one."""
    out = [Trigger(name, g["metric"], g["value"], g["threshold"], tuple(g["interval"]))
           for name, g in gates(m, cfg).items() if not g["passes"]]
    if m.get(N.collapsing):
        out.append(Trigger(COLLAPSE, N.collapsing, 1.0, 0.0))
    return out


def needs_repair(m: dict, cfg: ControllerConfig) -> bool:
    """Whether metrics `m` call for a repair: the capability or KL gate fails, and nothing worse (a collapse or
    a fluency collapse is a rollback)."""
    names = {t.name for t in weaknesses(m, cfg)}
    return bool(cfg.repair_alphas) and bool(names & RETRY) and not names & DEGRADING


def score(m: dict) -> float:
    """A round's score: its win rate against SFT by the reward model (never the oracle)."""
    return m.get(N.win_rate_vs_sft, 0.5)


def eligible(m: dict, cfg: ControllerConfig) -> bool:
    names = {t.name for t in weaknesses(m, cfg)}
    return not names & (RETRY | DEGRADING)


def clearly_below(a: dict, b: dict, cfg: ControllerConfig) -> bool:
    """Whether round metrics `a` score below `b` by more than degrade_tol plus gate_z standard errors of the
    difference (the two win rates' standard errors combined as if independent, which errs towards keeping)."""
    s = math.hypot(a.get(se(N.win_rate_vs_sft)) or 0.0, b.get(se(N.win_rate_vs_sft)) or 0.0)
    return score(a) < score(b) - cfg.degrade_tol - cfg.gate_z * s


def _eligible_rounds(history: dict[int, dict], cfg: ControllerConfig) -> list[int]:
    return [r for r, m in history.items() if r == 0 or eligible(m, cfg)]


def top_round(history: dict[int, dict], cfg: ControllerConfig) -> int:
    """The highest-scoring eligible round (ties: the earlier); round 0 always qualifies."""
    return max(_eligible_rounds(history, cfg), key=lambda r: (score(history[r]), -r))


def best_round(history: dict[int, dict], cfg: ControllerConfig) -> int:
    """The latest eligible round not clearly below the top round: later rounds have trained on more data, and a
    point-estimate lead of an earlier round is not evidence against them."""
    top = history[top_round(history, cfg)]
    return max(r for r in _eligible_rounds(history, cfg) if not clearly_below(history[r], top, cfg))


def converged(history: dict[int, dict], cfg: ControllerConfig) -> bool:
    rounds = sorted(r for r in history if r > 0)
    if len(rounds) < cfg.converge_window:
        return False
    last = [score(history[r]) for r in rounds[-cfg.converge_window:]]
    return max(last) - min(last) < cfg.converge_tol


def collapse_check(chosen_logratios: list[float], rejected_logratios: list[float], mean_length: float,
                   sft_mean_length: float, cfg: ControllerConfig, perplexity_ratio: float | None = None) -> dict:
    """Flag a round as collapsing when responses shrink to nothing, or the log-probs of chosen and rejected both
    fall steeply and the round's samples do not show that they are still fluent.

    Args:
        chosen_logratios, rejected_logratios: per logging step, the batch mean of log pi(y|x) - log pi_ref(y|x)
            in nats for the chosen / rejected responses (TRL's rewards/chosen and rewards/rejected divided by
            beta). Measured against the reference on the same batch, so batch-to-batch length noise cancels.
        cfg: a mean response length below collapse_min_length_ratio of the SFT policy's flags. Both sides
            averaging below -collapse_max_drop nats over the last collapse_window logged steps flags too, unless
            `perplexity_ratio` (the base model's perplexity on the round's samples over its perplexity on SFT's;
            None where not measured) is at most collapse_max_perplexity_ratio: then the fall is a warning only.
            Both log-probs falling together is common in DPO without any loss of fluency (the sequence-level
            sum grows with reply length); the samples are the evidence. A fluency loss on its own is the
            fluency_collapse gate, which knows its noise.
    Returns:
        {collapsing, collapse_reasons, collapse_warnings}.
    """
    reasons, warnings, w = [], [], cfg.collapse_window
    shrank = sft_mean_length > 0 and mean_length < cfg.collapse_min_length_ratio * sft_mean_length
    if shrank:
        reasons.append(f"responses shrank to {mean_length:.1f} tokens (SFT: {sft_mean_length:.1f})")
    if chosen_logratios and rejected_logratios:
        c = sum(chosen_logratios[-w:]) / len(chosen_logratios[-w:])
        r = sum(rejected_logratios[-w:]) / len(rejected_logratios[-w:])
        if c < -cfg.collapse_max_drop and r < -cfg.collapse_max_drop:
            fall = f"log-probs of chosen and rejected both fell below the reference (by {-c:.2f} and {-r:.2f} nats)"
            fluent = perplexity_ratio is not None and perplexity_ratio <= cfg.collapse_max_perplexity_ratio
            if fluent and not shrank:
                warnings.append(f"{fall}; not a collapse: the base model reads the samples at {perplexity_ratio:.2f}x "
                                f"SFT's perplexity (at most {cfg.collapse_max_perplexity_ratio:g}x)")
            else:
                reasons.append(fall)
    return {N.collapsing: bool(reasons), N.collapse_reasons: reasons, N.collapse_warnings: warnings}
