"""Per-site splits of user data: one or more sources (a sources.yaml) dealt out to sites.

Steps, all seeded:
1. a global test split (stratified by disaster class where known), never at a site;
2. the rest into train/val, each partitioned over the sites by the strategy:
   `iid` (equal shares), `dirichlet:ALPHA` (each disaster class spread by
   Dirichlet(ALPHA) shares: small ALPHA = non-IID), `by-source` (each source
   is a site: the disjoint-data-sets case), `task-disjoint` (equal shares, but
   odd sites keep only box labels and even sites only class labels);
3. per site, a seed fraction of its training images start labeled (split
   `train`); the rest form its active-learning pool (split `pool`).
A split that leaves a site without labeled training data is refused. Copies of
one picture in several sources are merged first (src/data/duplicates.py), so a
picture sits in one place only: in test, or at one site.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from src.data.duplicates import Merges, merge_duplicates
from src.data.sources import split_record_key
from src.data.splits.output import write_split
from src.data.splits.partition import (SplitError, dirichlet_partition, manifest_rows, sparse_class_warnings,
                                       trained_classes)
from src.data.splits.stratified import stratified_split

PARTITION_STRATEGIES = ("iid", "dirichlet:ALPHA", "by-source", "task-disjoint")
DEFAULT_SITES = 3

log = logging.getLogger(__name__)


def parse_strategy(text: str) -> tuple[str, float | None]:
    """'dirichlet:0.5' -> ('dirichlet', 0.5); 'iid' -> ('iid', None); SplitError otherwise."""
    if text.startswith("dirichlet:"):
        try:
            alpha = float(text.split(":", 1)[1])
        except ValueError as e:
            raise SplitError(f"strategy {text!r}: ALPHA must be a number, e.g. dirichlet:0.5") from e
        if alpha <= 0:
            raise SplitError(f"strategy {text!r}: ALPHA must be > 0")
        return "dirichlet", alpha
    if text in ("iid", "by-source", "task-disjoint"):
        return text, None
    raise SplitError(f"unknown strategy {text!r}; choose one of {PARTITION_STRATEGIES}")


def _partition(keys: list[str], records: dict, sources: dict, site_names: list[str], kind: str,
               alpha: float | None, seed: int) -> list[list[str]]:
    """Keys per site for one split (train or val); by-source: the sites are the sources."""
    rng = np.random.default_rng(seed)
    num_sites = len(site_names)
    if kind == "by-source":
        return [sorted(k for k in keys if sources[k] == name) for name in site_names]
    if kind == "dirichlet":
        labels = np.array([records[k].disaster_class for k in keys])  # -1 (no class) is one more group
        parts = dirichlet_partition(labels, num_sites, alpha, seed, rounding="nearest")
        return [[keys[i] for i in part] for part in parts]
    order = rng.permutation(len(keys))
    return [sorted(keys[i] for i in chunk) for chunk in np.array_split(order, num_sites)]


def check_settings(strategy: str, num_sites: int | None, test_fraction: float, val_fraction: float,
                   seed_fraction: float) -> tuple[str, float | None]:
    """The parsed strategy; SplitError for settings no data can satisfy (checked before reading any)."""
    kind, alpha = parse_strategy(strategy)
    if num_sites is not None and num_sites < 1:
        raise SplitError(f"--sites must be at least 1, got {num_sites}")
    if not 0 < seed_fraction <= 1:
        raise SplitError(f"--seed-fraction must be in (0, 1], got {seed_fraction}")
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise SplitError(f"--test-fraction {test_fraction} and --val-fraction {val_fraction} must each be in "
                         "[0, 1) and leave some images for training")
    return kind, alpha


def _site_names(per_source: dict, kind: str, num_sites: int | None) -> list[str]:
    """The sites: one per source for by-source (refused when that is not what was asked), else site1..N."""
    if kind != "by-source":
        num_sites = DEFAULT_SITES if num_sites is None else num_sites
        return [f"site{i + 1}" for i in range(num_sites)]
    names = sorted(per_source)
    if num_sites is None and len(names) == 1:
        raise SplitError(f"strategy 'by-source' makes one site per source, and the spec has one source "
                         f"({names[0]}): a federation of one site. Pass --sites 1 if that is meant, or deal "
                         "the source over several sites with iid or dirichlet:ALPHA")
    if num_sites is not None and num_sites != len(names):
        raise SplitError(f"strategy 'by-source' makes one site per source: {len(names)} source(s) {names} "
                         f"cannot make {num_sites} sites; leave out --sites, or deal the images over "
                         f"{num_sites} sites with iid or dirichlet:ALPHA")
    return names


def build_split(per_source: dict, out_dir: Path, sources_file: Path, num_sites: int | None = None,
                strategy: str = "dirichlet:0.5", test_fraction: float = 0.15, val_fraction: float = 0.05,
                seed_fraction: float = 1.0, seed: int = 0, class_names=None) -> tuple[list[dict], Merges]:
    """Write site folders, test.tsv and split.yaml; returns the per-site summary rows and the
    copies of one picture that were merged (src/data/duplicates.py), so that no picture is
    both in test and at a site, or at two sites. num_sites: default 3, for by-source one
    site per source."""
    kind, alpha = check_settings(strategy, num_sites, test_fraction, val_fraction, seed_fraction)
    site_names = _site_names(per_source, kind, num_sites)
    per_source, merges = merge_duplicates(per_source, class_names)
    records = {r.key: r for recs in per_source.values() for r in recs}  # SourceRecord keys
    source_of = {key: split_record_key(key)[0] for key in records}
    if not records:
        raise SplitError("no images in any source")
    parts = stratified_split([records[k] for k in sorted(records)], test_fraction, val_fraction, seed)
    split_keys = {name: [r.key for r in parts[name]] for name in ("train", "val", "test")}
    rows = {name: [] for name in site_names}
    rng = np.random.default_rng(seed + 7)
    for split, split_seed in (("train", seed), ("val", seed + 1)):
        try:
            chunks = _partition(split_keys[split], records, source_of, site_names, kind, alpha, split_seed)
        except SplitError as err:
            raise SplitError(f"{split} split ({len(split_keys[split])} images): {err}; or the iid strategy"
                             + (", or a larger --val-fraction" if split == "val" else "")) from err
        for index, (site, chunk) in enumerate(zip(site_names, chunks)):
            boxes, cls = 1, 1
            if kind == "task-disjoint":
                boxes, cls = (1, 0) if index % 2 == 0 else (0, 1)
            rows[site] += manifest_rows(chunk, split, (boxes, cls), seed_fraction, rng)
    summary = [site_summary(site, rows[site], records, class_names) for site in site_names]
    empty = [s["site"] for s in summary if s["train"] == 0 or not (s["labels"]["boxes"] or s["labels"]["class"])]
    if empty:
        raise SplitError(f"split {strategy!r} leaves site(s) {empty} without labeled training data "
                         f"({len(records)} images over {len(site_names)} sites): use fewer sites, more data, "
                         "a larger ALPHA or --seed-fraction")
    for warning in sparse_class_warnings(trained_classes(rows, records), class_names or [],
                                         "Another --seed, a larger dirichlet ALPHA or the iid strategy"):
        log.warning(warning)
    settings = {"strategy": strategy, "seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
                "seed_fraction": seed_fraction, "test_images": len(split_keys["test"]),
                "duplicates": merges.as_dict()}
    write_split(out_dir, rows, sorted(split_keys["test"]), summary, settings, sources=sources_file,
                same_picture=merges.same_picture)
    return summary, merges


def site_summary(site: str, rows: list, records: dict, class_names=None) -> dict:
    """A site's counts: images per split, labeled images and boxes, its training class histogram."""
    held = [(records[k], split, boxes, cls) for k, split, boxes, cls in rows]
    train = [(r, b, c) for r, split, b, c in held if split == "train"]
    hist = Counter(r.disaster_class for r, _, c in train if c and r.has_class)
    names = class_names or sorted(hist)
    return {
        "site": site,
        "train": len(train), "val": sum(s == "val" for _, s, _, _ in held),
        "pool": sum(s == "pool" for _, s, _, _ in held),
        "boxes": int(sum(len(r.boxes) for r, b, _ in train if b and r.has_boxes)),
        "labels": {"boxes": sum(1 for r, b, _ in train if b and r.has_boxes),
                   "class": sum(1 for r, _, c in train if c and r.has_class)},
        "classes": {(names[i] if class_names else i): hist.get(i, 0) for i in range(len(names))}
        if class_names else dict(hist),
    }


def format_table(summary: list[dict]) -> str:
    """The per-site summary as a right-aligned table, one row per site."""
    classes = list(summary[0]["classes"]) if summary else []
    head = ["site", "train", "val", "pool", "with boxes", "boxes", "with class"] + [str(c) for c in classes]
    lines = ["  ".join(f"{h:>10}" for h in head)]
    for s in summary:
        cells = [s["site"], s["train"], s["val"], s["pool"], s["labels"]["boxes"], s["boxes"], s["labels"]["class"]]
        cells += [s["classes"][c] for c in classes]
        lines.append("  ".join(f"{str(c):>10}" for c in cells))
    return "\n".join(lines)
