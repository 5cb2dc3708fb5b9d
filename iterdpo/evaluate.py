"""Evaluation of one policy: alignment, quality, capability and reward-hacking monitors.

Models are loaded one at a time (policy, then reference, then reward model). Every policy is sampled
on the same held-out prompts with the same seeds, at the generation temperature (greedy decoding can
hide a collapse; greedy figures are optional, beside it), so samples of two policies can be compared
prompt by prompt.

Metric definitions:
- preference_accuracy / reward_margin: DPO's implicit reward beta*(log pi - log pi_ref) on held-out
  pairs, chosen against rejected (ties count half; the SFT policy is its own reference: 0.5 / 0).
- kl_to_reference: Monte-Carlo KL(pi || pi_ref) in nats per token, on the policy's own samples.
- kl_to_sft: the same against the SFT policy (equal to kl_to_reference when SFT is the reference); with
  ``dpo.reference: previous`` it is the drift of all rounds together, the x axis of the reward-KL frontier.
- perplexity: exp of the mean negative log-likelihood per token of held-out chosen responses.
- base_perplexity: the base model's perplexity on the policy's own samples: fluency judged by a model
  the loop never trained, so a degenerate reply ("great great great") shows up as a rise, not as success;
  base_perplexity_ratio_vs_sft and length_ratio_vs_sft set it and the mean length against SFT's.
- win_rate_vs_X: share of held-out prompts where the reward model scores this policy's sample above
  X's (ties half); oracle_win_rate_vs_X is the same judged by the world's oracle (toy or sentiment).
- length_controlled_win_rate_vs_sft: the win rate on rewards with a least-squares length trend removed
  (fitted on both policies' samples pooled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import capability, reward, sampler
from .losses import dpo_implicit_rewards, per_token_kl, per_token_kl_se, preference_stats, win_rate, win_rate_se
from .models import free, resolve_precision


@dataclass
class EvalInputs:
    """What every evaluation of one run shares."""

    heldout_pairs: list[dict]
    heldout_prompts: list[str]
    world: object | None  # the run's world (iterdpo.worlds: its oracle), or None without one
    seed: int  # of the evaluation samples: the same for every policy, so samples compare prompt by prompt
    base_path: str | None = None  # the base model, which reads every policy's samples (base_perplexity)
    sft_path: str | None = None  # the SFT policy, for kl_to_sft when the reference is another round


def _policy_pass(policy: sampler.Sampler, inputs: EvalInputs, cfg) -> dict:
    """Everything that needs only the policy."""
    g, e = cfg.generation, cfg.eval
    samples = [dict(prompt=r["prompt"], response=r["responses"][0], ended=r["ended"][0], n_tokens=r["n_tokens"][0])
               for r in policy.sample(inputs.heldout_prompts, 1, g.max_new_tokens, g.temperature, g.top_p,
                                      seed=inputs.seed, desc="eval samples")]
    out = _logprob_pass(policy, samples, inputs, "policy")
    style = "toy" if cfg.is_toy else "chat"
    out["samples"] = samples
    out["capability"] = capability.capability_scores(policy.model, policy.tokenizer, e, style, cfg.seed)
    if e.greedy:
        out["greedy"] = [dict(prompt=r["prompt"], response=r["responses"][0], ended=r["ended"][0])
                         for r in policy.sample(inputs.heldout_prompts, 1, g.max_new_tokens, greedy=True,
                                                desc="greedy samples")]
    return out


def _logprob_pass(model: sampler.Sampler, samples: list[dict], inputs: EvalInputs, who: str) -> dict:
    """Log-probs under `model` of the policy's samples and of the held-out chosen and rejected responses."""
    lp_s, _ = model.logprobs([x["prompt"] for x in samples], [x["response"] for x in samples],
                             add_eos=[x["ended"] for x in samples], desc=f"{who} logp (samples)")
    pairs = inputs.heldout_pairs
    prompts = [p["prompt"] for p in pairs]
    lp_c, n_c = model.logprobs(prompts, [p["chosen"] for p in pairs], desc=f"{who} logp (chosen)")
    lp_r, _ = model.logprobs(prompts, [p["rejected"] for p in pairs], desc=f"{who} logp (rejected)")
    return {"lp_samples": lp_s, "lp_chosen": lp_c, "lp_rejected": lp_r, "n_chosen": n_c}


