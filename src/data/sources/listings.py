"""What each label spec of a source lists: its images, their labels, and what is wrong with them.

One reader per format (``YoloBoxes``, ``CocoBoxes``, ``folder_classes``,
``table_classes``), each giving a ``Listing``, so loading treats every format
the same way: images are found where each format keeps them (yolo under
root/images, folders under root/<class>/, coco and tables by the file names
they list).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.data.formats import (MISSING, DataError, class_lookup, display_path, inside_folder, list_images,
                              parse_class_table, read_coco, read_yolo_labels, scan_class_folders,
                              yolo_label_files)
from src.data.sources.spec import SourceSpec


@dataclass
class Listing:
    """The images one label spec of a source names, and what is wrong with them.

    images: key -> where it is listed ('' when found on disk), so a missing
    file can be reported at its line; bad: key -> why that image is
    unusable; skipped: (error, images it makes unusable) for files that
    cannot even be keyed; problems: errors tied to no image.
    """

    images: dict[str, str] = field(default_factory=dict)
    bad: dict[str, DataError] = field(default_factory=dict)
    skipped: list[tuple[DataError, int]] = field(default_factory=list)
    problems: list[DataError] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)


NO_BOXES = np.zeros((0, 4), np.float32)
NO_CLASSES = np.zeros((0,), np.int32)


class YoloBoxes:
    """root/images + root/labels; ids index the victim classes or the source's ``names``."""

    def __init__(self, source: SourceSpec, victims: Sequence[str]):
        root = self.root = source.root
        images, name_errors = list_images(root / "images")
        labels, ambiguous = yolo_label_files(root, images)
        self.labels_of = {p.relative_to(root).as_posix(): label for p, label in labels.items()}
        self.listing = Listing(images={p.relative_to(root).as_posix(): "" for p in images},
                                bad={p.relative_to(root).as_posix(): err for p, err in ambiguous.items()},
                                skipped=[(err, 1) for err in name_errors + _orphan_labels(root)])
        self.names = source.boxes["names"]
        self.num_ids = len(self.names) or len(victims)
        lookup = class_lookup(victims, source.victim_map)
        self.to_ours = np.array([lookup.get(n, -1) for n in self.names], np.int32) if self.names else None

    def labels(self, key: str, width: int, height: int):
        label = self.labels_of.get(key)
        if label is None:
            return None
        label = inside_folder(label, self.root, "label file")
        boxes, ids = read_yolo_labels(label, width, height, self.num_ids)
        if self.to_ours is not None:
            ours = self.to_ours[ids]
            self.listing.dropped.update(self.names[i] for i in ids[ours < 0])
            boxes, ids = boxes[ours >= 0], ours[ours >= 0]
        return boxes, ids, NO_BOXES, NO_CLASSES


def _orphan_labels(root: Path) -> list[DataError]:
    """YOLO label files with no file of their stem in images/: an annotated image is missing."""
    labels_dir = root / "labels"
    stems = {p.stem for p in (root / "images").iterdir()}
    labels = sorted(labels_dir.glob("*.txt")) if labels_dir.is_dir() else []
    return [DataError(f"{display_path(p)}: no image {root / 'images' / p.stem}.* for this label file "
                      "(missing image)", MISSING)
            for p in labels if p.stem not in stems and not p.name.startswith(".")]


class CocoBoxes:
    """A COCO json; its images are the file names it lists, relative to the source root or,
    with ``images: DIR`` (C2A: annotations.json next to images/), to root/DIR. Keys stay
    relative to the root, so other label specs of the source meet them there."""

    def __init__(self, source: SourceSpec, victims: Sequence[str]):
        spec = source.boxes
        self.root = source.root
        self.prefix = f"{spec['images']}/" if spec.get("images") else ""
        self.folders = None  # the root's subfolders, for missing_hint
        self.coco = read_coco(source.root / spec["file"], victims, source.victim_map, spec["drop_unmapped"])
        self.listing = Listing(images={self.prefix + k: where for k, where in self.coco.listed_at.items()},
                                bad={self.prefix + k: err for k, err in self.coco.bad_images.items()},
                                problems=list(self.coco.problems), dropped=self.coco.dropped)

    def labels(self, key: str, width: int, height: int):
        image = self.coco.images[key[len(self.prefix):]]
        image.check_size(width, height)
        return image.arrays()

    def image_id(self, key: str) -> int | None:
        """The json's id of the image at `key` (None for an image it does not list)."""
        image = self.coco.images.get(key[len(self.prefix):])
        return None if image is None else image.image_id

    def missing_hint(self, key: str) -> str:
        """For a listed file that is not there: the subfolder it is in, when the json's file
        names are relative to one (the C2A layout) and ``images`` does not say so."""
        if self.folders is None:  # listed once: a wrong setting makes every image missing
            self.folders = sorted(folder.name for folder in self.root.iterdir() if folder.is_dir())
        relative = key[len(self.prefix):]
        found = [name for name in self.folders if (self.root / name / relative).is_file()]
        if not found:
            return ""
        return (f"; it is at {found[0]}/{relative}: the json's file names are relative to that folder, "
                f"say so with 'images: {found[0]}' in this source's boxes")


def folder_classes(source: SourceSpec, disasters: Sequence[str]) -> tuple[Listing, dict[str, int]]:
    """root/<class>/ images; a non-empty folder that names no class is an error (or dropped)."""
    scan = scan_class_folders(source.root, disasters, source.disaster_map)
    listing = Listing(images={key: "" for key in scan.classes}, skipped=[(err, 1) for err in scan.errors])
    for name, count in scan.unknown.items():
        if count == 0:
            continue  # e.g. an annotations/ folder next to the class folders
        if source.classes["drop_unmapped"]:
            listing.dropped[f"folder {name}"] += count
        else:
            listing.skipped.append((DataError(
                f"{source.root / name}: folder {name!r} ({count} images) names no disaster class "
                f"{list(disasters)}; map it in class_map.disaster or set drop_unmapped: true"), count))
    return listing, scan.classes


def table_classes(source: SourceSpec, disasters: Sequence[str]) -> tuple[Listing, dict[str, int]]:
    """A tsv / csv table of image paths (relative to the root) and class names."""
    spec = source.classes
    path = source.root / spec["file"]
    table = parse_class_table(path, disasters, spec["image_column"], spec["class_column"], spec["delimiter"],
                              source.disaster_map, spec["drop_unmapped"])
    listing = Listing(images={key: f"{path}: line {n}" for key, n in table.lines.items()},
                       problems=[err for key, err in table.errors if key is None], dropped=table.dropped)
    for key, err in table.errors:
        if key is not None:
            listing.bad.setdefault(key, err)
    return listing, table.classes
