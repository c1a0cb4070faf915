"""Per-site split manifests: which images a site holds and which labels it has.

A site's data folder (what plan/data.yaml maps a collaborator to) holds:
  site.yaml     where the images are: `data_root` (a YOLO-layout folder, the
                built-in synthetic set) or `sources` (a sources.yaml combining
                real formats, see src/data/sources/); relative to the folder or absolute
  manifest.tsv  image<TAB>split<TAB>boxes<TAB>class[<TAB>masks]
                split: train | val | pool (pool = held by the site, not yet
                labeled: the active-learning pool); boxes/class/masks: 0/1,
                which labels the site holds for that image. The masks column
                is there when the site holds masks of some image; a manifest
                without it holds none (every split made before masks existed)
  merged.tsv    (optional) image<TAB>same_picture: other keys of the same
                picture (another source's copy, see src/data/duplicates.py)
                whose labels merge into the image's record
The images stay where they are; the manifest only names them, so the default
split is a few KB in git and the images are regenerated from the seed.

A split folder holds one such folder per site, test.tsv (the global test
split, with its own merged.tsv) and split.yaml, whose ``sites`` list is the
split: readers take the sites from it, never from whatever folders exist.

A manifest is the federation's own configuration (the split builder writes
it), not third-party data: a malformed row, including an image path that is
absolute or climbs out with '..', raises in both on_error modes, because a
site silently training on part of its split is worse than one that does not
start. The images and label files it names follow on_error like any data.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from src.data.duplicates import merge_copies
from src.data.formats import (DataError, ErrorReport, load_yolo_dataset, read_text_file, relative_key,
                              split_row, yaml_error)

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("image", "split", "boxes", "class")
MASK_MANIFEST_COLUMNS = MANIFEST_COLUMNS + ("masks",)  # the header of a site holding masks
MERGED_COLUMNS = ("image", "same_picture")
MERGED_FILE = "merged.tsv"
SPLITS = ("train", "val", "pool")


@dataclass(frozen=True)
class SiteData:
    """problems: what on_error='skip' left out of the manifest's images, and why."""

    name: str
    train: list
    val: list
    pool: list = ()
    problems: ErrorReport = field(default_factory=ErrorReport, compare=False)

    @property
    def has_boxes(self) -> bool:
        return any(r.has_boxes for r in self.train)

    @property
    def has_class(self) -> bool:
        return any(r.has_class for r in self.train)

    @property
    def has_mask(self) -> bool:
        return any(r.has_mask for r in self.train)


