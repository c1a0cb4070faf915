"""`make al-experiment`: what active learning buys, measured.

python -m workspace.al_experiment [--config configs/al_experiment.yaml] [--out workspace/runs/al]
    [--seeds 0,1,2] [--strategies random,hybrid] [--rounds N]

Runs the same federation (OpenFL's own aggregator and collaborators from the
repository's plan, in one process: `src/federated/in_process.py`) once per
strategy and seed at the same labeling budget, plus once per seed with every
label, and evaluates the global model on the held-out test split after every
round. Writes into --out:

- report.json: {"run": {date, commit, command, machine}, "full_labels": {score_mean,
  score_std, ...}, "strategies": {NAME: {labeled_fraction, score_mean, score_std, map50_mean,
  accuracy_mean, ...}}, "runs": [...every run, round by round...]};
- report.md: the table, and whether the issue's targets are met;
- curves.png: test mAP@0.5 and accuracy vs labeled images, mean and spread
  over the seeds, per strategy, with the all-labels runs for reference.

The experiment file names settings keys under `config:` and plan values under
`plan:` (as `make simulate`'s --set and --plan-set do), and the experiment's own
keys: sites, labels, alpha, rounds, the budget (seed_fraction, final_fraction,
query_every, epoch_images), strategies, seeds, `variants:` (a strategy with its
own active-learning settings, say hybrid over a wider candidate set, or its own plan
values, say task_runner.settings.exchange: full, run side by side) and
`deterministic: true` (TensorFlow's ops deterministic and its global random
generator seeded per run, so two runs differ by their settings, not by thread
scheduling of float sums).

Score = mean of victim mAP@0.5 and disaster accuracy of the last aggregate
(the sites' validation score, on the test split); macro-F1 of the disaster
head is reported beside it (on imbalanced classes accuracy rewards guessing the
common class). Each finished run is kept in runs/<strategy>-seed<S>.json and
reused when the experiment is started again with the same settings, so an
interrupted experiment resumes.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from workspace.al_experiment.experiment import DEFAULT_CONFIG, DEFAULT_OUT, load_experiment
from workspace.al_experiment.runs import run_experiment
from src.run_record import run_record
from workspace.simulate.fx_workspace import REPO


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = experiment_parser("python -m workspace.al_experiment", __doc__, DEFAULT_CONFIG, DEFAULT_OUT)
    p.add_argument("--strategies", type=lambda t: t.split(","), default=None,
                   help="comma-separated strategies (default: the config's)")
    args = p.parse_args(argv)
    run = run_record("workspace.al_experiment", argv)
    experiment_logging()
    exp = load_experiment(args.config, args.seeds, args.strategies, args.rounds)
    out = (args.out or REPO / exp.get("out", DEFAULT_OUT)).resolve()
    run_experiment(exp, out, run)
    print((out / "report.md").read_text())
    return 0


def experiment_parser(prog: str, doc: str, default_config: Path, default_out: Path) -> argparse.ArgumentParser:
    """The options an experiment of this kind takes: --config, --out, --seeds, --rounds."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=default_config)
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default: the config's `out`, else {default_out.relative_to(REPO)})")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="comma-separated seeds (default: the config's)")
    p.add_argument("--rounds", type=int, default=None, help="federation rounds (default: the config's)")
    return p


def experiment_logging() -> None:
    """One line per run and round: the experiment's own log, the libraries' warnings only."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("openfl", "src", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
