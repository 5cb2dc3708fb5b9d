"""Measuring one model: peak memory per stage, DPO tokens/s and MFU, generation and scoring tokens/s."""

from __future__ import annotations

import contextlib
import gc
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    AutoConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
)
from transformers.models.auto import tokenization_auto

from .. import reward
from ..config import load_preset
from ..dpo import train_round
from ..memory import config_size, peak_memory
from ..models import load_causal_lm, load_tokenizer, resolve_precision
from ..sampling import sample
from .formulas import (
    Sizes, T4_CAP_GIB, T4_FP16_TFLOPS, bandwidth_bound_tokens_per_s, dpo_flops_per_token, matmul_params, mfu,
    plan_estimate_bytes,
)
from .guards import StepProbe, bf16_params, fp16_health

# measuring -------------------------------------------------------------------------------------------------
class Peaks:
    """Peak memory of named stages: CUDA max_memory_allocated (absolute), or the process's peak RSS growth."""

    def __init__(self, cuda: bool):
        self.cuda, self.stages = cuda, {}

    @contextlib.contextmanager
    def stage(self, name: str):
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


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer with one word per id ('w<i>' is id i; 0 pad, 1 eos, 2 unk): random ids as text."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   padding_side="left")


def keep_word_tokenizers() -> None:
    """Let AutoTokenizer load word_tokenizer from a Qwen2 model folder: transformers 5 otherwise builds its
    Qwen2Tokenizer (a byte-level BPE) from the folder's vocabulary, which turns every 'w<i>' into nothing."""
    tokenization_auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS.discard("qwen2")


def random_text(rng: random.Random, vocab: int, lo: int, hi: int) -> str:
    return " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(rng.randint(lo, hi)))


def build_random_model(arch: str, values: dict, dest: Path, cuda: bool, seed: int) -> Path:
    """A causal LM of `arch` (qwen2 or llama) with `values`, random weights, saved in fp16 (fp32 on CPU) with a
    word-level tokenizer of its vocabulary."""
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

    with peaks.stage("load"):
        model = load_causal_lm(str(model_dir), mcfg, prec)
    out["bf16_parameters"] = bf16_params(model)
    out["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    out["generation"], recs = measure_generation(model, tok, prompts, s, t4.generation.temperature, seed, peaks,
                                                 out["weight_bytes"], device.get("hbm_gbps"))
    del model
    _free()
    out["scoring"] = measure_scoring(str(model_dir), tok, recs, s, t4.reward.head_hidden, prec.dtype, cuda, peaks)
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


def measure_generation(model, tok, prompts: list[str], s: Sizes, temp: float, seed: int, peaks: Peaks,
                       weight_bytes: int, bw: float | None) -> tuple[dict, list]:
    """(record, samples): sampling.sample at the preset's batch against one generate() per prompt on the first
    prompts, and against the memory-bandwidth bound when the bandwidth `bw` (GB/s) is known."""
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
    # the fast path (a static cache, compiled on a GPU) against the plain one on the first prompts, same seed
    few = lambda cache: sample(model, tok, prompts[:2], s.k, s.max_new_tokens, temp, batch_size=s.gen_batch, seed=seed,
                               cache=cache)
    gen["static_cache_same_records"] = few("static") == few("dynamic")
    if bw:
        gen["bandwidth_bound_tokens_per_s"] = {"ours": bandwidth_bound_tokens_per_s(weight_bytes, rows, bw),
                                               "baseline": bandwidth_bound_tokens_per_s(weight_bytes, s.k, bw)}
        gen["fraction_of_bound"] = {a: gen[f"{a}_tokens_per_s"] / b
                                    for a, b in gen["bandwidth_bound_tokens_per_s"].items()}
    return gen, recs


def measure_scoring(model_dir: str, tok, recs: list, s: Sizes, head_hidden: int, dtype: torch.dtype, cuda: bool,
                    peaks: Peaks) -> dict:
    """The reward model (policy body + head) on the samples `recs`, each prompt read once for its k: tokens/s."""
    with peaks.stage("score"):
        rm = reward.build(model_dir, head_hidden, 0.0, dtype, "cuda" if cuda else "cpu", mode="frozen")
        args = ([r["prompt"] for r in recs], [r["responses"] for r in recs], [r["ended"] for r in recs])
        reward.score_grouped(rm, tok, *[a[:1] for a in args], batch_size=s.score_batch)  # warm-up
        _sync()
        t0 = time.perf_counter()
        reward.score_grouped(rm, tok, *args, batch_size=s.score_batch)
        _sync()
        score_s = time.perf_counter() - t0
    n_prompt = sum(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in recs)
    n_resp = sum(n for r in recs for n in r["n_tokens"])
    return {"responses": s.prompts * s.k, "tokens_read": n_prompt + n_resp, "seconds": score_s,
            "tokens_per_s": (n_prompt + n_resp) / score_s,
            "measure": "prompt tokens once + response tokens, over the wall time of score_grouped"}


def measure_dpo(model_dir: str, mcfg, prec, s: Sizes, dest: Path, seed: int, cfg, peaks: Peaks, device: dict,
                rng: random.Random, vocab: int, four_bit: bool = False) -> dict:
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
    if secs:
        d["mfu_t4"] = mfu(fpt, real, secs, T4_FP16_TFLOPS)  # what a T4 user reads: against a T4's fp16 peak
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
