"""The controller between rounds: weaknesses, hyper-parameter adjustments, targeted data, decisions.

After round r it reads that round's evaluation and decides, by the design's matrix:

=====================  =========================================================================
decision               when
=====================  =========================================================================
rollback               the round degrades (score clearly below the top earlier round's, see below,
                       or it collapsed, or its samples lost fluency): the next round restarts from
                       the best round
adjust_retry           KL violation or capability regression that the repair (iterdpo.repair: the
                       round stepped back toward its start) could not mend: new hyper-parameters,
                       restart from the best round
stop_budget            rounds or wall time used up: the best round is the result
final_evaluation       converged and every quality gate passes
stop_converged         converged, some gate still failing
adjust_continue        alignment still weak from round `weak_after_round` on: push harder
continue               improving, within budget
=====================  =========================================================================

A round's score is its win rate against the SFT baseline, judged by the reward model (the oracle
exists only in the toy world, so it is never used to decide). A round is clearly below another when its
score is lower by more than degrade_tol plus gate_z standard errors of the difference, so a rollback, like
every gate, acts only on a drop clear of the noise. The best round is the latest round, without collapse,
fluency collapse, capability regression or KL violation, that is not clearly below the highest-scoring such
round: later rounds have trained on more data, and a point-estimate lead of an earlier round is not evidence
against them. Round 0 (SFT) always qualifies.
Each decision is one line of decisions.jsonl, with its triggers and {param: [before, after]}; after a repair the
metrics it reads are the kept candidate's, and its "repair" entry holds every candidate and the round as trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ControllerConfig, RunConfig
from .folder import append_jsonl
from .runfolder import RunFolder

ADJUSTABLE = ("beta", "learning_rate", "max_steps")


@dataclass
class Trigger:
    name: str
    metric: str
    value: float
    threshold: float
    interval: tuple[float, float] | None = None  # the gate's interval: value -/+ gate_z standard errors

    def to_dict(self) -> dict:
        d = {"name": self.name, "metric": self.metric, "value": self.value, "threshold": self.threshold}
        return {**d, "interval": list(self.interval)} if self.interval else d


# (trigger, metric, threshold field, direction): "below" triggers when the whole interval is under the
# threshold, "above" when it is over it; a metric without a standard error acts on its point estimate.
GATES = (("capability_regression", "capability_retention", "min_retention", "below"),
         ("weak_alignment", "win_rate_vs_sft", "min_win_rate", "below"),
         ("kl_violation", "kl_to_reference", "max_kl", "above"),
         ("labels_no_better_than_seed", "label_gain", "min_label_gain", "below"),
         ("fluency_collapse", "base_perplexity_ratio_vs_sft", "collapse_max_perplexity_ratio", "above"))
# gates whose trigger makes a round ineligible as the best round, and a rollback
DEGRADING = {"collapse", "fluency_collapse"}
# gates whose trigger makes a round ineligible, and a retry with gentler settings (after a repair, iterdpo.repair)
RETRY = {"capability_regression", "kl_violation"}


def gates(m: dict, cfg: ControllerConfig) -> dict:
    """Each gate on metrics `m`: {gate: {metric, value, interval, threshold, passes}}; the same yardstick for
    every arm (a round, the offline baseline)."""
    out = {}
    for name, metric, field, direction in GATES:
        if not isinstance(m.get(metric), (int, float)):
            continue
        v, half = m[metric], cfg.gate_z * (m.get(f"{metric}_se") or 0.0)
        lo, hi, t = v - half, v + half, getattr(cfg, field)
        out[name] = {"metric": metric, "value": v, "interval": [lo, hi], "threshold": t,
                     "passes": not (hi < t if direction == "below" else lo > t)}
    return out


def weaknesses(m: dict, cfg: ControllerConfig) -> list[Trigger]:
    """The design's checks on one round's metrics, each clear of its metric's noise (see gates)."""
    out = [Trigger(name, g["metric"], g["value"], g["threshold"], tuple(g["interval"]))
           for name, g in gates(m, cfg).items() if not g["passes"]]
    if m.get("collapsing"):
        out.append(Trigger("collapse", "collapsing", 1.0, 0.0))
    return out


