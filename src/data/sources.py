"""sources.yaml: several data sets, each in its own format, read as one set of Records.

Why: real sites hold what they have (AIDER class folders, C2A person boxes
as COCO json or YOLO txt, CrisisIBD/MEDIC tables); converting them first
would be one more copy to keep in sync. The spec names each source, where
its labels are and how its class names map onto ours::

    classes:            # optional; default: the caller's (the model's) class lists
      victim: [person]
      disaster: [collapsed_building, fire, flooded_areas, traffic_incident, normal]
    class_map:          # optional, per task: source class name -> our class name
      victim: {lying: person, sitting: person, standing: person}
      disaster: {}
    sources:
      - name: c2a                    # unique; first component of every image key
        root: c2a                    # relative to the spec file, or absolute
        boxes: {format: coco, file: annotations.json}
        classes: {format: folders}   # root/<class>/*.jpg, over the same images
      - name: crisis
        root: crisis
        classes: {format: tsv, file: labels.tsv, image_column: image,
                  class_column: label, delimiter: "\\t"}   # csv: delimiter ","
      - name: drone
        root: drone
        boxes: {format: yolo, names: [lying, standing]}  # root/images + root/labels

Box formats: ``coco`` (``file``), ``yolo`` (class ids index ``classes.victim``,
or ``names`` lists the source's own names, mapped through class_map). Class
formats: ``folders``, ``tsv`` / ``csv`` (``file``, ``image_column`` = image,
``class_column`` = disaster_class, ``delimiter``). Any label spec may set
``drop_unmapped: true``: labels whose class maps to nothing are then left
out and counted (``ErrorReport.notes``) instead of being errors. A source may
also carry its own ``class_map``, merged over the top-level one.

An image's key is ``<source name>/<path relative to the source root>``
(``c2a/fire/img1.jpg``): boxes and classes of a source meet on that path; an
image only one label spec lists just lacks the other label (has_boxes /
has_class False). Images are found where each format keeps them: yolo under
root/images, folders under root/<class>/, coco and tables by the file names
they list.

Errors in the spec itself and label files that cannot be parsed at all
(missing, not JSON, a table without its columns) always raise; problems
with single images, rows or annotations follow ``on_error`` as in
``readers.load_yolo_dataset``. Which image files are accepted (EXIF
rotation, 16-bit PNG, decompression bombs, ...) is decided by
``readers.check_image``; see the readers module docstring. Images and
per-image label files must lie inside their source's root, also after
following symlinks (``readers.inside_folder``); the spec's own paths
(``root``, ``file``) are the operator's choice and may point anywhere.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import yaml

from src.data.coco import read_coco
from src.data.readers import (
    MISSING,
    DataError,
    ErrorReport,
    check_image,
    class_lookup,
    display_path,
    inside_folder,
    list_images,
    listing_of,
    missing_image,
    parse_class_table,
    read_text_file,
    read_yolo_labels,
    scan_class_folders,
    yolo_label_files,
)
from src.data.records import Record

log = logging.getLogger(__name__)

SPEC_FIELDS = ("classes", "class_map", "sources")
SOURCE_FIELDS = ("name", "root", "boxes", "classes", "class_map")
TASKS = ("victim", "disaster")
# format -> {field: default}; None = required
BOX_FORMATS = {
    "coco": {"file": None, "drop_unmapped": False},
    "yolo": {"names": (), "drop_unmapped": False},
}
_TABLE_FIELDS = {"file": None, "image_column": "image", "class_column": "disaster_class",
                 "drop_unmapped": False}
CLASS_FORMATS = {
    "folders": {"drop_unmapped": False},
    "tsv": {**_TABLE_FIELDS, "delimiter": "\t"},
    "csv": {**_TABLE_FIELDS, "delimiter": ","},
}


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class SourceRecord(Record):
    """A Record that knows its key (``source/relative/path``), e.g. for manifests."""

    key: str = ""


def record_key(source_name: str, relative_path: str) -> str:
    """``c2a`` + ``fire/img1.jpg`` -> ``c2a/fire/img1.jpg``."""
    return f"{source_name}/{PurePosixPath(relative_path).as_posix()}"


def split_record_key(key: str) -> tuple[str, str]:
    """Inverse of ``record_key``: (source name, path relative to the source root)."""
    name, sep, relative = key.partition("/")
    if not (name and sep and relative):
        raise ValueError(f"{key!r} is not a record key 'source/relative/path'")
    return name, relative


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class SourceSpec:
    """One validated ``sources`` entry; boxes / classes have their defaults filled in."""

    name: str
    root: Path
    boxes: dict | None
    classes: dict | None
    victim_map: dict
    disaster_map: dict
    where: str  # "<spec file>: sources[i]", for messages


@dataclass(frozen=True)
class Spec:
    victim_classes: tuple[str, ...]
    disaster_classes: tuple[str, ...]
    sources: tuple[SourceSpec, ...]


def _mapping(value, where: str, fields: Collection[str], required: Collection[str] = ()) -> dict:
    """``value`` as a dict with only known fields; DataError naming the field otherwise."""
    if not isinstance(value, dict):
        raise DataError(f"{where}: must be a mapping, got {value!r}")
    for name in value:
        if name not in fields:
            raise DataError(f"{where}: unknown field {name!r} (known: {list(fields)})")
    for name in required:
        if value.get(name) in (None, ""):
            raise DataError(f"{where}.{name}: missing")
    return value


def _names(value, where: str) -> tuple[str, ...]:
    """A list of unique non-empty strings."""
    if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
        raise DataError(f"{where}: must be a non-empty list of names, got {value!r}")
    duplicates = sorted(n for n, c in Counter(value).items() if c > 1)
    if duplicates:
        raise DataError(f"{where}: duplicate names {duplicates}")
    return tuple(value)


def _class_lists(data: dict, where: str, victim_classes, disaster_classes) -> dict[str, tuple[str, ...]]:
    """The class lists: the spec's, the caller's, and they must agree when both are given."""
    listed = _mapping(data.get("classes") or {}, f"{where}: classes", TASKS)
    out = {}
    for task, given in (("victim", victim_classes), ("disaster", disaster_classes)):
        spec_list = _names(listed[task], f"{where}: classes.{task}") if task in listed else None
        given = tuple(given) if given is not None else None
        if spec_list is not None and given is not None and spec_list != given:
            raise DataError(f"{where}: classes.{task} {list(spec_list)} differs from the model's "
                            f"{list(given)} (same names in the same order, or leave it out)")
        if spec_list is None and given is None:
            raise DataError(f"{where}: classes.{task} missing and no class list given")
        out[task] = spec_list or given
    return out


def _class_map(value, where: str, classes: dict[str, tuple[str, ...]]) -> dict[str, dict[str, str]]:
    """{task: {source name: our name}}, every target one of our classes."""
    value = _mapping(value or {}, where, TASKS)
    out = {}
    for task in TASKS:
        entries = value.get(task) or {}
        if not isinstance(entries, dict):
            raise DataError(f"{where}.{task}: must be a mapping 'source name: our name', got {entries!r}")
        for source_name, ours in entries.items():
            if ours not in classes[task]:
                raise DataError(f"{where}.{task}.{source_name}: {ours!r} is not a {task} class "
                                f"{list(classes[task])}")
        out[task] = {str(k): v for k, v in entries.items()}
    return out


def _label_spec(value, where: str, formats: dict[str, dict]) -> dict:
    """A boxes / classes entry with its format's defaults filled in."""
    value = _mapping(value, where, ("format", *sorted({f for d in formats.values() for f in d})))
    fmt = value.get("format")
    if fmt not in formats:
        raise DataError(f"{where}.format: {fmt!r} is not one of {list(formats)}")
    defaults = formats[fmt]
    _mapping(value, where, ("format", *defaults), [f for f, d in defaults.items() if d is None])
    out = {"format": fmt, **{f: value.get(f, d) for f, d in defaults.items()}}
    if not isinstance(out["drop_unmapped"], bool):
        raise DataError(f"{where}.drop_unmapped: must be true or false, got {out['drop_unmapped']!r}")
    for name in ("file", "image_column", "class_column"):
        if name in out and not isinstance(out[name], str):
            raise DataError(f"{where}.{name}: must be a string, got {out[name]!r}")
    if "delimiter" in out and not (isinstance(out["delimiter"], str) and len(out["delimiter"]) == 1):
        raise DataError(f"{where}.delimiter: must be one character, got {out['delimiter']!r}")
    if out.get("names"):
        out["names"] = _names(out["names"], f"{where}.names")
    return out