def _samples_logprobs(path: str, samples: list[dict], cfg, precision, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, token counts) of the samples under the model at `path`, loaded for this pass and dropped."""
    model = sampler.load("hf", path, cfg.model, precision, cfg.eval.batch_size)
    out = model.logprobs([x["prompt"] for x in samples], [x["response"] for x in samples],
                         add_eos=[x["ended"] for x in samples], desc=f"{who} logp (samples)")
    model.close()
    del model
    return out


def length_controlled_win_rate(r_a: list[float], len_a: list[int], r_b: list[float], len_b: list[int]) -> float:
    """Win rate of a over b after removing a linear length trend fitted on both sets pooled."""
    x = torch.tensor(len_a + len_b, dtype=torch.float64)
    y = torch.tensor(r_a + r_b, dtype=torch.float64)
    var = ((x - x.mean()) ** 2).sum()
    slope = (((x - x.mean()) * (y - y.mean())).sum() / var).item() if var > 0 else 0.0
    ra = torch.tensor(r_a, dtype=torch.float64) - slope * torch.tensor(len_a, dtype=torch.float64)
    rb = torch.tensor(r_b, dtype=torch.float64) - slope * torch.tensor(len_b, dtype=torch.float64)
    return win_rate(ra, rb)


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


def correlation(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if len(a) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return torch.corrcoef(torch.stack([x, y]))[0, 1].item()


def compare(samples: list[dict], other: list[dict] | None, name: str, world) -> dict:
    """Win rates of `samples` against another policy's samples on the same prompts."""
    if not other:
        return {}
    if [s["prompt"] for s in samples] != [o["prompt"] for o in other]:
        raise ValueError(f"samples to compare with {name} are not on the same prompts")
    mine, theirs = torch.tensor([s["reward"] for s in samples]), torch.tensor([o["reward"] for o in other])
    out = {f"win_rate_vs_{name}": win_rate(mine, theirs), f"win_rate_vs_{name}_se": win_rate_se(mine, theirs)}
    if world is not None:
        out[f"oracle_win_rate_vs_{name}"] = win_rate(torch.tensor([s["oracle"] for s in samples]),
                                                     torch.tensor([o["oracle"] for o in other]))
    return out


