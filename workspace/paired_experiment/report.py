"""The paired experiment's report: each arm's test scores seed by seed, each comparison's paired
differences with their 95 % t-interval, the wall time per seed; report.json and report.md
(docs/results/paired.md through workspace/results.py)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from workspace.al_experiment.experiment import experiment_settings
from workspace.paired_experiment.differences import CONFIDENCE, paired_difference
from workspace.paired_experiment.experiment import (ARM_SETS, DEFAULT_ARM_SET, DETECTION_AND_CLASS, Comparison,
                                                    arms_of, comparisons_of)

# the test scores a comparison may compare (its `metrics`), each task apart, and their column names
METRICS = {"map50": "mAP@0.5", "map50_95": "mAP@0.5:0.95", "accuracy": "accuracy", "miou": "mIoU"}


def summarize(runs: list[dict], exp: dict) -> dict:
    """report.json: per arm its runs' final test scores and wall time seed by seed, per
    comparison the paired differences over the seeds where both its arms ran."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    arms = {}
    for name in exp["arms"]:
        arm = arms_of(exp)[name]
        per_seed = [{"seed": seed, **{k: by[name, seed]["final"].get(k) for k in (*METRICS, "macro_f1")},
                     "labeled_fraction": by[name, seed].get("labeled_fraction"), "wall_s": by[name, seed]["wall_s"]}
                    for seed in exp["seeds"] if (name, seed) in by]
        arms[name] = {"runs_as": arm.runs_as, "strategy": arm.strategy, "plan": arm.plan,
                      "description": arm.description, "per_seed": per_seed,
                      "tasks": list(arm.tasks) if arm.tasks else None,
                      "mean": {k: statistics.fmean(p[k] for p in per_seed)
                               if per_seed and all(p[k] is not None for p in per_seed) else None
                               for k in (*METRICS, "wall_s")},
                      "labeled_fraction": statistics.fmean(p["labeled_fraction"] for p in per_seed)
                      if per_seed and all(p["labeled_fraction"] is not None for p in per_seed) else None}
    comparisons = {c.name: compare(c, by, exp["seeds"]) for c in comparisons_of(exp)}
    wall = [{"seed": seed, "arms": {name: by[name, seed]["wall_s"] for name in exp["arms"] if (name, seed) in by}}
            for seed in exp["seeds"]]
    for entry in wall:
        entry["total_s"] = sum(entry["arms"].values())
    return {"settings": exp, "arms": arms, "comparisons": comparisons, "wall_per_seed": wall, "runs": runs}


def compare(comparison: Comparison, by: dict, seeds: list[int]) -> dict:
    """One comparison: per metric both arms' values and the paired differences first - second
    over the seeds where both ran (no metrics when there is no such seed)."""
    paired = [s for s in seeds if (comparison.first, s) in by and (comparison.second, s) in by]
    metrics = {}
    for key in comparison.metrics if paired else ():
        first = [by[comparison.first, s]["final"][key] for s in paired]
        second = [by[comparison.second, s]["final"][key] for s in paired]
        metrics[key] = {"first": first, "second": second, **paired_difference(first, second)}
    return {"first": comparison.first, "second": comparison.second, "differs_in": comparison.differs_in,
            "seeds": paired, "metrics": metrics}


