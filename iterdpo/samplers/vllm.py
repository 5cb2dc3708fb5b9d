"""vLLM as a sampler backend (``generation.backend: vllm``): the generation stage's K samples per prompt at
serving speed. The reward model still scores with transformers, and evaluation keeps the HF sampler.

Optional: vLLM is imported only when this sampler loads a policy, and it needs a CUDA GPU; either missing is
a one-line ConfigError. The policy is the round's merged folder (plain safetensors), loaded with prefix
caching on, so the k samples of a prompt read it once (as the HF sampler's shared prompt cache does), at
most ``generation.batch_size`` sequences at a time (vLLM's ``max_num_seqs``: the same batch as the HF
sampler's).

Records follow the sampler schema (iterdpo/samplers/__init__.py). Prompts go in as token ids, tokenized as the HF
sampler does (no special tokens added). Prompt i of the list draws from its own seed, ``seed + i``, so the
records depend neither on how vLLM schedules its batches nor on how prompts are shared out: with several
processes each samples every N-th prompt with its own engine on its own GPU (vLLM's
``external_launcher``, as TRL runs colocated vLLM) and the records are gathered.
"""

from __future__ import annotations

from .. import dist
from ..config import ConfigError, ModelConfig
from ..models import Precision, free, load_tokenizer
from ..registry import SAMPLERS
from ..sampling import add_response


@SAMPLERS.register("vllm")
class VLLMSampler:
    """vLLM's ``LLM.generate`` with ``SamplingParams(n=k, ...)`` per prompt."""

    def __init__(self, llm, tokenizer):
        self.llm, self.tokenizer = llm, tokenizer

    @classmethod
    def load(cls, path: str, mcfg: ModelConfig, precision: Precision, batch_size: int) -> "VLLMSampler":
        try:
            import vllm
        except ImportError as e:
            raise ConfigError("generation.backend=vllm: vLLM is not installed (pip install vllm, on a machine with a "
                              "CUDA GPU); or set generation.backend=hf") from e
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("generation.backend=vllm needs a CUDA GPU and none is visible; set generation.backend=hf")
        kw = dict(model=path, enable_prefix_caching=True, dtype=precision.name, max_num_seqs=batch_size,
                  trust_remote_code=mcfg.trust_remote_code)
        if dist.active():  # one engine per process, in the process: vLLM's mode for torchrun-launched jobs
            kw["distributed_executor_backend"] = "external_launcher"
        return cls(vllm.LLM(**kw), load_tokenizer(path, mcfg))

    def sample(self, prompts, k, max_new_tokens, temperature=1.0, top_p=1.0, seed=0, greedy=False, desc="sampling"):
        from vllm import SamplingParams

        tok = self.tokenizer
        mine = dist.mine(list(range(len(prompts))))
        inputs = [{"prompt_token_ids": tok(prompts[i], add_special_tokens=False)["input_ids"]} for i in mine]
        params = [SamplingParams(n=k, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                                 max_tokens=max_new_tokens, seed=seed + i, stop_token_ids=[tok.eos_token_id])
                  for i in mine]
        out = {}
        for i, result in zip(mine, self.llm.generate(inputs, params, use_tqdm=False)):
            rec = {"prompt": prompts[i], "responses": [], "ended": [], "n_tokens": []}
            for c in result.outputs:
                add_response(rec, list(c.token_ids), tok, stopped=c.finish_reason == "stop")
            out[i] = rec
        out = dist.gather(out)
        return [out[i] for i in range(len(prompts))]

    def logprobs(self, prompts, completions, add_eos=None, desc="log-probs"):
        raise NotImplementedError("the vllm sampler only samples; log-probs are read with the hf sampler "
                                  "(evaluation always uses it)")

    def close(self) -> None:
        """Drop the engine (vLLM frees its GPU memory when the LLM is collected), so the reward model fits."""
        self.llm = None
        free()
