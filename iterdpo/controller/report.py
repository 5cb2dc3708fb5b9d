"""What the controller tells a person: each round's iteration log, and the yardstick (the run's answer against
offline DPO, both held to the same gates) that summary.json and the run's closing lines carry."""

from __future__ import annotations

import math

from ..config import RunConfig
from ..metrics import N, se
from ..runfolder import RunFolder
from .gates import RETRY, eligible, gates
from .log import evaluation

REPORTED = (N.win_rate_vs_sft, N.win_rate_vs_previous, N.preference_accuracy, N.kl_to_reference,
            N.capability_retention, N.perplexity, N.mean_length, N.oracle_score)
YARDSTICK = (N.oracle_score, N.win_rate_vs_sft, N.oracle_win_rate_vs_sft, N.capability_retention, N.kl_to_reference,
             N.kl_to_sft)


def iteration_log(d: dict, m: dict, used: dict) -> str:
    """The design's iteration report: config, results, status, decision."""
    res = "  ".join(f"{k}={m[k]:.3f}" for k in REPORTED if isinstance(m.get(k), (int, float)))
    status = ", ".join(f"{t['name']} ({t['metric']}={t['value']:.3f}" + (
        f" [{t['interval'][0]:.3f}, {t['interval'][1]:.3f}]" if t.get("interval") else "") + f" vs {t['threshold']})"
        for t in d["triggers"]) or "no weaknesses"
    status += "".join(f"; collapse: {r}" for r in d.get(N.collapse_reasons, []))
    status += "".join(f"; warning: {w}" for w in d.get(N.collapse_warnings, []))
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
    tried = ", ".join(f"alpha {t['alpha']:g}: retention {t.get(N.capability_retention, float('nan')):.3f}, "
                      f"KL {t.get(N.kl_to_reference, float('nan')):.3f}, {'passes' if t['passes'] else 'fails'}"
                      for t in rep["tried"])
    kept = f"kept alpha {rep['alpha']:g}" if rep["alpha"] is not None else "none passes; the round stays as trained"
    return f"repair toward round {rep['start_round']} after {failed}: {tried}; {kept}"


def iteration_report(run: RunFolder, cfg: RunConfig, rnd: int) -> str:
    """The iteration log for round `rnd`, rebuilt from decisions.jsonl and the round's metrics."""
    d = run.decisions()[rnd]
    if d.get("failed"):
        return f"=== Iteration {rnd} ===\n  status:   {d['error']}\n  decision: rollback (best round {d['best_round']})"
    used = {"start_round": d["start_round"], **d["used_params"], "reference": cfg.dpo.reference}
    return iteration_log(d, run.metrics(run.eval(rnd)), used)


def iteration_reports(run: RunFolder, cfg: RunConfig) -> str:
    """Every round's iteration log, in order."""
    return "\n\n".join(iteration_report(run, cfg, r) for r in sorted(run.decisions()))


def headline(m: dict) -> str:
    """The score the yardstick compares arms by: the oracle's where the run has one, else the win rate against SFT."""
    return N.oracle_score if isinstance(m.get(N.oracle_score), (int, float)) else N.win_rate_vs_sft


def movement(answer: dict, offline: dict, min_ratio: float) -> dict | None:
    """How far the answer moved from SFT against offline DPO (both KL to SFT), with a note when the answer leads
    offline DPO on the headline score after moving `min_ratio` times as far or more (or offline DPO did not move):
    at the same beta, offline DPO on fixed pairs can move much less than the rounds, and a lead bought by moving
    further may be open to offline DPO with a smaller beta. None when a KL is missing; the ratio is None when
    offline DPO's KL is not above 0."""
    a, o = answer.get(N.kl_to_sft), offline.get(N.kl_to_sft)
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


def _front(curve: list[dict]) -> list[dict]:
    """The points of `curve` that score above every point nearer SFT: the best the arm reached by each KL."""
    front: list[dict] = []
    for p in sorted(curve, key=lambda p: p["kl"]):
        if not front or p["score"] > front[-1]["score"]:
            front.append(p)
    return front


def kl_matched(answer: dict, curve: list[dict], gate_z: float) -> dict | None:
    """The answer against offline DPO's frontier at the answer's own KL to SFT.

    Args:
        answer: {kl, score, score_se} of the run's answer (score: the headline, oracle or reward model).
        curve: the same for every point offline DPO reached that passes the gates, SFT (KL 0) among them.
        gate_z: the gates' z: the verdict is loop_ahead or offline_ahead only when the lead's whole interval,
            lead -/+ gate_z standard errors, is past 0; else tie.
    Returns:
        {answer_kl, offline_at_kl, offline_at_kl_se, lead, lead_se, verdict, beyond_offline, frontier}, where the
        frontier's value at a KL is the linear interpolation between its neighbouring points (never extrapolated:
        an answer beyond the curve's largest KL is compared with its best point, and beyond_offline is true). The
        standard errors combine as if independent; both arms are sampled on the same prompts with the same seed,
        so their errors correlate positively and this errs towards a tie. None without a curve or a score.
    """
    pts = [p for p in curve if all(isinstance(p.get(k), (int, float)) for k in ("kl", "score"))]
    if not pts or not all(isinstance(answer.get(k), (int, float)) for k in ("kl", "score")):
        return None
    front, k = _front(pts), max(0.0, answer["kl"])
    beyond = k > max(p["kl"] for p in pts)
    lo = [p for p in front if p["kl"] <= k]
    hi = [p for p in front if p["kl"] > k]
    if beyond or not hi or not lo:
        p = front[-1] if beyond or not hi else front[0]
        at, at_se = p["score"], p.get("score_se") or 0.0
    else:
        a, b = lo[-1], hi[0]
        w = (k - a["kl"]) / (b["kl"] - a["kl"])
        at = a["score"] + w * (b["score"] - a["score"])
        at_se = (1 - w) * (a.get("score_se") or 0.0) + w * (b.get("score_se") or 0.0)
    lead, lead_se = answer["score"] - at, math.hypot(answer.get("score_se") or 0.0, at_se)
    verdict = "loop_ahead" if lead - gate_z * lead_se > 0 else "offline_ahead" if lead + gate_z * lead_se < 0 else "tie"
    return {"answer_kl": answer["kl"], "offline_at_kl": at, "offline_at_kl_se": at_se, "lead": lead, "lead_se": lead_se,
            "verdict": verdict, "beyond_offline": beyond, "frontier": front}