def write_report(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    title, body = markdown(report)
    (out / "report.md").write_text("\n".join([f"# {title}", "", *body]) + "\n")


def signed(value) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def difference_line(label: str, m: dict) -> str:
    """'- mAP@0.5: mean paired difference +0.012 [-0.004, +0.028] (...): what it says'."""
    if m["low"] is None:
        return f"- {label}: difference {signed(m['mean'])} (one seed: no interval)"
    return (f"- {label}: mean paired difference {signed(m['mean'])} [{signed(m['low'])}, {signed(m['high'])}] "
            f"({CONFIDENCE:.0%} t-interval, {m['n'] - 1} degrees of freedom): {verdict(m)}")


def verdict(m: dict) -> str:
    """What the interval says about the difference."""
    if m["low"] > 0:
        return "first arm ahead"
    if m["high"] < 0:
        return "second arm ahead"
    return "no difference shown (the interval holds 0)"


def markdown(report: dict) -> tuple[str, list[str]]:
    """(title, lines): the settings in a sentence, the arms, each comparison seed by seed
    with its mean paired difference and interval, the wall time per seed."""
    exp = report["settings"]
    seeds = len(exp["seeds"])
    title = (f"{ARM_SETS[exp.get('arm_set', DEFAULT_ARM_SET)][2]}: {seeds} seed{'' if seeds == 1 else 's'} x "
             f"{len(exp['arms'])} arms")
    labeling = any(arms_of(exp)[name].strategy for name in exp["arms"])
    lines = [f"Settings (configs/default.yaml and plan/plan.yaml as at the commit above): the config with "
             f"{experiment_settings(exp) or 'no changes'}; the plan's values {exp.get('plan') or 'unchanged'} "
             f"({exp['rounds']} rounds); {exp['sites']} sites "
             f"({', '.join(exp['labels'])} labels, Dirichlet alpha {exp['alpha']}); "
             + (f"active learning from {exp['seed_fraction']:.0%} to {exp['final_fraction']:.0%} of each site's "
                f"training images, querying every {exp['query_every']} round(s), simulated oracle; "
                if labeling else "every label of the split (no active learning); ")
             + "TensorFlow op determinism "
             f"{'on' if exp.get('deterministic') else 'off'}. Scores: the last aggregate (the centralized trainer's "
             "final weights) on the held-out test split. The centralized trainer runs as many epochs as the "
             "federation runs rounds x local epochs, one pass over the union of the sites' images an epoch, "
             "with configs/default.yaml's training (weight averaging on, no logit adjustment); the sites take "
             "the plan's min_batches_per_epoch / repeat_to_batches / max_images_per_epoch steps a round.", "",
             "## Arms", "", "Means over the seeds; labeled: the share of the training images labeled at the end.", ""]
    # mIoU only where a model segments
    shown = [k for k in METRICS if any(arm["mean"].get(k) is not None for arm in report["arms"].values())
             or k in DETECTION_AND_CLASS]
    lines += ["| arm | what | seeds | labeled | " + " | ".join(METRICS[k] for k in shown) + " | wall s |",
              "|---" * (len(shown) + 5) + "|"]
    for name, arm in report["arms"].items():
        mean = arm["mean"]
        cells = [("n/a" if mean.get(k) is None else f"{mean[k]:.3f}") for k in shown]
        wall = "n/a" if mean["wall_s"] is None else f"{mean['wall_s']:.0f}"
        labeled = "n/a" if arm.get("labeled_fraction") is None else f"{arm['labeled_fraction']:.0%}"
        lines.append(f"| {name} | {arm['description']} | {len(arm['per_seed'])} | {labeled} | {' | '.join(cells)} | "
                     f"{wall} |")
    for name, c in report["comparisons"].items():
        lines += ["", f"## {name}: {c['first']} - {c['second']}", "", f"The two arms differ in: {c['differs_in']}.", ""]
        if not c["metrics"]:
            lines.append("Not measured: no seed has both arms.")
            continue
        header = [f"{METRICS[key]} {which}" for key in c["metrics"] for which in ("first", "second", "difference")]
        lines += ["| seed | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for i, seed in enumerate(c["seeds"]):
            cells = [f"{m['first'][i]:.3f} | {m['second'][i]:.3f} | {m['differences'][i]:+.3f}"
                     for m in c["metrics"].values()]
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += [difference_line(METRICS[key], m) for key, m in c["metrics"].items()]
    arms = list(report["arms"])
    lines += ["", "## Wall time per seed (s)", "", "| seed | " + " | ".join(arms) + " | total |",
              "|---" * (len(arms) + 2) + "|"]
    for entry in report["wall_per_seed"]:
        cells = [f"{entry['arms'][a]:.0f}" if a in entry["arms"] else "n/a" for a in arms]
        lines.append(f"| {entry['seed']} | " + " | ".join(cells) + f" | {entry['total_s']:.0f} |")
    return title, lines
