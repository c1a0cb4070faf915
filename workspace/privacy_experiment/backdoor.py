"""The backdoor attack of the experiment: a poisoned copy of one site's data, and how often it works.

The attacking site trains on its own images as any site does; only its data lie: a
share of its training images whose disaster class is not the target carry a small
checkerboard patch in a corner and are labeled as the target class. A model that
learns the patch reports the target class for any scene that shows it, a flooded
street reported as `normal`, say. The copy is made before the run (a YOLO-layout
folder beside the split, named by the attacker's site.yaml), so nothing in the
federation knows about the attack.

Success is measured on the test split's images whose true class is not the target:
the share the model classifies as the target with the patch stamped on, beside the
same share without it (what the model does anyway).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml
from PIL import Image

from workspace.simulate.fx_workspace import copy_split

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
JPEG_QUALITY = 95  # the patch's cells stay sharp through the JPEG the images are kept in


@dataclass(frozen=True)
class Backdoor:
    """The attack's settings (the experiment file's `backdoor:`)."""
    target: str               # the disaster class the patch should trigger
    patch: int = 16           # side of the square patch, in pixels of the original image
    cell: int = 4             # side of one checkerboard square
    corner: str = "top_left"
    fraction: float = 0.5     # share of the attacker's non-target training images poisoned

    def __post_init__(self):
        if self.corner not in CORNERS:
            raise ValueError(f"backdoor.corner must be one of {CORNERS}, got {self.corner!r}")
        if not (self.patch > 0 and self.cell > 0 and self.patch % self.cell == 0):
            raise ValueError(f"backdoor.patch ({self.patch}) must be a positive multiple of backdoor.cell "
                             f"({self.cell})")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"backdoor.fraction must be in (0, 1], got {self.fraction!r}")


def stamp(image: np.ndarray, backdoor: Backdoor) -> np.ndarray:
    """A copy of an (H, W, 3) uint8 image with the checkerboard in its corner (cropped to the image)."""
    out = np.array(image, copy=True)
    side = min(backdoor.patch, out.shape[0], out.shape[1])
    yy, xx = np.mgrid[:side, :side]
    board = np.where(((yy // backdoor.cell) + (xx // backdoor.cell)) % 2 == 0, 255, 0).astype(out.dtype)
    rows = slice(0, side) if backdoor.corner.startswith("top") else slice(out.shape[0] - side, out.shape[0])
    cols = slice(0, side) if backdoor.corner.endswith("left") else slice(out.shape[1] - side, out.shape[1])
    out[rows, cols] = board[..., None]
    return out


def write_stamped(source: Path, target: Path, backdoor: Backdoor) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as img:
        Image.fromarray(stamp(np.asarray(img.convert("RGB")), backdoor)).save(target, quality=JPEG_QUALITY)


def read_class_table(root: Path) -> dict[str, str]:
    """{image key: disaster class name} of a YOLO-layout folder's classes.tsv."""
    with open(root / "classes.tsv", newline="", encoding="utf-8") as f:
        return {row["image"]: row["disaster_class"] for row in csv.DictReader(f, delimiter="\t")}


def poisoned_split(split_dir: Path, out_dir: Path, site: str, backdoor: Backdoor, seed: int) -> list[str]:
    """Copy the split to out_dir with `site`'s images in a poisoned folder of their own
    (out_dir/poisoned_<site>/, beside the site folders, so a workspace's copy of the
    split leaves it out); returns the keys of the images poisoned.

    Of the site's class-labeled training images whose class is not the target, a
    `fraction` (drawn with `seed`) get the patch and the target class; every other
    image of the site is copied as it is, with its label file and class."""
    from src.data.manifests import read_manifest

    copy_split(split_dir, out_dir)
    site_yaml = out_dir / site / "site.yaml"
    meta = yaml.safe_load(site_yaml.read_text())
    clean = Path(meta["data_root"])
    if not clean.is_absolute():
        raise ValueError(f"{site_yaml}: data_root {clean} should be absolute after the copy")
    classes = read_class_table(clean)
    rows = read_manifest(out_dir / site / "manifest.tsv")
    candidates = sorted(key for key, split, _, has_class in rows
                        if split == "train" and has_class and classes.get(key) not in (None, backdoor.target))
    count = round(backdoor.fraction * len(candidates))
    chosen = set(np.random.default_rng(seed).choice(candidates, size=count, replace=False).tolist()) if count else set()
    poisoned = out_dir / f"poisoned_{site}"
    table = []
    for key, *_ in rows:
        (poisoned / key).parent.mkdir(parents=True, exist_ok=True)
        if key in chosen:
            write_stamped(clean / key, poisoned / key, backdoor)
        else:
            (poisoned / key).write_bytes((clean / key).read_bytes())
        label = Path("labels") / f"{Path(key).stem}.txt"
        if (clean / label).is_file():
            (poisoned / label).parent.mkdir(parents=True, exist_ok=True)
            (poisoned / label).write_bytes((clean / label).read_bytes())
        if key in classes:
            table.append((key, backdoor.target if key in chosen else classes[key]))
    with open(poisoned / "classes.tsv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows([("image", "disaster_class"), *table])
    meta["data_root"] = f"../{poisoned.name}"
    site_yaml.write_text(yaml.safe_dump(meta, sort_keys=False))
    return sorted(chosen)


def stamped_records(records: Sequence, folder: Path, backdoor: Backdoor) -> list:
    """The records with their images patched (copies written to `folder`, made once)."""
    out = []
    for i, record in enumerate(records):
        target = folder / f"{i:05d}_{Path(record.image_path).name}"
        if not target.exists():
            write_stamped(Path(record.image_path), target, backdoor)
        out.append(replace(record, image_path=str(target)))
    return out


def attack_success(predicted: Sequence[int | None], true: Sequence[int], target: int) -> dict:
    """Share of the images whose true class is not `target` that are classified as `target`.

    `predicted` holds the predicted class index per image (None: the image could not
    be read, left out). Returns {"rate", "hits", "images"}."""
    pairs = [(p, t) for p, t in zip(predicted, true, strict=True) if p is not None and t >= 0 and t != target]
    hits = sum(p == target for p, _ in pairs)
    return {"rate": hits / len(pairs) if pairs else None, "hits": hits, "images": len(pairs)}
