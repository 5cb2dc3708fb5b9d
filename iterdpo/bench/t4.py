"""A predicted T4 wall time for the ``t4`` preset's 2-round run, stage by stage, from FLOPs, bytes and operation
counts (no GPU needed; the figures and what they rest on: docs/results.md, issue 29).

The model. Each stage is a list of phases; a phase's time is the larger of its GPU time and its host time (the
host enqueues kernels ahead of the GPU, so the slower of the two sets the pace), summed over phases:

- compute phases (training steps, prefill, scoring, log-probs): FLOPs / (T4_FP16_FLOPS x MFU_*);
- decode steps: max(weights + KV cache bytes read / (T4_HBM_BYTES x BW_EFF), FLOPs / (T4_FP16_FLOPS x MFU_DECODE));
- host: operations launched x HOST_SECONDS_PER_OP, where a decode step with a static cache replays one CUDA graph
  (DECODE_OPS_GRAPHED operations of sampling around it) and an eager one launches DECODE_OPS_PER_LAYER x layers.

Constants and their sources:

- T4_FP16_FLOPS = 65e12: NVIDIA T4 datasheet, fp16 tensor cores (dense). T4_HBM_BYTES = 320e9: the same sheet.
- MFU_TRAIN = 0.35, MFU_FORWARD = 0.45, MFU_DECODE = 0.30: assumed, not measured on a T4. A LoRA step of a 0.5B
  model at 16 x 2 x ~400 tokens is large enough for the matmuls to run near the tensor cores' practical rate
  (cuBLAS fp16 GEMMs of these shapes reach 50-70% of peak); attention, norms and the optimizer take the rest.
- BW_EFF = 0.65: assumed share of the datasheet bandwidth a decode step streams at (the issue's 10-12k of a
  16k tokens/s bound for Qwen2.5-0.5B at batch 64).
- HOST_SECONDS_PER_OP = 20e-6 on a Colab host with a CUDA-graphed or compiled step, 85e-6 eager: the eager
  figure is the issue's device-check reading (~9.5k operations in 0.8 s of a DPO step); 20 us is a PyTorch eager
  launch on a fast host (Colab's Xeon is slower than the lent machine's, so the eager figure is kept for eager).
- The DPO micro-batch is memory.plan_memory's for Qwen2.5-0.5B at the preset's longest pair on 15 GiB.
- TRAIN_OPS_PER_LAYER = 200 per micro-batch (forward, backward, LoRA; the issue's 9.5k per 2 micro-batches of 24
  layers), DECODE_OPS_PER_LAYER = 40 (an eager decode step of a Llama/Qwen layer), DECODE_OPS_GRAPHED = 30.

What it leaves out: loading and saving models (seconds each), the data stage, tokenization, Python between
stages, and the wait for the longest sample in a batch beyond max_new_tokens (every sample is taken to run to
max_new_tokens, an upper bound). It is a prediction: rerun the device check on a T4 to replace it.
"""

from __future__ import annotations

from types import SimpleNamespace

from ..config import load_preset
from ..devicecheck.formulas import GIB, QWEN25_05B, T4_CAP_GIB, dpo_flops_per_token, matmul_params
from ..memory import config_size, plan_memory

T4_FP16_FLOPS = 65e12
T4_HBM_BYTES = 320e9
MFU_TRAIN, MFU_FORWARD, MFU_DECODE = 0.35, 0.45, 0.30
BW_EFF = 0.65
HOST_SECONDS_PER_OP = {"graphed": 20e-6, "eager": 85e-6}
TRAIN_OPS_PER_LAYER, DECODE_OPS_PER_LAYER, DECODE_OPS_GRAPHED = 200, 40, 30
BYTES = 2  # fp16 on a T4
ROUNDS = 2


class Shape(SimpleNamespace):
    """A decoder's sizes: matmul weights, LoRA weights, layers, hidden, KV width per token and layer."""


