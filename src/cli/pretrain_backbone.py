"""The "public" pretrained backbone that backbone_mode `frozen` starts from.

python -m src.cli.pretrain_backbone [--config configs/default.yaml] [--epochs N] [--set key=value ...]

Stands in for COCO-pretrained weights, which this machine may not download:
the centralized trainer learns both tasks on a public synthetic slice that
no site holds (same generator, its own seed `pretrain.seed`, so its images
are disjoint from the sites' data set), and the backbone's weights are saved
as an .npz keyed by variable path (`pretrain.checkpoint`). A federation in
`frozen` mode then only trains and exchanges neck, det_head and cls_head.
Input it cannot use ends the command with one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from src.central import pretrain
from src.cli.command import load_settings, positive_int, run_command


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None)
    p.add_argument("--epochs", type=positive_int, help="override pretrain.epochs")
    p.add_argument("--out", default="workspace/runs/pretrain", help="output folder (metrics, model)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {"pretrain.epochs": args.epochs} if args.epochs else {}
    return run_command(lambda: pretrain(load_settings(args.config, args.set, overrides), Path(args.out)))


if __name__ == "__main__":
    sys.exit(main())
