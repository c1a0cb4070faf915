"""Per-site splits of the built-in (synthetic) data set: the default federation's sites.

The global test split and the union of the sites' train (and val) images
are exactly the centralized trainer's test/train/val splits (same seed,
same fractions), so federated and centralized runs compare on equal terms.
Disaster classes are spread over sites by Dirichlet(alpha): non-IID.
Sites differ in what they labeled (`labels`, one per site, cycled): `both`,
`boxes` (detection only), `class` (disaster classification only), `masks`
(segmentation only), `all`, or any '+'-joined subset (`boxes+masks`); the
default federation is heterogeneous: site1 both, site2 boxes, site3 class.
With a seed fraction F < 1 only F of each site's training images start
labeled (`train` rows, the active-learning seed); the rest are its `pool`.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from src.data.formats import load_yolo_dataset
from src.data.splits.output import write_split
from src.data.splits.partition import (SplitError, dirichlet_partition, manifest_rows, sparse_class_warnings,
                                       trained_classes)
from src.data.splits.stratified import record_groups, stratified_split
from src.data.synthetic import scene_groups

LABEL_KINDS = ("boxes", "class", "masks")  # the manifest's flag columns, in order
LABEL_SETS = {"both": (1, 1, 0), "boxes": (1, 0, 0), "class": (0, 1, 0), "masks": (0, 0, 1),
              "all": (1, 1, 1)}  # -> manifest (boxes, class, masks)
DEFAULT_LABELS = ("both", "boxes", "class")

log = logging.getLogger(__name__)


def label_flags(label_set: str) -> tuple[int, int, int]:
    """A label set's manifest flags (boxes, class, masks): a name of LABEL_SETS or a '+'-joined
    subset of LABEL_KINDS ('boxes+masks')."""
    if label_set in LABEL_SETS:
        return LABEL_SETS[label_set]
    kinds = label_set.split("+")
    if len(kinds) < 2 or len(set(kinds)) != len(kinds) or not set(kinds) <= set(LABEL_KINDS):
        raise SplitError(f"--labels must be from {sorted(LABEL_SETS)} or a '+'-joined subset of {list(LABEL_KINDS)} "
                         f"(e.g. boxes+masks), got {label_set!r}")
    return tuple(int(kind in kinds) for kind in LABEL_KINDS)


def site_labels(num_sites: int, labels=DEFAULT_LABELS) -> list[str]:
    """The label set of each site: `labels` cycled over the sites."""
    labels = list(labels)
    if not labels:
        raise SplitError(f"--labels must name label sets from {sorted(LABEL_SETS)}, got {labels}")
    for label_set in labels:
        label_flags(label_set)
    return [labels[i % len(labels)] for i in range(num_sites)]


def _partition_scenes(records: list, scene_of: dict | None, num_sites: int, alpha: float,
                      seed: int) -> list[np.ndarray]:
    """dirichlet_partition over scenes: a burst of frames stays at one site, as it would.
    scene_of: image path -> scene (None: every image its own scene)."""
    groups = None if scene_of is None else [scene_of[r.image_path] for r in records]
    members = list(record_groups(groups, len(records)).values())
    labels = np.array([records[idx[0]].disaster_class for idx in members])
    parts = dirichlet_partition(labels, num_sites, alpha, seed)
    return [np.array(sorted(i for g in part for i in members[g]), int) for part in parts]


def build_site_splits(cfg: dict, out_dir: Path, num_sites: int, alpha: float, seed: int,
                      labels=DEFAULT_LABELS, seed_fraction: float = 1.0) -> list[dict]:
    """Write one folder per site plus test.tsv; returns a per-site summary.
    The partition does not depend on seed_fraction: the same seed gives the same
    sites with all (1.0) or part of their training images labeled."""
    root = Path(cfg["data"]["root"])
    if num_sites < 1 or not alpha > 0 or not 0 < seed_fraction <= 1:
        raise SplitError(f"need --sites >= 1, --alpha > 0 and --seed-fraction in (0, 1]; got {num_sites}, "
                         f"{alpha} and {seed_fraction}")
    names = [f"site{i + 1}" for i in range(num_sites)]
    label_sets = dict(zip(names, site_labels(num_sites, labels)))
    if not (root / "images").is_dir():
        raise SplitError(f"{root}: the built-in data set is not there (no images/ folder); generate it with "
                         f"`make data` or `python -m src.data.synthetic --out {root}`")
    records, _ = load_yolo_dataset(root, cfg["classes"]["victim"], cfg["classes"]["disaster"],
                                   mask_classes=cfg["classes"].get("mask"))
    masked_sites = [name for name, label_set in label_sets.items() if label_flags(label_set)[2]]
    if masked_sites and not any(r.has_mask for r in records):
        raise SplitError(f"{root}: no image has a mask (no masks/ folder), but site(s) {masked_sites} hold masks; "
                         f"regenerate the data set (`make data`, or `python -m src.data.synthetic --out {root}`)")
    scenes = scene_groups(root, [r.image_path for r in records])
    scene_of = None if scenes is None else dict(zip((r.image_path for r in records), scenes))
    splits = stratified_split(records, cfg["data"]["test_fraction"], cfg["data"]["val_fraction"],
                              cfg["seed"], scenes)
    rel = lambda r: Path(r.image_path).relative_to(root).as_posix()  # noqa: E731
    rows = {n: [] for n in names}
    seed_rng = np.random.default_rng([seed, 7])
    for split in ("train", "val"):
        try:
            parts = _partition_scenes(splits[split], scene_of, num_sites, alpha, seed + (split == "val"))
        except SplitError as err:
            raise SplitError(f"{split} split ({len(splits[split])} images of {root}): {err}"
                             + ("; or a larger data.val_fraction" if split == "val" else "")) from err
        for name, idx in zip(names, parts):
            keys = [rel(splits[split][i]) for i in idx]
            rows[name] += manifest_rows(keys, split, label_flags(label_sets[name]), seed_fraction, seed_rng)
    class_names = cfg["classes"]["disaster"]
    by_path = {rel(r): r for r in records}
    for warning in sparse_class_warnings(trained_classes(rows, by_path), class_names,
                                         "Another --seed or a larger --alpha"):
        log.warning(warning)
    summary = []
    for name in names:
        hist = Counter(class_names[by_path[img].disaster_class] for img, split, *_ in rows[name]
                       if split == "train")
        summary.append({"site": name, "labels": label_sets[name],
                        "train": sum(s == "train" for _, s, *_ in rows[name]),
                        "pool": sum(s == "pool" for _, s, *_ in rows[name]),
                        "val": sum(s == "val" for _, s, *_ in rows[name]),
                        "classes": {c: hist.get(c, 0) for c in class_names}})
    settings = {"alpha": alpha, "seed": seed, "labels": list(labels), "seed_fraction": seed_fraction,
                "test_fraction": cfg["data"]["test_fraction"], "val_fraction": cfg["data"]["val_fraction"],
                "test_images": len(splits["test"])}
    write_split(out_dir, rows, [rel(r) for r in splits["test"]], summary, settings, data_root=root)
    return summary


def format_summary(summary: list[dict]) -> str:
    """One line per site: label set, image counts and its training images' class histogram."""
    return "\n".join(f"{s['site']} ({s['labels']}): {s['train']} train, {s['pool']} pool, {s['val']} val | "
                     + ", ".join(f"{k} {v}" for k, v in s["classes"].items()) for s in summary)