def _source(entry, where: str, base_dir: Path, classes: dict, class_map: dict) -> SourceSpec:
    entry = _mapping(entry, where, SOURCE_FIELDS, ("name", "root"))
    name = entry["name"]
    if not isinstance(name, str) or "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(f"{where}.name: {name!r} must be a plain name (it becomes a path component)")
    if not entry.get("boxes") and not entry.get("classes"):
        raise DataError(f"{where}: needs `boxes`, `classes` or both")
    root = Path(str(entry["root"]))
    root = (root if root.is_absolute() else base_dir / root).resolve()
    if not root.is_dir():
        raise DataError(f"{where}.root: {root} is not a directory")
    own_map = _class_map(entry.get("class_map"), f"{where}.class_map", classes)
    boxes = _label_spec(entry["boxes"], f"{where}.boxes", BOX_FORMATS) if entry.get("boxes") else None
    labels = _label_spec(entry["classes"], f"{where}.classes", CLASS_FORMATS) if entry.get("classes") else None
    spec = SourceSpec(name, root, boxes, labels, {**class_map["victim"], **own_map["victim"]},
                      {**class_map["disaster"], **own_map["disaster"]}, where)
    if boxes and boxes.get("names") and not boxes["drop_unmapped"]:
        lookup = class_lookup(classes["victim"], spec.victim_map)
        for j, source_name in enumerate(boxes["names"]):
            if source_name not in lookup:
                raise DataError(f"{where}.boxes.names[{j}]: {source_name!r} maps to no victim class "
                                f"{list(classes['victim'])}; add it to class_map.victim or set "
                                "drop_unmapped: true")
    return spec


