"""`python -m src.data.synthetic --out DIR [--seed S] ...`: write the built-in data set."""
from __future__ import annotations

import argparse
import logging
from typing import Sequence

import yaml

from src.data.synthetic.options import default_class_names, default_mask_classes
from src.data.synthetic.writer import generate_dataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.data.synthetic",
                                     description="Synthetic disaster scenes: the built-in default data set.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-images", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", type=float, default=0.5, help="0 = easy, 1 = classes overlap most")
    parser.add_argument("--min-size", type=int, default=192)
    parser.add_argument("--max-size", type=int, default=256)
    parser.add_argument("--max-victims", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--burst-size", type=int, default=1, help="images per scene (near-duplicate frames)")
    parser.add_argument("--class-weights", type=yaml.safe_load, default=None,
                        help="relative class frequencies, e.g. '{normal: 4, fire: 0.5}' (default: balanced)")
    parser.add_argument("--config", default=None,
                        help="YAML with classes.disaster / victim / mask (default configs/default.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    disaster, victim = default_class_names(args.config)
    generate_dataset(args.out, args.num_images, args.seed, args.min_size, args.max_size, args.difficulty,
                     args.max_victims, args.workers, disaster, victim, args.burst_size, args.class_weights,
                     default_mask_classes(args.config))


if __name__ == "__main__":
    main()
