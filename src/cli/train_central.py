"""Centralized trainer: the pooled-data reference every federated run is compared with.

python -m src.cli.train_central [--config configs/default.yaml] [--epochs N] [--seed S]
    [--out workspace/runs/central] [--split data_splits/NAME] [--set key.sub=value ...]
    [--backbone-mode joint|frozen] [--backbone-init checkpoint|scratch]

Generates the synthetic data if it is missing, trains on the train split,
evaluates on the held-out test split, writes metrics.json and model.keras.
With --split it trains on exactly what the federation's sites hold: the union
of their train (val) manifests with each image's labels as the site has them
(a detection-only site's images carry no disaster label), and tests on the
split's test.tsv: the reference a federation on that split compares with.
Input it cannot use ends the command with one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from src.central import run
from src.cli.command import load_settings, non_negative_int, run_command
from src.task_groups import BACKBONE_INITS, BACKBONE_MODES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default configs/default.yaml)")
    p.add_argument("--epochs", type=non_negative_int, help="override training.epochs")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument("--data", help="override data.root")
    p.add_argument("--out", default="workspace/runs/central", help="output folder")
    p.add_argument("--split", type=Path, help="train on the union of this site split's labels")
    p.add_argument("--backbone-mode", choices=BACKBONE_MODES, default="joint",
                   help="joint: the backbone trains; frozen: it stays at the checkpoint (as in the plan)")
    p.add_argument("--backbone-init", choices=BACKBONE_INITS, default="checkpoint",
                   help="checkpoint: start from the settings' pretrain.checkpoint; scratch: random")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set model.width=0.5")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {}
    if args.epochs is not None:
        overrides["training.epochs"] = args.epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.data:
        overrides["data.root"] = args.data

    def train():
        cfg = load_settings(args.config, args.set, overrides)
        if args.split is not None and not args.split.is_dir():
            raise FileNotFoundError(f"{args.split}: no such split folder "
                                    "(make one with `python -m src.data.splits`)")
        run(cfg, Path(args.out), args.split, args.backbone_mode, args.backbone_init)

    return run_command(train)


if __name__ == "__main__":
    sys.exit(main())
