"""The default sampler backend, ``hf``: batched Hugging Face generation (iterdpo.sampling): length-sorted,
left-padded, each prompt read once."""

from __future__ import annotations

from .. import sampling
from ..config import ModelConfig
from ..models import Precision, free, load_causal_lm, load_tokenizer
from ..registry import SAMPLERS


@SAMPLERS.register("hf")
class HFSampler:
    """Batched Hugging Face sampling (iterdpo.sampling): length-sorted, left-padded, each prompt read once.
    `cache`: the decode step's key/value cache (sampling.CACHES; auto is static on a GPU, dynamic on a CPU)."""

    cache = "auto"

    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def load(cls, path: str, mcfg: ModelConfig, precision: Precision, batch_size: int) -> "HFSampler":
        return cls(load_causal_lm(path, mcfg, precision), load_tokenizer(path, mcfg), batch_size)

    def sample(self, prompts, k, max_new_tokens, temperature=1.0, top_p=1.0, seed=0, greedy=False, desc="sampling"):
        return sampling.sample(self.model, self.tokenizer, prompts, k, max_new_tokens, temperature, top_p,
                               self.batch_size, seed=seed, greedy=greedy, desc=desc, cache=self.cache)

    def logprobs(self, prompts, completions, add_eos=None, desc="log-probs"):
        return sampling.completion_logprobs(self.model, self.tokenizer, prompts, completions, self.batch_size,
                                            add_eos=add_eos, desc=desc)

    def close(self) -> None:
        """Drop the model, so that the memory is returned once the caller drops the sampler too."""
        self.model = None
        free()
