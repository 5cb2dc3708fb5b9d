"""Offline DPO's reward-KL frontier: the baseline arm as a curve, not a point.

At one beta, offline DPO on the seed pairs moves a set distance from SFT, and the rounds may move much further:
a lead over that one point cannot be told apart from movement. The frontier stage trains more offline arms,
at dpo.beta times each of baseline.frontier_betas (a smaller beta goes further from SFT), for the same steps as
the offline arm, and evaluates each at baseline.frontier_checkpoints evenly spaced steps of its training (the
last one included), like a round: the same held-out prompts, the same gates. A point that fails a gate that
excludes a round (capability, KL, held-out judge, fluency) is kept in the record and left off the curve, and
gets the repair a round gets (iterdpo.repair): SFT + alpha (point - SFT) for each of controller.repair_alphas,
largest first, the first that passes the gates joining the curve as a point of its own. The run's answer is then
read against this curve at its own KL to SFT (controller.report.kl_matched).

    offline_dpo/frontier/   metrics.json {"points": [...]}, one per checkpoint; nothing else is kept
                            (the folder: controller.report.frontier_folder)

Checkpoints are the LoRA adapters saved by a TrainerCallback (public API) at the chosen steps, merged into the
SFT policy one at a time for their evaluation and removed after it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import TrainerCallback

from . import dist, dpo, evaluate
from .controller.gates import eligible, needs_repair, weaknesses
from .controller.report import YARDSTICK, headline
from .metrics import N, se
from .models import resolve_precision
from .runfolder import OFFLINE_ARM, RunFolder
from .weights import interpolate, merge_adapter


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """`n` evenly spaced steps of a `steps`-step training, the last one included, without repeats."""
    return sorted({max(1, round(steps * (i + 1) / n)) for i in range(n)})


class AdapterCheckpoints(TrainerCallback):
    """Saves the trained LoRA adapter to `dest`/step_<n> after each of `steps` (the model the trainer passes to
    its callbacks: a PEFT model, whose save_pretrained writes the adapter alone), on the main process (under
    DDP it holds the whole adapter; ZeRO-3 and FSDP shard it: set baseline.frontier_betas: [] there)."""

    def __init__(self, steps: list[int], dest: Path):
        self.steps, self.dest = set(steps), dest

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps and state.is_world_process_zero:
            model.save_pretrained(self.dest / f"step_{state.global_step}", safe_serialization=True)
        return control


def point(m: dict, cfg, **where) -> dict:
    """One point of the curve: where it came from, its KL to SFT, the headline score and its standard error,
    the yardstick's other figures, and whether it passes the gates that exclude a round."""
    key = headline(m)
    return {**where, N.kl_to_sft: m.get(N.kl_to_sft), "score_name": key, "score": m.get(key),
            "score_se": m.get(se(key)), "eligible": eligible(m, cfg.controller),
            "failed": [t.name for t in weaknesses(m, cfg.controller)], **{k: m.get(k) for k in YARDSTICK}}


def _judged(cfg, run: RunFolder, policy: Path, sft: str, dpo_beta: float, **where) -> list[dict]:
    """The point of the policy at `policy`, and where it fails a gate the repair would mend, the first repair
    candidate toward SFT that passes (repair.needs_repair's rule), as a second point."""
    m = evaluate.evaluate_policy(cfg, run, OFFLINE_ARM, sft, dpo_beta, policy=str(policy))[0].to_dict()
    out = [point(m, cfg, **where)]
    if out[0]["eligible"] or not needs_repair(m, cfg.controller):
        return out
    for alpha in cfg.controller.repair_alphas:
        cand = policy.with_name("repaired")
        dist.on_main(interpolate, Path(sft), policy, alpha, cand)
        rm = evaluate.evaluate_policy(cfg, run, OFFLINE_ARM, sft, dpo_beta, policy=str(cand))[0].to_dict()
        dist.on_main(shutil.rmtree, cand)
        if eligible(rm, cfg.controller):
            return out + [point(rm, cfg, **where, **{N.repair_alpha: alpha})]
    return out


def frontier_stage(cfg, run: RunFolder, tmp: Path) -> dict:
    """Train each frontier arm and evaluate it along its training into `tmp`; returns {"points", "max_steps"}."""
    steps, _ = dpo.offline_steps(run)
    at = checkpoint_steps(steps, cfg.baseline.frontier_checkpoints)
    sft, points, precision = str(run.policy(0)), [], resolve_precision(cfg.model.precision)
    shared = Path(dist.broadcast(str(tmp)))  # the main process's stage folder: checkpoints and candidates go there
    for factor in cfg.baseline.frontier_betas:
        beta = cfg.dpo.beta * factor
        arm, where = tmp / f"beta_{beta:g}", shared / f"beta_{beta:g}"
        arm.mkdir(parents=True, exist_ok=True)  # the trainer makes its output folder on the main process only
        print(f"offline frontier: beta {beta:g} ({factor:g} x dpo.beta), {steps} steps, evaluated at steps {at}",
              flush=True)
        dpo.offline_stage(cfg, run, arm, beta=beta, callbacks=(AdapterCheckpoints(at, where / "checkpoints"),))
        for step in at:  # the main process merges (transformers saves on rank 0 only); every process evaluates
            cand = where / "candidate"
            dist.on_main(merge_adapter, sft, where / "checkpoints" / f"step_{step}", cfg.model, precision, cand)
            points += _judged(cfg, run, cand, sft, beta, beta_factor=factor, beta=beta, step=step)
            dist.on_main(shutil.rmtree, cand)
        dist.on_main(shutil.rmtree, where)  # the curve is its points: no weights are kept
    return {"points": points, "max_steps": steps, "checkpoint_steps": at}
