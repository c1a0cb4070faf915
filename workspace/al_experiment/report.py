"""The experiment's report: mean and spread over seeds per strategy, the issue's two targets,
report.json, the Markdown table (report.md, and docs/results/ through workspace/results.py)
and curves.png."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from workspace.al_experiment.experiment import FULL, experiment_settings, strategy_settings


def summarize(runs: list[dict], exp: dict) -> dict:
    """report.json: mean and spread (sample standard deviation over seeds) per strategy."""
    def group(name):
        rs = [r for r in runs if r["strategy"] == name]
        score, score_std = _mean_std([r["final"]["score"] for r in rs])
        map50, map50_std = _mean_std([r["final"]["map50"] for r in rs])
        acc, acc_std = _mean_std([r["final"]["accuracy"] for r in rs])
        # a kept run may lack macro-F1; then its strategy reports none
        f1s = [r["final"]["macro_f1"] for r in rs if "macro_f1" in r["final"]]
        f1, f1_std = _mean_std(f1s) if len(f1s) == len(rs) else (None, None)
        return {"labeled_fraction": statistics.fmean(r["labeled_fraction"] for r in rs),
                "labeled_images": statistics.fmean(r["rounds"][-1]["labeled"] for r in rs),
                "score_mean": score, "score_std": score_std, "map50_mean": map50, "map50_std": map50_std,
                "accuracy_mean": acc, "accuracy_std": acc_std, "macro_f1_mean": f1, "macro_f1_std": f1_std,
                "seeds": [r["seed"] for r in rs]}

    full = group(FULL)
    strategies = {s: group(s) for s in exp["strategies"]}
    for s in strategies.values():
        s["relative_to_full"] = s["score_mean"] / full["score_mean"] if full["score_mean"] else None
    report = {"full_labels": full, "strategies": strategies, "settings": exp}
    hybrids = [s for s in strategies if strategy_settings(exp, s)[0] == "hybrid"]
    if "random" in strategies and hybrids:
        # the targets, for hybrid and each variant of it
        report["targets"] = {s: _targets(s, strategies, runs) for s in hybrids}
    report["runs"] = runs
    return report


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _targets(name: str, strategies: dict, runs: list[dict]) -> dict:
    """The issue's two targets for one strategy: >= 95 % of the all-labels score, and
    ahead of random by more than the larger of the two seed spreads. Beside them, the
    difference to random seed by seed (same partition, seed set and initialisation),
    which the seeds' own spread does not blur."""
    strategy, random = strategies[name], strategies["random"]
    spread = max(strategy["score_std"], random["score_std"])
    gain = strategy["score_mean"] - random["score_mean"]
    rel = strategy["relative_to_full"]
    score = {(r["strategy"], r["seed"]): r["final"]["score"] for r in runs}
    paired = [score[name, seed] - score["random", seed] for seed in strategy["seeds"] if ("random", seed) in score]
    return {"relative_to_full": rel, "reaches_95pct_of_full": bool(rel and rel >= 0.95),
            "minus_random": gain, "seed_spread": spread, "beats_random_beyond_spread": gain > spread,
            "per_seed_minus_random": paired, "per_seed_minus_random_std": _mean_std(paired)[1] if paired else None}


def write_report(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    title, body = markdown(report)
    (out / "report.md").write_text("\n".join([f"# {title}", "", *body]) + "\n")
    plot_label_curves(report, out / "curves.png")


def markdown(report: dict) -> tuple[str, list[str]]:
    """(title, lines): the settings in a sentence, the table per setting, the targets."""
    exp = report["settings"]
    rows = [("all labels", report["full_labels"])] + list(report["strategies"].items())
    variants = {name: exp["variants"][name] for name in report["strategies"] if name in exp.get("variants", {})}
    title = f"Active learning: {len(exp['seeds'])} seeds x {len(rows)} settings"
    lines = [f"{exp['sites']} sites ({', '.join(exp['labels'])} labels), {exp['rounds']} rounds; each site starts "
             f"with {exp['seed_fraction']:.0%} of its training images labeled and queries every "
             f"{exp['query_every']} round(s) up to {exp['final_fraction']:.0%}; configs/default.yaml with "
             f"{experiment_settings(exp)}; plan values "
             f"{exp.get('plan') or 'as in plan/plan.yaml'}; further active learning settings "
             f"{exp.get('active_learning') or 'none'}; variants {variants or 'none'}; TensorFlow op determinism "
             f"{'on' if exp.get('deterministic') else 'off'}. Test split: the last aggregate; "
             "score = mean of mAP@0.5 and accuracy (macro-F1 of the disaster head beside it); "
             "mean +- standard deviation over seeds.", "",
             "| setting | labeled | score | mAP@0.5 | accuracy | macro-F1 | score / all labels |",
             "|---|---|---|---|---|---|---|"]

    def cell(s, key):
        return "" if s.get(f"{key}_mean") is None else f"{s[f'{key}_mean']:.3f} +- {s[f'{key}_std']:.3f}"

    for name, s in rows:
        rel = s.get("relative_to_full")
        lines.append(f"| {name} | {s['labeled_fraction']:.1%} ({s['labeled_images']:.0f}) | {cell(s, 'score')} | "
                     f"{cell(s, 'map50')} | {cell(s, 'accuracy')} | {cell(s, 'macro_f1')} | "
                     f"{'' if rel is None else f'{rel:.1%}'} |")
    if report.get("targets"):
        lines.append("")
    for name, t in report.get("targets", {}).items():
        lines += [f"- {name} reaches {t['relative_to_full']:.1%} of the all-labels score "
                  f"(target >= 95 %: {'met' if t['reaches_95pct_of_full'] else 'not met'})",
                  f"- {name} - random = {t['minus_random']:+.3f}, seed spread {t['seed_spread']:.3f} "
                  f"(target: a gain larger than the spread: {'met' if t['beats_random_beyond_spread'] else 'not met'}); "
                  f"seed by seed {' / '.join(f'{d:+.3f}' for d in t['per_seed_minus_random'])}"]
    return title, lines


def plot_label_curves(report: dict, path: Path) -> None:
    """Test mAP@0.5 and accuracy vs labeled images: per strategy the mean over seeds
    round by round, the band one standard deviation; all labels as a reference."""
    import numpy as np

    from workspace.simulate.final_report import Panel, Series, plot_panels

    panels = [Panel("victim mAP@0.5 (test)", [], "labeled training images (all sites)"),
              Panel("disaster accuracy (test)", [], "labeled training images (all sites)", legend_fontsize=8)]
    for name in [FULL] + list(report["strategies"]):
        runs = [r for r in report["runs"] if r["strategy"] == name]
        x = np.mean([[p["labeled"] for p in r["rounds"]] for r in runs], axis=0)
        style = {"marker": "o", "markersize": 3,
                 **({"color": "black", "linestyle": "--"} if name == FULL else {})}
        for panel, key in zip(panels, ("map50", "accuracy")):
            y = np.array([[p[key] for p in r["rounds"]] for r in runs])
            band = y.std(axis=0, ddof=1) if len(runs) > 1 else None
            panel.series.append(Series(x, y.mean(axis=0), name.replace("_", " "), style, band))
    plot_panels(panels, path, panel_size=(5.5, 4), dpi=110)
