"""`make results`: the Markdown pages of docs/results/, generated from the runs' JSON.

python -m workspace.results [--simulate workspace/runs/latest/metrics.json]
    [--bench bench/results.json] [--quality bench/quality_vs_time.json] [--simulate-time bench/simulate_time.json]
    [--al workspace/runs/al/report.json ...]
    [--privacy workspace/runs/privacy/report.json] [--paired workspace/runs/paired/report.json]
    [--segmentation workspace/runs/segmentation/report.json]
    [--out docs/results]

Every number on a page is copied from one JSON file, beside where it comes from
(date, commit, command, machine: the file's `run` block, src/run_record.py), so
a page can always be regenerated and never drifts from its measurement. Pages:
simulate.md (`make simulate`'s metrics.json), bench.md (`make bench`),
quality_vs_time.md (`make bench-quality`, with bench/quality_ablation.json), simulate_time.md
(`make bench-simulate`), and one page
per active-learning experiment (`make al-experiment`'s report.json: active_learning.md
for workspace/runs/al, active_learning_<name>.md for workspace/runs/al-<name>), and
privacy.md (`make privacy-experiment`'s report.json), paired.md (`make
paired-experiment`'s report.json) and segmentation.md (`make seg-experiment`'s). A page
whose JSON is missing is not written; the output says so.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Callable

from workspace.simulate.phases import SITE_PHASES

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SIMULATE = REPO / "workspace" / "runs" / "latest" / "metrics.json"
DEFAULT_BENCH = REPO / "bench" / "results.json"
DEFAULT_QUALITY = REPO / "bench" / "quality_vs_time.json"
DEFAULT_SIMULATE_TIME = REPO / "bench" / "simulate_time.json"
SECURE_AGGREGATION_BENCH = REPO / "bench" / "secure_aggregation.json"
SEGMENTATION_CONFIG = REPO / "configs" / "segmentation_experiment.yaml"
DEFAULT_OUT = REPO / "docs" / "results"
README = REPO / "README.md"
# the README's one table of current results sits between these lines
README_START, README_END = "<!-- results:simulate (make results) -->", "<!-- /results:simulate -->"
MACHINE_FIELDS = {"cpus": "{} CPUs", "memory_gib": "{} GiB memory"}  # the others read "name value"


# ---- pages ------------------------------------------------------------------------------------
def simulate_page(metrics: dict) -> list[str]:
    """`make simulate`'s run: setup, test scores, validation round by round, time, traffic."""
    sites = metrics.get("sites", [])
    rounds = metrics.get("rounds", [])
    trained = [r for r in rounds if not r.get("validation_only")]
    al = metrics.get("active_learning")
    model = metrics.get("model", {})
    setup = [("sites", f"{', '.join(sites)} (seed {metrics.get('seed')})"),
             ("rounds", f"{len(trained)} training round{'' if len(trained) == 1 else 's'}"
                        + (" + 1 validation-only round" if len(rounds) > len(trained) else "")),
             ("exchange", metrics.get("exchange")), ("backbone", metrics.get("backbone_mode")),
             ("active learning", "off" if not al else f"{al.get('strategy')} up to {al.get('final_fraction')} "
                                                      f"of the training images, {al.get('oracle')} oracle"),
             ("model", f"{model.get('variant', '')} {model.get('input_size', '')} px".strip())]
    lines = ["# `make simulate`: one federation on this machine", "", *run_table(metrics.get("run")),
             "", "## Setup", "", *table(["", ""], setup)]

    tests = [("initial (before round 1)", metrics.get("initial", {}).get("test")),
             (f"best (the aggregate of round {metrics.get('final', {}).get('best_round')}, chosen by validation)",
              metrics.get("final", {}).get("test")),
             ("last aggregate", metrics.get("last_aggregate", {}).get("test"))]
    central = metrics.get("central_reference")
    if central:
        tests.append((f"centralized reference ({central.get('epochs')} epochs)", central.get("test")))
    keys = ["map50", "map50_95", "accuracy", "macro_f1", "loss"]
    present = [k for k in keys if any(t and k in t for _, t in tests)]
    names = {"map50": "mAP@0.5", "map50_95": "mAP@0.5:0.95", "accuracy": "accuracy", "macro_f1": "macro-F1",
             "loss": "loss"}
    lines += ["", "## Test split (held out)", "",
              *table(["model", *(names[k] for k in present)],
                     [[name, *(num((t or {}).get(k)) for k in present)] for name, t in tests if t])]

    lines += ["", "## Validation, round by round", "",
              "Each site scores the global model a round starts with on its validation split.", "",
              *table(["round", "score", *(f"{s} {m}" for s in sites for m in ("mAP@0.5", "accuracy")), "wall s"],
                     [["final validation" if r.get("validation_only") else r["round"] + 1, num(r.get("score")),
                       *(num(r.get("sites", {}).get(s, {}).get(k)) for s in sites for k in ("map50", "accuracy")),
                       num(r.get("wall_s"), 0)] for r in rounds])]

    lines += ["", "## Time", "",
              *table(["whole run s", "federation s", "median idle s per round"],
                     [[num(metrics.get("wall_s"), 0), num(metrics.get("federation_s"), 0),
                       num(metrics.get("median_idle_s"), 2)]])]
    if metrics.get("phases"):
        lines += ["", *phases_section(metrics["phases"])]

    traffic = metrics.get("traffic", {})
    lines += ["", "## Traffic per site, mean per round", "",
              f"Full model on the wire: {count(metrics.get('model_bytes'))} bytes.", "",
              *table(["site", "upload bytes", "share of the model", "download bytes", "upload bytes by group"],
                     [[site, count(t.get("upload_bytes_per_round")), percent(t.get("upload_fraction_of_model")),
                       count(t.get("download_bytes_per_round")),
                       ", ".join(f"{g} {count(b)}" for g, b in t.get("upload_bytes_by_group", {}).items())]
                      for site, t in traffic.items()])]
    if al and trained:
        last = trained[-1].get("sites", {})
        lines += ["", "## Labeled at the end", "",
                  *table(["site", "labeled", "pool"],
                         [[s, num(m.get("al_labeled"), 0), num(m.get("al_pool"), 0)]
                          for s, m in last.items() if "al_labeled" in m])]
    return lines


