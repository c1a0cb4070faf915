"""The train/val/test record lists a run trains and scores on, from the data set or a site split.

The centralized trainer and the deployment tools (calibration, reports) read
data the same way through here: the built-in data set (generated when absent)
cut by ``stratified_split``, or with a split folder the union of what its
sites hold (the sites its split.yaml lists) plus its test.tsv.
"""
from __future__ import annotations

import logging
from pathlib import Path

from src.data.formats import load_yolo_dataset
from src.data.manifests import load_site, load_test_split, split_sites
from src.data.splits.stratified import stratified_split
from src.data.synthetic import generate_from_config, scene_groups

log = logging.getLogger(__name__)


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
                                        on_error=d.get("on_error", "raise"), mask_classes=cfg["classes"].get("mask"))
    if report.skipped:
        log.warning(report.summary())
    return stratified_split(records, d["test_fraction"], d["val_fraction"], cfg["seed"],
                            scene_groups(root, [r.image_path for r in records]))


def load_split_union(cfg: dict, split_dir: Path) -> dict:
    """train/val: the union of a split's sites (those its split.yaml lists, labels as the sites
    hold them); test: test.tsv."""
    victim, disaster, mask = cfg["classes"]["victim"], cfg["classes"]["disaster"], cfg["classes"].get("mask")
    on_error = cfg["data"].get("on_error", "raise")
    sites = [load_site(split_dir / name, victim, disaster, on_error=on_error, mask_classes=mask)
             for name in split_sites(split_dir)]
    for s in sites:
        log.info("site %s: %d train images, %d with boxes, %d with a disaster label, %d with a mask", s.name,
                 len(s.train), sum(r.has_boxes for r in s.train), sum(r.has_class for r in s.train),
                 sum(r.has_mask for r in s.train))
    return {"train": [r for s in sites for r in s.train], "val": [r for s in sites for r in s.val],
            "test": load_test_split(split_dir, victim, disaster, default_data_root=cfg["data"]["root"],
                                    on_error=on_error, mask_classes=mask)}