def score(m: dict) -> float:
    return m.get("win_rate_vs_sft", 0.5)


def eligible(m: dict, cfg: ControllerConfig) -> bool:
    names = {t.name for t in weaknesses(m, cfg)}
    return not names & (RETRY | DEGRADING)


def clearly_below(a: dict, b: dict, cfg: ControllerConfig) -> bool:
    """Whether round metrics `a` score below `b` by more than degrade_tol plus gate_z standard errors of the
    difference (the two win rates' standard errors combined as if independent, which errs towards keeping)."""
    se = math.hypot(a.get("win_rate_vs_sft_se") or 0.0, b.get("win_rate_vs_sft_se") or 0.0)
    return score(a) < score(b) - cfg.degrade_tol - cfg.gate_z * se


def _eligible_rounds(history: dict[int, dict], cfg: ControllerConfig) -> list[int]:
    return [r for r, m in history.items() if r == 0 or eligible(m, cfg)]


def top_round(history: dict[int, dict], cfg: ControllerConfig) -> int:
    """The highest-scoring eligible round (ties: the earlier); round 0 always qualifies."""
    return max(_eligible_rounds(history, cfg), key=lambda r: (score(history[r]), -r))


def best_round(history: dict[int, dict], cfg: ControllerConfig) -> int:
    """The latest eligible round not clearly below the top round."""
    top = history[top_round(history, cfg)]
    return max(r for r in _eligible_rounds(history, cfg) if not clearly_below(history[r], top, cfg))


def converged(history: dict[int, dict], cfg: ControllerConfig) -> bool:
    rounds = sorted(r for r in history if r > 0)
    if len(rounds) < cfg.converge_window:
        return False
    last = [score(history[r]) for r in rounds[-cfg.converge_window:]]
    return max(last) - min(last) < cfg.converge_tol


def adjust(params: dict, triggers: list[Trigger], rnd: int, cfg: ControllerConfig) -> tuple[dict, dict]:
    """New hyper-parameters and the changes {param: [before, after]}, by the design's rules."""
    new = dict(params)
    names = {t.name for t in triggers}
    if "kl_violation" in names:
        new["beta"] *= cfg.kl_beta_mult
        new["learning_rate"] *= cfg.kl_lr_mult
    if "capability_regression" in names:
        new["beta"] *= cfg.cap_beta_mult
        new["learning_rate"] *= cfg.cap_lr_mult
        new["max_steps"] = max(1, int(round(new["max_steps"] * cfg.cap_steps_mult)))
    if "weak_alignment" in names and rnd >= cfg.weak_after_round and not names & {"kl_violation", "capability_regression"}:
        new["learning_rate"] *= cfg.weak_lr_mult
        new["beta"] *= cfg.weak_beta_mult
    changes = {k: [params[k], new[k]] for k in ADJUSTABLE if new[k] != params[k]}
    return new, changes


def hard_prompts(generation_records: list[dict], share: float) -> list[str]:
    """Prompts whose best and worst samples the reward model barely separates (the hardest share)."""
    gaps = [(max(r["rewards"]) - min(r["rewards"]), r["prompt"]) for r in generation_records if r["rewards"]]
    gaps.sort(key=lambda g: g[0])
    return [p for _, p in gaps[: max(1, int(len(gaps) * share))]]


