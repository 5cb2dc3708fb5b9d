"""Sampling primitives: batched sampling and batched log-probs for a causal LM.

Sampling sorts prompts by length so each batch pads little, pads on the left so every row ends at
its prompt's last token, and draws k sequences per prompt at once. Each prompt is read once: its
key/value cache is computed for one row and repeated k times (``share_prompt``), where generate()
with num_return_sequences=k would read it k times. Policies are saved with their LoRA adapters
already merged, so generation runs on plain weights.

The decode step's key/value cache (``cache``) is ``dynamic`` (grown by concatenation every step) or
``static`` (preallocated for the batch's longest prompt plus max_new_tokens, rounded up to
STATIC_BUCKET positions so few shapes occur). With a static cache transformers compiles the decode
step on a GPU (CUDA graphs), where an eager step is host-bound; on a CPU it runs eagerly and saves the
concatenation's copies (compiling it there measured slower: see docs/results.md, issue 29). ``auto``
is static on a GPU and dynamic on a CPU, so CPU runs keep their figures. Both draw the same random
numbers in the same order; the records are the same up to floating-point rounding of the attention
over the masked, unused positions (tests/test_speed.py compares them).
"""

from __future__ import annotations

import inspect

import torch

from . import dist
from .data import as_completion
from .losses import sequence_logprobs
from .progress import bar


def batches(order: list[int], size: int):
    for i in range(0, len(order), size):
        yield order[i:i + size]


def left_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) left-padded mask -> (B, T) position ids: 0 at each row's first real token (1 on padding, as generate())."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


CACHES = ("auto", "dynamic", "static")
STATIC_BUCKET = 64  # a static cache's length is rounded up to a multiple of this: fewer compiled shapes on a GPU


def resolve_cache(cache: str, device: torch.device) -> str:
    """'auto' -> 'static' on a GPU, 'dynamic' elsewhere; 'dynamic' and 'static' as given."""
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r}: expected one of {CACHES}")
    return ("static" if device.type == "cuda" else "dynamic") if cache == "auto" else cache


