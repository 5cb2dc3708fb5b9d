"""The repair of a round that fails a capability or KL gate: its weights moved back toward its start.

A round that gains alignment but loses capability (or drifts too far) is, by weight, its start policy plus
a step. Taking part of the step, start + alpha (round - start), keeps much of the gain and gives back much
of the loss: WiSE-FT (Wortsman et al., 2022) for fine-tuning, and WARP's LITI (Rame et al., 2024) for RLHF.
With LoRA it is the round's adapter with its step scaled by alpha, which the stage keeps beside the policy.

The repair stage tries controller.repair_alphas, largest first, and keeps the first candidate that passes
the gates that exclude a round (controller.gates.eligible: capability, KL, fluency; weak alignment does not
exclude), judged like a round on the same held-out prompts and probes. The choice never reads the oracle;
its score is recorded with each candidate, for the report only. The kept candidate's policy and evaluation
then stand for the round (RunFolder.policy, RunFolder.eval); when none passes, the round is left as it is,
and the controller retries with gentler settings as before. The offline arm gets the same repair toward SFT,
so both arms meet the same gates the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .controller.gates import eligible, weaknesses
from . import evaluate
from .folder import write_json, write_jsonl
from .metrics import N, se
from .runfolder import RunFolder, StageFiles
from .weights import interpolate, interpolate_state  # noqa: F401 (the repair's arithmetic; callers name it here)

# what the repair stage records of each candidate (the gates' metrics, and the oracle's for the report only)
KEYS = (N.capability_retention, se(N.capability_retention), N.kl_to_reference, se(N.kl_to_reference),
        N.win_rate_vs_sft, N.base_perplexity_ratio_vs_sft, N.oracle_score, N.oracle_win_rate_vs_sft)


def scale_adapter(src: Path, alpha: float, dest: Path) -> Path | None:
    """The LoRA adapter at `src` with its step scaled by `alpha` (every lora_B times alpha), written to `dest`:
    merged into the round's start policy it gives the repaired policy. None (nothing written) where scaling B
    is not the same as scaling the step: no adapter, DoRA magnitudes, or modules trained in full."""
    from safetensors.torch import load_file, save_file

    weights = Path(src) / "adapter_model.safetensors"
    if not weights.exists():
        return None
    state = load_file(str(weights))
    if not any("lora_B" in k for k in state) or any("lora_B" not in k and "lora_A" not in k for k in state):
        return None
    shutil.copytree(src, dest)
    save_file({k: (v * alpha).to(v.dtype) if "lora_B" in k else v for k, v in state.items()},
              str(dest / weights.name), metadata={"format": "pt"})
    return dest


def repair_stage(cfg, run: RunFolder, rnd, start, m: dict, ref: str | None, beta: float, tmp: Path) -> dict:
    """Try each alpha on round `rnd` (trained, evaluated as `m`) toward round `start`; keep the first that passes.

    Writes the kept candidate to `tmp`/policy (with its adapter, scale_adapter, where one is exact) and its
    evaluation to `tmp`/eval; returns the stage's metrics:
    the alpha kept (None: none passed), the start round, the triggers it repaired and every candidate tried."""
    c = cfg.controller
    files = StageFiles(tmp)
    tried, kept = [], None
    for alpha in c.repair_alphas:
        cand = tmp / "candidates" / f"alpha_{alpha:g}"
        interpolate(run.policy(start), run.trained_policy(rnd), alpha, cand)
        evaluation, samples, capability_rows = evaluate.evaluate_policy(cfg, run, rnd, ref, beta, policy=str(cand))
        cm = evaluation.to_dict()
        passes = eligible(cm, c)
        tried.append({"alpha": alpha, "passes": passes, **{k: cm[k] for k in KEYS if k in cm}})
        print(f"repair of {'round ' if isinstance(rnd, int) else ''}{rnd}: alpha {alpha:g}: capability retention "
              f"{cm.get(N.capability_retention, float('nan')):.3f}, KL {cm.get(N.kl_to_reference, float('nan')):.3f}: "
              f"{'passes' if passes else 'fails'} the gates", flush=True)
        if passes:  # with model.merged best the scaled adapter is kept, and the weights rebuilt where needed
            if scale_adapter(StageFiles(run.dpo(rnd)).adapter, alpha, files.adapter) is None or cfg.model.merged == "all":
                os.replace(cand, files.policy)
            ev = StageFiles(tmp / "eval")
            ev.folder.mkdir()
            write_json(ev.config, {"run": cfg.to_dict(), "start": start, "alpha": alpha})
            write_jsonl(ev.samples, samples)
            for suite, rows in capability_rows.items():
                write_jsonl(ev.capability(suite), rows)
            write_json(ev.metrics, {**cm, N.repair_alpha: alpha, N.repair_start_round: start})
            kept = alpha
            break
        shutil.rmtree(cand)  # one candidate on disk at a time
    shutil.rmtree(tmp / "candidates", ignore_errors=True)
    return {"alpha": kept, "start_round": start, "triggers": [t.to_dict() for t in weaknesses(m, c)],
            "trained": {k: m[k] for k in KEYS if k in m}, "tried": tried}