def shape_of(cfg_values: dict, lora_r: int, targets: list[str]) -> Shape:
    cfg = SimpleNamespace(**cfg_values)
    h, inter = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * h // cfg.num_attention_heads
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, inter),
            "up_proj": (h, inter), "down_proj": (inter, h)}
    lora = sum(lora_r * (a + b) for t, (a, b) in dims.items() if t in targets) * cfg.num_hidden_layers
    return Shape(n=matmul_params(cfg), lora=lora, layers=cfg.num_hidden_layers, hidden=h, kv=2 * kv,
                 vocab=cfg.vocab_size)


def train_seconds(m: Shape, sequences: int, seq: int, micro_batches: int, ref_pass: bool = False) -> dict:
    """LoRA training on `sequences` sequences of `seq` tokens in `micro_batches` micro-batches (plus a forward
    reference pass over the same tokens when ref_pass)."""
    tokens = sequences * seq
    flops = tokens * dpo_flops_per_token(m.n, m.lora, m.layers, m.hidden, seq)
    gpu = flops / (T4_FP16_FLOPS * MFU_TRAIN)
    if ref_pass:
        gpu += tokens * (2 * m.n + 4 * m.layers * m.hidden * seq) / (T4_FP16_FLOPS * MFU_FORWARD)
    host = micro_batches * TRAIN_OPS_PER_LAYER * m.layers * HOST_SECONDS_PER_OP["eager"]
    return {"seconds": max(gpu, host), "gpu_seconds": gpu, "host_seconds": host, "flops": flops}


def forward_seconds(m: Shape, tokens: float, seq: float) -> float:
    """Forward passes over `tokens` tokens in sequences of about `seq` (prefill, scoring, log-probs)."""
    return tokens * (2 * m.n + 4 * m.layers * m.hidden * seq) / (T4_FP16_FLOPS * MFU_FORWARD)