def kl_matched_line(km: dict) -> str:
    """One line on the KL-matched verdict (kl_matched), for the run's closing lines and the model card."""
    where = ("beyond offline DPO's furthest point, so against its best point" if km["beyond_offline"]
             else "offline DPO's frontier interpolated there")
    return (f"at the answer's KL to SFT ({km['answer_kl']:.3f}), {where}: {km['score_name']} lead "
            f"{km['lead']:+.3f} ± {km['lead_se']:.3f} (offline {km['offline_at_kl']:.3f}): {km['verdict']}, judged by "
            f"the {km['judged_by']}")


def frontier_folder(run: RunFolder):
    """offline_dpo/frontier/: the frontier stage's folder (iterdpo.frontier)."""
    return run.round_dir("offline_dpo") / "frontier"


def _curve_point(m: dict, key: str, label: str) -> dict:
    return {"label": label, "kl": m.get(N.kl_to_sft), "score": m.get(key), "score_se": m.get(se(key))}


def offline_curve(run: RunFolder, cfg: RunConfig, key: str, arm: dict, frontier_points: list[dict]) -> list[dict]:
    """Offline DPO's points on the headline `key` that pass the gates excluding a round: SFT (KL 0), the offline
    arm as it stands (`arm`: its evaluation, its repair's where one was kept), and the frontier stage's points
    (iterdpo.frontier)."""
    sft = dict(run.metrics(run.eval(0)))
    sft.setdefault(N.kl_to_sft, 0.0)
    if key == N.win_rate_vs_sft:  # SFT against itself
        sft.update({key: 0.5, se(key): 0.0})
    curve = [_curve_point(sft, key, "SFT")]
    if eligible(arm, cfg.controller):
        curve.append(_curve_point(arm, key, f"offline DPO (beta {cfg.dpo.beta:g})"))
    curve += [{"label": f"beta {p['beta']:g}, step {p['step']}" + (f", repaired at alpha {p[N.repair_alpha]:g}"
                                                                   if p.get(N.repair_alpha) else ""),
               "kl": p.get(N.kl_to_sft), "score": p["score"],
               "score_se": p.get("score_se")} for p in frontier_points if p["eligible"] and p["score_name"] == key]
    return curve


def _arm(run: RunFolder, cfg: RunConfig, rnd, m: dict) -> dict:
    """The yardstick's record of arm `rnd`, evaluated as `m`."""
    g = gates(m, cfg.controller)
    out = {"round": rnd, **{k: m.get(k) for k in YARDSTICK}, "gates": g, "passes_gates": all(x["passes"] for x in g.values())}
    if run.done(run.repair(rnd)):  # a repair was tried (alpha None: none passed): the arm as trained too
        rep = run.metrics(run.repair(rnd))
        out["repair"] = {"alpha": rep["alpha"], "start_round": rep["start_round"],
                         "trained": {k: rep["trained"].get(k) for k in YARDSTICK}}
    return out


def yardstick(run: RunFolder, cfg: RunConfig) -> dict:
    """The run's answer (the best round) and the offline arm, each with its oracle score, win rates, capability
    retention and KL, and each held to the same gates (summary.json's "yardstick"); with both, "movement"
    compares how far each moved from SFT."""
    done = {r: d for r, d in run.decisions().items() if not d.get("failed")}
    best = done[max(done)]["best_round"] if done else 0
    ms = {arm: evaluation(run, rnd) for arm, rnd in (("answer", best), ("offline_dpo", "offline_dpo"))
          if run.done(run.eval(rnd))}
    out = {arm: _arm(run, cfg, rnd, ms[arm]) for arm, rnd in (("answer", best), ("offline_dpo", "offline_dpo"))
           if arm in ms}
    if "answer" in out and "offline_dpo" in out:
        out["movement"] = movement(out["answer"], out["offline_dpo"], cfg.controller.movement_note_ratio)
        key = headline(ms["answer"])
        points = run.metrics(frontier_folder(run))["points"] if run.done(frontier_folder(run)) else []
        curve = offline_curve(run, cfg, key, ms["offline_dpo"], points)
        matched = kl_matched(_curve_point(ms["answer"], key, "answer"), curve, cfg.controller.gate_z)
        if matched is not None:
            out["kl_matched"] = {**matched, "score_name": key, "judged_by": "oracle" if key == N.oracle_score else
                                 "the labelling reward ensemble (no oracle in this world)"}
    return out
