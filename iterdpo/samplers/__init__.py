"""The sampler seam: how a policy is sampled and read, chosen by ``generation.backend`` (the generation
stage) and ``eval.backend`` (evaluation).

A sampler does two things for one loaded policy: sample k responses per prompt, and read the log-probs
of given completions. Generation and evaluation use nothing else of the policy (capability scoring
reads the Hugging Face model). Adding a backend is one new module here, with a class that has ``load``,
``sample``, ``logprobs`` and ``close``, registered in ``iterdpo.registry.SAMPLERS``. An optional engine is
imported inside its ``load``, so it is needed only when chosen (``vllm``: :mod:`.vllm`; ``hf``: :mod:`.hf`).

Records from ``sample`` follow the generation schema without rewards:
``{"prompt", "responses": [k], "ended": [k], "n_tokens": [k]}``, in prompt order.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import ModelConfig
from ..models import Precision
from ..registry import SAMPLERS


class Sampler(Protocol):
    tokenizer: object

    def sample(self, prompts: list[str], k: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
               seed: int = 0, greedy: bool = False, desc: str = "sampling") -> list[dict]: ...

    def logprobs(self, prompts: list[str], completions: list[str], add_eos: list[bool] | None = None,
                 desc: str = "log-probs") -> tuple[torch.Tensor, torch.Tensor]: ...

    def close(self) -> None: ...


def load(backend: str, path: str, mcfg: ModelConfig, precision: Precision, batch_size: int) -> Sampler:
    """The policy at `path`, loaded by `backend` (a name in iterdpo.registry.SAMPLERS)."""
    if backend not in SAMPLERS:
        raise ValueError(f"sampler backend {backend!r}: expected one of {SAMPLERS.names()}")
    return SAMPLERS[backend].load(path, mcfg, precision, batch_size)
