"""Metric names and the evaluation record: every metric's name is written here, once.

An evaluation (``round_<r>/eval/metrics.json``) is an :class:`Evaluation`; its field names are the metric
names, and ``N`` gives them to every other module (``m[N.oracle_score]``), so renaming or adding a metric is
one line here. Names built from another name (a suite's accuracy, a win rate against another policy, a
standard error) are made by the functions below. On disk the record stays the flat JSON it always was.

Definitions (what evaluate measures, and how):
- preference_accuracy / reward_margin: DPO's implicit reward beta*(log pi - log pi_ref) on held-out pairs,
  chosen against rejected (ties count half; the SFT policy is its own reference: 0.5 / 0). The labels are the
  seed labels, noisy on purpose in the toy and sentiment worlds (a perfect policy agrees with them only as often
  as they are right); preference_accuracy_oracle scores the same rewards against the oracle's labels.
- kl_to_reference: Monte-Carlo KL(pi || pi_ref) in nats per token, on the policy's own samples; kl_to_sft the
  same against the SFT policy (the x axis of the reward-KL frontier).
- perplexity: of held-out chosen responses; base_perplexity: the base model's on the policy's own samples
  (fluency judged by a model the loop never trained); *_ratio_vs_sft: against SFT's.
- win_rate_vs_X: share of held-out prompts where the reward model scores this policy's sample above X's (ties
  half); oracle_win_rate_vs_X: the same judged by the world's oracle.
- length_controlled_win_rate_vs_sft: the win rate after a least-squares length trend is removed.
- judge_win_rate_vs_sft: the same win rate judged by the held-out judge, a reward model trained on seed pairs
  the labelling ensemble never saw and never used to pick or keep a pair (the over_optimisation gate reads it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace


@dataclass
class Evaluation:
    """One policy's evaluation on the held-out prompts and pairs. A metric that has a standard error has a
    field ``<name>_se`` beside it; fields a run cannot measure (no oracle, no base model) stay None."""

    preference_accuracy: float | None = None
    preference_accuracy_oracle: float | None = None  # the same against the oracle's labels (a world whose pairs carry `flipped`)
    reward_margin: float | None = None
    mean_reward: float | None = None
    kl_to_reference: float | None = None
    kl_to_reference_se: float | None = None
    kl_to_sft: float | None = None
    perplexity: float | None = None
    mean_length: float | None = None
    ended_share: float | None = None
    length_reward_corr: float | None = None
    mean_logp_chosen: float | None = None
    capability_score: float | None = None
    capability_score_se: float | None = None
    capability_retention: float | None = None
    capability_retention_se: float | None = None
    base_perplexity: float | None = None
    length_ratio_vs_sft: float | None = None
    base_perplexity_ratio_vs_sft: float | None = None
    base_perplexity_ratio_vs_sft_se: float | None = None
    oracle_score: float | None = None
    oracle_score_se: float | None = None
    judge_mean_reward: float | None = None  # the held-out judge's (reward.judge_share), which never labels a pair
    judge_win_rate_vs_sft: float | None = None
    judge_win_rate_vs_sft_se: float | None = None
    judge_informative: bool | None = None  # the judge beats chance on the held-out seed pairs (losses.informative)
    greedy_mean_reward: float | None = None
    greedy_oracle_score: float | None = None
    win_rate_vs_sft: float | None = None
    win_rate_vs_sft_se: float | None = None
    oracle_win_rate_vs_sft: float | None = None
    win_rate_vs_previous: float | None = None
    win_rate_vs_previous_se: float | None = None
    oracle_win_rate_vs_previous: float | None = None
    length_controlled_win_rate_vs_sft: float | None = None
    repair_alpha: float | None = None  # set on a repair candidate that stands for its round (iterdpo.repair)
    repair_start_round: int | str | None = None
    wall_seconds: float | None = None
    extra: dict = field(default_factory=dict)  # names built by the functions below (a suite's accuracy, ...)

    def to_dict(self) -> dict:
        """The flat JSON of metrics.json: fields that are set, then the built names."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: v for k, v in d.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "Evaluation":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known}, extra={k: v for k, v in d.items() if k not in known})


@dataclass
class Labels:
    """How much better a round's synthetic labels are than the seed labels (the labels gate's metric)."""

    label_gain: float | None = None
    label_gain_se: float | None = None
    label_gain_oracle: float | None = None
    label_gain_oracle_se: float | None = None
    label_gain_est: float | None = None
    label_gain_est_se: float | None = None
    label_check_source: str | None = None
    label_median_gap: float | None = None


@dataclass
class StageFigures:
    """Figures of the generation, DPO and reward stages that other modules read (metrics.json keys)."""

    pairs: int | None = None
    pair_success_rate: float | None = None
    dropped: dict | None = None
    reward_gap_mean: float | None = None
    reward_gap_quantiles: dict | None = None
    synthetic_pair_oracle_agreement: float | None = None
    seed_label_oracle_agreement: float | None = None
    labels_worse_than_seed: bool | None = None
    train_loss: float | None = None
    train_reward_accuracy: float | None = None
    ensemble_label_accuracy_est: float | None = None
    seed_label_accuracy_est: float | None = None
    collapsing: bool | None = None
    collapse_reasons: list | None = None
    collapse_warnings: list | None = None


def _names(*records) -> SimpleNamespace:
    return SimpleNamespace(**{f.name: f.name for r in records for f in dataclasses.fields(r) if f.name != "extra"})


N = _names(Evaluation, Labels, StageFigures)  # N.oracle_score == "oracle_score"
ARMS_COMPARED = ("sft", "previous")  # the policies every round's samples are compared with


def se(name: str) -> str:
    """The name of `name`'s standard error."""
    return f"{name}_se"


def win_rate_vs(other: str) -> str:
    """The reward model's win rate against `other` (sft, previous, offline_dpo)."""
    return f"win_rate_vs_{other}"


def oracle_win_rate_vs(other: str) -> str:
    return f"oracle_{win_rate_vs(other)}"


def capability_of(suite: str) -> str:
    """A capability suite's accuracy."""
    return f"capability_{suite}"
