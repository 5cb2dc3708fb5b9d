"""best/README.md, the model card: what the model is, how it was made, how it scored against offline DPO, every
decision of the controller, and how to load it."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from .config import RunConfig
from .controller.report import kl_matched_line
from .metrics import N
from .runfolder import RunFolder
from .worlds import world_of

LOCAL_PLACEHOLDER = "path/to/best"  # the card's load path when not pushed: best/ moves, a local path would lie
CARD_METRICS = [N.oracle_score, N.mean_reward, N.win_rate_vs_sft, N.win_rate_vs_previous, N.preference_accuracy,
                N.kl_to_reference, N.capability_retention, N.mean_length]


def best_round(run: str | Path) -> int:
    """The controller's best round: summary.json's, else the last decision's, else 0 (SFT)."""
    rf = RunFolder(run)
    if rf.summary_path.exists():
        return int(rf.summary()["best_round"])
    decisions = rf.decisions()
    return int(decisions[max(decisions)]["best_round"]) if decisions else 0


# ---------------------------------------------------------------- the model card

def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else "" if v is None else str(v).replace("|", "/")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _metric_rows(rf: RunFolder) -> list[dict]:
    rows = []
    for rnd in [*rf.evaluated_rounds(), *(["offline_dpo"] if rf.done(rf.eval("offline_dpo")) else [])]:
        m = rf.metrics(rf.eval(rnd))
        label = "SFT" if rnd == 0 else "offline DPO" if rnd == "offline_dpo" else f"round {rnd}"
        rows.append({"model": label, **{k: m.get(k) for k in CARD_METRICS}})
    return rows


def _decision_rows(rf: RunFolder) -> list[dict]:
    rows = []
    for rnd, d in sorted(rf.decisions().items()):
        triggers = ", ".join(f"{t['name']} ({t['metric']}={t['value']:.3f} vs {t['threshold']})" for t in d["triggers"])
        changes = ", ".join(f"{k}: {a:g} -> {b:g}" for k, (a, b) in d["changes"].items())
        rep = d.get("repair")
        repair = "" if not rep else (f"alpha {rep['alpha']:g} toward round {rep['start_round']}" if rep["alpha"] is not None
                                     else "none passed")
        rows.append({"round": rnd, "decision": d["decision"], "triggers": triggers or "none",
                     "changes": changes or "none", "repair": repair, "next starts from": d["next_start_round"],
                     "best so far": d["best_round"]})
    return rows


def _portable(v):
    """A config value as the card shows it: an absolute path (this machine's) as its last part."""
    if isinstance(v, (list, dict)):
        return [_portable(x) for x in v] if isinstance(v, list) else {k: _portable(x) for k, x in v.items()}
    return Path(v).name if isinstance(v, str) and os.path.isabs(v) else v


def _against_offline(rf: RunFolder) -> list[str]:
    """The KL-matched verdict (summary.json yardstick.kl_matched), where the run has one."""
    km = (rf.summary().get("yardstick") or {}).get("kl_matched") if rf.summary_path.exists() else None
    if not km:
        return []
    points = ", ".join(f"{p['label']} (KL {p['kl']:.3f}, {p['score']:.3f})" for p in km["frontier"])
    return ["## Against offline DPO at the same KL", "",
            f"Offline DPO on the seed pairs, as a curve of its points that pass the gates ({points}), read at this "
            f"model's KL to SFT: {kl_matched_line(km)}. The verdict needs the whole interval, lead ± "
            "controller.gate_z standard errors, past 0; otherwise it is a tie.", ""]


def model_card(cfg: RunConfig, repo: str = "") -> str:
    """best/README.md: what the model is, how it was made, how it scored, and how to load it (from the hub
    ``repo`` when given, else ``export.hub_model_id`` when pushing, else a placeholder path)."""
    rf = RunFolder(cfg.out)
    rnd = best_round(rf.root)
    rep = rf.metrics(rf.repair(rnd)) if rf.repaired(rnd) else None
    world = world_of(cfg)
    base, source = world.describe(cfg)
    data = rf.metrics(rf.stage("data")) if rf.done(rf.stage("data")) else {}
    front = {"library_name": "transformers", "tags": ["dpo", "iterative-dpo", "iterdpo"]}
    if world.hub_base(cfg):
        front["base_model"] = world.hub_base(cfg)
    where = repo or (cfg.export.hub_model_id if cfg.export.push_to_hub else "") or LOCAL_PLACEHOLDER
    n_rounds = len(rf.decisions())
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# iterdpo: {cfg.preset}, round {rnd} of {n_rounds}", "",
        f"The policy of round {rnd}{' (the SFT policy)' if rnd == 0 else ''}, the controller's best round of an iterative "
        "DPO run: SFT, a Bradley-Terry reward model, then rounds of sampling from the current policy, pairing its "
        "samples by reward and training DPO on them, with a controller that adjusts, rolls back or stops."
        + (f" The round failed a capability or KL gate as trained; this is its repair: round {rep['start_round']}'s "
           f"weights plus {rep['alpha']:g} of the round's trained step, which passes the gates that exclude a round "
           "(capability, KL, fluency)." if rep else ""),
        "",
        "## Base model and data", "",
        f"- **base model**: {base}",
        f"- **seed pairs**: {source}" + (f"; {data.get('train_pairs', '?')} for training, {data.get('heldout_pairs', '?')} "
                                         "held out" if data else ""),
        f"- **rounds**: {n_rounds} ({cfg.rounds} asked), best round **{rnd}**, seed {cfg.seed}", "",
        "## Every decision of the controller", "",
        _table(_decision_rows(rf), ["round", "decision", "triggers", "changes", "repair", "next starts from", "best so far"])
        if rf.decisions() else "No DPO round ran.", "",
        "## Metrics on held-out prompts", "",
        "Win rates are judged by the run's reward model; `oracle_score` exists only where the world has an oracle.", "",
        _table(_metric_rows(rf), ["model", *CARD_METRICS]), "",
        *_against_offline(rf),
        "## How to load it", "",
        "With plain transformers, no iterdpo needed" + (f" (`{where}`: this folder)" if where == LOCAL_PLACEHOLDER else "") + ":", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("{where}")',
        f'model = AutoModelForCausalLM.from_pretrained("{where}")',
        f'prompt = tok.apply_chat_template([{{"role": "user", "content": "{world.example_prompts(cfg, 1)[0]}"}}], '
        'add_generation_prompt=True, return_dict=True, return_tensors="pt")',
        "out = model.generate(**prompt, max_new_tokens=64, do_sample=True)",
        'print(tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```", "",
        "`adapter/` holds the LoRA adapter of the last training step (load it with `peft.PeftModel.from_pretrained` "
        "on the policy the round started from)" + (", its step scaled as the repair scaled it." if rep else ".")
        if rf.best_adapter.exists() else "", "",
        "## Config", "", "<details><summary>The run's full config</summary>", "", "```yaml",
        yaml.safe_dump(_portable(cfg.to_dict()), sort_keys=False).strip(), "```", "", "</details>", "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the hub

