"""Per-site split manifests: which images a site holds and which labels it has.

A site's data folder (what plan/data.yaml maps a collaborator to) holds:
  site.yaml     data_root (relative to the folder or absolute), format
  manifest.tsv  image<TAB>split<TAB>boxes<TAB>class   (split: train|val; 0/1 flags)
The images stay where they are; the manifest only names them, so the default
split is a few KB in git and the images are regenerated from the seed.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from src.data.readers import DataError, load_yolo_dataset

MANIFEST_COLUMNS = ("image", "split", "boxes", "class")


@dataclass(frozen=True)
class SiteData:
    name: str
    train: list
    val: list

    @property
    def has_boxes(self) -> bool:
        return any(r.has_boxes for r in self.train)

    @property
    def has_class(self) -> bool:
        return any(r.has_class for r in self.train)


def write_site(folder: Path, name: str, data_root: str, rows: list[tuple[str, str, int, int]]):
    """Write site.yaml + manifest.tsv. data_root: absolute, or relative to the site folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.yaml").write_text(yaml.safe_dump(
        {"site": name, "data_root": str(data_root), "format": "yolo"}, sort_keys=False))
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
            if len(row) != 4 or row[1] not in ("train", "val") or row[2] not in "01" or row[3] not in "01":
                raise DataError(f"{path}: line {line}: expected image, train|val, 0|1, 0|1; got {row}")
            rows.append((row[0], row[1], row[2] == "1", row[3] == "1"))
    return rows


def load_site(folder, victim_classes, disaster_classes, on_error: str = "raise") -> SiteData:
    """Records of one site, with label flags masked to what the site holds."""
    folder = Path(folder)
    site_file = folder / "site.yaml"
    if not site_file.exists():
        raise FileNotFoundError(f"{site_file}: missing (a site folder needs site.yaml and manifest.tsv)")
    meta = yaml.safe_load(site_file.read_text()) or {}
    root = Path(meta.get("data_root", ""))
    root = root if root.is_absolute() else (folder / root)
    if not (root / "images").is_dir():
        raise FileNotFoundError(f"{site_file}: data_root {root} has no images/ folder "
                                "(generate the synthetic data with `make data`)")
    rows = read_manifest(folder / "manifest.tsv")
    records, report = load_yolo_dataset(root, victim_classes, disaster_classes, on_error=on_error,
                                        only={row[0] for row in rows})
    by_name = {Path(r.image_path).relative_to(root).as_posix(): r for r in records}
    train, val = [], []
    for image, split, boxes, cls in rows:
        if image not in by_name:
            if on_error == "skip":
                continue
            raise DataError(f"{folder / 'manifest.tsv'}: image {image} not found under {root}")
        r = by_name[image]
        masked = replace(r, has_boxes=r.has_boxes and boxes, has_class=r.has_class and cls,
                         disaster_class=r.disaster_class if (r.has_class and cls) else -1)
        (train if split == "train" else val).append(masked)
    return SiteData(meta.get("site", folder.name), train, val)


def dirichlet_partition(labels: np.ndarray, num_sites: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Indices per site; each class is spread over sites by Dirichlet(alpha) shares.

    Small alpha = strongly skewed (non-IID) class mixes. Every site gets at
    least one image of the data (re-drawn otherwise).
    """
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts = [[] for _ in range(num_sites)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet([alpha] * num_sites)
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if all(len(p) > 0 for p in parts):
            return [np.array(sorted(p)) for p in parts]
    raise ValueError(f"could not give every one of {num_sites} sites data with alpha={alpha}")
