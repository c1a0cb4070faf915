"""`make privacy-experiment`: what differential privacy costs and what the poisoning defence buys.

python -m workspace.privacy_experiment [--config configs/privacy_experiment.yaml]
    [--out workspace/runs/privacy] [--seeds 0,1] [--rounds N] [--runs NAME,...]

Runs a reduced federation (the experiment file says how it is reduced) in one process
with OpenFL's own aggregator and collaborators (`src/federated/in_process.py`), once
per row of two tables, and evaluates the last aggregate on the held-out test split:

- epsilon vs quality: the sites without differential privacy, then with client-level
  DP at each target epsilon (noise multiplier calibrated for the run's rounds, clip
  norm the median update norm of the run without DP unless the file names one), with
  the epsilon the aggregator's accountant reported;
- attack vs defence, for each number of sites: one site sends its update scaled
  (the config's scales, e.g. x10, sign flip) or trains on a backdoored copy of its data, each without and
  with the defence (norm bounding by the median norm + coordinate-wise median), and
  the clean runs without and with it. Columns: test mAP@0.5, accuracy, macro-F1 and
  the backdoor's success (test images not of the target class classified as the
  target with the patch, and without it).

Writes into --out: runs/<name>-seed<S>.json per run (reused when the experiment is
started again with the same settings, so an interrupted experiment resumes),
report.json and report.md; `make results` turns report.json into
docs/results/privacy.md. --runs runs only the named runs (e.g. sites3-clean to time
one; the DP runs need sites3-clean first).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from src.run_record import run_record
from workspace.privacy_experiment.experiment import DEFAULT_CONFIG, DEFAULT_OUT, load_experiment
from workspace.privacy_experiment.runs import run_experiment
from workspace.simulate.fx_workspace import REPO


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m workspace.privacy_experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default: the config's `out`, else {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="comma-separated seeds (default: the config's)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--runs", type=lambda t: t.split(","), default=None,
                   help="comma-separated run names: only these (default: every run)")
    args = p.parse_args(argv)
    run = run_record("workspace.privacy_experiment", argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("openfl", "src", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    exp = load_experiment(args.config, args.seeds, args.rounds)
    out = (args.out or REPO / exp.get("out", DEFAULT_OUT)).resolve()
    run_experiment(exp, out, run, args.runs)
    print((out / "report.md").read_text())
    return 0