def decide(history: dict[int, dict], rnd: int, params: dict, cfg: ControllerConfig, max_rounds: int,
           elapsed: float, generation_records: list[dict] | None = None) -> dict:
    """The decision after round `rnd`, given every evaluated round so far (0 = SFT) and the params it used."""
    m = history[rnd]
    triggers = weaknesses(m, cfg)
    names = {t.name for t in triggers}
    best = best_round(history, cfg)
    # Measured against the earlier rounds' top, not their best: rounds each within the noise of the one before
    # must not drift down unchecked.
    prev_top = top_round({r: v for r, v in history.items() if r != rnd}, cfg)
    degrading = bool(names & DEGRADING) or clearly_below(m, history[prev_top], cfg)
    new_params, changes = adjust(params, triggers, rnd, cfg)
    targeted: dict = {}
    if "capability_regression" in names:
        targeted["capability_pairs"] = True
    if "weak_alignment" in names and generation_records:
        targeted["hard_prompts"] = hard_prompts(generation_records, cfg.hard_prompt_share)
    if "labels_no_better_than_seed" in names and m.get("label_median_gap") is not None:
        targeted["min_reward_gap"] = m["label_median_gap"]  # keep the more confident half of the next round's pairs
    out_of_budget = rnd >= max_rounds or elapsed >= cfg.max_seconds
    gates_pass = not triggers
    if degrading:
        decision, start = "rollback", best
    elif names & RETRY:
        decision, start = "adjust_retry", best
    elif out_of_budget:
        decision, start = "stop_budget", best
    elif converged(history, cfg):
        decision, start = ("final_evaluation" if gates_pass else "stop_converged"), best
    elif changes:
        decision, start = "adjust_continue", rnd
    else:
        decision, start = "continue", rnd
    # Out of budget stops whatever else was decided; the best round is the result.
    stop = out_of_budget or decision in ("final_evaluation", "stop_converged")
    stop_reason = ("round_budget" if rnd >= max_rounds else "time_budget" if elapsed >= cfg.max_seconds
                   else "converged" if stop else None)
    return {
        "round": rnd, "decision": decision, "triggers": [t.to_dict() for t in triggers], "changes": changes,
        "params": params, "next_params": new_params, "targeted": targeted, "best_round": best,
        "next_start_round": start, "stop": stop, "stop_reason": stop_reason, "score": score(m), "degrading": degrading,
        "elapsed_seconds": elapsed,
    }


def iteration_log(d: dict, m: dict, used: dict) -> str:
    """The design's iteration report: config, results, status, decision."""
    keys = ("win_rate_vs_sft", "win_rate_vs_previous", "preference_accuracy", "kl_to_reference", "capability_retention",
            "perplexity", "mean_length", "oracle_score")
    res = "  ".join(f"{k}={m[k]:.3f}" for k in keys if isinstance(m.get(k), (int, float)))
    status = ", ".join(f"{t['name']} ({t['metric']}={t['value']:.3f}" + (
        f" [{t['interval'][0]:.3f}, {t['interval'][1]:.3f}]" if t.get("interval") else "") + f" vs {t['threshold']})"
        for t in d["triggers"]) or "no weaknesses"
    status += "".join(f"; collapse: {r}" for r in d.get("collapse_reasons", []))
    status += "".join(f"; warning: {w}" for w in d.get("collapse_warnings", []))
    if d.get("repair"):
        status = f"{repair_line(d['repair'])}; then {status}"
    changes = ", ".join(f"{k}: {a:g} -> {b:g}" for k, (a, b) in d["changes"].items()) or "none"
    cfg_line = "  ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in used.items())
    return (f"=== Iteration {d['round']} ===\n"
            f"  config:   {cfg_line}\n"
            f"  results:  {res}\n"
            f"  status:   {status}\n"
            f"  decision: {d['decision']} (changes: {changes}; best round {d['best_round']}; "
            f"next starts from round {d['next_start_round']}{'; stop' if d['stop'] else ''})")


def repair_line(rep: dict) -> str:
    """One line on a repair (iterdpo.repair): what failed, each step back tried, and the one kept."""
    failed = ", ".join(f"{t['name']} ({t['metric']}={t['value']:.3f} vs {t['threshold']})" for t in rep["triggers"]
                       if t["name"] in RETRY)
    tried = ", ".join(f"alpha {t['alpha']:g}: retention {t.get('capability_retention', float('nan')):.3f}, "
                      f"KL {t.get('kl_to_reference', float('nan')):.3f}, {'passes' if t['passes'] else 'fails'}"
                      for t in rep["tried"])
    kept = f"kept alpha {rep['alpha']:g}" if rep["alpha"] is not None else "none passes; the round stays as trained"
    return f"repair toward round {rep['start_round']} after {failed}: {tried}; {kept}"


