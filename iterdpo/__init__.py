"""iterdpo: iterative DPO with synthetic preferences for small language models.

Read the modules in the order the data flows (the README's module map says what each holds):
registry, fields, config, metrics, folder, data, losses, migrate, runfolder, lock, progress, guard, dist, models,
weights, training, memory, lexicons, sampling; the seams worlds/, samplers/, suites/, strategies/ (with pairs); the stages
sft, reward, panel, generate, dpo, evaluate, repair, frontier; controller/ (config, gates, verdict, log, report); stages, pipeline,
resume; the faces turns, runner, notebook, judges, plots/, card, export, __main__; sandbox, sandbox_guard and
humaneval; the tools bench/, devicecheck/, wheelhouse.
"""

__version__ = "0.1.0"

import logging as _logging
import os as _os
import warnings as _warnings

# Nothing sent unasked: the Hugging Face libraries' usage telemetry (TRL sends a request at every trainer start,
# naming the trainer, the model's architecture, the GPU and the world size) is off before any of them is
# imported, unless the user turns it on (export.telemetry, or HF_HUB_DISABLE_TELEMETRY=0 in the environment).
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Known-harmless noise of the stack, silenced before anything imports it, so executed notebooks show none:
# bitsandbytes' CPU backend logs a missing optional 4-bit kernel package at import (4 bit is CUDA-only
# here), and TRL/PEFT still read transformers' deprecated `is_gradient_checkpointing` property.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda r: "kernels-community" not in r.getMessage())
_warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