def static_length(prompt_tokens: int, max_new_tokens: int) -> int:
    """Positions of a static cache for a batch: its prompts' width plus max_new_tokens, rounded up to STATIC_BUCKET."""
    return -(-(prompt_tokens + max_new_tokens) // STATIC_BUCKET) * STATIC_BUCKET


def prompt_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int, static_len: int = 0, **kwargs):
    """(the key/value cache of left-padded input_ids (B, T) computed once and repeated to B*k rows in
    repeat_interleave order, the model's output on the B rows); kwargs go to the forward pass.
    static_len > 0: the cache is a StaticCache of that many positions holding the same keys and values."""
    from transformers import DynamicCache, StaticCache

    cache = DynamicCache(config=model.config)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=left_positions(attention_mask),
                past_key_values=cache, use_cache=True, **kwargs)
    cache.batch_repeat_interleave(k)
    if static_len:
        static = StaticCache(config=model.config, max_cache_len=static_len)
        for i, layer in enumerate(cache.layers):  # update() writes positions 0..T-1 of an empty static layer
            static.update(layer.keys, layer.values, i)
        cache = static
    return cache, out


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], k: int, max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, batch_size: int = 256, seed: int = 0, greedy: bool = False,
           desc: str = "sampling", share_prompt: bool = True, cache: str = "auto") -> list[dict]:
    """k responses per prompt: [{"prompt", "responses": [k], "ended": [k], "n_tokens": [k]}], in prompt order.

    `batch_size` counts sequences (prompts x k). Batch b is seeded with seed + b, so two models given
    the same prompts in the same order draw from the same random streams. Several processes (iterdpo.dist)
    each sample every N-th batch, seeded as in one process, and all return every record: the records are
    the same whatever N is. share_prompt (k > 1): all but
    each prompt's last token go through the model once, and the cache is repeated k times; False reads
    every prompt k times (generate() with num_return_sequences=k). The two draw the same samples up to
    floating-point rounding. cache: the decode step's key/value cache (auto, dynamic or static; see above).
    """
    model.eval()
    tokenizer.padding_side = "left"
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    per_batch = max(1, batch_size // k)
    out: dict[int, dict] = {}
    dev = next(model.parameters()).device
    static = resolve_cache(cache, dev) == "static"
    for b, idx in bar(dist.mine(list(enumerate(batches(order, per_batch)))), desc):  # b counts the whole list's batches
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        kw = dict(do_sample=not greedy, temperature=temperature if not greedy else None,
                  top_p=top_p if not greedy else None, top_k=None,
                  max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(seed + b)  # the prompt's forward pass (eval mode) draws no random numbers
        length = static_length(enc["input_ids"].shape[1], max_new_tokens) if static else 0
        if share_prompt and k > 1 and enc["input_ids"].shape[1] > 1:
            ids, att = enc["input_ids"], enc["attention_mask"]
            past, _ = prompt_cache(model, ids[:, :-1], att[:, :-1], k, length, logits_to_keep=1)
            gen = model.generate(input_ids=ids.repeat_interleave(k, 0), attention_mask=att.repeat_interleave(k, 0),
                                 past_key_values=past, **kw)
        else:
            extra = {"cache_implementation": "static", "cache_config": {"max_cache_len": length}} if static else {}
            gen = model.generate(**enc, num_return_sequences=k, **kw, **extra)
        new = gen[:, enc["input_ids"].shape[1]:].cpu()
        for j, i in enumerate(idx):
            rows = new[j * k:(j + 1) * k]
            rec = {"prompt": prompts[i], "responses": [], "ended": [], "n_tokens": []}
            for row in rows:
                add_response(rec, row.tolist(), tokenizer)
            out[i] = rec
    out = dist.gather(out)
    return [out[i] for i in range(len(prompts))]


def add_response(rec: dict, ids: list[int], tokenizer, stopped: bool = False) -> None:
    """Append one sampled continuation (token ids) to generation record `rec`: its text up to the end token,
    whether it ended (the end token is there, or the sampler says it `stopped`), and its token count."""
    eos = tokenizer.eos_token_id
    ended = stopped or eos in ids
    body = [t for t in (ids[: ids.index(eos)] if eos in ids else ids) if t != tokenizer.pad_token_id]
    rec["responses"].append(as_completion(rec["prompt"], tokenizer.decode(body, skip_special_tokens=True)))
    rec["ended"].append(ended)
    rec["n_tokens"].append(len(body) + int(ended))


def encode_pairs(tokenizer, prompts: list[str], completions: list[str], add_eos: list[bool] | None = None):
    """Left-padded prompt+completion batch and a mask of the completion tokens (B, T)."""
    ids, masks = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        if add_eos is None or add_eos[i]:
            c_ids = c_ids + [tokenizer.eos_token_id]
        ids.append(p_ids + c_ids)
        masks.append([0] * len(p_ids) + [1] * len(c_ids))
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    completion = torch.tensor([[0] * (width - len(m)) + m for m in masks])
    return input_ids, attention, completion


def keeps_logits(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do): then the LM head
    reads only the completion's positions, where a prompt-heavy batch spends most of a pass on the
    vocabulary projection and its log-softmax (1.6x faster for SmolLM2-135M's 49k vocabulary, docs/results.md)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 64,
                        add_eos: list[bool] | None = None, desc: str = "log-probs") -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs (N,), completion token counts (N,)) of each completion after its prompt."""
    model.eval()
    dev = next(model.parameters()).device
    sliced = keeps_logits(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
    logps, counts = torch.zeros(len(prompts)), torch.zeros(len(prompts))
    for idx in bar(dist.mine(list(batches(order, batch_size))), desc):
        eos = [add_eos[i] for i in idx] if add_eos is not None else None
        ids, att, comp = encode_pairs(tokenizer, [prompts[i] for i in idx], [completions[i] for i in idx], eos)
        extra, keep = {}, ids.shape[1]
        if sliced:  # the completions end every row (left padding): logits of their positions and the one before only
            keep = min(int(comp.sum(-1).max()) + 1, ids.shape[1])
            extra = {"logits_to_keep": keep}
        logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev), **extra).logits
        lp = sequence_logprobs(logits, ids[:, -keep:].to(dev), comp[:, -keep:].to(dev)).float().cpu()
        logps[idx] = lp
        counts[idx] = comp[:, 1:].sum(-1).float()
    return dist.sum_parts(logps), dist.sum_parts(counts)
