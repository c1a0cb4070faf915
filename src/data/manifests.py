"""Per-site split manifests: which images a site holds and which labels it has.

A site's data folder (what plan/data.yaml maps a collaborator to) holds:
  site.yaml     where the images are: `data_root` (a YOLO-layout folder, the
                built-in synthetic set) or `sources` (a sources.yaml combining
                real formats, see src/data/sources.py); relative to the folder or absolute
  manifest.tsv  image<TAB>split<TAB>boxes<TAB>class
                split: train | val | pool (pool = held by the site, not yet
                labeled: the active-learning pool); boxes/class: 0/1, which
                labels the site holds for that image
The images stay where they are; the manifest only names them, so the default
split is a few KB in git and the images are regenerated from the seed.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from src.data.readers import DataError, load_yolo_dataset

MANIFEST_COLUMNS = ("image", "split", "boxes", "class")
SPLITS = ("train", "val", "pool")


@dataclass(frozen=True)
class SiteData:
    name: str
    train: list
    val: list
    pool: list = ()

    @property
    def has_boxes(self) -> bool:
        return any(r.has_boxes for r in self.train)

    @property
    def has_class(self) -> bool:
        return any(r.has_class for r in self.train)


def write_site(folder: Path, name: str, data_root: str | None, rows: list[tuple[str, str, int, int]],
               sources: str | None = None):
    """Write site.yaml + manifest.tsv. data_root / sources: absolute, or relative to the site folder."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"site": name, "sources": str(sources)} if sources else \
        {"site": name, "data_root": str(data_root), "format": "yolo"}
    (folder / "site.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    with open(folder / "manifest.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(MANIFEST_COLUMNS)
        w.writerows(rows)


def read_manifest(path: Path) -> list[tuple[str, str, bool, bool]]:
    """Rows of a manifest; a malformed row is a DataError naming file and line."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if tuple(header or ()) != MANIFEST_COLUMNS:
            raise DataError(f"{path}: line 1: header must be {'<TAB>'.join(MANIFEST_COLUMNS)}, got {header}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 4 or row[1] not in SPLITS or row[2] not in ("0", "1") or row[3] not in ("0", "1"):
                raise DataError(f"{path}: line {line}: expected image, train|val|pool, 0|1, 0|1; got {row}")
            rows.append((row[0], row[1], row[2] == "1", row[3] == "1"))
    return rows


def relative_path(target, start) -> str:
    """target relative to start, so a split folder moved with its data still resolves;
    absolute when the two share no root."""
    target, start = Path(target).resolve(), Path(start).resolve()
    try:
        return os.path.relpath(target, start)
    except ValueError:
        return str(target)


def _resolve(folder: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else folder / path


def load_records(folder: Path, meta: dict, keys, victim_classes, disaster_classes,
                 on_error: str = "raise") -> dict:
    """{image key: Record} for the keys a manifest names, from `data_root` or `sources`."""
    where = folder / "site.yaml"
    if meta.get("sources"):
        from src.data.sources import load_sources

        spec = _resolve(folder, meta["sources"])
        if not spec.exists():
            raise FileNotFoundError(f"{where}: sources file {spec} not found")
        per_source, _ = load_sources(spec, victim_classes, disaster_classes, on_error=on_error, only=set(keys))
        return {r.key: r for records in per_source.values() for r in records}
    root = _resolve(folder, meta.get("data_root", ""))
    if not (root / "images").is_dir():
        raise FileNotFoundError(f"{where}: data_root {root} has no images/ folder "
                                "(generate the synthetic data with `make data`)")
    records, _ = load_yolo_dataset(root, victim_classes, disaster_classes, on_error=on_error, only=set(keys))
    return {Path(r.image_path).relative_to(root).as_posix(): r for r in records}


def load_site(folder, victim_classes, disaster_classes, on_error: str = "raise") -> SiteData:
    """Records of one site, with label flags masked to what the site holds."""
    folder = Path(folder)
    site_file = folder / "site.yaml"
    if not site_file.exists():
        raise FileNotFoundError(f"{site_file}: missing (a site folder needs site.yaml and manifest.tsv)")
    meta = yaml.safe_load(site_file.read_text()) or {}
    rows = read_manifest(folder / "manifest.tsv")
    by_key = load_records(folder, meta, [row[0] for row in rows], victim_classes, disaster_classes, on_error)
    parts = {split: [] for split in SPLITS}
    for image, split, boxes, cls in rows:
        if image not in by_key:
            if on_error == "skip":
                continue
            raise DataError(f"{folder / 'manifest.tsv'}: image {image} not found ({site_file})")
        r = by_key[image]
        masked = replace(r, has_boxes=r.has_boxes and boxes, has_class=r.has_class and cls,
                         disaster_class=r.disaster_class if (r.has_class and cls) else -1)
        parts[split].append(masked)
    return SiteData(meta.get("site", folder.name), parts["train"], parts["val"], parts["pool"])


def load_test_split(split_dir, victim_classes, disaster_classes, default_data_root=None,
                    on_error: str = "raise") -> list:
    """The global test split a split folder names (test.tsv), from its split.yaml's data."""
    split_dir = Path(split_dir)
    meta_file = split_dir / "split.yaml"
    meta = (yaml.safe_load(meta_file.read_text()) or {}) if meta_file.exists() else {}
    if not meta.get("sources") and not meta.get("data_root"):
        if default_data_root is None:
            raise FileNotFoundError(f"{meta_file}: missing, and no default data root given")
        meta = {"data_root": str(Path(default_data_root).resolve())}
    keys = [line for line in (split_dir / "test.tsv").read_text(encoding="utf-8").splitlines()[1:] if line]
    by_key = load_records(split_dir, meta, keys, victim_classes, disaster_classes, on_error)
    missing = [k for k in keys if k not in by_key]
    if missing and on_error == "raise":
        raise DataError(f"{split_dir / 'test.tsv'}: {len(missing)} image(s) not found, e.g. {missing[:3]}")
    return [by_key[k] for k in keys if k in by_key]


def dirichlet_partition(labels: np.ndarray, num_sites: int, alpha: float, seed: int,
                        rounding: str = "floor") -> list[np.ndarray]:
    """Indices per site; each class is spread over sites by Dirichlet(alpha) shares.

    Small alpha = strongly skewed (non-IID) class mixes. Every site gets at
    least one image of the data (re-drawn otherwise). rounding="floor" (how the
    committed default split was made) rounds every cut down, which hands the
    last site the remainders: with a handful of images per class the last site
    gets nearly all. "nearest" has no such bias (the split builder uses it).
    """
    if rounding not in ("floor", "nearest"):
        raise ValueError(f"rounding must be 'floor' or 'nearest', got {rounding!r}")
    to_int = np.floor if rounding == "floor" else np.round
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts = [[] for _ in range(num_sites)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet([alpha] * num_sites)
            cuts = to_int(np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if all(len(p) > 0 for p in parts):
            return [np.array(sorted(p)) for p in parts]
    raise ValueError(f"could not give every one of {num_sites} sites data with alpha={alpha}")
