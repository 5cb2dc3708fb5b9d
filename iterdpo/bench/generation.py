"""1. Generation: ours (batched, each prompt read once, scored grouped) against one generate() per sample."""

from __future__ import annotations

import statistics

import torch
from torch.utils import flop_counter as fc

from .. import reward
from ..sampling import completion_logprobs, encode_pairs, sample
from ..models import free, load_causal_lm
from .setup import Setup, Sizes, _paired


# 1. generation -------------------------------------------------------------------------------------------
# Ours decodes with a static cache everywhere: compiled on a GPU, and eager on a CPU, where it saves the dynamic
# cache's concatenations (about 15% of a 32-row SmolLM2 decode step; compiling it there was slower).
OURS_CACHE = "static"


def ours_generate(model, tok, rm, prompts, k, max_new_tokens, temperature, s: Sizes, seed: int) -> tuple[list, list]:
    """Batched sampling and batched scoring; returns (sample records, their rewards)."""
    recs = sample(model, tok, prompts, k, max_new_tokens, temperature, batch_size=s.gen_batch_size, seed=seed,
                  cache=OURS_CACHE)
    return recs, _score(rm, tok, recs, s)


def _score(rm, tok, recs: list, s: Sizes) -> list:
    return reward.score_grouped(rm, tok, [r["prompt"] for r in recs], [r["responses"] for r in recs],
                                [r["ended"] for r in recs], s.score_batch_size)


@torch.no_grad()
def naive_generate(model, tok, rm, prompts, k, max_new_tokens, temperature, seed: int) -> int:
    """What a first script does: one generate() per sample, one reward forward per response."""
    model.eval()
    rm.eval()
    dev = next(model.parameters()).device
    torch.manual_seed(seed)
    n = 0
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=False).to(dev)
        for _ in range(k):
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=None,
                                 max_new_tokens=max_new_tokens, num_return_sequences=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            ids = out[0, enc["input_ids"].shape[1]:].tolist()
            ended = tok.eos_token_id in ids
            body = ids[: ids.index(tok.eos_token_id)] if ended else ids
            text = " " + tok.decode(body, skip_special_tokens=True).strip()
            r_ids, r_att, _ = encode_pairs(tok, [p], [text], [ended])
            rm.score(r_ids.to(dev), r_att.to(dev))
            n += len(body) + int(ended)
    return n


