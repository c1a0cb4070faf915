"""COCO instances json (C2A and most annotation tools export it) -> boxes per image.

Why a reader of its own: COCO boxes are [x, y, w, h] in pixels against the
``width``/``height`` the json records, categories are ids with names (C2A's
are poses: lying, sitting, ...; they go through a class map onto our victim
classes), and ``iscrowd=1`` regions are not objects to learn but areas where
evaluation ignores detections, so they are kept apart (``crowd_boxes``).

An image listed in ``images`` without annotations is annotated with no
victims. Problems are collected per image (so ``on_error='skip'`` drops only
the images they touch); only a file that is not COCO at all raises at once.
Messages name the json file and the entry (``annotations[12] (id 40)``).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.data.formats.errors import DataError
from src.data.formats.labels import COORD_TOLERANCE, class_lookup, clip_box, read_text_file
from src.data.formats.paths import relative_key


@dataclass
class CocoImage:
    """One ``images`` entry and its boxes (pixels, xyxy, clipped to width x height)."""

    where: str
    width: int
    height: int
    image_id: int | None = None  # the json's id: COCOeval ranks tied detections by it
    boxes: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    crowd_boxes: list = field(default_factory=list)
    crowd_classes: list = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(boxes float32 (N, 4), classes int32 (N,), crowd boxes, crowd classes)."""
        return (np.asarray(self.boxes, np.float32).reshape(-1, 4), np.asarray(self.classes, np.int32),
                np.asarray(self.crowd_boxes, np.float32).reshape(-1, 4),
                np.asarray(self.crowd_classes, np.int32))

    def check_size(self, width: int, height: int) -> None:
        """The boxes were checked against the json's size; the file must have that size."""
        if (width, height) != (self.width, self.height):
            raise DataError(f"{self.where}: width x height {self.width}x{self.height} disagrees with "
                            f"the image file ({width}x{height}); the boxes cannot be trusted")


@dataclass
class CocoFile:
    """A parsed json. images: file_name key -> CocoImage (good images only).

    bad_images: file_name key -> why that image is unusable; problems:
    errors tied to no listed image (e.g. an annotation of an unknown
    image_id); dropped: category name -> annotations left out (drop_unmapped).
    """

    path: Path
    images: dict[str, CocoImage] = field(default_factory=dict)
    bad_images: dict[str, DataError] = field(default_factory=dict)
    problems: list[DataError] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    listed_at: dict[str, str] = field(default_factory=dict)  # key -> its ``images`` entry, for messages


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def bbox_to_xyxy(bbox, width: int, height: int, where: str) -> list[float]:
    """COCO [x, y, w, h] pixels -> clipped xyxy, with the YOLO reader's tolerance.

    As there, the box centre and size must lie within the image up to
    ``COORD_TOLERANCE`` (relative); overhanging edges are clipped; a box with
    nothing left inside the image is an error.
    """
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise DataError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: bbox {bbox} has zero or negative width/height")
    normalised = ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
    if any(v < -COORD_TOLERANCE or v > 1 + COORD_TOLERANCE for v in normalised):
        raise DataError(f"{where}: bbox {bbox} lies outside the {width}x{height} image")
    return clip_box([x, y, x + w, y + h], width, height, where)


def _load_json(path: Path) -> dict:
    """The top-level object, with the three lists COCO needs; else a DataError."""
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be an object with images, annotations, categories")
    for name in ("images", "annotations", "categories"):
        if not isinstance(data.get(name), list):
            raise DataError(f"{path}: field {name!r} must be a list (COCO instances format)")
    return data