def phases_section(phases: dict) -> list[str]:
    """Where the run's wall time went (metrics.json `phases`, workspace/simulate/phases.py):
    the run's phases, then each round's slowest site by phase, the aggregation and idle sites."""
    setup = phases.get("setup", {})
    run_rows = [["setup: split", setup.get("split_s")], ["setup: workspace", setup.get("workspace_s")],
                ["setup: certificates", setup.get("certificates_s")],
                ["setup: start the fx processes", setup.get("start_processes_s")],
                ["cold start (until every site has its first task)", phases.get("cold_start_s")],
                ["training rounds", phases.get("training_rounds_s")],
                ["final validation round", phases.get("final_validation_s")],
                ["shutdown (last round end to every fx process exited)", phases.get("shutdown_s")],
                ["test evaluation and report", phases.get("final_evaluation_s")],
                ["whole run", phases.get("wall_s")]]
    round_rows = []
    for r in phases.get("rounds", []):
        slowest = r.get("sites", {}).get(r.get("slowest"), {})
        idle = ", ".join(f"{s} {num(p.get('idle'), 0)}" for s, p in r.get("sites", {}).items()
                         if s != r.get("slowest"))
        title = "final validation" if r.get("validation_only") else r["round"] + 1
        round_rows.append([title, num(r.get("wall_s"), 1), r.get("slowest") or "n/a",
                           *(num(slowest.get(p), 1) for p in SITE_PHASES), num(r.get("aggregation_s"), 1),
                           idle or "n/a"])
    return ["## Time by phase", "",
            "From the orchestrator's clock, the aggregator's event log and the seconds each site's tasks "
            "report. Round 1 includes each process's first traces "
            f"({num(phases.get('first_round_extra_s'), 0)} s over a typical round).", "",
            *table(["phase", "seconds", "share of the run"],
                   [[name, num(value, 1), percent(value / phases["wall_s"] if value is not None
                                                  and phases.get("wall_s") else None)]
                    for name, value in run_rows]),
            "", "Per round: the site whose update came last, its phases in seconds (download: the global "
                "model in; label: the active-learning step; data: building the round's training dataset; "
                "upload: the update out), the aggregation, "
                "and how long each other site waited.", "",
            *table(["round", "wall s", "slowest site", *SITE_PHASES, "aggregation", "idle s (other sites)"],
                   round_rows)]


