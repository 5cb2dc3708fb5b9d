"""Writes the numbered notebooks from the cell texts below: ``python notebooks/build_notebooks.py``.

Edit the cells here, not in Jupyter, and regenerate: the notebooks are committed without outputs and
with deterministic cell ids, so a rebuild changes only what was edited. Logic lives in ``iterdpo/``;
a notebook builds the config, calls one library function per cell and shows a table or a figure.

The repository and the version a Colab user gets are set once, here (``REPO``, ``REF``): the badges
open the notebooks of ``REF`` and the bootstrap cell installs that same ``REF``. A release rebuilds with
``python notebooks/build_notebooks.py --ref v0.2.0``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
REPO = "iterdpo/iterdpo"  # GitHub owner/name: the badges, the clone and the README's badge table
REF = "main"  # branch or tag the badges open and the bootstrap installs (a release sets its tag)
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "accelerator": "GPU",
    "colab": {"gpuType": "T4", "provenance": []},
}


def colab_url(name: str, ref: str = REF) -> str:
    return f"https://colab.research.google.com/github/{REPO}/blob/{ref}/notebooks/{name}.ipynb"


def badge(name: str, ref: str = REF) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name, ref)})"


PARAMETERS = '''preset = "auto"  # auto: t4 on a GPU, tiny (the CPU toy world) without; or tiny, t4, smollm2-hh
out = "runs/colab"  # run folder, relative to the repository root; every notebook of a run uses the same one
seed = 0
overrides = {}  # "section.field": value, e.g. {"dpo.beta": 0.2}
MOUNT_DRIVE = True  # Colab: keep runs/ on Google Drive, so a disconnect loses nothing and a rerun resumes'''


def bootstrap(ref: str) -> str:
    return f'''import os, subprocess, sys

if "google.colab" in sys.modules:  # Colab only: elsewhere the package is already installed
    REPO, REF = "https://github.com/{REPO}", "{ref}"  # set in notebooks/build_notebooks.py
    if not os.path.exists("/content/iterdpo"):
        subprocess.run(["git", "clone", "--depth=1", "--branch", REF, REPO, "/content/iterdpo"], check=True)
    subprocess.run(["bash", "/content/iterdpo/colab_setup.sh"], check=True)
    sys.path.insert(0, "/content/iterdpo")
    if MOUNT_DRIVE:
        from iterdpo.notebook import keep_runs_on_drive
        keep_runs_on_drive()'''


def config(name: str, show: str, extra: str = "") -> str:
    return f'''import pandas as pd
from iterdpo import export, notebook, pipeline, plots

cfg = notebook.config(preset, seed, out, overrides)  # the preset, then the overrides; one line if one is wrong
notebook.ready(cfg, "{name}"{extra})  # one line naming what to run first, if anything
{show}'''


def md(text: str):
    return new_markdown_cell(text)


def code(text: str, tags: list[str] | None = None):
    cell = new_code_cell(text)
    if tags:
        cell.metadata["tags"] = tags
    return cell


def head(name: str, title: str, text: str, ref: str, extra_params: str = "",
         show: str = "plots.wide(plots.config_table(cfg))",
         ready_args: str = "") -> list:
    """Title and introduction, parameters, the Colab bootstrap and the config cell: the same head everywhere."""
    return [
        md(f"# {title}\n\n{badge(name, ref)}\n\n{text}"),
        md("## Parameters\n\nLiterals only, named like the config fields: papermill and `python -m iterdpo run` "
           "replace this cell, and a parameter this cell does not define is refused. `preset = \"auto\"` runs `t4` "
           "where there is a GPU and the CPU toy world (`tiny`) where there is none. Any config field can be "
           "changed through `overrides`."),
        code(PARAMETERS + extra_params, tags=["parameters"]),
        md("## Colab setup\n\nOn Colab this clones the repository at the version this notebook came from, runs "
           "`colab_setup.sh` (the pinned runtime dependencies; a failed install stops here) and, with "
           "`MOUNT_DRIVE`, links `runs/` to Google Drive: after a disconnect, run the notebook again and every "
           "finished stage is skipped. Anywhere else this cell does nothing."),
        code(bootstrap(ref)),
        md("## Config\n\nThe preset, then the overrides; derived values come from here, never from the parameters "
           "cell. The run folder is checked first: on a folder that is not ready for this notebook, this cell "
           "says in one line which notebook to run first, and stops."),
        code(config(name, show, ready_args)),
    ]


def quickstart(ref: str) -> list:
    name = "00_quickstart"
    return head(name, "00 · Quickstart: the whole loop in one runtime", (
        "Iterative DPO end to end, in one Colab session: supervised fine-tuning, a reward model, then rounds "
        "in which the policy writes its own training pairs, until the controller stops; then the offline-DPO "
        "baseline, the comparison, and the best model exported with a model card, ready to chat with.\n\n"
        "On a free T4 (`preset = \"auto\"` picks `t4`) the run is sized to end well inside a free Colab session: "
        "at most 3 rounds of 150 DPO steps of 16 pairs, none started after 40 minutes of the loop, then offline DPO "
        "for as many steps as the rounds together (at most 450 steps, 7,200 seed-pair examples: the rounds' DPO "
        "training once more, without their sampling) and its evaluation. Without a GPU it runs the toy world "
        "(`tiny`) in minutes. Everything lands in the run folder (on Google Drive on Colab), so a disconnect loses "
        "nothing: run all cells again and finished stages are skipped. In `t4` the stages keep their LoRA "
        "adapters, a few megabytes each, and only `best/` holds merged weights (`model.merged: best`): the others "
        "are rebuilt on the runtime's own disk when a stage needs them. Notebooks 01 to 05 explain each stage on "
        "its own."), ref, show="print(cfg.preset, '->', cfg.out)") + [
        md("## The machine\n\nWhich GPU this runtime has, how much memory is free, and which preset fits. "
           "`t4` (Qwen2.5-0.5B-Instruct in fp16 with LoRA) wants about 12 GiB free; `tiny` runs anywhere."),
        code("print(notebook.hardware(preset))"),
        md("## 1 · Data and supervised fine-tuning\n\nThe seed pairs are split into training and held-out sets; "
           "SFT then teaches the base model to answer like the chosen responses."),
        code("pipeline.prepare(cfg)\npd.json_normalize(pipeline.run_sft(cfg)).T"),
        md("### Did SFT learn?\n\nThe loss should fall; a flat curve is flagged on the figure and below."),
        code('print(plots.training_note(cfg.out, "sft"))\nplots.stage_training_curves(cfg.out, "sft")'),
        md("## 2 · The reward model\n\nA Bradley-Terry model trained on the seed pairs. It judges every sample "
           "from here on, so its held-out accuracy matters. " + NOISY),
        code("pd.json_normalize(pipeline.run_reward(cfg)).T"),
        md("## 3 · DPO rounds until the controller stops\n\nEach round samples K responses per prompt from the "
           "current policy, pairs the best and worst by reward, trains DPO on those pairs and evaluates. After "
           "each round the controller continues, adjusts, rolls back or stops; its iteration log is printed "
           "as it goes. The first lines say what the run trains, in steps and examples: `t4` sets `rounds: auto`, "
           "so the controller stops the loop, after at most `controller.max_rounds` (3) rounds, and starts none "
           "after `controller.max_seconds` (2,400 s) of it."),
        code("print(notebook.budget(cfg))\nlast = pipeline.run_rounds(cfg)"),
        md("## 4 · The offline-DPO baseline\n\nThe same number of DPO steps on the seed pairs only: what the "
           "iterations have to beat. It costs the rounds' DPO training once more (as many steps of as many pairs) "
           "and one evaluation, but no sampling or scoring; its first line gives its steps. Then the offline arm "
           "becomes a curve: one more arm at a quarter of β (`baseline.frontier_betas: [0.25]`), evaluated halfway "
           "and at its end, as long again, so the answer is compared with offline DPO at its own distance from SFT."),
        code("baseline = notebook.run_baseline(cfg)"),
        md("## 5 · Comparison\n\n`status` shows the controller's view of each round: the best one, rejected or "
           "rolled-back ones. Win rates near 0.5 mean no difference from SFT."),
        code('summary = pipeline.write_summary(cfg)\nplots.comparison_table(cfg.out)'),
        md("### Improvement over rounds\n\nJudged by the reward model (what the controller sees) and, in the toy "
           "world, by the oracle (the truth it cannot see), on separate axes; the dotted line is chance."),
        code("plots.improvement_trajectory(cfg.out)"),
        md("### The iteration log"),
        code("print(pipeline.iteration_reports(cfg))"),
        md("## 6 · The exported model\n\n`best/` holds the best round's merged weights (plain transformers can "
           "load them; with `model.merged: best` the only merged weights in the run folder), its LoRA adapter, "
           "`model.gguf`, and a model card with the decisions and metrics."),
        code("best = export.export_best(cfg)\nprint(best, sorted(p.name for p in best.iterdir()))"),
        md("### Its model card"),
        code("from IPython.display import Markdown\nMarkdown(plots.card_markdown(export.model_card(cfg)))"),
        md("## 7 · Chat with it\n\nAn input box when you run this notebook yourself; under papermill or nbval, "
           "the answers to a fixed list of prompts."),
        code("export.chat(cfg)"),
        md("## 8 · Push to the Hugging Face hub (optional)\n\nOff by default: set `overrides = "
           "{\"export.push_to_hub\": True}` and log in (`huggingface_hub.login()`). Offline or without a token, "
           "this says so in one line and the run stays complete."),
        code("print(export.push_note(cfg))"),
    ]


SFT_EQ = r"""$$\mathcal{L}_\text{SFT}(\theta) = -\,\mathbb{E}_{(x,\,y_w)}\sum_{t} \log \pi_\theta\!\left(y_{w,t} \mid x,\, y_{w,<t}\right)$$"""
BT_EQ = r"""$$P(y_w \succ y_l \mid x) = \sigma\big(r_\phi(x, y_w) - r_\phi(x, y_l)\big), \qquad
\mathcal{L}_\text{RM}(\phi) = -\,\mathbb{E}\,\log \sigma\big(r_\phi(x, y_w) - r_\phi(x, y_l)\big)$$"""
DPO_EQ = r"""$$\mathcal{L}_\text{DPO}(\theta) = -\,\mathbb{E}_{(x, y_w, y_l)} \log \sigma\!\Big(\beta \log
\frac{\pi_\theta(y_w \mid x)}{\pi_\text{ref}(y_w \mid x)} - \beta \log \frac{\pi_\theta(y_l \mid x)}{\pi_\text{ref}(y_l \mid x)}\Big)$$"""


NOISY = ("With noisy labels a value near 0.5 is expected, not a failure: the toy and sentiment worlds flip a "
         "share of the seed labels on purpose (40% in `tiny`, so even a judge that knows the truth agrees with them "
         "only about 60% of the time). Where the world has an oracle, the accuracy against the oracle's labels "
         "(`oracle_accuracy` for the reward model, `preference_accuracy_oracle` for a policy) is the one to read.")


def tutorials(ref: str) -> dict:
    return {
        "01_sft": head("01_sft", "01 · Supervised fine-tuning", (
            "**What it does.** Prepares the run folder (the base model and the data split) and fine-tunes the "
            "base model on the *chosen* response of each seed pair, with LoRA adapters.\n\n"
            "**Why.** DPO only reshapes a distribution the policy already has; it cannot teach a format from "
            "nothing. SFT puts the policy near good answers, so that the samples of round 1 are worth comparing. "
            "The SFT policy is also round 0: every later round is judged against it.\n\n"
            "**The loss** is the negative log-likelihood of the chosen response, on the response tokens only "
            "(the prompt is context, not a target):\n\n" + SFT_EQ + "\n\n"
            "- **reads**: the preset and overrides (and the base model: the toy world builds its own)\n"
            "- **writes**: `<out>/config.json`, `base/`, `data/`, `sft/` (merged policy, LoRA adapter, "
            "`metrics.json`, `train_log.jsonl`)\n"
            "- **next**: `02_reward_model`"), ref,
            show='plots.wide(plots.config_table(cfg, "data", "model", "sft"))') + [
            md("## Prepare the run folder\n\nWrites the base model and the data split (skipped when already done). "
               "**Look for** the counts of training and held-out pairs, and the pairs skipped by reason: a large "
               "`skipped` count means the length limits (`data.max_prompt_tokens`, `data.max_response_tokens`) "
               "are cutting most of the data. In the toy world, `seed_label_oracle_agreement` is how often the "
               "seed labels are right: about 0.6 means 40% of them are flipped on purpose."),
            code("data_metrics = pipeline.prepare(cfg)\npd.json_normalize(data_metrics).T"),
            md("## Supervised fine-tuning\n\n**Look for** `train_loss` below where it started. A loss that stays "
               "at its first value means SFT learned nothing: too few steps or too low a learning rate."),
            code("sft_metrics = pipeline.run_sft(cfg)\npd.json_normalize(sft_metrics).T"),
            md("## SFT training curve\n\nA falling curve that levels off is what you want. A flat one is called out "
               "on the figure; a curve that rises or jumps means the learning rate is too high."),
            code('print(plots.training_note(cfg.out, "sft"))\nplots.stage_training_curves(cfg.out, "sft")'),
        ],
        "02_reward_model": head("02_reward_model", "02 · Reward model", (
            "**What it does.** Trains a reward model $r_\\phi$ (the SFT backbone plus a scalar head) on the seed "
            "training pairs, measures it on the held-out pairs, and evaluates the SFT policy as round 0.\n\n"
            "**Why.** Every later round asks this model which of the policy's own samples is better; there is no "
            "human and no external critic in the loop. The rounds can only be as good as its judgement.\n\n"
            "**The loss** is Bradley-Terry: the probability that the chosen response wins is the sigmoid of the "
            "reward difference, and training maximises it on the seed pairs:\n\n" + BT_EQ + "\n\n"
            "A model that cannot tell the two apart gives every pair probability 0.5, a loss of "
            "$\\ln 2 \\approx 0.693$ and an accuracy of 0.5.\n\n"
            "- **reads**: `<out>/data/`, `<out>/sft/`\n"
            "- **writes**: `<out>/reward/` (model, `metrics.json`, `train_log.jsonl`), `<out>/round_0/eval/`\n"
            "- **next**: `03_synthetic_preferences`"), ref, show="plots.wide(plots.config_table(cfg.reward))") + [
            md("## Train the reward model\n\n**Look for** `heldout_accuracy` (against the seed labels) above 0.5 "
               "and, in the toy world, `oracle_accuracy`, how often it agrees with the truth, above "
               "`seed_label_oracle_agreement`: then it has averaged out the label noise and its labels will beat the "
               "seed labels. `rm_beats_seed_labels: False` is a bad sign for every round that follows. " + NOISY),
            code("reward_metrics = pipeline.run_reward(cfg)\npd.json_normalize(reward_metrics).T"),
            md("## Reward-model training curve\n\nThe dotted line is $\\ln 2$, the loss of a coin flip. A curve that "
               "stays on it learned nothing; one that falls far below while the held-out accuracy stays low has "
               "memorised the training pairs."),
            code('print(plots.training_note(cfg.out, "reward"))\nplots.stage_training_curves(cfg.out, "reward")'),
            md("## The SFT baseline (round 0)\n\nEvery round is compared with this row. `mean_reward` is the reward "
               "model's score of the held-out samples; in the toy world `oracle_score` is the true quality."),
            code("plots.comparison_table(cfg.out)"),
        ],
        "03_synthetic_preferences": head("03_synthetic_preferences", "03 · Synthetic preferences", (
            "**What it does.** Samples K responses per prompt from the round's starting policy (SFT for round 1, "
            "later the policy the controller picked), scores each with the reward model, and turns each prompt's "
            "samples into one chosen/rejected pair, or a counted drop.\n\n"
            "**Why.** These pairs come from the policy itself, so they teach it about the mistakes it actually "
            "makes now, not the seed writer's; that is what makes the loop *iterative*.\n\n"
            "**How pairs are picked** (`generation.strategy`). With rewards $r_1, \\dots, r_K$ of one prompt's "
            "samples, `max_min` takes $y_w = \\arg\\max_k r_k$ and $y_l = \\arg\\min_k r_k$: the clearest "
            "contrast the reward model can see. `max_random` pairs the best with a random other, `random` any two, "
            "`max_min_length` uses $r_k - \\lambda\\,|y_k|$ to stop length from winning. A pair is dropped when "
            "$r_w - r_l$ is below `generation.min_reward_gap` (the reward model cannot tell them apart) or a "
            "response never ended (`generation.require_eos`).\n\n"
            "- **reads**: `<out>/data/gen_prompts.jsonl`, `<out>/reward/`, the starting policy, `decisions.jsonl`\n"
            "- **writes**: `<out>/round_<round>/generate/` (`samples.jsonl`, `pairs.jsonl`, `metrics.json`)\n"
            "- **next**: `04_dpo_round` with the same `round`"), ref,
            extra_params="\nround = 1  # DPO round this data is for: the run's next round, or one under way",
            show="plots.wide(plots.config_table(cfg.generation))", ready_args=", round") + [
            md("## Sample, score and pair\n\n**Look for** `pair_success_rate` (pairs kept per prompt) near 1. "
               "Low means most prompts were dropped: the samples are too alike for the reward model "
               "(`dropped.small_gap`: raise `generation.temperature` or K) or never end (`dropped.no_eos`: raise "
               "`generation.max_new_tokens`). In the toy world, `synthetic_pair_oracle_agreement` above the seed "
               "labels' agreement means these pairs are better labelled than the data we started with."),
            code("gen_metrics = pipeline.run_generation(cfg, round)\npd.json_normalize(gen_metrics).T"),
            md("## Rewards of the samples and gaps of the pairs\n\nA wide reward histogram means the policy's "
               "samples differ and there is something to learn from; a spike means they are all alike. The gaps "
               "should sit clearly above zero."),
            code("plots.generation_summary(cfg.out, round)"),
            md("## A few pairs\n\nRead them: is the chosen response really better? If not, the reward model is "
               "the problem, not DPO."),
            code("plots.wide(plots.pairs_table(cfg.out, round, n=5))"),
        ],
        "04_dpo_round": head("04_dpo_round", "04 · One DPO round", (
            "**What it does.** Trains one DPO round on the synthetic pairs (and the seed pairs, as configured), "
            "evaluates the new policy against SFT and the previous round, and records the controller's decision "
            "for the next round. With `arm = \"offline_dpo\"` it trains the baseline instead: seed pairs only, "
            "from SFT, for as many steps as all rounds together.\n\n"
            "**The loss.** DPO trains the policy $\\pi_\\theta$ directly on pairs, with no reward model in the "
            "loop, against a frozen reference $\\pi_\\text{ref}$ (the policy the round starts from, or SFT):\n\n"
            + DPO_EQ + "\n\n"
            "**What β does.** $\\beta \\log \\frac{\\pi_\\theta}{\\pi_\\text{ref}}$ is the policy's implicit reward. "
            "A large β makes small moves away from the reference count a lot, so the policy stays close to it "
            "(safe, slow); a small β lets it move far (fast, and it can drift, lengthen its answers or collapse). "
            "The controller raises β after a KL violation or a capability regression.\n\n"
            "- **reads**: `<out>/round_<round>/generate/pairs.jsonl` (and earlier rounds'), the starting policy, "
            "`<out>/reward/`\n"
            "- **writes**: `<out>/round_<round>/dpo/` (merged policy, LoRA adapter) and `eval/`, a line of "
            "`decisions.jsonl`; or `<out>/offline_dpo/`\n"
            "- **next**: `03_synthetic_preferences` for the next round, or `05_compare_iterations`"), ref,
            extra_params='\nround = 1  # DPO round to train (ignored by the offline_dpo arm)'
                         '\narm = "iterative"  # iterative: round `round`; offline_dpo: the offline baseline',
            show="plots.wide(plots.config_table(cfg.dpo))", ready_args=", round, arm") + [
            md("## Train and evaluate\n\n**Look for** `win_rate_vs_sft` above 0.5 (judged by the reward model), "
               "`kl_to_reference` below the controller's `max_kl`, and `capability_retention` near 1. A win rate "
               "below 0.5 means the round made the policy worse; a KL far above the limit means it moved too far "
               "(raise β or lower the learning rate). `preference_accuracy` is how often the policy's implicit "
               "reward prefers the held-out chosen response. " + NOISY),
            code('if arm == "iterative":\n    dpo_metrics = pipeline.run_dpo_round(cfg, round)\nelse:\n'
                 '    dpo_metrics = pipeline.run_offline_baseline(cfg)\npd.json_normalize(dpo_metrics).T'),
            md("## Every model so far\n\n`status`: the controller's view (best, rejected, rolled back); `trend`: "
               "the headline score against the previous round."),
            code("plots.comparison_table(cfg.out)"),
            md("## DPO training curves\n\nThe loss starts at $\\ln 2$ (policy = reference) and should fall; "
               "`rewards/accuracies` should rise above 0.5 and `rewards/margins` above 0. A loss that drops to "
               "near 0 within a few steps on few pairs is overfitting; a flat loss is called out on the figure."),
            code("plots.dpo_training_curves(cfg.out)"),
            md("## The controller's decisions\n\nOne row per round: the triggers it saw, what it changed, where "
               "the next round starts, and whether it stops."),
            code("plots.decisions_table(cfg.out)"),
            md("## Responses to the same held-out prompts\n\nRead a few: a rising reward with worse-looking answers "
               "is reward hacking (longer answers, repeated words)."),
            code("plots.wide(plots.responses_table(cfg.out, n_prompts=5))"),
        ],
        "05_compare_iterations": head("05_compare_iterations", "05 · Compare the iterations", (
            "**What it does.** Collects every round's metrics into `summary.json` and compares SFT, each DPO round "
            "and the offline-DPO baseline: the controller's story, the improvement over rounds, the training "
            "curves, the monitors and the responses themselves.\n\n"
            "**Two judges.** The *reward model* judges every win rate the controller acts on; it was trained on "
            "noisy seed labels and can be fooled. In the toy world an *oracle* knows the true score. The two are "
            "drawn on separate axes: when the reward model's win rate climbs while the oracle's does not, the "
            "policy is learning the reward model's mistakes.\n\n"
            "- **reads**: `<out>/round_*/`, `<out>/offline_dpo/`, `decisions.jsonl`, `<out>/logs/`\n"
            "- **writes**: `<out>/summary.json`, `<out>/plots/*.png`"), ref,
            show="plots.wide(plots.config_table(cfg.controller))") + [
            md("## Summary"),
            code('summary = pipeline.write_summary(cfg)\nprint("best round:", summary["best_round"])'),
            md("## Iteration log\n\nWhat each round ran with, what it scored, what was weak, and what the "
               "controller decided."),
            code("print(pipeline.iteration_reports(cfg))"),
            md("## Label quality of the synthetic pairs\n\nPairs kept and dropped by reason, the reward gap, and "
               "(toy world) how often the reward model's choice agrees with the oracle, beside the seed labels. "
               "`labels_worse_than_seed: True` means that round trained on worse labels than it started with."),
            code("plots.label_quality_table(cfg.out)"),
            md("## Metrics by model\n\n`status`: best, rejected (`adjust_retry`) or rolled back (`rollback`); "
               "`trend`: change of the headline score against the previous round (offline DPO: against SFT); "
               "`repair_alpha`, where present: the model failed the capability or KL gate and was stepped back "
               "toward its start by this share of its step (`iterdpo/repair.py`); its figures are the repaired model's."),
            code("plots.comparison_table(cfg.out)"),
            md("## Improvement over rounds\n\nThe gold star is the best round, a red cross a rejected round, a red "
               "ring a rolled-back one; the dotted line is chance (0.5), the dashed one offline DPO, error bars one "
               "standard error. **Look for** rounds above chance on both judges and above the offline baseline. "
               "Preference accuracy is drawn twice, against the seed labels and the oracle's. " + NOISY),
            code("plots.improvement_trajectory(cfg.out)"),
            md("## Reward by model\n\nThe reward model's mean score and the oracle's, side by side but on their own "
               "axes. Hatched bars are rounds the controller did not keep."),
            code("plots.reward_comparison(cfg.out)"),
            md("## Reward distributions\n\nA whole distribution shifting right is real improvement; a long right "
               "tail with an unchanged mean is a few lucky samples."),
            code("plots.reward_distributions(cfg.out)"),
            md("## What the controller watches\n\nKL to SFT (how far the policy has drifted in all), KL to the "
               "DPO reference (the round before, with `dpo.reference: previous`: what the `max_kl` gate checks) and "
               "capability retention, with the controller's limits dotted grey, then length and perplexity; offline "
               "DPO dashed. The axes never zoom on noise: a flat line looks flat."),
            code("plots.eval_metric_grid(cfg.out)"),
            md("## The reward-KL frontier\n\nThe DPO paper's figure: the oracle's score (the reward model's where the "
               "run has no world) against the KL to the SFT policy, for SFT, each round and offline DPO. Up and to "
               "the left is better: more reward for less drift. The grey line is offline DPO's frontier: the offline arm "
               "and its arms at smaller β (`baseline.frontier_betas`), each evaluated along its training (grey "
               "squares; hollow where a gate failed), keeping the best score reached by each KL. The dotted bar is "
               "the answer's lead over that line at the answer's own KL, and the title gives the verdict "
               "(`summary.json` `yardstick.kl_matched`): *loop ahead* or *offline ahead* only when the lead is "
               "more than `controller.gate_z` standard errors from 0, else *tie*; an answer beyond the line's "
               "furthest point is compared with its best point, and says so. **Look for** a round above the line: "
               "one that is only further along it has moved more, not found a better trade."),
            code("plots.frontier(cfg.out)"),
            md("## Other judges\n\nThe oracle is one scorer, and a gain could be its quirk. Here every model's "
               "stored evaluation samples are scored again by judges that neither training nor the controller uses: "
               "in the toy world *exact* success (the oracle's top score read as pass or fail) and *coverage* (the "
               "oracle without its penalty for extra words); in the sentiment world two other lexicons, AFINN and "
               "TextBlob (`pip install afinn==0.1 textblob==0.20.1`). **Look for** the rounds ahead of SFT and "
               "offline DPO under every judge, not just the oracle. Win rates count ties as half."),
            code("from iterdpo import judges\n\njudges.table(cfg.out, judges.for_run(cfg)).drop(columns=\"run\").round(3)"),
            md("## DPO training curves\n\nOne colour per round; ln 2 and chance dotted; a flat loss is called out."),
            code("plots.dpo_training_curves(cfg.out)"),
            md("## The controller's decisions"),
            code("plots.decisions_table(cfg.out)"),
            md("## Responses side by side"),
            code("plots.wide(plots.responses_table(cfg.out, n_prompts=8))"),
            md("## Browse the responses\n\nA prompt picker when the notebook is live; the table otherwise."),
            code("plots.response_viewer(cfg.out)"),
            md("## TensorBoard\n\nEvery training stage logs to `<out>/logs/` when `export.report_to` is `auto` (and "
               "TensorBoard is installed, as on Colab) or `tensorboard`. Live, this opens TensorBoard here; "
               "otherwise it prints the command."),
            code("plots.tensorboard(cfg.out)"),
            md("## Take the model away\n\nThe controller's best round goes to `<out>/best/`: merged weights, its LoRA "
               "adapter and a model card with every decision and the metrics. It loads with plain `transformers` "
               "(`AutoModelForCausalLM.from_pretrained(\"<out>/best\")`), no iterdpo needed. Set "
               "`{\"export.push_to_hub\": True}` to upload it as well."),
            code("best = export.export_best(cfg)\nprint(best, sorted(p.name for p in best.iterdir()))"),
        ],
    }


def notebooks(ref: str = REF) -> dict:
    return {"00_quickstart": quickstart(ref), **tutorials(ref)}


NOTEBOOKS = notebooks()


def build(name: str, cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells, metadata=METADATA)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"  # stable ids: a rebuild does not churn the diff
    nbformat.validate(nb)
    return nb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default=REF, help="branch or tag the badges open and the bootstrap installs")
    ref = p.parse_args().ref
    for name, cells in notebooks(ref).items():
        nbformat.write(build(name, cells), HERE / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb")


if __name__ == "__main__":
    main()
