"""Pure tensor functions: losses and log-probabilities. No models, no state; shapes in each docstring.

The DPO loss itself is TRL's; these are what iterdpo computes on its own (reward-model training and
evaluation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood that the chosen response is preferred.

    P(chosen > rejected) = sigmoid(r_c - r_r)  (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1), so
    loss = -mean(log sigmoid(r_c - r_r)).

    Args:
        chosen_rewards: (B,) scalar rewards of the chosen responses.
        rejected_rewards: (B,) scalar rewards of the rejected responses.
    Returns:
        () the mean loss.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token | prefix) over completion tokens.

    Args:
        logits: (B, T, V) model outputs for input_ids.
        input_ids: (B, T) tokens.
        completion_mask: (B, T) 1 where the token belongs to the completion (and is scored), else 0.
    Returns:
        (B,) summed log-probabilities; token t is predicted by logits at t-1, so position 0 is never scored.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (tok * completion_mask[:, 1:]).sum(-1)


def dpo_implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward beta * (log pi(y|x) - log pi_ref(y|x))  (Rafailov et al. 2023, eq. 5).

    Args:
        policy_logps: (B,) summed completion log-probs under the policy.
        ref_logps: (B,) the same under the reference.
    Returns:
        (B,) rewards.
    """
    return beta * (policy_logps - ref_logps)


def preference_stats(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict:
    """Accuracy (ties count half) and mean margin of chosen over rejected.

    Args:
        chosen_rewards, rejected_rewards: (B,) rewards.
    Returns:
        {"accuracy": float, "margin": float}
    """
    diff = (chosen_rewards - rejected_rewards).float()
    acc = ((diff > 0).float() + 0.5 * (diff == 0).float()).mean()
    return {"accuracy": acc.item(), "margin": diff.mean().item()}


def win_rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of items where a beats b, ties counting half.

    Args:
        a, b: (N,) scores of two systems on the same N items.
    """
    return ((a > b).float() + 0.5 * (a == b).float()).mean().item()


def per_token_kl(policy_logps: torch.Tensor, ref_logps: torch.Tensor, n_tokens: torch.Tensor) -> float:
    """Monte-Carlo KL(pi || pi_ref) per token, from samples drawn from pi.

    Args:
        policy_logps, ref_logps: (N,) summed log-probs of N policy samples under each model.
        n_tokens: (N,) tokens in each sample.
    Returns:
        sum(log pi - log pi_ref) / sum(n_tokens), in nats per token.
    """
    return ((policy_logps - ref_logps).sum() / n_tokens.sum().clamp(min=1)).item()


def win_rate_se(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error of win_rate(a, b): the standard deviation of the per-item outcomes (1, 0.5, 0) over sqrt(N).

    Args:
        a, b: (N,) scores of two systems on the same N items.
    """
    wins = (a > b).float() + 0.5 * (a == b).float()
    return (wins.std(unbiased=True) / len(wins) ** 0.5).item() if len(wins) > 1 else 0.0


def per_token_kl_se(policy_logps: torch.Tensor, ref_logps: torch.Tensor, n_tokens: torch.Tensor) -> float:
    """Standard error of per_token_kl, a ratio of sums over N samples (delta method):
    sqrt(sum((d_i - kl * n_i)^2)) / sum(n_i), with d_i = log pi - log pi_ref of sample i.

    Args:
        policy_logps, ref_logps, n_tokens: (N,) as in per_token_kl.
    """
    d = (policy_logps - ref_logps).double()
    n = n_tokens.double()
    total = n.sum().clamp(min=1)
    kl = d.sum() / total
    return ((d - kl * n).pow(2).sum().sqrt() / total).item()


def base_perplexity(samples: list[dict]) -> float:
    """exp(-sum base_logp / sum base_tokens) over samples read by the base model (their base_logp, base_tokens)."""
    n = sum(s["base_tokens"] for s in samples)
    return math.exp(-sum(s["base_logp"] for s in samples) / n) if n else float("nan")


def base_perplexity_ratio_se(samples: list[dict], sft_samples: list[dict], n_boot: int = 400, seed: int = 0) -> float:
    """Standard error of base_perplexity(samples) / base_perplexity(sft_samples): a bootstrap over prompts, both
    policies' samples resampled together (they are paired by prompt). Deterministic for a given seed."""
    lp = torch.tensor([[s["base_logp"], o["base_logp"]] for s, o in zip(samples, sft_samples)], dtype=torch.float64)
    n = torch.tensor([[s["base_tokens"], o["base_tokens"]] for s, o in zip(samples, sft_samples)], dtype=torch.float64)
    if len(lp) < 2:
        return 0.0
    idx = torch.randint(len(lp), (n_boot, len(lp)), generator=torch.Generator().manual_seed(seed))
    ppl = torch.exp(-lp[idx].sum(1) / n[idx].sum(1).clamp(min=1))  # (n_boot, 2): the policy's, SFT's
    return (ppl[:, 0] / ppl[:, 1]).std().item()


def informative(accuracy: float, n: int, z: float) -> bool:
    """Whether a reward model's accuracy on `n` held-out seed pairs is above chance by more than `z` standard
    errors (of a proportion at 0.5): a judge that cannot tell the seed labels apart carries no evidence."""
    return accuracy - z * 0.5 / max(n, 1) ** 0.5 > 0.5
