"""Evaluation of one policy: alignment, quality, capability and reward-hacking monitors.

Models are loaded one at a time (policy, then reference, then reward model). Every policy is sampled
on the same held-out prompts with the same seeds, at the generation temperature (greedy decoding can
hide a collapse; greedy figures are optional, beside it), so samples of two policies can be compared
prompt by prompt.

What each metric means is in iterdpo.metrics, beside its name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import panel, reward
from .losses import (base_perplexity, base_perplexity_ratio_se, dpo_implicit_rewards, per_token_kl, per_token_kl_se,
                     preference_stats, win_rate, win_rate_se)
from .metrics import ARMS_COMPARED, Evaluation, N, capability_of, oracle_win_rate_vs, se, win_rate_vs
from .models import resolve_precision
from .samplers import Sampler
from .samplers import load as load_sampler
from .suites import capability_results, retention, retention_se, score_se
from .worlds import world_of


@dataclass
class EvalInputs:
    """What every evaluation of one run shares."""

    heldout_pairs: list[dict]
    heldout_prompts: list[str]
    oracle: Callable | None  # the run's world's oracle (iterdpo.worlds), or None where it has none
    seed: int  # of the evaluation samples: the same for every policy, so samples compare prompt by prompt
    style: str = "chat"  # the world's (capability probes' phrasing)
    base_path: str | None = None  # the base model, which reads every policy's samples (base_perplexity)
    sft_path: str | None = None  # the SFT policy, for kl_to_sft when the reference is another round
    judge_path: str | None = None  # the held-out judge (reward.judge_share), which scores but never labels
    judge_informative: bool | None = None  # whether it beats chance on the held-out seed pairs (losses.informative)


def heldout_flips(pairs: list[dict]) -> list[bool] | None:
    """Each held-out pair's `flipped` flag, where every pair carries one (a world that knows its oracle labels)."""
    return [bool(p["flipped"]) for p in pairs] if pairs and all("flipped" in p for p in pairs) else None


def _policy_pass(policy: Sampler, inputs: EvalInputs, cfg) -> dict:
    """Everything that needs only the policy."""
    g, e = cfg.generation, cfg.eval
    samples = [dict(prompt=r["prompt"], response=r["responses"][0], ended=r["ended"][0], n_tokens=r["n_tokens"][0])
               for r in policy.sample(inputs.heldout_prompts, 1, g.max_new_tokens, g.temperature, g.top_p,
                                      seed=inputs.seed, desc="eval samples")]
    out = _logprob_pass(policy, samples, inputs, "policy")
    out["samples"] = samples
    out["capability"], out["capability_rows"] = capability_results(policy.model, policy.tokenizer, e, inputs.style,
                                                                    cfg.seed)
    if e.greedy:
        out["greedy"] = [dict(prompt=r["prompt"], response=r["responses"][0], ended=r["ended"][0])
                         for r in policy.sample(inputs.heldout_prompts, 1, g.max_new_tokens, greedy=True,
                                                desc="greedy samples")]
    return out


def _logprob_pass(model: Sampler, samples: list[dict], inputs: EvalInputs, who: str) -> dict:
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
    model = load_sampler(cfg.eval.backend, path, cfg.model, precision, cfg.eval.batch_size)
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