def collapse_check(chosen_logratios: list[float], rejected_logratios: list[float], mean_length: float,
                   sft_mean_length: float, cfg: ControllerConfig, perplexity_ratio: float | None = None) -> dict:
    """Flag a round as collapsing when responses shrink to nothing, or the log-probs of chosen and rejected both
    fall steeply and the round's samples do not show that they are still fluent.

    Args:
        chosen_logratios, rejected_logratios: per logging step, the batch mean of log pi(y|x) - log pi_ref(y|x)
            in nats for the chosen / rejected responses (TRL's rewards/chosen and rewards/rejected divided by
            beta). Measured against the reference on the same batch, so batch-to-batch length noise cancels.
        cfg: a mean response length below collapse_min_length_ratio of the SFT policy's flags. Both sides
            averaging below -collapse_max_drop nats over the last collapse_window logged steps flags too, unless
            `perplexity_ratio` (the base model's perplexity on the round's samples over its perplexity on SFT's;
            None where not measured) is at most collapse_max_perplexity_ratio: then the fall is a warning only.
            The ratio is read as a point estimate here: the fall is evidence of its own, and the samples only
            have to agree with it, not prove a collapse alone.
            Both log-probs falling together is common in DPO without any loss of fluency (the sequence-level
            sum grows with reply length); the samples are the evidence. A fluency loss on its own is the
            fluency_collapse gate (see gates), which knows its noise.
    """
    reasons, warnings, w = [], [], cfg.collapse_window
    shrank = sft_mean_length > 0 and mean_length < cfg.collapse_min_length_ratio * sft_mean_length
    if shrank:
        reasons.append(f"responses shrank to {mean_length:.1f} tokens (SFT: {sft_mean_length:.1f})")
    if chosen_logratios and rejected_logratios:
        c = sum(chosen_logratios[-w:]) / len(chosen_logratios[-w:])
        r = sum(rejected_logratios[-w:]) / len(rejected_logratios[-w:])
        if c < -cfg.collapse_max_drop and r < -cfg.collapse_max_drop:
            fall = f"log-probs of chosen and rejected both fell below the reference (by {-c:.2f} and {-r:.2f} nats)"
            fluent = perplexity_ratio is not None and perplexity_ratio <= cfg.collapse_max_perplexity_ratio
            if fluent and not shrank:
                warnings.append(f"{fall}; not a collapse: the base model reads the samples at {perplexity_ratio:.2f}x "
                                f"SFT's perplexity (at most {cfg.collapse_max_perplexity_ratio:g}x)")
            else:
                reasons.append(fall)
    return {"collapsing": bool(reasons), "collapse_reasons": reasons, "collapse_warnings": warnings}


# the controller's state: decisions.jsonl ----------------------------------------------------------------
def round_plan(run: RunFolder, cfg: RunConfig, rnd: int) -> dict:
    """Where round `rnd` starts, its hyper-parameters and targeted data, from the decision after rnd-1.

    Derived once per round, by the generation stage, which stores it in its config.json; the DPO stage
    reads it from there (RunFolder.plan)."""
    prev = run.decisions().get(rnd - 1)
    carried = dict(prev["next_params"]) if prev else {"beta": cfg.dpo.beta, "learning_rate": cfg.dpo.learning_rate,
                                                      "max_steps": cfg.dpo.max_steps}
    # A schedule entry changes this round only; the controller adjusts the carried values.
    params = {**carried, **cfg.dpo.schedule.get(rnd, {})}
    return {"start": prev["next_start_round"] if prev else 0, "params": params, "carried": carried,
            "targeted": prev["targeted"] if prev else {}}


def stop_reason(d: dict) -> str | None:
    """Why the run stopped after decision `d` (round_budget, time_budget, converged), or None.
    Decisions written before stop_reason was recorded: a stop_budget decision is read as the round budget."""
    if "stop_reason" in d:
        return d["stop_reason"]
    return "round_budget" if d.get("stop") and d.get("decision") == "stop_budget" else ("converged" if d.get("stop") else None)


