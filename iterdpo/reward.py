"""The reward model: a backbone with the design's small head, trained with the Bradley-Terry loss.

Head: Linear(hidden, 512) -> ReLU -> Dropout(0.1) -> Linear(512, 1), on the hidden state of the last
token (inputs are left-padded, so that is position -1 for every row), or with ``reward.pooling: mean`` on
the mean of the response tokens' hidden states. A scored text is prompt + response + EOS, the EOS only for
responses that ended. ``reward.layers`` keeps the backbone's first layers only (its final norm still
applies): a pretrained model's middle layers carry more of what a reply says, and fewer layers score faster.

Training uses transformers' Trainer on this nn.Module (its public API takes any module whose forward
returns a loss), so precision, logging and progress bars come from there.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from torch import nn

from . import dist, migrate
from .data import PAIR_KEYS, judge_split
from .guard import NonFiniteGuard
from .losses import bradley_terry_loss, informative, label_estimates, preference_stats
from .metrics import N
from .models import check_lora_targets, device, free, load_tokenizer, lora_config, resolve_precision
from .progress import bar
from .runfolder import StageFiles
from .sampling import batches, encode_pairs, prompt_cache
from .training import common_args, last_logged, quiet_logging, save_log
from .worlds import world_of

HEAD_FILE = "head.safetensors"
POOLING_FILE = "pooling.json"


def pool(h: torch.Tensor, response_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(B, T, H) hidden states of left-padded rows -> (B, H): the last token's (pooling "last"), or the mean
    over the (B, T) 0/1 response mask (pooling "mean"; a row without response tokens gives its last token's)."""
    if pooling == "last":
        return h[:, -1]
    if response_mask is None:
        raise ValueError("reward model: pooling 'mean' needs the response-token mask")
    return masked_mean(h, response_mask, h[:, -1])


def masked_mean(h: torch.Tensor, mask: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """(B, T, H) hidden states, (B, T) 0/1 mask -> (B, H) mean over the masked positions; `empty` (B, H) where a
    row has none."""
    m = mask.to(h.dtype)[..., None]
    n = m.sum(1)
    return torch.where(n > 0, (h * m).sum(1) / n.clamp(min=1), empty)


def truncate(backbone, layers: int, path: str) -> None:
    """Keep the first `layers` transformer blocks of `backbone` in place (0 keeps all); the config follows,
    so a saved model loads as the truncated one."""
    total = backbone.config.num_hidden_layers
    if not layers or layers == total:
        return
    if layers > total:
        raise ValueError(f"reward.layers={layers}: {path} has {total} layers")
    blocks = next((m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m) == total), None)
    if blocks is None:
        raise ValueError(f"reward.layers={layers}: found no list of {total} blocks in {path}; use reward.layers: 0")
    del blocks[layers:]
    backbone.config.num_hidden_layers = layers
    if getattr(backbone.config, "layer_types", None):
        backbone.config.layer_types = backbone.config.layer_types[:layers]


class RewardModel(nn.Module):
    def __init__(self, backbone, head_hidden: int = 512, dropout: float = 0.1, pooling: str = "last"):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        self.head = nn.Sequential(nn.Linear(hidden, head_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(head_hidden, 1))

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              response_mask: torch.Tensor | None = None, heads: list[nn.Module] | None = None) -> torch.Tensor:
        """(B, T) left-padded tokens (and (B, T) response-token mask, for mean pooling) -> (B,) rewards; with
        `heads` (heads trained on this same body), (len(heads), B): the body runs once for all of them."""
        h = pool(self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                 response_mask, self.pooling)
        if heads is None:
            return self.head(h.to(self.head[0].weight.dtype)).squeeze(-1)
        return torch.stack([head(h.to(head[0].weight.dtype)).squeeze(-1) for head in heads])

    def forward(self, chosen_input_ids, chosen_attention_mask, rejected_input_ids, rejected_attention_mask,
                chosen_response_mask=None, rejected_response_mask=None, **_):
        r_c = self.score(chosen_input_ids, chosen_attention_mask, chosen_response_mask)
        r_r = self.score(rejected_input_ids, rejected_attention_mask, rejected_response_mask)
        return {"loss": bradley_terry_loss(r_c, r_r), "logits": torch.stack([r_c, r_r], -1)}


