"""The controller's settings: its gates' thresholds, how it adjusts, when it stops, how it repairs (one
dataclass, a section of the run's config like the others)."""

from __future__ import annotations

from dataclasses import dataclass

from ..fields import F, _check, _finite, _number, _Section


@dataclass
class ControllerConfig(_Section):
    section = "controller"
    enabled: bool = F(True, "Run the controller between rounds.")
    min_retention: float = F(0.95, "Capability retention below this is a regression.", min=0.0)
    min_win_rate: float = F(0.55, "Win rate against the baseline below this is weak alignment.", min=0.0, max=1.0)
    min_judge_win_rate: float = F(0.5, "Over-optimisation (gate over_optimisation): the held-out judge's win rate against SFT (a reward model trained on seed pairs the labelling ensemble never saw; reward.judge_share) below this by more than gate_z standard errors. Such a round is not promoted to best: it is repaired toward its start, or retried with beta and learning rate changed as for a KL violation.", min=0.0, max=1.0)
    max_kl: float = F(0.1, "Per-token KL to the reference above this is a violation.", min=0.0)
    kl_beta_mult: float = F(1.5, "On a KL violation, beta is multiplied by this.", min=1.0)
    kl_lr_mult: float = F(0.5, "On a KL violation, the learning rate is multiplied by this.", min=0.0, max=1.0)
    weak_after_round: int = F(2, "Weak alignment triggers the push rule only from this round on.", min=1)
    weak_lr_mult: float = F(1.5, "On weak alignment, the learning rate is multiplied by this.", min=1.0)
    weak_beta_mult: float = F(0.8, "On weak alignment, beta is multiplied by this.", min=0.0, max=1.0)
    cap_beta_mult: float = F(2.0, "On a capability regression, beta is multiplied by this.", min=1.0)
    cap_lr_mult: float = F(0.5, "On a capability regression, the learning rate is multiplied by this.", min=0.0, max=1.0)
    cap_steps_mult: float = F(0.7, "On a capability regression, steps are multiplied by this.", min=0.0, max=1.0)
    degrade_tol: float = F(0.02, "A round whose score falls below the best round's by more than this plus gate_z standard errors is degrading.", min=0.0)
    converge_window: int = F(3, "Rounds over which convergence is judged.", min=2, max=100)
    converge_tol: float = F(0.02, "Converged when the win rate varies by less than this over the window.", min=0.0)
    max_rounds: int = F(6, "Round budget for --rounds auto.", min=1, max=1000)
    max_seconds: float = F(3600.0, "Wall-time budget for --rounds auto.", min=1.0)
    gate_z: float = F(1.645, "A gate (retention, win rate, KL, labels, fluency, held-out judge) triggers only when its metric is past the threshold by more than gate_z standard errors (1.645: one-sided 95%; 0: act on point estimates).", min=0.0, max=10.0)
    non_finite_lr_mult: float = F(0.5, "After a round whose training went non-finite, the learning rate is multiplied by this and the next round starts from the best round.", min=0.0, max=1.0)
    max_non_finite: int = F(2, "Rounds in a row that may go non-finite before the run stops with that reason.", min=1)
    movement_note_ratio: float = F(1.5, "The run's summary notes an answer that leads offline DPO after moving this many times as far from SFT (KL to SFT): offline DPO with a smaller beta may reach the same.", min=1.0)
    hard_prompt_share: float = F(0.25, "On weak alignment, this share of the round's prompts with the smallest reward spread becomes the targeted prompts.", min=0.0, max=1.0)
    label_check: str = F("auto", "Whether a round's synthetic labels beat the seed labels (trigger labels_no_better_than_seed): oracle = measured by the world's oracle (toy, sentiment); estimate = oracle-free, from the reward ensemble's held-out pairs (losses.label_estimates; needs reward.ensemble >= 2); auto = oracle where the world has one, else estimate; off.", choices=["auto", "oracle", "estimate", "off"])
    min_label_gain: float = F(0.0, "labels_no_better_than_seed triggers when the synthetic labels' accuracy minus the seed labels' is below this by more than gate_z standard errors. The next round then keeps only pairs whose reward gap is above this round's median.", min=-1.0, max=1.0)
    collapse_max_drop: float = F(5.0, "Collapse: chosen and rejected log-probs both below the reference by more than this (nats, mean of the last collapse_window logged steps).", min=0.0)
    collapse_window: int = F(3, "Logged training steps the collapse check averages over.", min=1)
    collapse_min_length_ratio: float = F(0.3, "Collapse: mean response length below this share of the SFT policy's.", min=0.0, max=1.0)
    collapse_max_perplexity_ratio: float = F(1.5, "Fluency collapse (gate fluency_collapse): the base model's perplexity on a round's samples above this multiple of its perplexity on SFT's, by more than gate_z standard errors. Where that perplexity is measured, a log-prob fall (collapse_max_drop) counts as a collapse only if the samples are less fluent than this or shrank; otherwise it is logged as a warning.", min=1.0)
    repair_alphas: list = F([0.5, 0.25], "A round (or the offline arm) that fails the capability, KL or over-optimisation gate, and nothing worse, is moved back toward the policy it started from: start + alpha (round - start), for each alpha here, largest first, until one passes the gates that exclude a round (capability, KL, held-out judge, fluency); it then stands for the round (iterdpo.repair). Empty: no repair; the controller retries with gentler settings.")

    def validate(self) -> None:
        self.repair_alphas = [_number(a) for a in self.repair_alphas]  # '5e-1' is a string to YAML 1.1
        for a in self.repair_alphas:
            _check(_finite(a) and 0 < a < 1, "controller", "repair_alphas", a, "each alpha must be a number in (0, 1)")
        _check(all(a > b for a, b in zip(self.repair_alphas, self.repair_alphas[1:])), "controller", "repair_alphas",
               self.repair_alphas, "must be strictly decreasing: the largest step back that passes is kept")