def readme_rows(metrics: dict) -> list[str]:
    """The README's current-results table: the latest `make simulate` run in one row."""
    run, final = metrics.get("run") or {}, metrics.get("final", {})
    test = final.get("test") or {}
    traffic = metrics.get("traffic", {}).values()
    uploads = [t.get("upload_bytes_per_round") for t in traffic if t.get("upload_bytes_per_round") is not None]
    row = [f"`{run.get('command', 'make simulate')}` ({(run.get('date') or '')[:10]}, "
           f"`{(run.get('commit') or 'commit not recorded')[:10]}`)",
           num(test.get("map50")), num(test.get("map50_95")), num(test.get("accuracy")), num(test.get("macro_f1")),
           f"{sum(uploads) / len(uploads) / 1e6:.2f} MB" if uploads else "n/a", f"{num(metrics.get('wall_s'), 0)} s"]
    return table(["run", "victim mAP@0.5", "mAP@0.5:0.95", "disaster accuracy", "macro-F1",
                  "mean upload per site and round", "wall time"], [row])


def update_readme(readme: Path, metrics: dict) -> bool:
    """Replace the lines between the README's result markers; False when it has none."""
    lines = readme.read_text().splitlines()
    if README_START not in lines or README_END not in lines:
        print(f"skipped {shown(readme)}: no {README_START} ... {README_END} block")
        return False
    start, end = lines.index(README_START), lines.index(README_END)
    readme.write_text("\n".join([*lines[:start + 1], *readme_rows(metrics), *lines[end:]]) + "\n")
    print(f"wrote the results table of {shown(readme)}")
    return True


def bench_page(bench: dict) -> list[str]:
    """`make bench`: training and inference speed per model variant."""
    run = bench.get("run") or {"date": bench.get("timestamp"), "machine": bench.get("machine")}
    rows = [[name, v.get("input_size"), count(v.get("parameters")), v.get("train_batch"),
             num(v.get("train_images_per_s"), 2), v.get("infer_batch"), num(v.get("inference_images_per_s"), 2)]
            for name, v in bench.get("variants", {}).items()]
    return ["# `make bench`: training and inference speed", "", *run_table(run), "",
            f"Median of {bench.get('repeats')} repeats.", "",
            *table(["variant", "input px", "parameters", "train batch", "train images/s", "inference batch",
                    "inference images/s"], rows)]


