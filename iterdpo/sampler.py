"""The sampler seam: how a policy is sampled and read, chosen by ``generation.backend``.

A sampler does two things for one loaded policy: sample k responses per prompt, and read the log-probs
of given completions. Generation and evaluation use nothing else of the policy (capability scoring
reads the Hugging Face model). Adding a backend is one new class with ``load``, ``sample``, ``logprobs``
and ``close``, and one line in ``BACKENDS``. An optional engine is imported inside its ``load``, so it is
needed only when chosen (``vllm``: iterdpo/vllm_sampler.py).

Records from ``sample`` follow the generation schema without rewards:
``{"prompt", "responses": [k], "ended": [k], "n_tokens": [k]}``, in prompt order.
"""

from __future__ import annotations

from typing import Protocol

import torch

from . import sampling
from .config import ModelConfig
from .models import Precision, free, load_causal_lm, load_tokenizer
from .vllm_sampler import VLLMSampler


class Sampler(Protocol):
    tokenizer: object

    def sample(self, prompts: list[str], k: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
               seed: int = 0, greedy: bool = False, desc: str = "sampling") -> list[dict]: ...

    def logprobs(self, prompts: list[str], completions: list[str], add_eos: list[bool] | None = None,
                 desc: str = "log-probs") -> tuple[torch.Tensor, torch.Tensor]: ...

    def close(self) -> None: ...


class HFSampler:
    """Batched Hugging Face sampling (iterdpo.sampling): length-sorted, left-padded, each prompt read once."""

    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def load(cls, path: str, mcfg: ModelConfig, precision: Precision, batch_size: int) -> "HFSampler":
        return cls(load_causal_lm(path, mcfg, precision), load_tokenizer(path, mcfg), batch_size)

    def sample(self, prompts, k, max_new_tokens, temperature=1.0, top_p=1.0, seed=0, greedy=False, desc="sampling"):
        return sampling.sample(self.model, self.tokenizer, prompts, k, max_new_tokens, temperature, top_p,
                               self.batch_size, seed=seed, greedy=greedy, desc=desc)

    def logprobs(self, prompts, completions, add_eos=None, desc="log-probs"):
        return sampling.completion_logprobs(self.model, self.tokenizer, prompts, completions, self.batch_size,
                                            add_eos=add_eos, desc=desc)

    def close(self) -> None:
        """Drop the model, so that the memory is returned once the caller drops the sampler too."""
        self.model = None
        free()


BACKENDS = {"hf": HFSampler, "vllm": VLLMSampler}


def load(backend: str, path: str, mcfg: ModelConfig, precision: Precision, batch_size: int) -> Sampler:
    """The policy at `path`, loaded by `backend` (a key of BACKENDS)."""
    if backend not in BACKENDS:
        raise ValueError(f"generation.backend={backend!r}: expected one of {sorted(BACKENDS)}")
    return BACKENDS[backend].load(path, mcfg, precision, batch_size)
