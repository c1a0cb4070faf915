"""`make simulate`: a whole OpenFL federation on one machine, for real.

python -m workspace.simulate [--rounds N] [--sites N] [--seed S] [--split data_splits/NAME]
    [--labels both,boxes,class,masks] [--backbone-mode joint|frozen] [--exchange decoupled|full]
    [--active-learning STRATEGY [--seed-fraction 0.1] [--final-fraction 0.3]]
    [--set KEY=VALUE ...] [--plan-set SECTION.KEY=VALUE ...]

Runs on the built-in synthetic data (generated if missing), or with --split on
any split folder the split builder wrote (python -m src.data.splits --sources ...). It builds a run folder
workspace/runs/<id>/ (workspace/runs/latest points at it) holding an OpenFL
workspace, issues a CA, aggregator and collaborator certificates with `fx`,
starts `fx aggregator start` and one `fx collaborator start -n SITE` per site
as separate processes on localhost with mutual TLS, prints one progress line
per round, and finally evaluates the best global model on the held-out test
split and writes metrics.json, curves.png, detections.png and model.keras.
A new split of the built-in data cycles its sites' labels over both, boxes, class
and masks: --sites 4 adds a mask-only site to the default three. Whenever a site
of the split holds masks, the model has the segmentation head (the run overrides
model.segmentation: true unless --set names it) and the report adds the test mIoU.
With --active-learning each site starts with a seed fraction of its training
images labeled and labels more every round with the strategy and a simulated
oracle (src/active_learning/), up to the final fraction.

Any process failing stops the run with its log tail and a non-zero exit;
Ctrl-C (or SIGTERM) kills every child process group, so no `fx` is left behind.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from src.run_record import run_record
from workspace.simulate import RunFailed
from workspace.simulate.data import ensure_backbone_checkpoint, provide_split, settings_for_split
from workspace.simulate.events import FederationEvents, progress_lines
from workspace.simulate.final_report import final_report, summary_lines
from workspace.simulate.fx_workspace import (EVENT_LOG, REPO, certify, prepare_workspace, split_sites,
                                             workspace_values)
from workspace.simulate.phases import Marks
from workspace.simulate.plan_edits import edit_plan, simulated_labeling
from workspace.simulate.processes import FX, Children, free_port, fx_environment, wait_for_port

DEFAULT_RUNS = REPO / "workspace" / "runs"
# --active-learning's budget: as configs/al_experiment.yaml measures it (docs/active_learning.md)
AL_SEED_FRACTION, AL_FINAL_FRACTION = 0.1, 0.3

log = logging.getLogger("simulate")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workspace.simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="default: plan/plan.yaml rounds_to_train")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet non-IID-ness of a new split")
    p.add_argument("--split", type=Path, default=None,
                   help="a split folder (data_splits/NAME from src.data.splits); sites are its folders")
    p.add_argument("--labels", default=None,
                   help="label set per site of a new split, cycled: both|boxes|class|masks "
                        "(default both,boxes,class,masks: 3 sites are the committed default split, a "
                        "4th holds masks only; a site holding masks turns model.segmentation on)")
    p.add_argument("--backbone-mode", choices=("joint", "frozen"), default=None,
                   help="default: the plan's (joint); frozen needs the pretrained backbone "
                        "(made here with src.central.pretrain when missing)")
    p.add_argument("--backbone-init", choices=("checkpoint", "scratch"), default=None,
                   help="where a joint backbone starts: default the plan's (checkpoint, the public "
                        "pretrained backbone); scratch = random initialization")
    p.add_argument("--exchange", choices=("decoupled", "full"), default=None,
                   help="default: the plan's (decoupled); full = naive baseline averaging every tensor")
    p.add_argument("--active-learning", default=None, metavar="STRATEGY",
                   help="label under a budget: each site starts with --seed-fraction of its training "
                        "images labeled and queries every round with STRATEGY (random, entropy, margin, "
                        "emh, hybrid) and the simulated oracle up to --final-fraction (a new split)")
    p.add_argument("--seed-fraction", type=float, default=AL_SEED_FRACTION,
                   help="with --active-learning: labeled at the start (default %(default)s)")
    p.add_argument("--final-fraction", type=float, default=AL_FINAL_FRACTION,
                   help="with --active-learning: labeled after the last query (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="settings key (configs/default.yaml) for every site, e.g. model.input_size=128")
    p.add_argument("--plan-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="set any plan key, e.g. aggregator.settings.backbone_weighting=task_balanced")
    p.add_argument("--stock-polling", action="store_true",
                   help="OpenFL's stock 10 s sleep between rounds (to measure what the long poll saves)")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS, help="where run folders go")
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict, dict]:
    """The options, checked; --set and --plan-set as typed {dotted key: value} dicts."""
    from src.settings import parse_assignments

    p = parser()
    args = p.parse_args(argv)
    if args.active_learning is not None:
        from src.active_learning.selection import STRATEGIES

        if args.active_learning not in STRATEGIES:
            p.error(f"--active-learning {args.active_learning}: not a strategy; known: {', '.join(STRATEGIES)}")
        if not 0 < args.seed_fraction < args.final_fraction <= 1:
            p.error("--seed-fraction and --final-fraction: need 0 < seed < final <= 1, "
                    f"got {args.seed_fraction} and {args.final_fraction}")
    try:
        settings, plan_set = parse_assignments(args.set), parse_assignments(args.plan_set)
    except ValueError as err:
        p.error(f"--set / --plan-set: {err}")
    return args, settings, plan_set


def plan_values(args: argparse.Namespace, plan_set: dict, rounds: int, port: int) -> dict:
    """The run's plan edits by plan path, in the order they apply: the shorthand options,
    active learning, --plan-set (which can refine either, e.g.
    task_runner.settings.active_learning.epoch_images), then what every run sets (rounds,
    port, event log)."""
    values: dict = {}

    def put(path: str, value):
        values.pop(path, None)  # re-inserted: applied after what came before
        values[path] = value

    for key in ("backbone_mode", "backbone_init", "exchange"):
        if getattr(args, key) is not None:
            put(f"task_runner.settings.{key}", getattr(args, key))
    if args.active_learning:
        put("task_runner.settings.active_learning",
            simulated_labeling(args.active_learning, args.final_fraction, args.seed))
    for path, value in plan_set.items():
        put(path, value)
    for path, value in workspace_values(rounds, port).items():
        put(path, value)
    if args.stock_polling:
        put("aggregator.settings.long_poll_s", 0)
    return values


def new_run_dir(runs_dir: Path) -> Path:
    """runs_dir/<date-time>/, with runs_dir/latest pointing at it."""
    run_id = time.strftime("%Y%m%d-%H%M%S")
    runs = runs_dir.resolve()
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    latest = runs / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    return run_dir


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, settings, plan_set = parse(argv)
    run = run_record("workspace.simulate", argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.chdir(REPO)  # config paths (data/synthetic, configs/) are relative to the repository
    sys.path.insert(0, str(REPO))

    repo_plan = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    rounds = args.rounds or repo_plan["aggregator"]["settings"]["rounds_to_train"]
    started, marks = time.monotonic(), Marks()
    run_dir = new_run_dir(args.runs_dir)
    log.info("run folder %s", run_dir)
    children = Children()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        split_dir = provide_split(run_dir, args.split, args.sites, args.seed, args.alpha,
                                  args.labels.split(",") if args.labels else None,
                                  args.seed_fraction if args.active_learning else None)
        sites = split_sites(split_dir)
        marks.mark("split")
        ws = run_dir / "workspace"
        port = free_port()
        needed = settings_for_split(split_dir, settings)  # e.g. the segmentation head for a site's masks
        if needed:
            log.info("the split's labels need %s (run overrides)", needed)
        try:
            plan = edit_plan(repo_plan, plan_values(args, plan_set, rounds, port),
                             overrides={"seed": args.seed, **needed, **settings})
        except ValueError as err:
            raise RunFailed(str(err)) from None
        ensure_backbone_checkpoint(plan, settings)
        prepare_workspace(ws, plan, split_dir)
        marks.mark("workspace")
        env = fx_environment()
        certify(ws, sites, split_dir.name, run_dir / "setup.log", env)
        marks.mark("certified")

        log.info("starting aggregator on localhost:%d (mutual TLS) and %d collaborators", port, len(sites))
        agg = children.start("aggregator", [FX, "aggregator", "start"], ws, run_dir / "aggregator.log", env)
        # the sites start up (imports, model, data: ~10 s each) while the aggregator does;
        # each waits for it before its first task (src/federated/collaborator.py)
        for site in sites:
            children.start(site, [FX, "collaborator", "start", "-n", site], ws, run_dir / f"{site}.log", env)
        marks.mark("fx_started")
        wait_for_port(port, agg, run_dir / "aggregator.log")
        events = FederationEvents(ws / EVENT_LOG, rounds, sites)
        while True:
            print_progress(events)
            if children.check():
                break
            time.sleep(1.0)
        print_progress(events)
        metrics = final_report(run_dir, ws, split_dir, events, args.seed, started, run, marks)
        for line in summary_lines(metrics, rounds, run_dir):
            print(line)
        return 0
    except RunFailed as e:
        print(f"simulate: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("simulate: interrupted; stopping all processes", file=sys.stderr)
        return 130
    finally:
        children.kill_all()


def print_progress(events: FederationEvents) -> None:
    """One line per round the event log newly shows ended."""
    for rnd in events.poll():
        for line in progress_lines(events.round_summary(rnd), events.rounds):
            print(line, flush=True)