def read_spec(spec: str | Path | Mapping, victim_classes: Sequence[str] | None = None,
              disaster_classes: Sequence[str] | None = None, base_dir: str | Path | None = None) -> Spec:
    """Validate a sources spec (a YAML file, or a parsed dict whose roots are relative to base_dir).

    base_dir defaults to the spec file's folder (for a dict: the working directory).
    """
    if isinstance(spec, Mapping):
        where, data = "sources spec", dict(spec)
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        where = str(spec)
        try:
            data = yaml.safe_load(read_text_file(Path(spec)))
        except yaml.YAMLError as e:
            raise DataError(f"{where}: not valid YAML ({e})") from e
        base = Path(base_dir) if base_dir is not None else Path(spec).parent
    data = _mapping(data, where, SPEC_FIELDS, ("sources",))
    classes = _class_lists(data, where, victim_classes, disaster_classes)
    class_map = _class_map(data.get("class_map"), f"{where}: class_map", classes)
    if not isinstance(data["sources"], list):
        raise DataError(f"{where}: sources: must be a list of sources")
    sources = [_source(entry, f"{where}: sources[{i}]", base, classes, class_map)
               for i, entry in enumerate(data["sources"])]
    seen = {}
    for source in sources:
        if source.name in seen:
            raise DataError(f"{source.where}.name: duplicate source name {source.name!r} "
                            f"(also {seen[source.name]})")
        seen[source.name] = source.where
    return Spec(classes["victim"], classes["disaster"], tuple(sources))


# --------------------------------------------------------------------------- label readers


@dataclass
class _Listing:
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


_NO_BOXES = np.zeros((0, 4), np.float32)
_NO_CLASSES = np.zeros((0,), np.int32)


