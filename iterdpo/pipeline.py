"""The round loop: stages as atomic, resumable folders, run in order.

Data flows one way: config -> stage function -> output folder -> the next stage reads that folder.
Every stage function takes the RunConfig (the run folder is ``cfg.out``, read through
:class:`~iterdpo.runfolder.RunFolder`), skips itself when its folder is finished (unless ``force``),
and returns its metrics. The work of each stage lives in the module named for it; this module only
sequences them:

    base/  data/                          models.import_base or toyworld.pretrain_base; data / toyworld
    sft/                                  sft.train_stage
    reward/  round_0/eval/                reward.train_stage, evaluate.evaluate_round
    round_r/generate/                     generate.generate_round (the plan: controller.round_plan)
    round_r/dpo/  round_r/eval/           dpo.round_stage, evaluate.evaluate_round, controller.record
    round_r/repair/                       repair.repair_stage, where a capability or KL gate fails
    offline_dpo/{dpo,eval,repair}/        dpo.offline_stage: the baseline arm, held to the same repair
    offline_dpo/frontier/                 frontier.frontier_stage: more offline arms, the arm as a curve
    summary.json                          write_summary
"""

from __future__ import annotations

import errno
import shutil
import time
from pathlib import Path
from typing import Callable

from . import dist, dpo, evaluate, export, frontier, generate, repair, reward, sft, stages
from .config import RunConfig
from .controller import log, report
from .controller.gates import needs_repair
from .folder import read_json, write_json, write_jsonl
from .guard import NonFiniteError
from .metrics import N
from .models import hub_telemetry, load_tokenizer
from .runfolder import RunFolder, StageFiles
from .worlds import world_of


def stage(dest: Path, config: dict, force: bool, work: Callable[[Path], dict]) -> dict:
    """Run ``work(tmp) -> metrics`` into an atomic folder at `dest` unless it is done; time it; return its metrics."""
    with dist.stage_folder(dest, config, force) as tmp:  # several processes: the main one writes
        if tmp is not None:
            t0 = time.perf_counter()
            try:
                m = work(tmp)
            except Exception as e:
                if "No space left on device" in str(e) and not isinstance(e, OSError):  # safetensors' own error
                    raise OSError(errno.ENOSPC, f"no space left on the device while writing stage {dest.name} "
                                                "(nothing of it was kept)") from None
                raise
            m[N.wall_seconds] = time.perf_counter() - t0
            write_json(StageFiles(tmp).metrics, m)
    return read_json(StageFiles(dest).metrics)


# once per run ----------------------------------------------------------------------------------------
def prepare(cfg: RunConfig, force: bool = False) -> dict:
    """Write the run's config, then the base model (trained, converted or referenced) and the data split."""
    hub_telemetry(cfg.export.telemetry)  # before any trainer starts (the other notebooks' ready() does the same)
    run = RunFolder(cfg.out)
    run.root.mkdir(parents=True, exist_ok=True)
    dist.on_main(write_json, run.config_path, cfg.to_dict())
    stage(run.stage("base"), cfg.to_dict(), force, lambda tmp: _base(cfg, tmp))
    return stage(run.stage("data"), cfg.to_dict(), force, lambda tmp: _data(cfg, run, tmp))


def _base(cfg: RunConfig, tmp: Path) -> dict:
    return world_of(cfg).make_base(cfg, tmp)


def _data(cfg: RunConfig, run: RunFolder, tmp: Path) -> dict:
    """The seed pairs split into train and held-out pairs, plus held-out and generation prompts (the world's)."""
    tok = load_tokenizer(run.base_source(), cfg.model)
    train, heldout, held_prompts, gen_prompts, m = world_of(cfg).seed_data(cfg, tok, run.base_source())
    f = StageFiles(tmp)
    write_jsonl(f.data("train_pairs"), train)
    write_jsonl(f.data("heldout_pairs"), heldout)
    write_jsonl(f.data("heldout_prompts"), [{"prompt": p} for p in held_prompts])
    write_jsonl(f.data("gen_prompts"), [{"prompt": p} for p in gen_prompts])
    return {**m, "train_pairs": len(train), "heldout_pairs": len(heldout), "heldout_prompts": len(held_prompts),
            "gen_prompts": len(gen_prompts)}