def evaluate(policy_path: str, ref_path: str | None, beta: float, rm_path: str | list[str], inputs: EvalInputs, cfg,
             sft_samples: list[dict] | None = None, prev_samples: list[dict] | None = None,
             baseline_capability: float | None = None, baseline_capability_se: float = 0.0) -> tuple[dict, list[dict]]:
    """Metrics and scored samples of the policy at `policy_path` (ref_path None: it is its own reference).

    Models load one at a time, in model.precision, and each is dropped before the next loads.
    """
    precision = resolve_precision(cfg.model.precision)
    policy = sampler.load("hf", policy_path, cfg.model, precision, cfg.eval.batch_size)
    tok = policy.tokenizer
    pol = _policy_pass(policy, inputs, cfg)
    policy.close()
    del policy
    if ref_path:
        reference = sampler.load("hf", ref_path, cfg.model, precision, cfg.eval.batch_size)
        ref = _logprob_pass(reference, pol["samples"], inputs, "ref")
        reference.close()
        del reference
    else:
        ref = {k: pol[k] for k in ("lp_samples", "lp_chosen", "lp_rejected")}
    samples = pol["samples"]
    kl_sft = None
    if inputs.sft_path and ref_path and Path(ref_path) != Path(inputs.sft_path):
        lp_sft, _ = _samples_logprobs(inputs.sft_path, samples, cfg, precision, "SFT")
        kl_sft = per_token_kl(pol["lp_samples"], lp_sft, torch.tensor([s["n_tokens"] for s in samples], dtype=torch.float))
    if inputs.base_path:
        lp_base, n_base = _samples_logprobs(inputs.base_path, samples, cfg, precision, "base")
        for s, lp, n in zip(samples, lp_base.tolist(), n_base.tolist()):
            s["base_logp"], s["base_tokens"] = lp, n
    judged = [samples, pol["greedy"]] if "greedy" in pol else [samples]
    rm_paths = [rm_path] if isinstance(rm_path, str) else list(rm_path)
    by_member = []  # the reward ensemble's mean judges (one model: that model)
    for path in rm_paths:
        rm = reward.load(path, cfg.reward.head_hidden, precision.dtype)
        by_member.append([reward.score(rm, tok, [s["prompt"] for s in ss], [s["response"] for s in ss],
                                       [s["ended"] for s in ss], cfg.reward.score_batch_size, desc="RM (eval samples)")
                          for ss in judged])
        del rm
        free()
    mean = [[sum(m[k][i] for m in by_member) / len(by_member) for i in range(len(ss))] for k, ss in enumerate(judged)]
    rewards, greedy_rewards = mean[0], (mean[1] if len(mean) > 1 else None)
    for s, r in zip(samples, rewards):
        s["reward"] = r
        if inputs.world is not None:
            s["oracle"] = inputs.world.oracle(s["prompt"], s["response"], s["ended"])
    stats = preference_stats(dpo_implicit_rewards(pol["lp_chosen"], ref["lp_chosen"], beta),
                             dpo_implicit_rewards(pol["lp_rejected"], ref["lp_rejected"], beta))
    n_tok = torch.tensor([s["n_tokens"] for s in samples], dtype=torch.float)
    lengths = [s["n_tokens"] for s in samples]
    m = {
        "preference_accuracy": stats["accuracy"], "reward_margin": stats["margin"],
        "mean_reward": sum(rewards) / len(rewards),
        "kl_to_reference": per_token_kl(pol["lp_samples"], ref["lp_samples"], n_tok),
        "kl_to_sft": kl_sft,
        "perplexity": math.exp(-pol["lp_chosen"].sum().item() / max(pol["n_chosen"].sum().item(), 1)),
        "mean_length": sum(lengths) / len(lengths),
        "ended_share": sum(s["ended"] for s in samples) / len(samples),
        "length_reward_corr": correlation(lengths, rewards),
        "mean_logp_chosen": (pol["lp_chosen"].sum() / pol["n_chosen"].sum()).item(),
    }
    m.update({f"capability_{k}" if k != "capability_score" else k: v for k, v in pol["capability"].items()})
    m["capability_retention"] = (capability.retention(m["capability_score"], baseline_capability)
                                 if baseline_capability is not None else 1.0)
    # standard errors, so the controller's gates act only on drops clear of the noise
    m["capability_score_se"] = capability.score_se(pol["capability"], cfg.eval.capability_n)
    m["capability_retention_se"] = (capability.retention_se(m["capability_score"], m["capability_score_se"],
                                                            baseline_capability, baseline_capability_se)
                                    if baseline_capability is not None else 0.0)
    m["kl_to_reference_se"] = per_token_kl_se(pol["lp_samples"], ref["lp_samples"], n_tok)
    if m["kl_to_sft"] is None:  # SFT is the reference (or the policy itself)
        m["kl_to_sft"] = m["kl_to_reference"]
    if inputs.base_path:
        m["base_perplexity"] = base_perplexity(samples)
    if sft_samples:
        m["length_ratio_vs_sft"] = m["mean_length"] / max(sum(o["n_tokens"] for o in sft_samples) / len(sft_samples), 1e-9)
        if "base_perplexity" in m and all("base_logp" in o for o in sft_samples):
            m["base_perplexity_ratio_vs_sft"] = m["base_perplexity"] / base_perplexity(sft_samples)
            m["base_perplexity_ratio_vs_sft_se"] = base_perplexity_ratio_se(samples, sft_samples)
    else:
        m["length_ratio_vs_sft"] = 1.0
        if "base_perplexity" in m:
            m["base_perplexity_ratio_vs_sft"] = 1.0
            m["base_perplexity_ratio_vs_sft_se"] = 0.0
    if inputs.world is not None:
        m["oracle_score"] = sum(s["oracle"] for s in samples) / len(samples)
    if greedy_rewards is not None:
        m["greedy_mean_reward"] = sum(greedy_rewards) / len(greedy_rewards)
        if inputs.world is not None:
            m["greedy_oracle_score"] = sum(inputs.world.oracle(s["prompt"], s["response"], s["ended"])
                                           for s in pol["greedy"]) / len(pol["greedy"])
    m.update(compare(samples, sft_samples, "sft", inputs.world))
    m.update(compare(samples, prev_samples, "previous", inputs.world))
    if sft_samples:
        m["length_controlled_win_rate_vs_sft"] = length_controlled_win_rate(
            rewards, lengths, [o["reward"] for o in sft_samples], [o["n_tokens"] for o in sft_samples])
    else:  # the SFT policy against itself
        m.update({"win_rate_vs_sft": 0.5, "length_controlled_win_rate_vs_sft": 0.5})
        if inputs.world is not None:
            m["oracle_win_rate_vs_sft"] = 0.5
    return m, samples



def evaluate_round(cfg, run, rnd, ref: str | None = None, beta: float | None = None,
                   policy: str | None = None) -> tuple[dict, list[dict]]:
    """(metrics, scored samples) of round `rnd`'s trained policy (or the one at `policy`, e.g. a repair candidate)
    against `ref` (a path; None: itself), on the held-out set."""
    from .worlds import world_of

    inputs = EvalInputs(run.pairs("heldout_pairs"), run.prompts("heldout_prompts"), world_of(cfg),
                        cfg.seed_for("eval_sampling"), base_path=run.base_source(), sft_path=str(run.policy(0)))
    sft = run.metrics(run.eval(0)) if rnd != 0 else {}
    base_cap, base_cap_se = sft.get("capability_score"), sft.get("capability_score_se", 0.0)
    prev = run.samples(rnd - 1) if isinstance(rnd, int) and rnd > 0 else None
    return evaluate(policy or str(run.trained_policy(rnd)), ref, beta or cfg.dpo.beta, [str(p) for p in run.reward_models()],
                    inputs, cfg,
                    sft_samples=run.samples(0) if rnd != 0 else None, prev_samples=prev, baseline_capability=base_cap,
                    baseline_capability_se=base_cap_se)
