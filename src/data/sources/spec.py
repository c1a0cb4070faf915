"""The sources.yaml spec, validated: sources, their label formats and class maps.

Errors in the spec itself always raise, naming the field (``sources[2].boxes.file``):
a spec is the operator's configuration, and a half-read one would train on
part of the data without saying so.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from src.data.formats import DataError, class_lookup, read_text_file, relative_key, yaml_error

SPEC_FIELDS = ("classes", "class_map", "sources")
SOURCE_FIELDS = ("name", "root", "boxes", "classes", "class_map")
TASKS = ("victim", "disaster")
# format -> {field: default}; None = required
BOX_FORMATS = {
    "coco": {"file": None, "images": "", "drop_unmapped": False},
    "yolo": {"names": (), "drop_unmapped": False},
}
_TABLE_FIELDS = {"file": None, "image_column": "image", "class_column": "disaster_class",
                 "drop_unmapped": False}
CLASS_FORMATS = {
    "folders": {"drop_unmapped": False},
    "tsv": {**_TABLE_FIELDS, "delimiter": "\t"},
    "csv": {**_TABLE_FIELDS, "delimiter": ","},
}


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
    for name in ("file", "images", "image_column", "class_column"):
        if name in out and not isinstance(out[name], str):
            raise DataError(f"{where}.{name}: must be a string, got {out[name]!r}")
    if out.get("images"):  # the folder under the root that a COCO json's file names are relative to
        folder = relative_key(out["images"], f"{where}.images")
        out["images"] = "" if folder == "." else folder
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
    if boxes and boxes.get("images") and not (root / boxes["images"]).is_dir():
        raise DataError(f"{where}.boxes.images: {root / boxes['images']} is not a directory (the folder "
                        "under the root that the json's file names are relative to)")
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
            raise yaml_error(where, e) from e
        base = Path(base_dir) if base_dir is not None else Path(spec).parent
    data = _mapping(data, where, SPEC_FIELDS, ("sources",))
    classes = _class_lists(data, where, victim_classes, disaster_classes)
    class_map = _class_map(data.get("class_map"), f"{where}: class_map", classes)
    if not isinstance(data["sources"], list) or not data["sources"]:
        raise DataError(f"{where}: sources: must be a non-empty list of sources")
    sources = [_source(entry, f"{where}: sources[{i}]", base, classes, class_map)
               for i, entry in enumerate(data["sources"])]
    seen = {}
    for source in sources:
        if source.name in seen:
            raise DataError(f"{source.where}.name: duplicate source name {source.name!r} "
                            f"(also {seen[source.name]})")
        seen[source.name] = source.where
    return Spec(classes["victim"], classes["disaster"], tuple(sources))