def run_sft(cfg: RunConfig, force: bool = False) -> dict:
    """LoRA SFT of the base model on the chosen responses; the merged policy goes to sft/policy."""
    run = RunFolder(cfg.out)
    return stage(run.stage("sft"), cfg.to_dict(), force, lambda tmp: sft.train_stage(cfg, run, tmp))


def run_reward(cfg: RunConfig, force: bool = False) -> dict:
    """Bradley-Terry training of the reward model on the seed pairs, then the SFT baseline's evaluation."""
    run = RunFolder(cfg.out)
    m = stage(run.stage("reward"), cfg.to_dict(), force, lambda tmp: reward.train_stage(cfg, run, tmp))
    evaluate_round(cfg, 0, force)
    return m


def evaluate_round(cfg: RunConfig, rnd: int | str, force: bool = False, ref: str | None = None,
                   beta: float | None = None) -> dict:
    """Evaluate round `rnd`'s trained policy into round_<rnd>/eval (samples.jsonl, metrics.json, and
    capability_<suite>.jsonl for each suite that scores item by item).

    The evaluation belongs to one training of the round (RunFolder.made_from): after a round was trained again
    (force, or a resumed run that retrained its offline arm and was killed before evaluating it), an earlier
    evaluation is not kept."""
    run = RunFolder(cfg.out)
    dest = run.trained_eval(rnd)
    config = cfg.to_dict() if rnd == 0 else {**cfg.to_dict(), "trained": run.trained_fingerprint(rnd)}
    stale = rnd != 0 and run.done(dest) and not run.made_from(dest, config["trained"])

    def work(tmp: Path) -> dict:
        evaluation, samples, capability_rows = evaluate.evaluate_policy(cfg, run, rnd, ref, beta)
        files = StageFiles(tmp)
        write_jsonl(files.samples, samples)
        for suite, rows in capability_rows.items():
            write_jsonl(files.capability(suite), rows)
        return evaluation.to_dict()

    return stage(dest, config, force or stale, work)


def repair_round(cfg: RunConfig, rnd: int | str, start: int, m: dict, ref: str | None, beta: float,
                 force: bool = False) -> dict:
    """Round `rnd` (evaluated as `m`) moved back toward round `start` where a capability or KL gate fails
    (iterdpo.repair); returns the metrics that stand for the round: the repair's, where it chose a candidate."""
    run = RunFolder(cfg.out)
    # the repair belongs to one training of the round, like its evaluation (evaluate_round): a retrained round
    # must not keep the repair of its earlier weights
    config = {"run": cfg.to_dict(), "start": start, "trained": run.trained_fingerprint(rnd)}
    dest = run.repair(rnd)
    kept = not force and run.made_from(dest, config["trained"])
    if not kept and not (cfg.controller.enabled and needs_repair(m, cfg.controller)):
        dist.on_main(shutil.rmtree, dest, ignore_errors=True)  # a repair that no longer applies
        return m
    rm = stage(dest, config, not kept, lambda tmp: repair.repair_stage(cfg, run, rnd, start, m, ref, beta, tmp))
    if rm["alpha"] is None:
        tried = ", ".join(f"{t['alpha']:g}" for t in rm["tried"])
        print(f"repair: no step back toward round {start} passes the gates (alpha {tried})")
        return m
    return run.metrics(run.eval(rnd))


# per round -------------------------------------------------------------------------------------------
def run_generation(cfg: RunConfig, rnd: int, force: bool = False) -> dict:
    """Sample K responses per prompt from the round's start policy, score them, and build pairs.

    The round's plan (start policy, hyper-parameters, targeted data) is derived here, once, and kept in
    the stage's config.json for the DPO stage."""
    run = RunFolder(cfg.out)
    dest = run.generate(rnd)
    plan = run.plan(rnd) if run.done(dest) and not force else log.round_plan(run, cfg, rnd)
    return stage(dest, {"run": cfg.to_dict(), "plan": plan}, force,
                 lambda tmp: generate.generate_round(cfg, run, rnd, plan, tmp))


