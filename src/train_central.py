"""Centralized trainer: the pooled-data reference every federated run is compared with.

python -m src.train_central [--config configs/default.yaml] [--epochs N] [--seed S]
    [--out workspace/runs/central] [--split data_splits/NAME] [--set key.sub=value ...]

Generates the synthetic data if it is missing, trains on the train split,
evaluates on the held-out test split, writes metrics.json and model.keras.
With --split it trains on exactly what the federation's sites hold: the union
of their train (val) manifests with each image's labels as the site has them
(a detection-only site's images carry no disaster label), and tests on the
split's test.tsv: the reference a federation on that split compares with.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import keras

from src.atomic_files import save_model_atomically
from src.config import load_config, model_config, pipeline_options, train_options
from src.data.manifests import load_site, load_test_split
from src.data.pipeline import training_dataset
from src.data.readers import load_yolo_dataset
from src.data.splits import stratified_split
from src.data.synthetic import generate_from_config, scene_groups
from src.evaluation import Predictor, score_predictions
from src.model import build_model
from src.task_groups import group_sample_counts, load_group_weights
from src.training import Trainer

log = logging.getLogger("train_central")


def set_seed(seed: int):
    """Seed Python, numpy and TF so a run is reproducible from its seed."""
    keras.utils.set_random_seed(seed)


def load_data(cfg: dict, split_dir: Path | None = None) -> dict:
    """Generate the default data set when absent, read it, split it (or read a site split)."""
    d = cfg["data"]
    root = Path(d["root"])
    if not (root / "dataset.yaml").exists():
        log.info("data set %s missing: generating %d synthetic images", root, d["num_images"])
        generate_from_config(cfg)
    if split_dir is not None:
        return load_split_union(cfg, Path(split_dir))
    records, report = load_yolo_dataset(root, cfg["classes"]["victim"], cfg["classes"]["disaster"],
                                        on_error=d.get("on_error", "raise"))
    if report.skipped:
        log.warning(report.summary())
    return stratified_split(records, d["test_fraction"], d["val_fraction"], cfg["seed"],
                            scene_groups(root, [r.image_path for r in records]))


def load_split_union(cfg: dict, split_dir: Path) -> dict:
    """train/val: the union of a split's sites (labels as the sites hold them); test: test.tsv."""
    victim, disaster = cfg["classes"]["victim"], cfg["classes"]["disaster"]
    on_error = cfg["data"].get("on_error", "raise")
    folders = sorted(p for p in split_dir.iterdir() if (p / "site.yaml").exists())
    if not folders:
        raise FileNotFoundError(f"{split_dir}: no site folders (site.yaml + manifest.tsv)")
    sites = [load_site(f, victim, disaster, on_error=on_error) for f in folders]
    for s in sites:
        log.info("site %s: %d train images, %d with boxes, %d with a disaster label", s.name,
                 len(s.train), sum(r.has_boxes for r in s.train), sum(r.has_class for r in s.train))
    return {"train": [r for s in sites for r in s.train], "val": [r for s in sites for r in s.val],
            "test": load_test_split(split_dir, victim, disaster, default_data_root=cfg["data"]["root"],
                                    on_error=on_error)}


def run(cfg: dict, out_dir: Path, split_dir: Path | None = None,
        frozen_backbone: Path | None = None, init_backbone: Path | None = None) -> dict:
    """frozen_backbone: start from this backbone checkpoint and keep it fixed (the
    centralized counterpart of a federation with backbone_mode frozen);
    init_backbone: start from it and train it (backbone_mode joint, backbone_init checkpoint)."""
    if frozen_backbone is not None and init_backbone is not None:
        raise ValueError("give frozen_backbone or init_backbone, not both")
    start = time.perf_counter()
    set_seed(cfg["seed"])
    splits = load_data(cfg, split_dir)
    log.info("split sizes: %s", {k: len(v) for k, v in splits.items()})
    mcfg = model_config(cfg)
    model = build_model(mcfg)
    log.info("model %s: %d parameters", mcfg.variant, model.count_params())
    popts = pipeline_options(cfg)
    topts = train_options(cfg)
    train_ds = training_dataset(splits["train"], mcfg, popts)
    steps = len(splits["train"]) // popts.batch_size
    groups = None
    if frozen_backbone is not None:
        load_group_weights(model, frozen_backbone)
        groups = list(group_sample_counts(splits["train"], backbone_mode="frozen"))
        log.info("backbone fixed at %s; training %s", frozen_backbone, groups)
    if init_backbone is not None:
        load_group_weights(model, init_backbone)
        log.info("backbone starts from %s (trained)", init_backbone)
    trainer = Trainer(model, mcfg, topts, steps_per_epoch=steps, groups=groups)
    predictor = Predictor(model, mcfg, **cfg.get("evaluation", {}))
    history = []
    for epoch in range(topts.epochs):
        losses = trainer.train_epoch(train_ds, epoch)
        entry = {"epoch": epoch + 1, "train": losses}
        if splits["val"]:
            entry["val"] = score_predictions(predictor.predict(splits["val"]), splits["val"], mcfg)
        history.append(entry)
        val = entry.get("val", {})
        log.info("epoch %d/%d loss %.3f (det %.3f, disaster %.3f) %.1f img/s | val mAP50 %.3f acc %.3f",
                 epoch + 1, topts.epochs, losses["loss"], losses["detection"], losses["disaster"],
                 losses["images_per_s"], val.get("map50", float("nan")), val.get("accuracy", float("nan")))
    train_wall = time.perf_counter() - start
    test = score_predictions(predictor.predict(splits["test"], progress=True), splits["test"], mcfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.keras"
    save_model_atomically(model, model_path)
    result = {
        "test": test, "epochs": topts.epochs, "seed": cfg["seed"],
        "wall_s": time.perf_counter() - start, "train_wall_s": train_wall,
        "images": {k: len(v) for k, v in splits.items()},
        "labels": {"boxes": sum(r.has_boxes for r in splits["train"]),
                   "class": sum(r.has_class for r in splits["train"])},
        "split": str(split_dir) if split_dir else None,
        "frozen_backbone": str(frozen_backbone) if frozen_backbone else None,
        "init_backbone": str(init_backbone) if init_backbone else None,
        "model": mcfg.to_dict(), "parameters": int(model.count_params()),
        "history": history, "model_path": str(model_path),
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    log.info("test: mAP50 %.3f mAP50-95 %.3f accuracy %.3f macro-F1 %.3f | wall %.0f s -> %s",
             test.get("map50", float("nan")), test.get("map50_95", float("nan")),
             test.get("accuracy", float("nan")), test.get("macro_f1", float("nan")),
             result["wall_s"], out_dir / "metrics.json")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default configs/default.yaml)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument("--data", help="override data.root")
    p.add_argument("--out", default="workspace/runs/central", help="output folder")
    p.add_argument("--split", type=Path, help="train on the union of this site split's labels")
    p.add_argument("--frozen-backbone", type=Path, metavar="NPZ",
                   help="start from this backbone checkpoint and keep it fixed (make pretrain-backbone)")
    p.add_argument("--init-backbone", type=Path, metavar="NPZ",
                   help="start from this backbone checkpoint and train it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set model.width=0.5")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.data:
        overrides.append(f"data.root={args.data}")
    cfg = load_config(args.config, overrides)
    run(cfg, Path(args.out), args.split, args.frozen_backbone, args.init_backbone)


if __name__ == "__main__":
    main()
