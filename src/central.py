"""Centralized training: the pooled-data reference every federated run is compared with,
and the "public" pretrained backbone a federation starts from.

`run` trains on the train split (or on exactly what a split's sites hold: the union
of their train manifests with each image's labels as the site has them), evaluates
on the held-out test split, writes metrics.json and model.keras (with the segmentation
head on, `test.miou` and `test.per_class_iou` over the test images that have masks).

`pretrain` stands in for COCO-pretrained weights, which this machine may not
download: `run` on a public synthetic slice that no site holds (same generator, its
own seed `pretrain.seed`, so its images are disjoint from the sites'), then the
backbone's weights saved as an .npz keyed by variable path (`pretrain.checkpoint`).
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import keras

from src.atomic_files import save_model_atomically
from src.data.datasets import load_data
from src.data.pipeline import pipeline_options, training_dataset
from src.evaluation import Predictor, score_predictions
from src.model import build_model
from src.settings import model_config
from src.task_groups import (group_sample_counts, load_group_weights, model_groups, save_group_weights,
                              starts_from_checkpoint, tasks_of)
from src.training import Trainer, train_options

log = logging.getLogger("central")


def set_seed(seed: int):
    """Seed Python, numpy and TF so a run is reproducible from its seed."""
    keras.utils.set_random_seed(seed)


def run(cfg: dict, out_dir: Path, split_dir: Path | None = None, backbone_mode: str = "joint",
        backbone_init: str = "checkpoint") -> dict:
    """Train on every label of the data set (or of `split_dir`'s sites), test, save.

    backbone_mode / backbone_init mean what they mean in the federation's plan
    (src/task_groups.py), so a federation and its centralized reference start alike:
    the backbone starts from the settings' pretrain.checkpoint unless `scratch`, and
    `frozen` keeps it fixed."""
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
    checkpoint = cfg["pretrain"]["checkpoint"] if starts_from_checkpoint(backbone_mode, backbone_init) else None
    if checkpoint:
        load_group_weights(model, checkpoint)
        log.info("backbone starts from %s (%s)", checkpoint, "fixed" if backbone_mode == "frozen" else "trained")
    if backbone_mode == "frozen":
        groups = list(group_sample_counts(splits["train"], backbone_mode="frozen", groups=model_groups(model)))
    trainer = Trainer(model, mcfg, topts, steps_per_epoch=steps, groups=groups)
    predictor = Predictor(model, mcfg, **cfg.get("evaluation", {}))
    names = {"mask_class_names": cfg["classes"]["mask"]} if mcfg.num_mask_classes else {}
    history = []
    for epoch in range(topts.epochs):
        losses = trainer.train_epoch(train_ds, epoch)
        entry = {"epoch": epoch + 1, "train": losses}
        if splits["val"]:
            with trainer.averaged_weights():
                entry["val"] = score_predictions(predictor.predict(splits["val"]), splits["val"], mcfg, **names)
        history.append(entry)
        val = entry.get("val", {})
        log.info("epoch %d/%d loss %.3f (det %.3f, disaster %.3f) %.1f img/s | val mAP50 %.3f acc %.3f",
                 epoch + 1, topts.epochs, losses["loss"], losses["detection"], losses["disaster"],
                 losses["images_per_s"], val.get("map50", float("nan")), val.get("accuracy", float("nan")))
    trainer.finish()  # the model tested and saved holds the weights' moving average (training.ema_decay)
    train_wall = time.perf_counter() - start
    test = score_predictions(predictor.predict(splits["test"], progress=True), splits["test"], mcfg, **names)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.keras"
    save_model_atomically(model, model_path)
    result = {
        "test": test, "epochs": topts.epochs, "seed": cfg["seed"],
        "wall_s": time.perf_counter() - start, "train_wall_s": train_wall,
        "images": {k: len(v) for k, v in splits.items()},
        "labels": {task.name: sum(bool(getattr(r, task.label)) for r in splits["train"])
                   for task in tasks_of(model_groups(model))},
        "split": str(split_dir) if split_dir else None,
        "backbone_mode": backbone_mode, "backbone_init": backbone_init, "backbone_checkpoint": checkpoint,
        "model": mcfg.to_dict(), "parameters": int(model.count_params()),
        "history": history, "model_path": str(model_path),
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    log.info("test: mAP50 %.3f mAP50-95 %.3f accuracy %.3f macro-F1 %.3f | wall %.0f s -> %s",
             test.get("map50", float("nan")), test.get("map50_95", float("nan")),
             test.get("accuracy", float("nan")), test.get("macro_f1", float("nan")),
             result["wall_s"], out_dir / "metrics.json")
    if mcfg.num_mask_classes:
        log.info("test segmentation: mIoU %s over %d images", test.get("miou"), test.get("segmentation_images", 0))
    return result


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
    result = run(public, out_dir, backbone_init="scratch")
    model = keras.saving.load_model(result["model_path"], compile=False)
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
    info = {"made_by": "make pretrain-backbone (python -m src.cli.pretrain_backbone)",
            "seed": result["seed"], "epochs": result["epochs"], "images": result["images"],
            "model": result.get("model"), "wall_s": round(result["wall_s"], 1),
            "public_test": {k: test.get(k) for k in ("map50", "map50_95", "accuracy", "macro_f1")}}
    path = Path(checkpoint).with_suffix(".json")
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path
