"""`make paired-experiment`: the default federation's comparisons as paired per-seed differences.

python -m workspace.paired_experiment [--config configs/paired_experiment.yaml]
    [--out workspace/runs/paired] [--seeds 0,1] [--rounds N] [--arms fed_hybrid,fed_random]

Per seed it runs five arms (workspace/paired_experiment/experiment.py) on the same
site partition, labels, model initialisation and test split:

- fed_hybrid: the default federation (plan/plan.yaml: joint backbone from the shipped
  checkpoint, decoupled exchange), each site labeling 10 % -> 30 % of its images with
  hybrid active learning and the simulated oracle, as `make simulate` runs it;
- fed_hybrid_full_exchange: the same with task_runner.settings.exchange: full;
- fed_random: the same as fed_hybrid with random picks at the same budget;
- fed_all_labels: the federation with every label of the split;
- central_all_labels: the centralized trainer (src/central.py, `make train-central
  --split`) on the union of the sites' images and labels, for the federation's rounds x
  local epochs, from the same backbone checkpoint;

the federations in one process with OpenFL's own aggregator and collaborators
(src/federated/in_process.py, as `make al-experiment` runs them). It scores each
run's final model on the held-out test split and compares, seed by seed:
fed_all_labels - central_all_labels, fed_hybrid - fed_hybrid_full_exchange and
fed_hybrid - fed_random, for mAP@0.5, mAP@0.5:0.95 and disaster accuracy apart: the
per-seed differences, their mean and its 95 % t-interval (n - 1 degrees of freedom).

Writes into --out: runs/<arm>-seed<S>.json per run (reused when the experiment is
started again with the same settings, so an interrupted experiment resumes),
report.json and report.md; `make results` turns report.json into docs/results/paired.md.
--arms runs only the named arms (a comparison needs both of its arms).
"""
from __future__ import annotations

import sys

from src.run_record import run_record
from workspace.al_experiment.cli import experiment_logging, experiment_parser
from workspace.paired_experiment.experiment import DEFAULT_CONFIG, DEFAULT_OUT, load_experiment
from workspace.paired_experiment.runs import run_experiment
from workspace.simulate.fx_workspace import REPO


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = experiment_parser("python -m workspace.paired_experiment", __doc__, DEFAULT_CONFIG, DEFAULT_OUT)
    p.add_argument("--arms", type=lambda t: t.split(","), default=None,
                   help="comma-separated arms (default: all five)")
    args = p.parse_args(argv)
    run = run_record("workspace.paired_experiment", argv)
    experiment_logging()
    exp = load_experiment(args.config, args.seeds, args.rounds, args.arms)
    out = (args.out or REPO / exp.get("out", DEFAULT_OUT)).resolve()
    run_experiment(exp, out, run)
    print((out / "report.md").read_text())
    return 0
