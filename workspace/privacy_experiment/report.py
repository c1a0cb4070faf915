"""The experiment's report: report.json (the two tables and every run) and its Markdown
(report.md, and docs/results/privacy.md through workspace/results.py).

Each table ends with one sentence made from its own numbers, so the text cannot
drift from the measurement it describes.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from workspace.al_experiment.experiment import experiment_settings
from workspace.privacy_experiment.experiment import BACKDOOR, attack_runs, privacy_runs

METRICS = ("map50", "accuracy", "macro_f1")


def summarize(runs: list[dict], exp: dict) -> dict:
    """report.json: per table row the mean over the seeds that ran it (missing rows: None)."""
    def row(name: str) -> dict:
        rs = [r for r in runs if r["name"] == name]
        out = {"name": name, "seeds": [r["seed"] for r in rs]}
        for key in METRICS:
            out[key] = _mean([r["test"][key] for r in rs])
        for key in ("backdoor_patched", "backdoor_unpatched"):
            out[key] = _mean([r["test"][key]["rate"] for r in rs])
        out["clipped"] = _mean([r.get("clipped", 0) for r in rs])
        privacy = [r["privacy"] for r in rs if "privacy" in r]
        if privacy:
            out.update({k: _mean([p[k] for p in privacy]) for k in ("epsilon", "noise_multiplier", "clip_norm")})
            out["delta"] = privacy[0]["delta"]
        return out

    seed = exp["seeds"][0]
    epsilon_rows = [{**row(r["name"]), "target_epsilon": r["epsilon"]} for r in privacy_runs(exp, seed)]
    attack_rows = [{**row(r["name"]), "sites": r["sites"], "attack": r["attack"] or "none", "defence": r["defence"]}
                   for r in attack_runs(exp, seed)]
    return {"settings": exp, "epsilon_vs_quality": epsilon_rows, "attack_vs_defence": attack_rows,
            "runs": runs}


def _mean(values: list):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def write_report(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    title, body = markdown(report)
    (out / "report.md").write_text("\n".join([f"# {title}", "", *body]) + "\n")


def _cell(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _share(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def markdown(report: dict) -> tuple[str, list[str]]:
    """(title, lines): the reduced federation, the epsilon table, the attack table."""
    exp = report["settings"]
    attacks, privacy = exp["attacks"], exp["privacy"]
    backdoor = attacks[BACKDOOR]
    lines = ["## The reduced federation", "",
             f"Not the default federation: reduced so that its {len(report['runs'])} runs fit a 2-core CPU. "
             f"Sites with the "
             f"labels {', '.join(exp['labels'])} (cycled), Dirichlet class skew alpha {exp['alpha']}, "
             f"{exp['rounds']} rounds, every label, in process (OpenFL's own aggregator and collaborators, "
             f"no TLS); configs/default.yaml with {experiment_settings(exp)}; plan values "
             f"{exp.get('plan') or 'as in plan/plan.yaml'}; seeds {exp['seeds']} (one run per row and seed; "
             "a row is the mean over seeds). Test split: the last aggregate.", ""]
    lines += _epsilon_lines(report, privacy)
    lines += ["", "## Attack vs defence", "",
              f"{attacks['attacker']} attacks every round: its update (trained minus the round's global weights) "
              f"times {', '.join(f'{v:g} ({k})' for k, v in attacks['scales'].items())}; or a backdoor: "
              f"{backdoor['fraction']:.0%} of its training images not of class `{backdoor['target']}` carry a "
              f"{backdoor['patch']}x{backdoor['patch']} px checkerboard ({backdoor['cell']} px squares, "
              f"{backdoor['corner'].replace('_', ' ')}) and the class `{backdoor['target']}`. Defence: "
              f"{attacks['defence']}. Attack success: the share of the test images not of class "
              f"`{backdoor['target']}` classified as `{backdoor['target']}` with the patch stamped on them "
              "(without the patch beside it: what the model does anyway). `clipped`: updates the "
              "defence bounded, summed over rounds.", "",
              "| sites | attack | defence | mAP@0.5 | accuracy | macro-F1 | attack success (patch) | "
              "without patch (baseline) | clipped |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["attack_vs_defence"]:
        lines.append(f"| {r['sites']} | {r['attack']} | {'median' if r['defence'] else 'none'} | "
                     f"{_cell(r['map50'])} | {_cell(r['accuracy'])} | {_cell(r['macro_f1'])} | "
                     f"{_share(r['backdoor_patched'])} | {_share(r['backdoor_unpatched'])} | "
                     f"{_cell(r['clipped'], 0) if r['defence'] else ''} |")
    lines += ["", *attack_sentences(report)]
    return f"Differential privacy and poisoning defence, measured ({exp['rounds']} rounds, reduced federation)", lines


def _epsilon_lines(report: dict, privacy: dict) -> list[str]:
    clip = privacy["clip_norm"]
    clip_text = ("the median whole-update L2 norm of the run without DP (every site, every round)"
                 if clip == "median" else f"{clip:g} (the experiment file)")
    lines = ["## Epsilon vs quality", "",
             f"{privacy['sites']} sites, client-level DP (docs/privacy.md): each site's whole update clipped to "
             f"clip_norm = {clip_text}; the noise multiplier calibrated for each target epsilon over the run's "
             f"rounds at delta {privacy['delta']:g} (src/privacy.py); epsilon as the aggregator's accountant "
             "reported it after the last round.", "",
             "| target epsilon | reported epsilon | noise multiplier | clip norm | mAP@0.5 | accuracy | macro-F1 |",
             "|---|---|---|---|---|---|---|"]
    for r in report["epsilon_vs_quality"]:
        no_dp = r["target_epsilon"] is None
        target = "no DP" if no_dp else f"{r['target_epsilon']:g}"
        lines.append(f"| {target} | "
                     f"{'' if no_dp else _cell(r.get('epsilon'), 2)} | {'' if no_dp else _cell(r.get('noise_multiplier'), 2)} | "
                     f"{'' if no_dp else _cell(r.get('clip_norm'), 3)} | {_cell(r['map50'])} | {_cell(r['accuracy'])} | "
                     f"{_cell(r['macro_f1'])} |")
    return lines + ["", epsilon_sentence(report)]


def epsilon_sentence(report: dict) -> str:
    """What the epsilon table shows, in its own numbers."""
    rows = report["epsilon_vs_quality"]
    base = rows[0]
    noisy = sorted((r for r in rows[1:] if r["accuracy"] is not None), key=lambda r: -r["target_epsilon"])
    if base["accuracy"] is None or not base["map50"] or not base["accuracy"] or not noisy:
        return "Not measured yet: the table is incomplete."
    kept = [f"epsilon {_cell(r.get('epsilon'), 2)} keeps {_share(r['map50'] / base['map50'])} of the mAP@0.5 "
            f"and {_share(r['accuracy'] / base['accuracy'])} of the accuracy" for r in noisy]
    return (f"With {report['settings']['privacy']['sites']} sites, against the run without DP: {'; '.join(kept)} "
            "(the noise on each coordinate of a group's mean is noise multiplier x clip norm / the group's "
            "number of senders, so few sites pay for the guarantee in quality).")


def attack_sentences(report: dict) -> list[str]:
    """What the attack table shows, per number of sites, in its own numbers."""
    out = []
    by = {(r["sites"], r["attack"], r["defence"]): r for r in report["attack_vs_defence"]}
    for sites in report["settings"]["attacks"]["sites"]:
        clean = by.get((sites, "none", False), {})
        if clean.get("accuracy") is None:
            continue
        scaled = [a for a in report["settings"]["attacks"]["scales"]
                  if by.get((sites, a, False), {}).get("accuracy") is not None
                  and by.get((sites, a, True), {}).get("accuracy") is not None]
        text = f"{sites} sites: clean accuracy {_cell(clean['accuracy'])}"
        if scaled:
            worst = min(scaled, key=lambda a: by[(sites, a, False)]["accuracy"])
            text += (f"; the most harmful scaling ({worst}) leaves {_cell(by[(sites, worst, False)]['accuracy'])} "
                     f"without the defence and {_cell(by[(sites, worst, True)]['accuracy'])} with it "
                     f"(clean with the defence: {_cell(by.get((sites, 'none', True), {}).get('accuracy'))})")
        plain, defended = by.get((sites, BACKDOOR, False), {}), by.get((sites, BACKDOOR, True), {})
        if plain.get("backdoor_patched") is not None:
            text += (f"; the backdoor succeeds on {_share(plain['backdoor_patched'])} of the patched images "
                     f"(unpatched {_share(plain['backdoor_unpatched'])}) without the defence and on "
                     f"{_share(defended.get('backdoor_patched'))} with it")
        out.append(f"- {text}.")
    return out or ["Not measured yet: the table is incomplete."]