def _write_tsv(path: Path, header: tuple, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_site(folder: Path, name: str, data_root: str | None, rows: list[tuple],
               sources: str | None = None, same_picture: dict[str, list[str]] | None = None):
    """Write site.yaml + manifest.tsv (+ merged.tsv for the images with copies in `same_picture`).
    rows: (image, split, boxes, class) or (image, split, boxes, class, masks); the masks
    column is written when some row holds masks. data_root / sources: absolute, or
    relative to the site folder."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"site": name, "sources": str(sources)} if sources else \
        {"site": name, "data_root": str(data_root), "format": "yolo"}
    (folder / "site.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    rows = [tuple(row) + (0,) * (len(MASK_MANIFEST_COLUMNS) - len(row)) for row in rows]
    if any(int(row[4]) for row in rows):
        _write_tsv(folder / "manifest.tsv", MASK_MANIFEST_COLUMNS, rows)
    else:
        _write_tsv(folder / "manifest.tsv", MANIFEST_COLUMNS, [row[:4] for row in rows])
    write_merged(folder, [row[0] for row in rows], same_picture)


def write_merged(folder: Path, keys, same_picture: dict[str, list[str]] | None) -> None:
    """folder/merged.tsv: the other copies of those of `keys` that have some; no file when none has."""
    rows = [(key, other) for key in sorted(keys) for other in (same_picture or {}).get(key, ())]
    if rows:
        _write_tsv(folder / MERGED_FILE, MERGED_COLUMNS, rows)


def read_merged(folder: Path) -> dict[str, list[tuple[str, str]]]:
    """{image key: [(key of another copy, where it is listed)]} from folder/merged.tsv ({} without one).
    Like a manifest, a malformed row raises."""
    path = Path(folder) / MERGED_FILE
    if not path.exists():
        return {}
    lines = read_text_file(path).splitlines()
    header = tuple(split_row(lines[0], "\t", f"{path}: line 1")) if lines else None
    if header != MERGED_COLUMNS:
        raise DataError(f"{path}: line 1: header must be {'<TAB>'.join(MERGED_COLUMNS)}, got {header}")
    out = {}
    for line, text in enumerate(lines[1:], start=2):
        where = f"{path}: line {line}"
        row = split_row(text, "\t", where)
        if not row:
            continue
        if len(row) != 2:
            raise DataError(f"{where}: expected image, same_picture; got {row}")
        out.setdefault(relative_key(row[0], where), []).append((relative_key(row[1], where), where))
    return out


def split_sites(split_dir: Path) -> list[str]:
    """The site folders of a split, as its split.yaml lists them (``sites``), in that order.

    A folder that split.yaml does not list is not part of the split (left by another
    build under the same name, say), so nothing reads it."""
    split_dir = Path(split_dir)
    meta_file = split_dir / "split.yaml"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file}: missing; {split_dir} is not a split folder "
                                "(build one with `python -m src.data.splits`)")
    try:
        meta = yaml.safe_load(read_text_file(meta_file))
    except yaml.YAMLError as e:
        raise yaml_error(str(meta_file), e) from e
    entries = meta.get("sites") if isinstance(meta, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{meta_file}: sites: must be a non-empty list of the split's sites")
    names = []
    for i, entry in enumerate(entries):
        name = entry.get("site") if isinstance(entry, dict) else entry
        where = f"{meta_file}: sites[{i}]"
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise DataError(f"{where}: needs a site folder name, got {entry!r}")
        if not (split_dir / name / "site.yaml").is_file():
            raise FileNotFoundError(f"{where}: site {name!r} has no {split_dir / name / 'site.yaml'}")
        names.append(name)
    return names


def _manifest_rows(path: Path) -> list[tuple[int, tuple[str, str, bool, bool, bool]]]:
    """(line number, (image, split, boxes, class, masks)) of a manifest; masks is False without
    the column. Any malformed row raises (see the module docstring)."""
    lines = read_text_file(Path(path)).splitlines()
    header = tuple(split_row(lines[0], "\t", f"{path}: line 1")) if lines else None
    if header not in (MANIFEST_COLUMNS, MASK_MANIFEST_COLUMNS):
        raise DataError(f"{path}: line 1: header must be {'<TAB>'.join(MANIFEST_COLUMNS)}[<TAB>masks], "
                        f"got {header}")
    expected = "image, train|val|pool" + ", 0|1" * (len(header) - 2)
    rows = []
    for line, text in enumerate(lines[1:], start=2):
        where = f"{path}: line {line}"
        row = split_row(text, "\t", where)
        if not row:
            continue
        if len(row) != len(header) or row[1] not in SPLITS or any(flag not in ("0", "1") for flag in row[2:]):
            raise DataError(f"{where}: expected {expected}; got {row}")
        relative_key(row[0], where)  # absolute or '..': refused
        flags = [flag == "1" for flag in row[2:]] + [False] * (len(MASK_MANIFEST_COLUMNS) - len(row))
        rows.append((line, (row[0], row[1], *flags)))
    return rows


def read_manifest(path: Path, with_masks: bool = False) -> list[tuple]:
    """Rows of a manifest, (image, split, boxes, class), with with_masks a fifth flag, masks
    (False for a manifest without that column); a malformed row is a DataError naming file and line."""
    return [row if with_masks else row[:4] for _, row in _manifest_rows(path)]


def _resolve(folder: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else folder / path


def _read_keys(folder: Path, meta: dict, keys: dict[str, str], victim_classes, disaster_classes,
               on_error: str, mask_classes=None) -> tuple[dict, ErrorReport]:
    """{image key: Record} for `keys` from `data_root` or `sources`, and what was left out."""
    where = folder / "site.yaml"
    if meta.get("sources"):
        from src.data.sources import load_sources

        spec = _resolve(folder, meta["sources"])
        if not spec.exists():
            raise FileNotFoundError(f"{where}: sources file {spec} not found")
        per_source, report = load_sources(spec, victim_classes, disaster_classes, on_error=on_error, only=keys)
        if report.messages or report.notes or report.warnings:
            log.warning("%s: %s", spec, report.summary())
        return {r.key: r for records in per_source.values() for r in records}, report
    root = _resolve(folder, meta.get("data_root", ""))
    if not (root / "images").is_dir():
        raise FileNotFoundError(f"{where}: data_root {root} has no images/ folder "
                                "(generate the synthetic data with `make data`)")
    records, report = load_yolo_dataset(root, victim_classes, disaster_classes, on_error=on_error, only=keys,
                                        mask_classes=mask_classes)
    return {Path(r.image_path).relative_to(root).as_posix(): r for r in records}, report


def load_records(folder: Path, meta: dict, keys: dict[str, str], victim_classes, disaster_classes,
                 on_error: str = "raise", mask_classes=None) -> tuple[dict, ErrorReport]:
    """{image key: Record} for the keys a manifest names, from `data_root` or `sources`,
    and what was left out. keys: image key -> where it is listed, for messages.
    An image with other copies in the folder's merged.tsv gets their labels merged in.
    mask_classes: the model's mask classes (``formats.load_yolo_dataset``)."""
    copies = {key: others for key, others in read_merged(folder).items() if key in keys}
    wanted = {**keys, **{other: where for others in copies.values() for other, where in others}}
    by_key, report = _read_keys(folder, meta, wanted, victim_classes, disaster_classes, on_error, mask_classes)
    for key, others in copies.items():
        if key in by_key:
            by_key[key] = merge_copies([by_key[key]] + [by_key[o] for o, _ in others if o in by_key])[0]
    return {key: record for key, record in by_key.items() if key in keys}, report


def load_site(folder, victim_classes, disaster_classes, on_error: str = "raise", mask_classes=None) -> SiteData:
    """Records of one site, with label flags masked to what the site holds (a mask it does
    not hold is no mask_path either, so nothing reads it).

    With on_error='skip' every manifest image that could not be used (missing,
    corrupt, too large, bad labels, outside the data folder) is left out,
    counted by reason in ``SiteData.problems`` and logged in one line; the
    readers log the files themselves.
    """
    folder = Path(folder)
    site_file = folder / "site.yaml"
    if not site_file.exists():
        raise FileNotFoundError(f"{site_file}: missing (a site folder needs site.yaml and manifest.tsv)")
    meta = yaml.safe_load(site_file.read_text()) or {}
    manifest = folder / "manifest.tsv"
    rows = _manifest_rows(manifest)
    keys = {}
    for line, row in rows:
        keys.setdefault(row[0], f"{manifest}: line {line}")
    by_key, report = load_records(folder, meta, keys, victim_classes, disaster_classes, on_error, mask_classes)
    parts = {split: [] for split in SPLITS}
    for _, (image, split, boxes, cls, masks) in rows:
        if image not in by_key:  # reported by the reader (which raised unless on_error='skip')
            continue
        r = by_key[image]
        masked = replace(r, has_boxes=r.has_boxes and boxes, has_class=r.has_class and cls,
                         disaster_class=r.disaster_class if (r.has_class and cls) else -1,
                         has_mask=r.has_mask and masks, mask_path=r.mask_path if (r.has_mask and masks) else None)
        parts[split].append(masked)
    name = meta.get("site", folder.name)
    used = sum(len(part) for part in parts.values())
    if used < len(rows):
        log.warning("site %s: %d of %d image(s) of %s skipped (%s); the files are named above",
                    name, len(rows) - used, len(rows), manifest, report.reason_counts())
    return SiteData(name, parts["train"], parts["val"], parts["pool"], report)


def load_test_split(split_dir, victim_classes, disaster_classes, default_data_root=None,
                    on_error: str = "raise", mask_classes=None) -> list:
    """The global test split a split folder names (test.tsv), from its split.yaml's data, with every
    label the data holds (masks included)."""
    split_dir = Path(split_dir)
    meta_file = split_dir / "split.yaml"
    meta = (yaml.safe_load(meta_file.read_text()) or {}) if meta_file.exists() else {}
    if not meta.get("sources") and not meta.get("data_root"):
        if default_data_root is None:
            raise FileNotFoundError(f"{meta_file}: missing, and no default data root given")
        meta = {"data_root": str(Path(default_data_root).resolve())}
    listing = split_dir / "test.tsv"
    keys, listed_at = [], {}
    for line, key in enumerate(read_text_file(listing).splitlines()[1:], start=2):
        if key:
            where = f"{listing}: line {line}"
            relative_key(key, where)  # absolute or '..': refused, as in a manifest
            keys.append(key)
            listed_at.setdefault(key, where)
    by_key, report = load_records(split_dir, meta, listed_at, victim_classes, disaster_classes, on_error,
                                  mask_classes)
    if report.skipped:
        log.warning("%s: %d of %d test image(s) skipped (%s)", listing, report.skipped, len(keys),
                    report.reason_counts())
    return [by_key[k] for k in keys if k in by_key]