class PairCollator:
    """Tokenises {prompt, chosen, rejected} rows into the left-padded tensors RewardModel.forward takes."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def __call__(self, rows: list[dict]) -> dict:
        prompts = [r["prompt"] for r in rows]
        c_ids, c_att, c_resp = encode_pairs(self.tok, prompts, [r["chosen"] for r in rows])
        r_ids, r_att, r_resp = encode_pairs(self.tok, prompts, [r["rejected"] for r in rows])
        return {"chosen_input_ids": c_ids, "chosen_attention_mask": c_att, "chosen_response_mask": c_resp,
                "rejected_input_ids": r_ids, "rejected_attention_mask": r_att, "rejected_response_mask": r_resp}


def build(backbone_path: str, head_hidden: int, dropout: float, dtype, device: str, mode: str = "full",
          lora=None, pooling: str = "last", layers: int = 0) -> RewardModel:
    """A RewardModel on the base model's transformer body (its first `layers` blocks; 0: all); mode is
    full, lora or frozen."""
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(backbone_path, dtype=dtype, use_safetensors=True)
    truncate(backbone, layers, backbone_path)
    if mode == "lora":
        from peft import get_peft_model

        check_lora_targets(backbone, list(lora.target_modules), backbone_path)
        backbone = get_peft_model(backbone, lora)
    elif mode == "frozen":
        backbone.requires_grad_(False)
    model = RewardModel(backbone, head_hidden, dropout, pooling)
    model.head.float()  # the head trains in fp32 even over a half-precision body
    return model.to(device)


def save(model: RewardModel, tokenizer, dest: Path, adapter_only: bool = False, base: str = "", layers: int = 0) -> None:
    """The reward model to `dest`: its body merged (safetensors), the head, the pooling. `adapter_only` (a LoRA
    body, model.merged best): the LoRA adapter instead of the merged body, with where its base loads from
    (`base`, relative to `dest` when it is a folder, so the run can move) and the `layers` kept."""
    from peft import PeftModel
    from safetensors.torch import save_file

    meta = {"pooling": model.pooling}
    if adapter_only and isinstance(model.backbone, PeftModel):
        model.backbone.save_pretrained(dest, safe_serialization=True)
        meta.update(base=os.path.relpath(base, dest) if Path(base).is_dir() else base, layers=layers)
    else:
        body = model.backbone.merge_and_unload() if isinstance(model.backbone, PeftModel) else model.backbone
        body.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(dest / HEAD_FILE))
    (dest / POOLING_FILE).write_text(json.dumps(meta) + "\n")


def load(path: Path, head_hidden: int, dtype, on: str | None = None) -> RewardModel:
    """A saved reward model, frozen; one saved as an adapter is merged into its base in memory."""
    from safetensors.torch import load_file

    meta_file = Path(path) / POOLING_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else None
    pooling = migrate.reward_pooling(meta)
    if meta and "base" in meta:  # an adapter (save's adapter_only)
        from peft import PeftModel

        base = Path(path) / meta["base"] if (Path(path) / meta["base"]).is_dir() else meta["base"]
        model = build(str(base), head_hidden, 0.0, dtype, on or device(), mode="frozen", pooling=pooling,
                      layers=meta["layers"])
        model.backbone = PeftModel.from_pretrained(model.backbone, str(path)).merge_and_unload().requires_grad_(False)
    else:
        model = build(str(path), head_hidden, 0.0, dtype, on or device(), mode="frozen", pooling=pooling)
    model.head.load_state_dict(load_file(str(Path(path) / HEAD_FILE)))
    return model.eval()


@torch.no_grad()
def score(model: RewardModel, tokenizer, prompts: list[str], responses: list[str], ended: list[bool] | None = None,
          batch_size: int = 64, desc: str = "scoring", heads: list[nn.Module] | None = None) -> list:
    """Reward of each (prompt, response), batched and length-sorted; EOS appended where the response ended.
    With `heads` (iterdpo/panel.py): [head][text], every head reading the one pass through the body."""
    model.eval()
    dev = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
    out = {}
    for idx in bar(dist.mine(list(batches(order, batch_size))), desc):  # several processes: every N-th batch each
        eos = [ended[i] for i in idx] if ended is not None else None
        ids, att, resp = encode_pairs(tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx], eos)
        r = model.score(ids.to(dev), att.to(dev), resp.to(dev), heads).float().cpu()
        for a, i in enumerate(idx):
            out[i] = r[:, a].tolist() if heads is not None else r[a].item()
    out = dist.gather(out)
    if heads is None:
        return [out[i] for i in range(len(prompts))]
    return [[out[i][h] for i in range(len(prompts))] for h in range(len(heads))]


@torch.no_grad()
def score_grouped(model: RewardModel, tokenizer, prompts: list[str], responses: list[list[str]],
                  ended: list[list[bool]], batch_size: int = 64, desc: str = "scoring") -> list[list[float]]:
    """Rewards of the k responses of each prompt, reading each prompt once.

    Equal to ``score`` on the flattened (prompt, response) list up to floating-point rounding: the prompts
    (left-padded) go through the backbone once, their key/value cache is repeated k times, and the
    responses (right-padded, EOS where they ended) are read after it; each reward is taken at a response's
    last token, or the mean of its tokens (at the prompt's last token for an empty response). `batch_size`
    counts responses.
    """
    k = len(responses[0]) if responses else 0
    if any(len(r) != k for r in responses) or any(len(e) != k for e in ended):
        raise ValueError("score_grouped: every prompt needs the same number of responses and ended flags")
    model.eval()
    dev = next(model.parameters()).device
    body, pad, eos = model.backbone, tokenizer.pad_token_id, tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[int, list[float]] = {}
    tokenizer.padding_side = "left"
    for idx in bar(dist.mine(list(batches(order, max(1, batch_size // k)))), desc):
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        att = enc["attention_mask"]
        resp = [tokenizer(responses[i][j], add_special_tokens=False)["input_ids"] + ([eos] if ended[i][j] else [])
                for i in idx for j in range(k)]
        width = max(1, max(len(r) for r in resp))
        r_ids = torch.tensor([r + [pad] * (width - len(r)) for r in resp], device=dev)
        r_att = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in resp], device=dev)
        cache, prompt_out = prompt_cache(body, enc["input_ids"], att, k)
        h_prompt = prompt_out.last_hidden_state[:, -1].repeat_interleave(k, 0)
        start = att.sum(-1).repeat_interleave(k)
        h = body(input_ids=r_ids, attention_mask=torch.cat([att.repeat_interleave(k, 0), r_att], -1),
                 position_ids=start[:, None] + torch.arange(width, device=dev), past_key_values=cache,
                 use_cache=True).last_hidden_state
        n = r_att.sum(-1)
        if model.pooling == "mean":
            feat = masked_mean(h, r_att, h_prompt)
        else:
            feat = torch.where((n > 0)[:, None], h[torch.arange(len(resp), device=dev), (n - 1).clamp(min=0)], h_prompt)
        r = model.head(feat.to(model.head[0].weight.dtype)).squeeze(-1).float().cpu().tolist()
        for a, i in enumerate(idx):
            out[i] = r[a * k:(a + 1) * k]
    out = dist.gather(out)
    return [out[i] for i in range(len(prompts))]


def pair_accuracy(model: RewardModel, tokenizer, pairs: list[dict], batch_size: int = 64) -> dict:
    """Accuracy and mean margin of the reward model on {prompt, chosen, rejected} pairs."""
    prompts = [p["prompt"] for p in pairs]
    r = torch.tensor(score(model, tokenizer, prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                           batch_size=batch_size, desc="RM held-out"))
    return preference_stats(r[: len(pairs)], r[len(pairs):])


# the reward-model stage ------------------------------------------------------------------------------
def train_stage(cfg, run, dest: Path) -> dict:
    """Bradley-Terry training on the run's seed pairs; the model goes to `dest`/model. Returns the metrics.

    Held-out accuracy is measured against the (noisy) seed labels and, in a world, against the oracle.
    """
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(cfg.seed_for("reward"))
    f = StageFiles(dest)
    precision = resolve_precision(cfg.model.precision)
    base = run.base_source()
    tok = load_tokenizer(base, cfg.model)
    r = cfg.reward
    rm = build(base, r.head_hidden, r.head_dropout, precision.dtype if r.backbone != "full" else torch.float32,
               device(), r.backbone, lora_config(cfg.model, "FEATURE_EXTRACTION"), r.pooling, r.layers)
    train, held_back = judge_split([{k: p[k] for k in PAIR_KEYS} for p in run.pairs("train_pairs")], r.judge_share,
                                   cfg.seed_for("judge"))
    args = common_args(f.work, precision, r.max_steps, r.learning_rate, r.batch_size, r.grad_accum, cfg.seed,
                       report_to=cfg.export.report_to, logging_dir=run.log_dir("reward"))
    trainer = Trainer(model=rm, args=TrainingArguments(**args, remove_unused_columns=False),
                      train_dataset=Dataset.from_list(train), data_collator=PairCollator(tok),
                      callbacks=[NonFiniteGuard("reward", precision.fp16)])
    quiet_logging(trainer, "reward model")
    trainer.train()
    log = save_log(trainer, f.train_log)
    heldout = run.pairs("heldout_pairs")
    acc = pair_accuracy(rm, tok, heldout, r.score_batch_size)
    m = {N.train_loss: last_logged(log, "loss"), "heldout_accuracy": acc["accuracy"], "heldout_margin": acc["margin"],
         "train_accuracy": pair_accuracy(rm, tok, train[: r.train_accuracy_pairs], r.score_batch_size)["accuracy"]}
    if world_of(cfg).has_oracle:
        m.update(oracle_agreement(rm, tok, heldout, r.score_batch_size, run))
    members = [heldout_rewards(rm, tok, heldout, r.score_batch_size)] if r.ensemble > 1 else []
    if trainer.accelerator.is_main_process:  # several processes: DDP kept every copy the same; one writes
        save(rm, tok, f.model, cfg.model.merged == "best", base, r.layers)
    shutil.rmtree(f.work, ignore_errors=True)
    del trainer, rm
    free()
    for i in range(1, r.ensemble):  # the other members: own seed, bootstrap resample of the seed pairs
        seed = cfg.seed_for("reward_member", i)
        rng = random.Random(seed)
        rows = [train[rng.randrange(len(train))] for _ in train]
        members.append(_train_member(cfg, run, tok, rows, heldout, seed, f.members / str(i), precision, f"reward_member_{i}"))
    if r.ensemble > 1:
        m.update(ensemble_accuracy(members, heldout), ensemble_size=r.ensemble)
        m.update(label_estimates(members, heldout, cfg.generation.min_agreement))
    if held_back:  # the held-out judge: the pairs no member saw, trained like the members, as many epochs
        steps = max(1, round(r.max_steps * len(held_back) / len(train)))
        judged = _train_member(cfg, run, tok, held_back, heldout, cfg.seed_for("judge"), f.folder / "judge", precision,
                               "held-out judge", steps)
        m.update({k.replace("ensemble", "judge"): v for k, v in ensemble_accuracy([judged], heldout).items()},
                 judge_pairs=len(held_back), ensemble_pairs=len(train), judge_steps=steps)
        m[N.judge_informative] = informative(m["judge_heldout_accuracy"], len(heldout), cfg.controller.gate_z)
    return m


def _train_member(cfg, run, tok, rows: list[dict], heldout: list[dict], seed: int, dest: Path, precision, name: str,
                  steps: int | None = None):
    """A reward model trained like the first on `rows` under `seed` (for `steps`; None: reward.max_steps), saved
    to `dest`; its rewards of the held-out pairs (chosen then rejected) are returned."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, set_seed

    r = cfg.reward
    set_seed(seed)
    rm = build(run.base_source(), r.head_hidden, r.head_dropout, precision.dtype if r.backbone != "full" else torch.float32,
               device(), r.backbone, lora_config(cfg.model, "FEATURE_EXTRACTION"), r.pooling, r.layers)
    work = dest.with_name(f"{dest.name}.work")
    args = common_args(work, precision, steps or r.max_steps, r.learning_rate, r.batch_size, r.grad_accum, seed, report_to="none")
    trainer = Trainer(model=rm, args=TrainingArguments(**{**args, "disable_tqdm": True}, remove_unused_columns=False),
                      train_dataset=Dataset.from_list(rows), data_collator=PairCollator(tok),
                      callbacks=[NonFiniteGuard(name, precision.fp16)])
    quiet_logging(trainer, name.replace("_", " ").replace("reward member", "reward ensemble member"))
    trainer.train()
    out = heldout_rewards(rm, tok, heldout, r.score_batch_size)
    if trainer.accelerator.is_main_process:
        save(rm, tok, dest, cfg.model.merged == "best", run.base_source(), r.layers)
    shutil.rmtree(work, ignore_errors=True)
    del trainer, rm
    free()
    return out


def judge_path(run) -> str | None:
    """The held-out judge of the run (reward/judge/, reward.judge_share), or None where the run has none."""
    path = StageFiles(run.stage("reward")).folder / "judge"
    return str(path) if path.is_dir() else None


def heldout_rewards(rm: RewardModel, tok, pairs: list[dict], batch_size: int) -> torch.Tensor:
    """(2N,) rewards of N pairs: the chosen responses, then the rejected ones."""
    prompts = [p["prompt"] for p in pairs]
    return torch.tensor(score(rm, tok, prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                              batch_size=batch_size, desc="RM held-out"))


def ensemble_accuracy(members: list[torch.Tensor], heldout: list[dict]) -> dict:
    """The ensemble's mean reward on held-out pairs: accuracy against the seed labels and, where pairs carry
    `flipped` (a world's oracle labels known), against the oracle."""
    r = torch.stack(members).mean(0)
    n = len(heldout)
    out = {"ensemble_heldout_accuracy": preference_stats(r[:n], r[n:])["accuracy"]}
    if heldout and all("flipped" in p for p in heldout):
        flip = torch.tensor([bool(p["flipped"]) for p in heldout])
        c, rj = torch.where(flip, r[n:], r[:n]), torch.where(flip, r[:n], r[n:])
        out["ensemble_oracle_accuracy"] = preference_stats(c, rj)["accuracy"]
    return out


def scores_of(paths: list[Path], head_hidden: int, dtype, tok, prompts: list[str], responses: list[list[str]],
              ended: list[list[bool]], batch_size: int, desc: str = "scoring") -> list[list[list[float]]]:
    """score_grouped by every reward model in `paths`, loaded one at a time: [member][prompt][response]."""
    out = []
    for i, path in enumerate(paths):
        rm = load(path, head_hidden, dtype)
        out.append(score_grouped(rm, tok, prompts, responses, ended, batch_size, desc=f"{desc} ({i + 1}/{len(paths)})"
                                 if len(paths) > 1 else desc))
        del rm
        free()
    return out


def oracle_agreement(rm: RewardModel, tok, heldout: list[dict], batch_size: int, run) -> dict:
    """In a world: the reward model's accuracy on held-out pairs labelled by the oracle, against the seed labels'."""
    by_oracle = [dict(p, chosen=p["rejected"], rejected=p["chosen"]) if p.get("flipped") else p for p in heldout]
    m = {"oracle_accuracy": pair_accuracy(rm, tok, by_oracle, batch_size)["accuracy"],
         N.seed_label_oracle_agreement: run.metrics(run.stage("data"))[N.seed_label_oracle_agreement]}
    m["rm_beats_seed_labels"] = m["oracle_accuracy"] > m[N.seed_label_oracle_agreement]
    if not m["rm_beats_seed_labels"]:
        print(f"WARNING: the reward model agrees with the oracle on {m['oracle_accuracy']:.3f} of held-out pairs, "
              f"no better than the seed labels ({m[N.seed_label_oracle_agreement]:.3f})")
    return m