def bench_generation(st: Setup, s: Sizes, seed: int) -> dict:
    """Ours (in generation.precision) against the baseline (in the model's precision, what a user loads).

    When the two precisions differ, a third arm runs ours in the model's precision (the batching alone), the
    baseline is also timed on the first prompt in ours' precision (is it the faster one for a user?), and
    ours' samples are read back by both precisions' policy and reward model (how far the dtype moves them).
    """
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    load = lambda prec: (load_causal_lm(st.model_dir, st.mcfg, prec).eval(),
                         reward.build(st.model_dir, st.head_hidden, 0.0, prec.dtype, dev, mode="frozen").eval())
    base_m, base_rm = load(st.precision)
    same = st.gen_precision == st.precision
    fast_m, fast_rm = (base_m, base_rm) if same else load(st.gen_precision)
    if not same:
        fast_rm.head.load_state_dict(base_rm.head.state_dict())  # one random head: the arms score alike
    ours = lambda m, rm, prompts=st.prompts: ours_generate(m, st.tok, rm, prompts, s.k, s.max_new_tokens,
                                                           st.temperature, s, seed)
    base = lambda m=base_m, rm=base_rm, prompts=st.prompts: naive_generate(m, st.tok, rm, prompts, s.k, s.max_new_tokens,
                                                                            st.temperature, seed)
    one = st.prompts[:1]  # FLOPs, and the warm-up
    flops = {"ours": _flops(lambda: ours(fast_m, fast_rm, one)), "baseline": _flops(lambda: base(prompts=one))}
    last: dict = {}  # each arm's output in its last timed run
    arms = {"ours": lambda: last.__setitem__("ours", ours(fast_m, fast_rm)),
            "baseline": lambda: last.__setitem__("baseline", base())}
    out: dict = {}
    if not same:
        arms["ours_model_precision"] = lambda: last.__setitem__("ours_model_precision", ours(base_m, base_rm))
        _flops(lambda: base(fast_m, fast_rm, one))  # warm-up
        first = _paired([lambda: base(prompts=one), lambda: base(fast_m, fast_rm, one)], 1)
        out["baseline_first_prompt_seconds"] = {st.precision.name: first[0][0], st.gen_precision.name: first[1][0]}
    times = dict(zip(arms, _paired(list(arms.values()), s.repeats)))
    n = len(st.prompts)
    tokens = lambda v: v if isinstance(v, int) else sum(x for r in v[0] for x in r["n_tokens"])  # baseline: a count
    speed = lambda arm: statistics.median(b / o for o, b in zip(times[arm], times["baseline"]))
    out.update({"prompts": n, "k": s.k, "max_new_tokens": s.max_new_tokens, "temperature": st.temperature,
                "precision": {"ours": st.gen_precision.name, "baseline": st.precision.name}, "ours_cache": OURS_CACHE,
                "ours_seconds": times["ours"], "baseline_seconds": times["baseline"],
                "ours_pairs_per_s": n / statistics.median(times["ours"]),
                "baseline_pairs_per_s": n / statistics.median(times["baseline"]),
                "mean_tokens_per_sample": {a: tokens(v) / (n * s.k) for a, v in last.items()},
                "flops_first_prompt": flops, "flops_ratio_first_prompt": flops["ours"] / flops["baseline"],
                "speedup": speed("ours")})
    if not same:
        out["ours_model_precision_seconds"] = times["ours_model_precision"]
        out["speedup_model_precision"] = speed("ours_model_precision")
        out["precision_check"] = precision_check(st, s, *last["ours"], (base_m, base_rm), fast_m)
    del base_m, base_rm, fast_m, fast_rm
    free()
    return out


@torch.no_grad()
def precision_check(st: Setup, s: Sizes, recs: list, fast_rewards: list, exact: tuple, fast_policy) -> dict:
    """How far generation.precision moves what the round keeps: ours' samples and rewards (drawn and scored
    in the fast dtype) against the policy and reward model in the model's dtype (`exact`): the per-token
    log-prob gap, and whether the reward model picks the same chosen and rejected response per prompt."""
    flat = lambda key: [x for r in recs for x in r[key]]
    prompts = [r["prompt"] for r in recs for _ in r["responses"]]
    lp = {}
    for name, m in (("exact", exact[0]), ("fast", fast_policy)):
        logp, n = completion_logprobs(m, st.tok, prompts, flat("responses"), s.score_batch_size, flat("ended"))
        lp[name] = logp / n.clamp(min=1)
    a, b = _score(exact[1], st.tok, recs, s), fast_rewards
    pick = lambda x: (max(range(len(x)), key=x.__getitem__), min(range(len(x)), key=x.__getitem__))
    fa, fb = torch.tensor([v for x in a for v in x]), torch.tensor([v for x in b for v in x])
    return {"samples": len(prompts), "logp_per_token_exact": lp["exact"].mean().item(),
            "logp_per_token_mean_abs_gap": (lp["exact"] - lp["fast"]).abs().mean().item(),
            "reward_same_pair": sum(pick(x) == pick(y) for x, y in zip(a, b)) / len(a),
            "reward_max_abs_gap": (fa - fb).abs().max().item(), "reward_std": fa.std().item()}


def _flops(fn) -> int:
    count_cpu_attention()
    with fc.FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_cpu_attention() -> None:
    """Give FlopCounterMode the GPU kernels' attention formula for the CPU SDPA kernel, which it counts as 0."""
    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return
    fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)(
        lambda q, k, v, *_, out_shape=None, **__: fc.sdpa_flop_count(q, k, v))
    fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)(
        lambda g, q, k, v, *_, out_shape=None, **__: fc.sdpa_backward_flop_count(g, q, k, v))