class _YoloBoxes:
    """root/images + root/labels; ids index the victim classes or the source's ``names``."""

    def __init__(self, source: SourceSpec, victims: Sequence[str]):
        root = self.root = source.root
        images, name_errors = list_images(root / "images")
        labels, ambiguous = yolo_label_files(root, images)
        self.labels_of = {p.relative_to(root).as_posix(): label for p, label in labels.items()}
        self.listing = _Listing(images={p.relative_to(root).as_posix(): "" for p in images},
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
        return boxes, ids, _NO_BOXES, _NO_CLASSES


def _orphan_labels(root: Path) -> list[DataError]:
    """YOLO label files with no file of their stem in images/: an annotated image is missing."""
    labels_dir = root / "labels"
    stems = {p.stem for p in (root / "images").iterdir()}
    labels = sorted(labels_dir.glob("*.txt")) if labels_dir.is_dir() else []
    return [DataError(f"{display_path(p)}: no image {root / 'images' / p.stem}.* for this label file "
                      "(missing image)", MISSING)
            for p in labels if p.stem not in stems and not p.name.startswith(".")]


class _CocoBoxes:
    """A COCO json; its images are the file names it lists."""

    def __init__(self, source: SourceSpec, victims: Sequence[str]):
        spec = source.boxes
        self.coco = read_coco(source.root / spec["file"], victims, source.victim_map, spec["drop_unmapped"])
        self.listing = _Listing(images=dict(self.coco.listed_at), bad=dict(self.coco.bad_images),
                                problems=list(self.coco.problems), dropped=self.coco.dropped)

    def labels(self, key: str, width: int, height: int):
        image = self.coco.images[key]
        image.check_size(width, height)
        return image.arrays()


def _folder_classes(source: SourceSpec, disasters: Sequence[str]) -> tuple[_Listing, dict[str, int]]:
    """root/<class>/ images; a non-empty folder that names no class is an error (or dropped)."""
    scan = scan_class_folders(source.root, disasters, source.disaster_map)
    listing = _Listing(images={key: "" for key in scan.classes}, skipped=[(err, 1) for err in scan.errors])
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


def _table_classes(source: SourceSpec, disasters: Sequence[str]) -> tuple[_Listing, dict[str, int]]:
    """A tsv / csv table of image paths (relative to the root) and class names."""
    spec = source.classes
    path = source.root / spec["file"]
    table = parse_class_table(path, disasters, spec["image_column"], spec["class_column"], spec["delimiter"],
                              source.disaster_map, spec["drop_unmapped"])
    listing = _Listing(images={key: f"{path}: line {n}" for key, n in table.lines.items()},
                       problems=[err for key, err in table.errors if key is None], dropped=table.dropped)
    for key, err in table.errors:
        if key is not None:
            listing.bad.setdefault(key, err)
    return listing, table.classes


# --------------------------------------------------------------------------- loading


def _check_listed_image(path: Path, root: Path, listed_at: str, full_decode: bool) -> tuple[int, int]:
    """check_image of a file inside root; a missing file listed in a label file is reported at that line."""
    if listed_at and not path.exists():
        raise DataError(f"{listed_at}: image file {path} not found", MISSING)
    return check_image(inside_folder(path, root, "image"), full_decode)


def _load_source(source: SourceSpec, spec: Spec, handle, only: Mapping[str, str] | None,
                 full_decode: bool) -> tuple[list[SourceRecord], list[str]]:
    """Records of one source (sorted by key) and notes on what was dropped on purpose.

    handle(error, images) raises or records each problem; only: path relative
    to the root -> where it is listed ('' if nowhere in particular).
    """
    boxes, listings, classes = None, [], {}
    if source.boxes:
        boxes = (_CocoBoxes if source.boxes["format"] == "coco" else _YoloBoxes)(source, spec.victim_classes)
        listings.append(boxes.listing)
    if source.classes:
        read = _folder_classes if source.classes["format"] == "folders" else _table_classes
        class_listing, classes = read(source, spec.disaster_classes)
        listings.append(class_listing)
    if only is None:  # problems tied to no listed image concern whoever reads everything
        for listing in listings:
            for err in listing.problems:
                handle(err, 0)
            for err, count in listing.skipped:
                handle(err, count)
    keys = sorted({key for listing in listings for key in listing.images})
    if only is not None:
        for relative in sorted(set(only) - set(keys)):
            handle(missing_image(record_key(source.name, relative), only[relative],
                                 f": source {source.name!r} ({source.root}) has no such image"), 1)
        keys = [k for k in keys if k in only]
    if len(listings) == 2 and listings[0].images and listings[1].images \
            and not listings[0].images.keys() & listings[1].images.keys():
        log.warning("%s: no image has both boxes and a class: do the paths of the two label specs "
                    "differ? e.g. %s vs %s", source.where, min(listings[0].images), min(listings[1].images))
    records = []
    for key in keys:
        try:
            err = next((listing.bad[key] for listing in listings if key in listing.bad), None)
            if err is not None:
                raise err
            path = source.root / key
            listed_at = next((listing.images[key] for listing in listings if listing.images.get(key)), "")
            width, height = _check_listed_image(path, source.root, listed_at, full_decode)
            labels = boxes.labels(key, width, height) if boxes and key in boxes.listing.images else None
            box, cls, crowd, crowd_cls = labels if labels is not None else (_NO_BOXES, _NO_CLASSES) * 2
            records.append(SourceRecord(
                image_path=str(path), boxes=box, victim_classes=cls, crowd_boxes=crowd,
                crowd_classes=crowd_cls, has_boxes=labels is not None,
                disaster_class=classes.get(key, -1), has_class=key in classes,
                key=record_key(source.name, key)))
        except DataError as err:
            handle(err, 1)
    notes = [f"{source.where} ({source.name}): left out (drop_unmapped): "
             + ", ".join(f"{n} x {name!r}" for name, n in sorted(listing.dropped.items()))
             for listing in listings if listing.dropped]
    return records, notes


def load_sources(
    spec: str | Path | Mapping,
    victim_classes: Sequence[str] | None = None,
    disaster_classes: Sequence[str] | None = None,
    on_error: str = "raise",
    only: Collection[str] | Mapping[str, str] | None = None,
    full_decode: bool = False,
    base_dir: str | Path | None = None,
) -> tuple[dict[str, list[Record]], ErrorReport]:
    """Read every source of a spec: {source name: records sorted by key}, ErrorReport.

    on_error='raise' stops at the first data problem; 'skip' leaves out the
    images concerned, counts them in the report and logs its summary.
    only: record keys to read; other images are not opened, sources with no
    key in it are not read at all, and problems tied to no listed image are
    left to whoever reads everything (``python -m src.data.validate``). A key
    naming no image is a problem (reason MISSING); as a mapping, only gives
    where each key is listed ('manifest.tsv: line 3') for the message.
    full_decode: decode every image once to also catch corrupt JPEG data.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    parsed = read_spec(spec, victim_classes, disaster_classes, base_dir)
    report = ErrorReport()

    def handle(err: DataError, images: int) -> None:
        if on_error == "raise":
            raise err
        report.add(err, images)

    per_source = None  # source name -> {relative path: where listed}
    if only is not None:
        per_source = {source.name: {} for source in parsed.sources}
        for key, listed_at in sorted(listing_of(only).items()):
            name, _, relative = key.partition("/")
            if name in per_source and relative:
                per_source[name][relative] = listed_at
            else:
                handle(missing_image(key, listed_at, f": no source {name!r} in the spec "
                                                     f"(sources: {sorted(per_source)})"), 1)
    out = {}
    for source in parsed.sources:
        wanted = None if per_source is None else per_source[source.name]
        if wanted is not None and not wanted:
            out[source.name] = []
            continue
        out[source.name], notes = _load_source(source, parsed, handle, wanted, full_decode)
        for note in notes:
            report.note(note)
    if report.messages or report.notes:
        log.warning("%s: %s", spec if not isinstance(spec, Mapping) else "sources spec", report.summary())
    return out, report
