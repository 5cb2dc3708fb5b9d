"""Benchmarks: each stage against what users run today, on the same model, data and seed, in one run.

    python -m iterdpo.bench --model smollm2 --out bench.json      # the real measurement (~10 min, 2 CPU cores)
    python -m iterdpo.bench --model tiny --quick                  # the CI twin (~1-2 min)
    python -m iterdpo.bench --device-check [--quick]             # the GPU path with a T4 emulated (devicecheck/)

1. Generation: ``sampling.sample`` (length-sorted, left-padded, k sequences per prompt per call) and
   batched ``reward.score``, against one ``generate()`` call per sample and one reward forward per
   response. Same prompts, k, max_new_tokens and temperature. ``generation_speedup`` is the median
   over repeats of baseline time / our time, the arms alternating (ABBA) so drift hits both. Ours runs
   in ``generation.precision`` (bf16 on a CPU with AMX), the baseline in the model's precision (what a
   user loads); when they differ, ours also runs in the model's precision (the batching alone), the
   baseline is timed in both on the first prompt, and a check reports how far the dtype moves log-probs
   and the reward model's picks.
2. DPO round: TRL's DPOTrainer with ``dpo.round_rows`` and ``dpo.dpo_args`` (the pairs the steps
   consume, in length-grouped micro-batches; reference log-probs precomputed for them; max_length from
   the data; no activation checkpointing) against DPOConfig's defaults for the settings that cost
   compute (random batches of the whole data set, max_length=1024, no precompute, activation
   checkpointing on). The losses are compared on the same batches: a third run gives the baseline's
   settings ours' rows in ours' order. Everything else is shared (LoRA, learning rate and schedule, batch, steps, seed, data, precision: DPOConfig's own
   bf16 default raises "doesn't support bf16/gpu" on a CPU unless use_cpu=True). Each arm runs in its
   own process, which reloads the model before every run; the first run of each counts FLOPs
   (``FlopCounterMode`` around the trainer's construction, where the precompute happens, and
   ``train()``) and is not timed. Peak memory is the growth of the process's peak resident set
   over its size before the run (``/proc/self/clear_refs`` resets the peak; freed heap is trimmed
   first), or ``torch.cuda.max_memory_allocated`` growth on a GPU (``memory.peak_memory``).
3. End to end: ``pipeline.run_all`` on the tiny preset in a temporary folder (shrunk by --quick), and
   each stage's share from the ``wall_seconds`` in its metrics.json.

Timings on a shared CPU are noisy: read the paired ratios, not the absolute seconds. FLOPs are exact.
"""


from __future__ import annotations

from .setup import (  # noqa: F401
    PRESETS, ROOT, SIZES, Setup, Sizes, _gen_precision, _paired, setup_smollm2, setup_tiny,
)
from .generation import (  # noqa: F401
    _flops, _score, bench_generation, count_cpu_attention, naive_generate, ours_generate, precision_check,
)
from .dpo_round import (  # noqa: F401
    SHARED_ARGS, _Recorder, _dpo_run, _dpo_worker, _pad_share, _seq_lengths, arm_data, bench_dpo, round1_epochs,
)
from .report import QUICK_E2E, _versions, bench_e2e, main, table  # noqa: F401