def next_round(run: RunFolder, cfg: RunConfig) -> int | None:
    """The next round to run, or None when the controller (or the round budget) says stop."""
    done = run.decisions()
    if not done:
        return 1
    last = max(done)
    # a stop on the round budget holds only while the budget does: a resumed run with more rounds goes on
    budget_only = stop_reason(done[last]) == "round_budget"
    if (done[last]["stop"] and not budget_only) or last >= cfg.max_rounds:
        return None
    return last + 1


def label_check(run: RunFolder, cfg: RunConfig, rnd: int) -> dict:
    """How much better round `rnd`'s synthetic labels are than the seed labels (label_gain, with its standard
    error), for the labels_no_better_than_seed gate; both measures where they exist.

    oracle: the share of the round's pairs the world's oracle agrees with, minus the seed labels' share
    (binomial standard errors). estimate: reward.label_estimates' ensemble accuracy minus its seed-label
    accuracy, from held-out seed pairs (a bootstrap standard error): oracle-free, one value per reward model."""
    mode = cfg.controller.label_check
    if mode == "off":
        return {}
    gen, rm = run.metrics(run.generate(rnd)), run.metrics(run.stage("reward"))
    out: dict = {}
    if "synthetic_pair_oracle_agreement" in gen and gen.get("pairs"):
        a, s = gen["synthetic_pair_oracle_agreement"], gen["seed_label_oracle_agreement"]
        n_seed = max(1, cfg.data.heldout_pairs)
        out["label_gain_oracle"] = a - s
        out["label_gain_oracle_se"] = (a * (1 - a) / gen["pairs"] + s * (1 - s) / n_seed) ** 0.5
    if rm.get("ensemble_label_accuracy_est") is not None and rm.get("seed_label_accuracy_est") is not None:
        out["label_gain_est"] = rm["ensemble_label_accuracy_est"] - rm["seed_label_accuracy_est"]
        out["label_gain_est_se"] = rm.get("label_gain_est_se")
    source = ("oracle" if "label_gain_oracle" in out else "estimate") if mode == "auto" else mode
    if source == "oracle" and "label_gain_oracle" in out:
        out.update(label_gain=out["label_gain_oracle"], label_gain_se=out["label_gain_oracle_se"])
    elif source == "estimate" and "label_gain_est" in out:
        out.update(label_gain=out["label_gain_est"], label_gain_se=out["label_gain_est_se"])
    out["label_check_source"] = source if "label_gain" in out else "none (no oracle, or reward.ensemble < 2)"
    out["label_median_gap"] = gen.get("reward_gap_quantiles", {}).get("0.5")
    return out


def round_collapse(run: RunFolder, cfg: RunConfig, rnd: int, m: dict, beta: float) -> dict:
    """collapse_check on round `rnd`'s DPO training log and its evaluation `m`."""
    log = run.train_log_rows(run.dpo(rnd))
    sft_len = run.metrics(run.eval(0))["mean_length"]
    return collapse_check([r["rewards/chosen"] / beta for r in log if "rewards/chosen" in r],
                          [r["rewards/rejected"] / beta for r in log if "rewards/rejected" in r],
                          m["mean_length"], sft_len, cfg.controller, m.get("base_perplexity_ratio_vs_sft"))


def with_fluency_se(run: RunFolder, rnd, m: dict) -> dict:
    """Round `rnd`'s metrics `m` with the fluency gate's standard error: evaluations written before it existed
    get it from their stored samples, so an old run folder's gate knows its noise too."""
    if rnd == 0 or "base_perplexity_ratio_vs_sft" not in m or "base_perplexity_ratio_vs_sft_se" in m:
        return m
    from .evaluate import base_perplexity_ratio_se

    mine, sft = (run.samples(rnd) or []), (run.samples(0) or [])
    if not mine or len(mine) != len(sft) or not all("base_logp" in s for s in mine + sft):
        return m
    return {**m, "base_perplexity_ratio_vs_sft_se": base_perplexity_ratio_se(mine, sft)}


