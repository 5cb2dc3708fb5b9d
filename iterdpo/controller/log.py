"""The controller's state, decisions.jsonl: the plan of each round, the evidence its verdict reads, the record.

One line per round, appended once (iterdpo.controller.verdict.Verdict); the next round's plan is derived
from the last line. This is the only part of the controller that reads the run folder.
"""

from __future__ import annotations

from .. import migrate
from ..config import RunConfig
from ..folder import append_jsonl
from ..metrics import N
from ..runfolder import RunFolder
from .gates import collapse_check
from .verdict import Evidence, judge, non_finite


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


def evaluation(run: RunFolder, rnd) -> dict:
    """Round `rnd`'s stored evaluation metrics, as today's code reads them (migrate.fluency_se)."""
    m = run.metrics(run.eval(rnd))
    return m if rnd == 0 else migrate.fluency_se(m, lambda: (run.samples(rnd), run.samples(0)))


def _history(run: RunFolder, done: dict, rounds) -> dict:
    """{0: SFT's evaluation, r: round r's with its collapsing flag} for the `rounds` that trained to the end."""
    history = {0: run.metrics(run.eval(0))}
    for r in rounds:
        if not done.get(r, {}).get("failed"):  # a round whose training went non-finite has no evaluation
            history[r] = {**evaluation(run, r), N.collapsing: done[r].get(N.collapsing, False) if r in done else False}
    return history


def logratios(run: RunFolder, rnd: int, beta: float) -> tuple[list[float], list[float]]:
    """Round `rnd`'s logged DPO steps as (chosen, rejected) log-ratios to the reference, in nats (TRL's
    rewards/chosen and rewards/rejected divided by beta): what the collapse check reads."""
    rows = run.train_log_rows(run.dpo(rnd))
    return ([r["rewards/chosen"] / beta for r in rows if "rewards/chosen" in r],
            [r["rewards/rejected"] / beta for r in rows if "rewards/rejected" in r])


def collapse(run: RunFolder, cfg: RunConfig, rnd: int, m: dict, plan: dict) -> dict:
    """The collapse check (gates.collapse_check) on round `rnd` evaluated as `m` (the repair's decision reads it on
    the round as trained; the verdict computes its own on the evaluation that stands)."""
    chosen, rejected = logratios(run, rnd, plan["params"]["beta"])
    return collapse_check(chosen, rejected, m[N.mean_length], run.metrics(run.eval(0))[N.mean_length], cfg.controller,
                          m.get(N.base_perplexity_ratio_vs_sft))


def gather(run: RunFolder, cfg: RunConfig, rnd: int, m: dict, plan: dict) -> Evidence:
    """The evidence for round `rnd`'s verdict, `m` being the evaluation that stands for it."""
    chosen, rejected = logratios(run, rnd, plan["params"]["beta"])
    return Evidence(
        round=rnd, metrics=migrate.fluency_se(m, lambda: (run.samples(rnd), run.samples(0))),
        history=_history(run, run.decisions(), range(1, rnd)), plan=plan, elapsed=run.elapsed(),
        max_rounds=cfg.max_rounds, chosen_logratios=chosen, rejected_logratios=rejected,
        sft_mean_length=run.metrics(run.eval(0))[N.mean_length], generation=run.metrics(run.generate(rnd)),
        reward=run.metrics(run.stage("reward")), heldout_pairs=cfg.data.heldout_pairs,
        generation_records=run.generation_records(rnd) if cfg.controller.enabled else None,
        repair=run.metrics(run.repair(rnd)) if run.done(run.repair(rnd)) else None)


def record(run: RunFolder, cfg: RunConfig, rnd: int, m: dict, plan: dict) -> dict:
    """The verdict on round `rnd` (evaluated as `m`), appended to decisions.jsonl once; the line."""
    done = run.decisions()
    if rnd in done:
        return done[rnd]
    d = judge(gather(run, cfg, rnd, m, plan), cfg).to_dict()
    append_jsonl(run.decisions_path, d)
    return d


def record_non_finite(run: RunFolder, cfg: RunConfig, rnd: int, plan: dict, error) -> dict:
    """Round `rnd`'s training went non-finite: its verdict (verdict.non_finite), appended; the line."""
    done = run.decisions()
    in_a_row = 1
    while done.get(rnd - in_a_row, {}).get("failed"):
        in_a_row += 1
    ev = Evidence(round=rnd, metrics={}, history=_history(run, done, sorted(done)), plan=plan, elapsed=run.elapsed(),
                  max_rounds=cfg.max_rounds)
    d = non_finite(ev, cfg, error, in_a_row).to_dict()
    append_jsonl(run.decisions_path, d)
    new_lr = d["next_params"]["learning_rate"]
    print(f"=== Iteration {rnd} ===\n  status:   {error}\n  decision: rollback to round {d['best_round']}, learning_rate "
          f"{plan['carried']['learning_rate']:g} -> {new_lr:g}" + (f"; stop ({d['stop_reason']})" if d["stop"] else ""))
    return d
