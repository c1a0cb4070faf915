"""Command line of `python -m tools.darknet`: yolov3.weights -> a `full` model saved as .keras.

The saved file records how its heads decode (YOLOv3's centres when det_head is
loaded), so whoever loads it decodes the boxes where Darknet puts them. Input it
cannot use ends the command with one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from src.cli.command import positive_int, run_command
from tools.darknet.class_map import COCO_CLASSES
from tools.darknet.convert import load_darknet_weights
from tools.darknet.layout import DARKNET_PARTS
from tools.darknet.weights_file import DEFAULT_WEIGHTS_PATH, inspect_darknet_file

# --------------------------------------------------------------------------- CLI

def _class_map_from_args(pairs, victim_names) -> dict:
    """--class-map COCO=OURS pairs (OURS a victim name or index); default: same names."""
    if not pairs:
        return {name: i for i, name in enumerate(victim_names) if name in COCO_CLASSES}
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--class-map expects coco_class=our_class, got {pair!r}")
        coco, ours = (s.strip() for s in pair.split("=", 1))
        key = int(coco) if coco.isdigit() else coco
        if ours.isdigit():
            out[key] = int(ours)
        elif ours in victim_names:
            out[key] = list(victim_names).index(ours)
        else:
            raise ValueError(f"--class-map: {ours!r} is not a victim class {list(victim_names)}")
    return out


def main(argv=None) -> int:
    """The command line: exit code 0, or 2 with one `error:` line on input it cannot use."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.darknet",
        description="Load Darknet yolov3.weights into the full variant and save it as .keras")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS_PATH),
                        help=f"Darknet weights file (default {DEFAULT_WEIGHTS_PATH})")
    parser.add_argument("--out", required=True, help="output .keras model")
    parser.add_argument("--parts", nargs="+", default=list(DARKNET_PARTS), choices=DARKNET_PARTS)
    parser.add_argument("--config", default=None, help="YAML config (default configs/default.yaml)"
                        "; only its class lists are used")
    parser.add_argument("--input-size", type=positive_int, default=416)
    parser.add_argument("--class-map", nargs="*", default=None, metavar="COCO=OURS",
                        help="e.g. person=person; default: victim classes named like COCO ones")
    parser.add_argument("--match-darknet-bn-epsilon", action="store_true")
    args = parser.parse_args(argv)
    if not args.out.endswith(".keras"):
        parser.error("--out must end in .keras")
    return run_command(lambda: convert(args))


def convert(args) -> dict:
    """Load the Darknet file into a new `full` model and save it, with its decoding, as .keras."""
    from src.settings import load_config
    from src.model import build_model
    from src.model.config import full_variant, record_decode

    info = inspect_darknet_file(args.weights)         # fail fast, before building the model
    cfg = load_config(args.config)
    victims = list(cfg["classes"]["victim"])
    class_map = _class_map_from_args(args.class_map, victims)
    config = full_variant(input_size=args.input_size, num_victim_classes=len(victims),
                          num_disaster_classes=len(cfg["classes"]["disaster"]))
    model = build_model(config)
    summary = load_darknet_weights(model, info["file"], parts=args.parts, class_map=class_map,
                                   match_darknet_bn_epsilon=args.match_darknet_bn_epsilon)
    if summary["centre_range"] is not None:
        config = replace(config, centre_range=summary["centre_range"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    record_decode(out, config)
    summary["model_parameters"] = int(model.count_params())
    summary["out"] = str(out)
    brief = {k: v for k, v in summary.items() if k != "layers_loaded"}
    print(json.dumps(brief, indent=2))
    print(f"loaded {summary['conv_layers_loaded']} conv layers ({summary['bn_layers_loaded']} with "
          f"batch norm), {summary['parameters_loaded']:,} parameters from {summary['file']}; "
          f"skipped parts: {summary['parts_skipped'] + summary['not_in_darknet']}; "
          f"saved {out}", file=sys.stderr)
    return summary