def eval_metrics(run: RunFolder, rnd) -> dict:
    """Round `rnd`'s stored evaluation metrics, with the fluency gate's standard error (with_fluency_se)."""
    return with_fluency_se(run, rnd, run.metrics(run.eval(rnd)))


def record(run: RunFolder, cfg: RunConfig, rnd: int, m: dict, plan: dict) -> dict:
    """Append the decision after round `rnd` (evaluated as `m`, collapse included) to decisions.jsonl, once."""
    done = run.decisions()
    if rnd in done:
        return done[rnd]
    history = {0: run.metrics(run.eval(0))}
    for r in range(1, rnd):
        if not done.get(r, {}).get("failed"):  # a round whose training went non-finite has no evaluation
            history[r] = {**eval_metrics(run, r), "collapsing": done[r].get("collapsing", False) if r in done else False}
    history[rnd] = m = with_fluency_se(run, rnd, m)
    elapsed = run.elapsed()
    if cfg.controller.enabled:
        d = decide(history, rnd, plan["carried"], cfg.controller, cfg.max_rounds, elapsed, run.generation_records(rnd))
    else:
        d = {"round": rnd, "decision": "continue", "triggers": [], "changes": {}, "params": plan["carried"],
             "next_params": plan["carried"], "targeted": {}, "best_round": rnd, "next_start_round": rnd,
             "stop": rnd >= cfg.max_rounds, "stop_reason": "round_budget" if rnd >= cfg.max_rounds else None,
             "score": score(m), "degrading": False, "elapsed_seconds": elapsed}
    d["collapsing"] = m.get("collapsing", False)
    d.update({k: m[k] for k in ("collapse_reasons", "collapse_warnings") if m.get(k)})
    d["gates"] = gates(m, cfg.controller)  # every gate's estimate, interval and threshold, triggered or not
    d["labels"] = {k: m[k] for k in ("label_check_source", "label_gain_oracle", "label_gain_oracle_se", "label_gain_est",
                                     "label_gain_est_se")
                   if k in m}
    d.update(used_params=plan["params"], start_round=plan["start"])
    if run.done(run.repair(rnd)):  # what the repair found: the metrics above are its kept candidate's, if any
        d["repair"] = run.metrics(run.repair(rnd))
    append_jsonl(run.decisions_path, d)
    return d


def record_non_finite(run: RunFolder, cfg: RunConfig, rnd: int, plan: dict, error) -> dict:
    """Round `rnd`'s training went non-finite (guard.NonFiniteError): nothing of it was saved. Record a rollback
    to the best round with a lower learning rate, or a stop after controller.max_non_finite such rounds in a row."""
    done = run.decisions()
    history = {0: run.metrics(run.eval(0))}
    history.update({r: {**eval_metrics(run, r), "collapsing": d.get("collapsing", False)}
                    for r, d in done.items() if not d.get("failed")})
    best = best_round(history, cfg.controller)
    in_a_row = 1
    while done.get(rnd - in_a_row, {}).get("failed"):
        in_a_row += 1
    params = dict(plan["carried"])
    new = {**params, "learning_rate": params["learning_rate"] * cfg.controller.non_finite_lr_mult}
    stop = in_a_row >= cfg.controller.max_non_finite or rnd >= cfg.max_rounds
    reason = "non_finite" if in_a_row >= cfg.controller.max_non_finite else "round_budget" if stop else None
    trigger = Trigger("non_finite", error.what, float(error.step), 0.0)
    d = {"round": rnd, "decision": "rollback", "failed": True, "error": str(error), "triggers": [trigger.to_dict()],
         "changes": {"learning_rate": [params["learning_rate"], new["learning_rate"]]}, "params": params,
         "next_params": new, "targeted": {}, "best_round": best, "next_start_round": best, "stop": stop,
         "stop_reason": reason, "score": None, "degrading": True, "elapsed_seconds": run.elapsed(),
         "collapsing": False, "used_params": plan["params"], "start_round": plan["start"]}
    append_jsonl(run.decisions_path, d)
    print(f"=== Iteration {rnd} ===\n  status:   {error}\n  decision: rollback to round {best}, learning_rate "
          f"{params['learning_rate']:g} -> {new['learning_rate']:g}" + (f"; stop ({reason})" if stop else ""))
    return d