def correlation(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if len(a) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return torch.corrcoef(torch.stack([x, y]))[0, 1].item()


def compare(samples: list[dict], other: list[dict] | None, name: str, has_oracle: bool) -> dict:
    """Win rates of `samples` against another policy's samples on the same prompts (by the oracle too, where the
    world has one)."""
    if not other:
        return {}
    if [s["prompt"] for s in samples] != [o["prompt"] for o in other]:
        raise ValueError(f"samples to compare with {name} are not on the same prompts")
    mine, theirs = torch.tensor([s["reward"] for s in samples]), torch.tensor([o["reward"] for o in other])
    out = {win_rate_vs(name): win_rate(mine, theirs), se(win_rate_vs(name)): win_rate_se(mine, theirs)}
    if has_oracle:
        out[oracle_win_rate_vs(name)] = win_rate(torch.tensor([s["oracle"] for s in samples]),
                                                     torch.tensor([o["oracle"] for o in other]))
    return out


def evaluate(policy_path: str, ref_path: str | None, beta: float, rm_path: str | list[str], inputs: EvalInputs, cfg,
             sft_samples: list[dict] | None = None, prev_samples: list[dict] | None = None,
             baseline_capability: float | None = None,
             baseline_capability_se: float = 0.0) -> tuple[Evaluation, list[dict], dict[str, list[dict]]]:
    """The evaluation, the scored samples and the capability suites' per-item rows ({suite: rows}, for the suites
    that return them) of the policy at `policy_path` (ref_path None: it is its own reference). Models load one at
    a time, in model.precision, and each is dropped before the next loads."""
    precision = resolve_precision(cfg.model.precision)
    pol, ref = _policy_and_reference(policy_path, ref_path, inputs, cfg, precision)
    samples = pol["samples"]
    n_tok = torch.tensor([s["n_tokens"] for s in samples], dtype=torch.float)
    kl_sft = None
    if inputs.sft_path and ref_path and Path(ref_path) != Path(inputs.sft_path):
        lp_sft, _ = _samples_logprobs(inputs.sft_path, samples, cfg, precision, "SFT")
        kl_sft = per_token_kl(pol["lp_samples"], lp_sft, n_tok)
    if inputs.base_path:
        lp_base, n_base = _samples_logprobs(inputs.base_path, samples, cfg, precision, "base")
        for s, lp, n in zip(samples, lp_base.tolist(), n_base.tolist()):
            s["base_logp"], s["base_tokens"] = lp, n
    rewards, greedy_rewards = _judge(samples, pol.get("greedy"), rm_path, pol["tokenizer"], inputs, cfg, precision)
    m = _policy_metrics(pol, ref, samples, rewards, beta, n_tok, kl_sft, heldout_flips(inputs.heldout_pairs))
    m.update(_capability(pol["capability"], cfg.eval.capability_n, baseline_capability, baseline_capability_se))
    m.update(_fluency(m, samples, sft_samples, inputs.base_path is not None))
    if inputs.oracle is not None:
        oracle = torch.tensor([s["oracle"] for s in samples], dtype=torch.float64)
        m[N.oracle_score] = sum(s["oracle"] for s in samples) / len(samples)
        m[se(N.oracle_score)] = (oracle.std() / math.sqrt(len(oracle))).item() if len(oracle) > 1 else 0.0
    if inputs.judge_path:
        m.update(_held_out_judge(samples, sft_samples, inputs.judge_informative))
    if greedy_rewards is not None:
        m[N.greedy_mean_reward] = sum(greedy_rewards) / len(greedy_rewards)
        if inputs.oracle is not None:
            m[N.greedy_oracle_score] = sum(inputs.oracle(s["prompt"], s["response"], s["ended"])
                                           for s in pol["greedy"]) / len(pol["greedy"])
    m.update(_against_sft_and_previous(samples, rewards, sft_samples, prev_samples, inputs.oracle is not None))
    return Evaluation.from_dict(m), samples, pol["capability_rows"]


def _policy_and_reference(policy_path: str, ref_path: str | None, inputs: EvalInputs, cfg, precision) -> tuple[dict, dict]:
    """The policy's pass (samples, log-probs, capability) and the reference's log-probs of the same texts."""
    policy = load_sampler(cfg.eval.backend, policy_path, cfg.model, precision, cfg.eval.batch_size)
    pol = {**_policy_pass(policy, inputs, cfg), "tokenizer": policy.tokenizer}
    policy.close()
    del policy
    if not ref_path:
        return pol, {k: pol[k] for k in ("lp_samples", "lp_chosen", "lp_rejected")}
    reference = load_sampler(cfg.eval.backend, ref_path, cfg.model, precision, cfg.eval.batch_size)
    ref = _logprob_pass(reference, pol["samples"], inputs, "ref")
    reference.close()
    del reference
    return pol, ref


def _judge(samples: list[dict], greedy: list[dict] | None, rm_path, tok, inputs: EvalInputs, cfg,
           precision) -> tuple[list[float], list[float] | None]:
    """(the reward ensemble's mean reward of each sample, of each greedy sample); each sample gets its reward,
    its held-out judge's score where the run has a judge (s["judge"]), and its oracle score where the world has
    an oracle. The ensemble and the judge score as a panel (iterdpo/panel.py): a body they share runs once."""
    members = [rm_path] if isinstance(rm_path, str) else list(rm_path)
    judge = [inputs.judge_path] if inputs.judge_path else []
    scores = panel.score(members + judge, cfg.reward.head_hidden, precision.dtype, tok, *_texts(samples),
                         cfg.reward.score_batch_size, desc="RM (eval samples)")
    mean = [sum(m[i] for m in scores[:len(members)]) / len(members) for i in range(len(samples))]
    for i, s in enumerate(samples):
        s["reward"] = mean[i]
        if judge:
            s["judge"] = scores[-1][i]
        if inputs.oracle is not None:
            s["oracle"] = inputs.oracle(s["prompt"], s["response"], s["ended"])
    if greedy is None:
        return mean, None
    by_member = panel.score(members, cfg.reward.head_hidden, precision.dtype, tok, *_texts(greedy),
                            cfg.reward.score_batch_size, desc="RM (greedy samples)")
    return mean, [sum(m[i] for m in by_member) / len(by_member) for i in range(len(greedy))]


def _texts(samples: list[dict]) -> tuple[list[str], list[str], list[bool]]:
    """(prompts, responses, ended flags) of samples."""
    return [s["prompt"] for s in samples], [s["response"] for s in samples], [s["ended"] for s in samples]


def _held_out_judge(samples: list[dict], sft_samples: list[dict] | None, informative: bool | None) -> dict:
    """The held-out judge's mean score of the samples (scored by _judge), and its win rate against SFT's
    samples where those carry the judge's scores too; `informative`: whether the judge beats chance on the
    held-out seed pairs (the over_optimisation gate reads it only then)."""
    scores = [s["judge"] for s in samples]
    out = {N.judge_mean_reward: sum(scores) / len(scores), N.judge_informative: informative}
    if sft_samples and all("judge" in s for s in sft_samples):
        mine, theirs = torch.tensor(scores), torch.tensor([s["judge"] for s in sft_samples])
        out.update({N.judge_win_rate_vs_sft: win_rate(mine, theirs), se(N.judge_win_rate_vs_sft): win_rate_se(mine, theirs)})
    return out


def _policy_metrics(pol: dict, ref: dict, samples: list[dict], rewards: list[float], beta: float, n_tok: torch.Tensor,
                    kl_sft: float | None, flipped: list[bool] | None = None) -> dict:
    """Preference accuracy (against the seed labels, and the oracle's where `flipped` is known) and margin on
    held-out pairs, KL, perplexity, length and reward of the samples."""
    chosen = dpo_implicit_rewards(pol["lp_chosen"], ref["lp_chosen"], beta)
    rejected = dpo_implicit_rewards(pol["lp_rejected"], ref["lp_rejected"], beta)
    stats = preference_stats(chosen, rejected)
    lengths = [s["n_tokens"] for s in samples]
    kl = per_token_kl(pol["lp_samples"], ref["lp_samples"], n_tok)
    return {
        N.preference_accuracy: stats["accuracy"], N.reward_margin: stats["margin"],
        N.mean_reward: sum(rewards) / len(rewards), N.kl_to_reference: kl,
        N.kl_to_reference_se: per_token_kl_se(pol["lp_samples"], ref["lp_samples"], n_tok),
        N.kl_to_sft: kl if kl_sft is None else kl_sft,  # None: SFT is the reference (or the policy itself)
        N.perplexity: math.exp(-pol["lp_chosen"].sum().item() / max(pol["n_chosen"].sum().item(), 1)),
        N.mean_length: sum(lengths) / len(lengths), N.ended_share: sum(s["ended"] for s in samples) / len(samples),
        N.length_reward_corr: correlation(lengths, rewards),
        N.mean_logp_chosen: (pol["lp_chosen"].sum() / pol["n_chosen"].sum()).item(),
        **oracle_preference_accuracy(chosen, rejected, flipped),
    }


def oracle_preference_accuracy(chosen: torch.Tensor, rejected: torch.Tensor, flipped: list[bool] | None) -> dict:
    """{preference_accuracy_oracle: ...} where the held-out pairs carry `flipped` (a flipped pair's label is the
    reverse of the oracle's), else {}. chosen, rejected: (B,) implicit rewards of the labelled sides."""
    if flipped is None:
        return {}
    flip = torch.tensor(flipped, dtype=torch.bool)
    truth = preference_stats(torch.where(flip, rejected, chosen), torch.where(flip, chosen, rejected))
    return {N.preference_accuracy_oracle: truth["accuracy"]}


def _capability(scores: dict, n: int, baseline: float | None, baseline_se: float) -> dict:
    """Each suite's accuracy, their mean, and its retention against the baseline's, with standard errors (so
    the gates act only on drops clear of the noise)."""
    m = {capability_of(k) if k != N.capability_score else k: v for k, v in scores.items()}
    m[N.capability_score_se] = score_se(scores, n)
    m[N.capability_retention] = retention(m[N.capability_score], baseline) if baseline is not None else 1.0
    m[N.capability_retention_se] = (retention_se(m[N.capability_score], m[N.capability_score_se], baseline, baseline_se)
                                    if baseline is not None else 0.0)
    return m


def _fluency(m: dict, samples: list[dict], sft_samples: list[dict] | None, read_by_base: bool) -> dict:
    """Length and the base model's perplexity on the samples, against SFT's."""
    out = {N.base_perplexity: base_perplexity(samples)} if read_by_base else {}
    ratio = N.base_perplexity_ratio_vs_sft
    if sft_samples:
        out[N.length_ratio_vs_sft] = m[N.mean_length] / max(sum(o["n_tokens"] for o in sft_samples) / len(sft_samples), 1e-9)
        if read_by_base and all("base_logp" in o for o in sft_samples):
            out[ratio] = out[N.base_perplexity] / base_perplexity(sft_samples)
            out[se(ratio)] = base_perplexity_ratio_se(samples, sft_samples)
    else:
        out[N.length_ratio_vs_sft] = 1.0
        if read_by_base:
            out[ratio], out[se(ratio)] = 1.0, 0.0
    return out


def _against_sft_and_previous(samples: list[dict], rewards: list[float], sft_samples: list[dict] | None,
                              prev_samples: list[dict] | None, has_oracle: bool) -> dict:
    """Win rates against SFT's and the previous round's samples, and the length-controlled one against SFT's."""
    sft, prev = ARMS_COMPARED
    m = {**compare(samples, sft_samples, sft, has_oracle), **compare(samples, prev_samples, prev, has_oracle)}
    if sft_samples:
        m[N.length_controlled_win_rate_vs_sft] = length_controlled_win_rate(
            rewards, [s["n_tokens"] for s in samples], [o["reward"] for o in sft_samples],
            [o["n_tokens"] for o in sft_samples])
    else:  # the SFT policy against itself
        m.update({N.win_rate_vs_sft: 0.5, N.length_controlled_win_rate_vs_sft: 0.5})
        if has_oracle:
            m[N.oracle_win_rate_vs_sft] = 0.5
    return m


def evaluate_policy(cfg, run, rnd, ref: str | None = None, beta: float | None = None,
                    policy: str | None = None) -> tuple[Evaluation, list[dict], dict[str, list[dict]]]:
    """The evaluation, scored samples and capability rows ({suite: rows}) of round `rnd`'s trained policy (or the
    one at `policy`, e.g. a repair candidate) against `ref` (a path; None: itself), on the held-out set."""
    world = world_of(cfg)
    inputs = EvalInputs(run.pairs("heldout_pairs"), run.prompts("heldout_prompts"),
                        world.oracle if world.has_oracle else None, cfg.seed_for("eval_sampling"), style=world.style,
                        base_path=run.base_source(), sft_path=str(run.policy(0)),
                        judge_path=reward.judge_path(run),
                        judge_informative=run.metrics(run.stage("reward")).get(N.judge_informative))
    sft = run.metrics(run.eval(0)) if rnd != 0 else {}
    base_cap, base_cap_se = sft.get(N.capability_score), sft.get(se(N.capability_score), 0.0)
    prev = run.samples(rnd - 1) if isinstance(rnd, int) and rnd > 0 else None
    return evaluate(policy or str(run.trained_policy(rnd)), ref, beta or cfg.dpo.beta,
                    [str(p) for p in run.reward_models()], inputs, cfg,
                    sft_samples=run.samples(0) if rnd != 0 else None, prev_samples=prev, baseline_capability=base_cap,
                    baseline_capability_se=base_cap_se)