def simulate_time_page(result: dict) -> list[str]:
    """`make bench-simulate`: make simulate's wall time and test quality over seeds."""
    seeds = result["seeds"]
    rows = [[s["seed"], f"`{s['commit'][:10]}`", num(s["wall_s"], 0), num(s["round_s"], 1), num(s["setup_s"], 0),
             num(s["cold_start_s"], 0), num(s["final_evaluation_s"], 0), num(s["map50"]), num(s["map50_95"]),
             num(s["accuracy"])] for s in seeds]
    m = result["median"]
    rows.append(["median", "", num(m["wall_s"], 0), num(m["round_s"], 1), "", "", "", num(m["map50"]),
                 num(m["map50_95"]), num(m["accuracy"])])
    return ["# `make simulate` over seeds: wall time and test quality", "", *run_table(result.get("run")), "",
            f"`make simulate SEED=S` for seeds {', '.join(str(s['seed']) for s in seeds)}, one after the other with "
            "the machine to itself (warm `.venv`): the default federation, real `fx` processes and certificates, "
            "hybrid active learning. Test scores: the best global model on the held-out test split. Seconds: the "
            "whole run, a typical round (median), setup, the collaborators' cold start and the test evaluation "
            f"(`metrics.json` `phases`). Slowest run: {num(result['max_wall_s'], 0)} s.", "",
            *table(["seed", "commit", "wall s", "round s", "setup s", "cold start s", "test evaluation s",
                    "mAP@0.5", "mAP@0.5:0.95", "accuracy"], rows)]


def quality_vs_time_page(result: dict) -> list[str]:
    """`make bench-quality`: test quality of the detector trained from scratch at wall-time budgets."""
    minutes = list(result["median"])
    seeds = result["seeds"]
    rows = [[f"{m} min", num(result["median"][m]["map50"]), num(result["median"][m]["map50_95"]),
             num(result["median"][m]["accuracy"]),
             " / ".join(num(s["checkpoints"][m]["map50"]) for s in seeds),
             num(statistics.median(s["checkpoints"][m]["epochs"] for s in seeds), 1)] for m in minutes]
    targets = [t["label"] for metric in ("map50", "map50_95", "accuracy")
               for t in result.get("targets", {}).get(metric, [])]
    lines = ["# Quality per CPU-minute: the detector from scratch", "", *run_table(result.get("run")), "",
             f"Centralized training from scratch on every label of the built-in data ({seeds[0]['train_images']} "
             f"training images, {seeds[0]['test_images']} test images; data split seed {result['data_seed']}), "
             f"{seeds[0]['parameters']:,} parameters, settings {result['settings'] or 'as configs/default.yaml'}. "
             "Wall minutes count training and the test evaluations since the data was read. "
             f"Medians of {len(seeds)} seeds ({', '.join(str(s['seed']) for s in seeds)}).", "",
             *table(["budget", "mAP@0.5", "mAP@0.5:0.95", "accuracy", "mAP@0.5 per seed", "epochs"], rows), "",
             f"Reference lines on the plot: {'; '.join(targets)}.", "",
             "![quality vs time](../../bench/quality_vs_time.png)"]
    ablation = REPO / "bench" / "quality_ablation.json"
    if ablation.exists():
        probes = json.loads(ablation.read_text())
        lines += ["", "## What each change bought", "", f"{probes['what']} ({probes['date']}, code {probes['code']}). "
                  f"{probes['caveats']}.", "",
                  *table(["probe", "mAP@0.5", "mAP@0.5:0.95", "accuracy", "steps in 5 min"],
                         [[r["label"], num(r["map50"]), num(r["map50_95"]), num(r["accuracy"]), r["steps"]]
                          for r in probes["probes"]])]
    return lines


def active_learning_page(report: dict) -> list[str]:
    """`make al-experiment`: each strategy at the same labeling budget vs every label."""
    from workspace.al_experiment.report import markdown

    title, body = markdown(report)
    return [f"# `make al-experiment`: {title}", "", *run_table(report.get("run")), "", "## Results", "", *body]


def privacy_page(report: dict) -> list[str]:
    """`make privacy-experiment`: epsilon vs quality, attack vs defence."""
    from workspace.privacy_experiment.report import markdown

    title, body = markdown(report)
    return [f"# `make privacy-experiment`: {title}", "", *run_table(report.get("run")), "", *body,
            *secure_aggregation_lines(SECURE_AGGREGATION_BENCH)]


