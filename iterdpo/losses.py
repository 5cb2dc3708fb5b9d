"""Pure tensor functions: losses and log-probabilities. No models, no state; shapes in each docstring.

The DPO loss itself is TRL's; these are what iterdpo computes on its own (reward-model training and
evaluation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .metrics import N


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


def label_estimates(members: list[torch.Tensor], heldout: list[dict], min_agreement: float, boot: int = 200) -> dict:
    """Oracle-free estimates, from held-out seed pairs, of how often the seed labels and the ensemble's labels
    (on the pairs the generation filter min_agreement keeps) are right, and their difference with a
    bootstrap standard error over the pairs.

    Three labellers of each pair: the seed label S, and the mean rewards A and B of two halves of the
    ensemble. Written as +-1 (+1: chosen above rejected) and taken as independent given the truth, with
    c = 2 * accuracy - 1, E[S A] = c_S c_A and so on, so c_S^2 = E[S A] E[S B] / E[A B] (the seed labels'
    accuracy q). The ensemble's agreement with the seed labels on the kept pairs, a, is corrected for the
    seed labels' noise: its accuracy is (a - (1 - q)) / (2 q - 1). Members share data and backbone, so A
    and B agree more than independence says and q comes out low; near q = 0.5 (heavy label noise) a few
    hundred pairs cannot pin either number down, which the standard error shows. Where a world knows the
    flipped labels, the true figures come alongside (``*_oracle``). What the data cannot give is None.
    """
    n = len(heldout)
    mem = torch.stack(members)  # (M, 2N)
    sign = lambda r: torch.sign(r[..., :n] - r[..., n:])  # noqa: E731
    a, b, label = sign(mem[0::2].mean(0)), sign(mem[1::2].mean(0)), sign(mem.mean(0))
    kept = (sign(mem) == label).float().mean(0) >= min_agreement - 1e-9

    def estimate(i: torch.Tensor) -> tuple[float | None, float | None]:
        e_ab = (a[i] * b[i]).mean().item()
        c2 = a[i].mean().item() * b[i].mean().item() / e_ab if e_ab > 0 else -1.0
        if c2 <= 0 or not kept[i].any():
            return None, None
        q = (1 + min(1.0, c2) ** 0.5) / 2
        agree = (label[i][kept[i]] > 0).float().mean().item()
        return q, (min(1.0, max(0.0, (agree - (1 - q)) / (2 * q - 1))) if q > 0.5 else None)

    q, p = estimate(torch.arange(n))
    g = torch.Generator().manual_seed(0)
    gains = [(pb - qb) for qb, pb in (estimate(torch.randint(n, (n,), generator=g)) for _ in range(boot))
             if qb is not None and pb is not None]
    out = {N.seed_label_accuracy_est: q, N.ensemble_label_accuracy_est: p, "label_estimate_pairs": int(kept.sum()),
           N.label_gain_est_se: torch.tensor(gains).std().item() if len(gains) > 1 else None,
           "label_gain_est_defined_share": len(gains) / boot}
    if heldout and all("flipped" in p for p in heldout):
        right = torch.tensor([-1.0 if p["flipped"] else 1.0 for p in heldout])
        out["seed_label_accuracy_oracle"] = (right > 0).float().mean().item()
        out["ensemble_label_accuracy_oracle"] = (label * right)[kept].gt(0).float().mean().item() if kept.any() else None
    return out
