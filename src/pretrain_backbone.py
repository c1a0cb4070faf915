"""The "public" pretrained backbone that backbone_mode `frozen` starts from.

python -m src.pretrain_backbone [--config configs/default.yaml] [--epochs N] [--set key=value ...]

Stands in for COCO-pretrained weights, which this machine may not download:
the centralized trainer learns both tasks on a public synthetic slice that
no site holds (same generator, its own seed `pretrain.seed`, so its images
are disjoint from the sites' data set), and the backbone's weights are saved
as an .npz keyed by variable path (`pretrain.checkpoint`). A federation in
`frozen` mode then only trains and exchanges neck, det_head and cls_head.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

from src.config import load_config
from src.federated.checkpoint import load_trained_model
from src.task_groups import save_group_weights
from src.train_central import run

log = logging.getLogger("pretrain_backbone")


def public_config(cfg: dict) -> dict:
    """The centralized-trainer config for the public slice (`pretrain` section of the config)."""
    p = cfg["pretrain"]
    if p["seed"] == cfg["seed"] and p["data_root"] == cfg["data"]["root"]:
        raise ValueError("pretrain: the public slice needs its own seed or data_root, "
                         "else it would be the sites' own images")
    public = copy.deepcopy(cfg)
    public["seed"] = p["seed"]
    public["data"].update(root=p["data_root"], num_images=p["num_images"])
    public["training"]["epochs"] = p["epochs"]
    return public


def pretrain(cfg: dict, out_dir: Path) -> dict:
    public = public_config(cfg)
    result = run(public, out_dir)
    model = load_trained_model(Path(result["model_path"]), public)
    path = save_group_weights(model, ["backbone"], cfg["pretrain"]["checkpoint"])
    result["checkpoint"] = str(path)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    write_provenance(result, path)
    log.info("backbone checkpoint -> %s (public slice test mAP50 %.3f, accuracy %.3f)", path,
             result["test"].get("map50", float("nan")), result["test"].get("accuracy", float("nan")))
    return result


def write_provenance(result: dict, checkpoint: Path) -> Path:
    """A JSON file next to the checkpoint saying how it was made and what it scores: the
    repository ships the checkpoint (pretraining takes ~5 min here), so its origin travels with it."""
    test = result["test"]
    info = {"made_by": "make pretrain-backbone (python -m src.pretrain_backbone)",
            "seed": result["seed"], "epochs": result["epochs"], "images": result["images"],
            "model": result.get("model"), "wall_s": round(result["wall_s"], 1),
            "public_test": {k: test.get(k) for k in ("map50", "map50_95", "accuracy", "macro_f1")}}
    path = Path(checkpoint).with_suffix(".json")
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None)
    p.add_argument("--epochs", type=int, help="override pretrain.epochs")
    p.add_argument("--out", default="workspace/runs/pretrain", help="output folder (metrics, model)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = list(args.set) + ([f"pretrain.epochs={args.epochs}"] if args.epochs else [])
    pretrain(load_config(args.config, overrides), Path(args.out))


if __name__ == "__main__":
    main()