def paired_page(report: dict) -> list[str]:
    """`make paired-experiment`: federated vs centralized, decoupled vs full exchange, hybrid vs
    random, as paired per-seed differences; `make seg-experiment` (the segmentation arm set):
    segmentation as a third task."""
    from workspace.paired_experiment.report import markdown

    title, body = markdown(report)
    target = "seg-experiment" if report["settings"].get("arm_set") == "segmentation" else "paired-experiment"
    return [f"# `make {target}`: {title}", "", *run_table(report.get("run")), "", *body]


def secure_aggregation_lines(path: Path) -> list[str]:
    """The cost of pairwise masking on the default federation (`python -m bench.secure_aggregation`)."""
    if not path.exists():
        return ["", "## Secure aggregation overhead", "", f"Not measured: {path.name} is missing."]
    bench = json.loads(path.read_text())
    plain, masked = bench["median"]["plain"], bench["median"]["masked"]
    ratios = bench["masked_over_plain"]
    runs = {name: bench["runs"][name] for name in ("plain", "masked")}
    lines = ["", "## Secure aggregation overhead", "",
             f"The default federation (make simulate's plan, model and active learning; {bench['rounds']} rounds, "
             f"seeds {[r['seed'] for r in runs['plain']]}) without and with `pairwise_masking`: median wall "
             "time of a training round and upload per site and round.", "", *run_table(bench.get("run")), "",
             "| | plain | masked | masked / plain |", "|---|---:|---:|---:|",
             f"| training round (s) | {plain['median_round_s']:.1f} | {masked['median_round_s']:.1f} | "
             f"{ratios['round_time']:.2f} |"]
    for site, plain_bytes in plain["upload_bytes_per_round"].items():
        lines.append(f"| upload per round, {site} (MB) | {plain_bytes / 1e6:.2f} | "
                     f"{masked['upload_bytes_per_round'][site] / 1e6:.2f} | {ratios['upload_bytes'][site]:.2f} |")
    for metric in ("map50", "accuracy"):
        values = {name: [r["test"][metric] for r in rs] for name, rs in runs.items()}
        lines.append(f"| test {metric} | {', '.join(f'{v:.3f}' for v in values['plain'])} | "
                     f"{', '.join(f'{v:.3f}' for v in values['masked'])} | |")
    return lines


# ---- Markdown pieces --------------------------------------------------------------------------
def run_table(run: dict | None) -> list[str]:
    """Where the numbers come from: date, commit, command, machine."""
    run = run or {}
    machine = run.get("machine") or {}
    described = ", ".join(MACHINE_FIELDS.get(k, k + " {}").format(v) for k, v in machine.items() if v is not None)
    rows = [("date", run.get("date")), ("commit", run.get("commit") and f"`{run['commit']}`"),
            ("command", run.get("command") and f"`{run['command']}`"), ("machine", described or None)]
    if run.get("python_command"):
        rows.insert(3, ("runs", f"`{run['python_command']}`"))
    return table(["run", ""], [(k, v if v else "not recorded") for k, v in rows])


def table(headers: list, rows: list) -> list[str]:
    cells = lambda values: "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"  # noqa: E731
    return [cells(headers), "|" + "---|" * len(headers), *(cells(r) for r in rows)]


def num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def count(value) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


# ---- generation -------------------------------------------------------------------------------
def write_page(source: Path, target: Path, render: Callable[[dict], list[str]]) -> bool:
    """`target` from the JSON at `source` (followed through links, so the page names the run
    itself); False, and nothing written, when `source` is missing."""
    if not source.exists():
        print(f"skipped {shown(target)}: {shown(source)} not found")
        return False
    source = source.resolve()
    lines = render(json.loads(source.read_text()))
    note = f"Generated by `make results` from {shown(source)}; do not edit by hand."
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join([note, "", *lines]) + "\n")
    print(f"wrote {shown(target)} from {shown(source)}")
    return True