def _categories(path: Path, entries: list, lookup: dict[str, int]) -> dict[int, tuple[str, int | None]]:
    """category id -> (name, our class index or None when it maps to nothing)."""
    out = {}
    for i, cat in enumerate(entries):
        where = f"{path}: categories[{i}]"
        if not (isinstance(cat, dict) and _is_int(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise DataError(f"{where}: needs an integer 'id' and a string 'name', got {cat!r}")
        if cat["id"] in out:
            raise DataError(f"{where}: duplicate category id {cat['id']}")
        out[cat["id"]] = (cat["name"], lookup.get(cat["name"]))
    return out


def _image_key(path: Path, i: int, entry) -> str:
    """The key of ``images[i]``: its file_name as a clean relative path."""
    if not isinstance(entry, dict) or not _is_int(entry.get("id")):
        raise DataError(f"{path}: images[{i}]: needs an integer 'id', got {entry!r}")
    where = f"{path}: images[{i}] (id {entry['id']})"
    if not isinstance(entry.get("file_name"), str):
        raise DataError(f"{where}: needs a string 'file_name'")
    return relative_key(entry["file_name"], where)


def _images(path: Path, entries: list, coco: CocoFile) -> dict[int, str | None]:
    """Fill coco.images / bad_images from ``images``; returns image id -> key
    (None: the entry is already reported, e.g. its file_name leaves the root)."""
    keyed, by_id = [], {}
    for i, entry in enumerate(entries):
        try:
            keyed.append((i, entry, _image_key(path, i, entry)))
        except DataError as err:
            coco.problems.append(err)
            if isinstance(entry, dict) and _is_int(entry.get("id")):
                by_id.setdefault(entry["id"], None)
    keys_seen = Counter(key for _, _, key in keyed)  # './a.jpg' and 'a.jpg' are the same file
    ids_seen = Counter(entry["id"] for _, entry, _ in keyed)
    for i, entry, key in keyed:
        where = f"{path}: images[{i}] (id {entry['id']}, {entry['file_name']!r})"
        coco.listed_at.setdefault(key, where)
        width, height = entry.get("width"), entry.get("height")
        if keys_seen[key] > 1:
            problem = f"duplicate file_name, {key} listed {keys_seen[key]} times"
        elif ids_seen[entry["id"]] > 1:
            problem = f"duplicate image id {entry['id']}"
        elif not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            problem = f"'width' and 'height' must be positive integers, got {width!r} x {height!r}"
        else:
            problem = None
            coco.images[key] = CocoImage(where, width, height, entry["id"])
        if problem is not None:
            coco.bad_images.setdefault(key, DataError(f"{where}: {problem}"))
        by_id[entry["id"]] = key
    return by_id


def read_coco(
    json_path: str | Path,
    victim_classes: Sequence[str],
    class_map: Mapping[str, str] | None = None,
    drop_unmapped: bool = False,
) -> CocoFile:
    """Parse a COCO instances json; image keys are ``file_name`` as POSIX relative paths.

    Category names go through class_map (source name -> our victim class);
    a category that maps to nothing makes its annotations errors naming it,
    or, with drop_unmapped, drops them (counted in ``dropped``).
    """
    path = Path(json_path)
    data = _load_json(path)
    lookup = class_lookup(victim_classes, class_map)
    categories = _categories(path, data["categories"], lookup)
    coco = CocoFile(path)
    by_id = _images(path, data["images"], coco)
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if isinstance(ann, dict) and "id" in ann:
            where += f" (id {ann['id']})"
        if not isinstance(ann, dict) or not _is_int(ann.get("image_id")) or ann["image_id"] not in by_id:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            coco.problems.append(DataError(f"{where}: unknown image_id {image_id!r}"))
            continue
        key = by_id[ann["image_id"]]
        if key not in coco.images:
            continue  # that image is already bad (or was never keyed)
        try:
            _add_annotation(coco, coco.images[key], ann, categories, victim_classes, class_map,
                            drop_unmapped, where)
        except DataError as err:
            coco.bad_images.setdefault(key, err)
    for key in coco.bad_images:
        coco.images.pop(key, None)
    return coco


def _add_annotation(coco: CocoFile, image: CocoImage, ann: dict, categories: dict, victim_classes,
                    class_map, drop_unmapped: bool, where: str) -> None:
    """Validate one annotation and add its box to its image (or to the crowd regions)."""
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in categories:
        raise DataError(f"{where}: unknown category_id {ann.get('category_id')!r} "
                        f"(categories: {sorted(categories)})")
    name, cls = categories[ann["category_id"]]
    if cls is None and drop_unmapped:  # not a victim: its box does not matter
        coco.dropped[name] += 1
        return
    if cls is None:
        known = list(victim_classes) + sorted(set(class_map or {}) - set(victim_classes))
        raise DataError(f"{where}: category {name!r} (id {ann['category_id']}) maps to no victim class "
                        f"(known: {known}); add it to class_map.victim or set drop_unmapped: true")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):  # 0/1 or False/True
        raise DataError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
    box = bbox_to_xyxy(ann.get("bbox"), image.width, image.height, where)
    if crowd:
        image.crowd_boxes.append(box)
        image.crowd_classes.append(cls)
    else:
        image.boxes.append(box)
        image.classes.append(cls)