def run_dpo_round(cfg: RunConfig, rnd: int, force: bool = False) -> dict:
    """Train round `rnd`, evaluate it, and record the controller's decision. Returns the eval metrics."""
    run = RunFolder(cfg.out)
    if not run.done(run.generate(rnd)):
        raise RuntimeError(f"round {rnd} has no synthetic pairs yet: run its generation stage (03_synthetic_preferences) first")
    plan = run.plan(rnd)
    try:
        dm = stage(run.dpo(rnd), {"run": cfg.to_dict(), "plan": plan}, force,
                   lambda tmp: dpo.round_stage(cfg, run, rnd, plan, tmp))
    except NonFiniteError as e:  # nothing of the round was saved: the controller rolls back and retries gentler
        return dist.on_main(log.record_non_finite, run, cfg, rnd, plan, e) or run.decisions()[rnd]
    beta, ref = plan["params"]["beta"], str(run.policy(dm["reference_round"]))
    m = evaluate_round(cfg, rnd, force, ref=ref, beta=beta)
    # the repair decides on the round as trained, its collapse included (a collapse is rolled back, never repaired)
    m = repair_round(cfg, rnd, plan["start"], {**m, **log.collapse(run, cfg, rnd, m, plan)}, ref, beta, force)
    d = dist.on_main(log.record, run, cfg, rnd, _standing(m), plan) or run.decisions()[rnd]  # once; others read it
    print(report.iteration_report(run, cfg, rnd))
    return d


def _standing(m: dict) -> dict:
    """The evaluation that stands for a round, without the collapse flags the verdict computes itself."""
    return {k: v for k, v in m.items() if k not in (N.collapsing, N.collapse_reasons, N.collapse_warnings)}


def iteration_reports(cfg: RunConfig) -> str:
    """Every round's iteration log, in order."""
    return report.iteration_reports(RunFolder(cfg.out), cfg)


def run_offline_baseline(cfg: RunConfig, force: bool = False) -> dict:
    """Seed pairs only, from the SFT policy, for as many DPO steps as all iterative rounds together."""
    run = RunFolder(cfg.out)
    steps, _ = dpo.offline_steps(run)
    if not steps:
        raise RuntimeError("run the iterative rounds first: the baseline matches their total steps")
    dest = run.dpo("offline_dpo")
    if run.done(dest) and run.metrics(dest)["max_steps"] != steps:  # a resumed run added rounds: match them again
        print(f"offline arm: retrained for {steps} steps (it had {run.metrics(dest)['max_steps']})")
        force = True
    stage(dest, {"run": cfg.to_dict(), "max_steps": steps}, force, lambda tmp: dpo.offline_stage(cfg, run, tmp))
    ref = str(run.policy(0))
    m = evaluate_round(cfg, "offline_dpo", force, ref=ref, beta=cfg.dpo.beta)
    m = repair_round(cfg, "offline_dpo", 0, m, ref, cfg.dpo.beta, force)
    if cfg.baseline.frontier_betas:  # the arm as a curve (iterdpo.frontier), trained as long as the arm
        dest = report.frontier_folder(run)
        stale = run.done(dest) and run.metrics(dest)["max_steps"] != steps
        stage(dest, {"run": cfg.to_dict(), "max_steps": steps}, force or stale,
              lambda tmp: frontier.frontier_stage(cfg, run, tmp))
    return m