def decode_seconds(m: Shape, sequences: int, batch: int, prompt: int, new: int, graphed: bool = True) -> dict:
    """`sequences` samples of `new` tokens after `prompt` tokens, `batch` at a time: prefill plus decode steps."""
    batches = -(-sequences // batch)
    step_bytes = m.n * BYTES + batch * (prompt + new / 2) * m.kv * m.layers * BYTES
    step_flops = 2 * m.n * batch
    gpu = max(step_bytes / (T4_HBM_BYTES * BW_EFF), step_flops / (T4_FP16_FLOPS * MFU_DECODE))
    ops = DECODE_OPS_GRAPHED if graphed else DECODE_OPS_PER_LAYER * m.layers
    host = ops * HOST_SECONDS_PER_OP["graphed" if graphed else "eager"]
    decode = batches * new * max(gpu, host)
    return {"seconds": decode + forward_seconds(m, sequences * prompt, prompt), "decode_step_gpu_s": gpu,
            "decode_step_host_s": host, "tokens_per_s": batch * new * batches / decode}


def eval_seconds(cfg, m: Shape) -> float:
    """One policy's evaluation: held-out samples, their log-probs under policy and reference, capability suites."""
    e, g, d = cfg.eval, cfg.generation, cfg.data
    t = decode_seconds(m, d.heldout_prompts * (2 if e.greedy else 1), e.batch_size, d.max_prompt_tokens // 2,
                       g.max_new_tokens)["seconds"]
    t += 2 * forward_seconds(m, d.heldout_prompts * (d.max_prompt_tokens // 2 + g.max_new_tokens), d.max_prompt_tokens)
    new = {"gsm8k": e.gsm8k_max_new_tokens, "humaneval": e.humaneval_max_new_tokens}
    for suite in e.capability:
        if suite in new:
            t += decode_seconds(m, e.capability_n, e.batch_size, 200, new[suite])["seconds"]
        else:  # multiple choice and probes: a forward pass over each item's choices
            t += forward_seconds(m, e.capability_n * 4 * 300, 300)
    return t


def predict(preset: str = "t4", rounds: int = ROUNDS) -> dict:
    """{"stages": {name: seconds}, "total", "offline_arm", "constants", "model"}: the preset's run on a T4."""
    cfg = load_preset(preset)
    m = shape_of(QWEN25_05B, cfg.model.lora_r, list(cfg.model.lora_targets))
    d, s, r, g, p = cfg.data, cfg.sft, cfg.reward, cfg.generation, cfg.dpo
    seq = d.max_prompt_tokens // 2 + d.max_response_tokens // 2  # a typical pair's sequence: half of each cap
    # the labelling ensemble's members, each for reward.max_steps; the held-out judge for as many epochs of its
    # share of the pairs (reward.train_stage), which it never scores in generation
    judge_steps = round(r.max_steps * r.judge_share / (1 - r.judge_share)) if r.judge_share else 0
    steps = r.ensemble * r.max_steps + judge_steps
    stages = {"sft": train_seconds(m, s.max_steps * s.batch_size * s.grad_accum, seq,
                                   s.max_steps * s.grad_accum)["seconds"],
              "reward": train_seconds(m, 2 * steps * r.batch_size * r.grad_accum, seq, steps * r.grad_accum)["seconds"],
              "round_0/eval": eval_seconds(cfg, m)}
    eff = p.batch_size * p.grad_accum
    size = config_size(SimpleNamespace(**QWEN25_05B))
    plan = plan_memory(size["n_params"], int(T4_CAP_GIB * GIB), d.max_prompt_tokens + d.max_response_tokens, eff, BYTES,
                       layers=size["layers"], hidden=size["hidden"], vocab=size["vocab"])  # the planner on a T4
    dpo = train_seconds(m, 2 * p.max_steps * eff, seq, p.max_steps * plan["grad_accum"], True)
    samples = g.prompts_per_round * g.k
    sampling = decode_seconds(m, samples, g.batch_size, d.max_prompt_tokens // 2, g.max_new_tokens)
    scoring = r.ensemble * forward_seconds(m, g.prompts_per_round * d.max_prompt_tokens // 2 + samples * g.max_new_tokens,
                                        seq)
    for rnd in range(1, rounds + 1):
        stages[f"round_{rnd}/generate"] = sampling["seconds"] + scoring
        stages[f"round_{rnd}/dpo"] = dpo["seconds"]
        stages[f"round_{rnd}/eval"] = eval_seconds(cfg, m)
    arms = 1 + len(getattr(cfg.baseline, "frontier_betas", []))
    evals = 1 + (arms - 1) * getattr(cfg.baseline, "frontier_checkpoints", 1)
    offline = (arms * rounds * dpo["seconds"] + evals * eval_seconds(cfg, m)) if cfg.baseline.offline_dpo else 0.0
    loop = sum(stages.values())
    return {"stages": stages, "total": loop, "offline_arm": offline, "total_with_offline_arm": loop + offline,
            "dpo_step": {"micro_batch": plan["micro_batch"], "grad_accum": plan["grad_accum"], "seconds": dpo["seconds"] / p.max_steps, "gpu_seconds": dpo["gpu_seconds"] / p.max_steps,
                         "host_seconds": dpo["host_seconds"] / p.max_steps,
                         "mfu_predicted": dpo["flops"] / dpo["seconds"] / T4_FP16_FLOPS},
            "sampling": {"tokens_per_s": sampling["tokens_per_s"], "decode_step_gpu_s": sampling["decode_step_gpu_s"],
                         "decode_step_host_s": sampling["decode_step_host_s"],
                         "eager_tokens_per_s": decode_seconds(m, samples, g.batch_size, d.max_prompt_tokens // 2,
                                                              g.max_new_tokens, graphed=False)["tokens_per_s"]},
            "model": f"{preset} preset, {rounds} rounds, Qwen2.5-0.5B shapes, fp16; see iterdpo/bench/t4.py",
            "constants": {"t4_fp16_flops": T4_FP16_FLOPS, "t4_hbm_bytes_per_s": T4_HBM_BYTES, "mfu_train": MFU_TRAIN,
                          "mfu_forward": MFU_FORWARD, "mfu_decode": MFU_DECODE, "bandwidth_efficiency": BW_EFF,
                          "host_seconds_per_op": HOST_SECONDS_PER_OP, "train_ops_per_layer": TRAIN_OPS_PER_LAYER,
                          "decode_ops_per_layer_eager": DECODE_OPS_PER_LAYER, "decode_ops_graphed": DECODE_OPS_GRAPHED}}
