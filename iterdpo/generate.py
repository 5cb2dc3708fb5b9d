"""The synthetic-preference stage of a round: sample K responses per prompt from the round's start policy,
score them with the reward ensemble, and pair them (the sampling itself is iterdpo.sampling, behind the sampler
seam, iterdpo.samplers)."""

from __future__ import annotations

import random

import torch

from . import reward
from .data import GEN_KEYS, as_completion, check_records
from .folder import write_jsonl
from .metrics import N
from .models import inference_precision, resolve_precision
from .pairs import make_pairs
from .runfolder import StageFiles
from .samplers import load as load_sampler
from .suites import capability_pairs
from .worlds import world_of


def round_prompts(cfg, run, rnd: int, plan: dict) -> tuple[list[str], int]:
    """(the round's prompts, how many of them are the controller's targeted hard prompts)."""
    rng = random.Random(cfg.seed_for("round_prompts", rnd))
    pool = run.prompts("gen_prompts")
    prompts = rng.sample(pool, min(cfg.generation.prompts_per_round, len(pool)))
    hard = plan["targeted"].get("hard_prompts") or []
    n_hard = int(len(prompts) * cfg.generation.targeted_share) if hard else 0
    return prompts[: len(prompts) - n_hard] + [rng.choice(hard) for _ in range(n_hard)], n_hard


def generate_round(cfg, run, rnd: int, plan: dict, dest) -> dict:
    """Sample K responses per prompt from the round's start policy, score them, pair them; write into `dest`.

    Writes samples.jsonl (generation records with rewards) and pairs.jsonl; returns the label diagnostics.
    """
    g = cfg.generation
    prompts, n_hard = round_prompts(cfg, run, rnd, plan)
    precision = inference_precision(g.precision, resolve_precision(cfg.model.precision))
    policy = load_sampler(g.backend, str(run.policy(plan["start"])), cfg.model, precision, g.batch_size)
    tok = policy.tokenizer
    records = policy.sample(prompts, g.k, g.max_new_tokens, g.temperature, g.top_p, seed=cfg.seed_for("sampling", rnd),
                            desc=f"round {rnd}: sampling")
    policy.close()
    del policy
    members = reward.scores_of(run.reward_models(), cfg.reward.head_hidden, precision.dtype, tok,
                               [r["prompt"] for r in records], [r["responses"] for r in records],
                               [r["ended"] for r in records], cfg.reward.score_batch_size, desc=f"round {rnd}: scoring")
    world = world_of(cfg)
    for i, r in enumerate(records):
        r["rewards"] = conservative([[m[i][j] for m in members] for j in range(len(r["responses"]))], g.spread_penalty)
        if len(members) > 1:
            r["member_rewards"] = [m[i] for m in members]
        if world.has_oracle:
            r["oracle"] = [world.oracle(r["prompt"], x, e) for x, e in zip(r["responses"], r["ended"])]
    check_records(records, GEN_KEYS, str(StageFiles(dest).samples))
    min_gap = max(g.min_reward_gap, plan["targeted"].get("min_reward_gap", 0.0))  # the controller's, after weak labels
    pairs, dropped = make_pairs(records, g.strategy, min_gap, g.require_eos, g.length_penalty,
                                cfg.seed_for("pairs", rnd), source=f"round_{rnd}", min_agreement=g.min_agreement)
    m = label_diagnostics(pairs, dropped, len(records), world.has_oracle, run)
    if plan["targeted"].get("capability_pairs"):
        m["capability_pairs"] = _add_capability_pairs(pairs, tok, cfg, world.style, rnd)
    m.update(start_round=plan["start"], precision=precision.name, prompts=len(records), hard_prompts=n_hard, min_reward_gap=min_gap,
             samples=sum(len(r["responses"]) for r in records))
    write_jsonl(StageFiles(dest).samples, records)
    write_jsonl(StageFiles(dest).pairs, pairs)
    return m


def conservative(scores: list[list[float]], penalty: float) -> list[float]:
    """Each response's ensemble score: the mean of its members' rewards (`scores`: [responses][members]) minus
    `penalty` times their standard deviation (population; 0 for one member)."""
    out = []
    for x in scores:
        mean = sum(x) / len(x)
        out.append(mean - penalty * (sum((v - mean) ** 2 for v in x) / len(x)) ** 0.5 if penalty else mean)
    return out


def _add_capability_pairs(pairs: list[dict], tok, cfg, style: str, rnd: int) -> int:
    """The controller's targeted data after a capability regression: probe-style pairs, appended to `pairs`."""
    cap = capability_pairs(style, max(8, len(pairs) // 4), cfg.seed_for("capability_pairs", rnd))
    for c in cap:
        prompt = tok.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=True)
        pairs.append({"prompt": prompt, "chosen": as_completion(prompt, c["chosen"]),
                      "rejected": as_completion(prompt, c["rejected"]), "source": "capability"})
    return len(cap)


def label_diagnostics(pairs: list[dict], dropped, n_prompts: int, has_oracle: bool, run) -> dict:
    """Pair success rate, why pairs were dropped, the reward-gap distribution, and (with an oracle) oracle agreement."""
    gaps = torch.tensor([p["gap"] for p in pairs]) if pairs else torch.zeros(0)
    q = [0.1, 0.25, 0.5, 0.75, 0.9]
    m = {N.pairs: len(pairs), N.pair_success_rate: len(pairs) / max(n_prompts, 1),
         N.dropped: dict(dropped), "dropped_share": {k: v / max(n_prompts, 1) for k, v in dropped.items()},
         N.reward_gap_quantiles: dict(zip(map(str, q), torch.quantile(gaps, torch.tensor(q)).tolist())) if len(gaps) else {},
         N.reward_gap_mean: gaps.mean().item() if len(gaps) else 0.0}
    if has_oracle and pairs:
        agree = [1.0 if p["oracle_chosen"] > p["oracle_rejected"] else 0.5 if p["oracle_chosen"] == p["oracle_rejected"] else 0.0
                 for p in pairs]
        m[N.synthetic_pair_oracle_agreement] = sum(agree) / len(agree)
        seed_agree = run.metrics(run.stage("data"))[N.seed_label_oracle_agreement]
        m[N.seed_label_oracle_agreement] = seed_agree
        m[N.labels_worse_than_seed] = m[N.synthetic_pair_oracle_agreement] < seed_agree
        if m[N.labels_worse_than_seed]:
            print(f"WARNING: synthetic labels agree with the oracle on {m[N.synthetic_pair_oracle_agreement]:.3f} of pairs, "
                  f"below the seed labels' {seed_agree:.3f}")
    return m