def headline(m: dict) -> str:
    """The score the yardstick compares arms by: the oracle's where the run has one, else the win rate against SFT."""
    return "oracle_score" if isinstance(m.get("oracle_score"), (int, float)) else "win_rate_vs_sft"


def movement(answer: dict, offline: dict, min_ratio: float) -> dict | None:
    """How far the answer moved from SFT against offline DPO (both KL to SFT), with a note when the answer leads
    offline DPO on the headline score after moving `min_ratio` times as far or more (or offline DPO did not move):
    at the same beta, offline DPO on fixed pairs can move much less than the rounds, and a lead bought by moving
    further may be open to offline DPO with a smaller beta (in the toy world most of it was). None when a KL is
    missing; the ratio is None when offline DPO's KL is not above 0."""
    a, o = answer.get("kl_to_sft"), offline.get("kl_to_sft")
    if not all(isinstance(x, (int, float)) for x in (a, o)):
        return None
    ratio = a / o if o > 0 else None
    key = headline(answer)
    sa, so = answer.get(key), offline.get(key)
    leads = isinstance(sa, (int, float)) and isinstance(so, (int, float)) and sa > so
    far = a > 0 and (ratio is None or ratio >= min_ratio)
    how = f"{ratio:.1f}x as far from SFT as offline DPO" if ratio is not None else "from SFT, and offline DPO did not"
    note = (f"the answer leads offline DPO ({key} {sa:.3f} against {so:.3f}) but moved {how} (KL to SFT {a:.3f} "
            f"against {o:.3f}): part of the lead may be open to offline DPO with a smaller dpo.beta; compare both arms "
            "across betas with plots.frontier([runs])" if leads and far else None)
    return {"kl_to_sft_ratio": ratio, "note": note}


def yardstick(run: RunFolder, cfg: RunConfig) -> dict:
    """The run's answer (the best round) and the offline arm, each with its oracle score, win rates, capability
    retention and KL, and each held to the same gates (summary.json's "yardstick"); with both, "movement"
    compares how far each moved from SFT."""
    done = {r: d for r, d in run.decisions().items() if not d.get("failed")}
    best = done[max(done)]["best_round"] if done else 0
    keys = ("oracle_score", "win_rate_vs_sft", "oracle_win_rate_vs_sft", "capability_retention", "kl_to_reference",
            "kl_to_sft")
    arms = {"answer": best, "offline_dpo": "offline_dpo"}
    out = {}
    for arm, rnd in arms.items():
        if run.done(run.eval(rnd)):
            m = eval_metrics(run, rnd)
            g = gates(m, cfg.controller)
            out[arm] = {"round": rnd, **{k: m.get(k) for k in keys}, "gates": g,
                        "passes_gates": all(x["passes"] for x in g.values())}
            if run.done(run.repair(rnd)):  # a repair was tried (alpha None: none passed): the arm as trained too
                rep = run.metrics(run.repair(rnd))
                out[arm]["repair"] = {"alpha": rep["alpha"], "start_round": rep["start_round"],
                                      "trained": {k: rep["trained"].get(k) for k in keys}}
    if "answer" in out and "offline_dpo" in out:
        out["movement"] = movement(out["answer"], out["offline_dpo"], cfg.controller.movement_note_ratio)
    return out


def iteration_report(run: RunFolder, cfg: RunConfig, rnd: int) -> str:
    """The iteration log for round `rnd`, rebuilt from decisions.jsonl and the round's metrics."""
    d = run.decisions()[rnd]
    if d.get("failed"):
        return f"=== Iteration {rnd} ===\n  status:   {d['error']}\n  decision: rollback (best round {d['best_round']})"
    used = {"start_round": d["start_round"], **d["used_params"], "reference": cfg.dpo.reference}
    return iteration_log(d, run.metrics(run.eval(rnd)), used)