def experiment_reports() -> list[Path]:
    """report.json of each shipped experiment config (configs/al_experiment*.yaml, its `out:`)."""
    from workspace.al_experiment.experiment import DEFAULT_OUT as AL_OUT, read_experiment_file

    configs = sorted((REPO / "configs").glob("al_experiment*.yaml"))
    outs = [REPO / read_experiment_file(p).get("out", AL_OUT) for p in configs]
    return [out / "report.json" for out in dict.fromkeys(outs)]


def privacy_report() -> Path:
    """report.json of configs/privacy_experiment.yaml (its `out:`)."""
    from workspace.al_experiment.experiment import read_experiment_file
    from workspace.privacy_experiment.experiment import DEFAULT_CONFIG, DEFAULT_OUT as PRIVACY_OUT

    return REPO / read_experiment_file(DEFAULT_CONFIG).get("out", PRIVACY_OUT) / "report.json"


def paired_report(config: Path | None = None) -> Path:
    """report.json of configs/paired_experiment.yaml or another paired experiment file (its `out:`)."""
    from workspace.al_experiment.experiment import read_experiment_file
    from workspace.paired_experiment.experiment import DEFAULT_CONFIG, DEFAULT_OUT as PAIRED_OUT

    return REPO / read_experiment_file(config or DEFAULT_CONFIG).get("out", PAIRED_OUT) / "report.json"


def active_learning_page_name(report_path: Path) -> str:
    """active_learning.md for an experiment in .../al/, active_learning_<name>.md in .../al-<name>/."""
    folder = report_path.parent.name
    suffix = folder[3:] if folder.startswith("al-") else "" if folder == "al" else folder
    return f"active_learning{'_' + suffix.replace('-', '_') if suffix else ''}.md"


def shown(path: Path) -> str:
    path = Path(path).absolute()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workspace.results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--simulate", type=Path, default=DEFAULT_SIMULATE, help="a `make simulate` run's metrics.json")
    p.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="`make bench`'s results.json")
    p.add_argument("--quality", type=Path, default=DEFAULT_QUALITY, help="`make bench-quality`'s JSON")
    p.add_argument("--simulate-time", type=Path, default=DEFAULT_SIMULATE_TIME, help="`make bench-simulate`'s JSON")
    p.add_argument("--al", type=Path, action="append", default=None, metavar="REPORT_JSON",
                   help="a `make al-experiment` report.json (default: those of configs/al_experiment*.yaml)")
    p.add_argument("--privacy", type=Path, default=None,
                   help="`make privacy-experiment`'s report.json (default: that of configs/privacy_experiment.yaml)")
    p.add_argument("--paired", type=Path, default=None,
                   help="`make paired-experiment`'s report.json (default: that of configs/paired_experiment.yaml)")
    p.add_argument("--segmentation", type=Path, default=None,
                   help="`make seg-experiment`'s report.json (default: that of configs/segmentation_experiment.yaml)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the pages go")
    p.add_argument("--readme", default=str(README),
                   help="the README whose results table follows the simulate run ('' = leave it)")
    args = p.parse_args(argv)
    if write_page(args.simulate, args.out / "simulate.md", simulate_page) and args.readme:
        update_readme(Path(args.readme), json.loads(args.simulate.read_text()))
    write_page(args.bench, args.out / "bench.md", bench_page)
    write_page(args.quality, args.out / "quality_vs_time.md", quality_vs_time_page)
    write_page(args.simulate_time, args.out / "simulate_time.md", simulate_time_page)
    for report in args.al or experiment_reports():
        write_page(report, args.out / active_learning_page_name(report), active_learning_page)
    write_page(args.privacy or privacy_report(), args.out / "privacy.md", privacy_page)
    write_page(args.paired or paired_report(), args.out / "paired.md", paired_page)
    write_page(args.segmentation or paired_report(SEGMENTATION_CONFIG), args.out / "segmentation.md", paired_page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