# summary ---------------------------------------------------------------------------------------------
def write_summary(cfg: RunConfig) -> dict:
    """summary.json: every round's metrics (eval + generation + training), the best round, the baselines."""
    run = RunFolder(cfg.out)
    done = run.decisions()
    offline = run.samples("offline_dpo")
    has_oracle = world_of(cfg).has_oracle
    rounds = [{"round": 0, "metrics": run.metrics(run.eval(0))}]
    for r in sorted(done):
        if done[r].get("failed"):  # training went non-finite: no policy, no evaluation
            rounds.append({"round": r, "params": done[r]["used_params"], "start_round": done[r]["start_round"],
                           "decision": done[r]["decision"], "failed": True, "error": done[r]["error"], "metrics": {}})
            continue
        m = dict(run.metrics(run.eval(r)))
        gen, dm = run.metrics(run.generate(r)), run.metrics(run.dpo(r))
        m.update({k: gen[k] for k in (N.pair_success_rate, N.pairs, N.dropped, N.reward_gap_mean,
                                      N.synthetic_pair_oracle_agreement, N.labels_worse_than_seed) if k in gen})
        m.update({N.train_loss: dm[N.train_loss], N.train_reward_accuracy: dm[N.train_reward_accuracy]})
        m[N.collapsing] = done[r].get(N.collapsing, False)
        m[N.wall_seconds] = sum(run.metrics(d)[N.wall_seconds] for d in (run.trained_eval(r), run.generate(r), run.dpo(r),
                                                                       run.repair(r)) if run.done(d))
        if offline:
            m.update(evaluate.compare(run.samples(r), offline, stages.OFFLINE, has_oracle))
        rounds.append({"round": r, "params": dm["params"], "start_round": dm["start_round"],
                       "decision": done[r]["decision"], "metrics": m,
                       **({"repair": run.metrics(run.repair(r))} if run.done(run.repair(r)) else {})})
    summary = {"preset": cfg.preset, "seed": cfg.seed, "rounds": rounds,
               "best_round": done[max(done)]["best_round"] if done else 0,
               "baselines": {}, "reward_model": run.metrics(run.stage("reward")), "data": run.metrics(run.stage("data")),
               "config_changes": run.events(), "yardstick": report.yardstick(run, cfg)}
    if offline:
        summary["baselines"]["offline_dpo"] = run.metrics(run.eval("offline_dpo"))
    dist.on_main(write_json, run.summary_path, summary)
    return summary


def run_rounds(cfg: RunConfig, force: bool = False) -> dict:
    """Generation and DPO rounds until the controller stops (finished rounds are skipped); the last decision."""
    run = RunFolder(cfg.out)
    rnd = stages.next_round(run, cfg)
    while rnd is not None:
        print(f"round {rnd}: sampling, scoring and pairing", flush=True)
        run_generation(cfg, rnd, force)
        print(f"round {rnd}: DPO and evaluation", flush=True)
        run_dpo_round(cfg, rnd, force)
        rnd = stages.next_round(run, cfg)
    return _print_stop(run)


def report_and_export(cfg: RunConfig) -> dict:
    """summary.json, then the best round exported to best/ with its model card."""
    summary = write_summary(cfg)
    dist.on_main(export.export_best, cfg)
    return summary


# What each notebook of the stage graph runs, in-process (the notebooks call the same functions).
STEPS = {
    "01_sft": lambda cfg, step, force: (prepare(cfg, force), run_sft(cfg, force)),
    "02_reward_model": lambda cfg, step, force: run_reward(cfg, force),
    "03_synthetic_preferences": lambda cfg, step, force: run_generation(cfg, step.round, force),
    "04_dpo_round": lambda cfg, step, force: (run_dpo_round(cfg, step.round, force) if step.arm == stages.ITERATIVE
                                              else run_offline_baseline(cfg, force)),
    "05_compare_iterations": lambda cfg, step, force: report_and_export(cfg),
}


def run_all(cfg: RunConfig, force: bool = False) -> dict:
    """Every stage in-process, in the stage graph's order (iterdpo.stages): prepare, SFT, reward model, rounds
    until the controller stops, the offline baseline, summary, and the best round exported to best/."""
    run = RunFolder(cfg.out)
    step = stages.first()
    while step is not None:
        if step.round is not None and step.notebook == "03_synthetic_preferences":
            print(f"round {step.round}: sampling, scoring and pairing", flush=True)
        elif step.round is not None:
            print(f"round {step.round}: DPO and evaluation", flush=True)
        STEPS[step.notebook](cfg, step, force)
        after = stages.following(cfg, run, step)
        if step.notebook == "02_reward_model" or (step.arm == stages.ITERATIVE and step.notebook == "04_dpo_round"):
            if after is None or after.round is None:
                _print_stop(run)
        step = after
    return run.summary()


def _print_stop(run: RunFolder) -> dict:
    """Say where the rounds stopped; the last decision."""
    done = run.decisions()
    last = done[max(done)] if done else {}
    print(f"stopped after round {last.get('round', 0)}: {last.get('decision', 'no round ran')}; "
          f"best round {last.get('best_round', 0)}")
    return last
