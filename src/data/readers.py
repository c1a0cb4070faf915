"""Readers that turn on-disk label formats into ``Record``s.

Supported layouts (the synthetic generator writes the first; real sites
often have one of them already):

* YOLO detection: ``root/images/<stem>.jpg`` with ``root/labels/<stem>.txt``
  holding ``class cx cy w h`` lines normalised to [0, 1]; an empty label file
  means "annotated, no victims", a missing one means "never annotated".
* Disaster-class table: ``root/classes.tsv`` with a header row and class
  *names* (``images/00000.jpg<TAB>fire``).
* AIDER-style class folders: ``root/<class_name>/*.jpg``.

Every problem is a ``DataError`` whose message names the file (and line),
because at a federated site nobody else can look at the data to find it.
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from src.data.records import Record

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
# Exporters round normalised coordinates (e.g. 1.0000001); tolerate that much.
COORD_TOLERANCE = 1e-3


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message says where."""


@dataclass
class ErrorReport:
    """What ``load_yolo_dataset(on_error='skip')`` left out, and why."""

    skipped: int = 0
    messages: list[str] = field(default_factory=list)

    def add(self, message: str, skipped_image: bool = True) -> None:
        self.skipped += int(skipped_image)
        self.messages.append(message)

    def summary(self, max_messages: int = 10) -> str:
        """One readable block for logs: count plus the first few reasons."""
        if not self.messages:
            return "no data problems"
        lines = [f"{self.skipped} image(s) skipped, {len(self.messages)} problem(s):"]
        lines += [f"  {m}" for m in self.messages[:max_messages]]
        if len(self.messages) > max_messages:
            lines.append(f"  ... and {len(self.messages) - max_messages} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------- images


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding pixels.

    YOLO labels are relative to the original size, so we need it for every
    image; reading only the header keeps a dataset scan cheap.
    """
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from e


def check_image(path: str | Path, full_decode: bool = False) -> tuple[int, int]:
    """Like ``image_size`` but also checks the file is intact.

    ``verify()`` catches broken PNG chunks cheaply; it does not decode JPEG
    scan data, so truncated JPEGs only show up with ``full_decode=True``.
    Better to find them here, with a file name, than as an anonymous decode
    error deep inside a tf.data pipeline.
    """
    size = image_size(path)  # file-not-found / not-an-image errors
    try:
        with Image.open(path) as im:
            im.verify()
        if full_decode:
            with Image.open(path) as im:
                im.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt image ({e})") from e
    return size


# --------------------------------------------------------------------------- YOLO labels


def _read_text(path: Path) -> list[str]:
    """Lines of a small UTF-8 text file, with file-named errors."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as UTF-8 text ({e})") from e


def _parse_yolo_line(text: str, where: str, num_classes: int) -> tuple[int, list[float]]:
    """One ``class cx cy w h`` line -> (class id, [cx, cy, w, h]); validated."""
    fields = text.split()
    if len(fields) != 5:
        raise DataError(f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}")
    try:
        values = [float(f) for f in fields]
    except ValueError as e:
        raise DataError(f"{where}: non-numeric field ({e})") from e
    if not all(np.isfinite(values)):
        raise DataError(f"{where}: non-finite value")
    cls_f, coords = values[0], values[1:]
    if cls_f != int(cls_f):
        raise DataError(f"{where}: class id {fields[0]!r} is not an integer")
    if not 0 <= int(cls_f) < num_classes:
        raise DataError(f"{where}: class id {int(cls_f)} out of range [0, {num_classes})")
    if any(v < -COORD_TOLERANCE or v > 1 + COORD_TOLERANCE for v in coords):
        raise DataError(f"{where}: normalised coordinates {fields[1:]} outside [0, 1]")
    if coords[2] <= 0 or coords[3] <= 0:
        raise DataError(f"{where}: box width/height must be positive, got {fields[3]} {fields[4]}")
    return int(cls_f), coords


def read_yolo_labels(
    label_path: str | Path, image_width: int, image_height: int, num_victim_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Parse a YOLO txt file into absolute-pixel xyxy boxes (float32) and int32 classes.

    Blank lines are ignored. Boxes overhanging the image edge are clipped to
    it (common in exported labels); malformed lines raise ``DataError`` naming
    the file and 1-based line number.
    """
    path = Path(label_path)
    boxes, classes = [], []
    for n, line in enumerate(_read_text(path), start=1):
        if not line.strip():
            continue
        cls, (cx, cy, w, h) = _parse_yolo_line(line, f"{path}: line {n}", num_victim_classes)
        boxes.append([(cx - w / 2) * image_width, (cy - h / 2) * image_height,
                      (cx + w / 2) * image_width, (cy + h / 2) * image_height])
        classes.append(cls)
    out = np.asarray(boxes, np.float32).reshape(-1, 4)
    np.clip(out, 0, [image_width, image_height, image_width, image_height], out=out)
    return out, np.asarray(classes, np.int32)


# --------------------------------------------------------------------------- disaster classes


def _normalise_rel_path(text: str) -> str:
    """Table keys as clean POSIX relative paths ('./images\\a.jpg' -> 'images/a.jpg')."""
    return PurePosixPath(text.strip().replace("\\", "/")).as_posix()


def _parse_class_table(tsv_path, class_names, image_column, class_column, delimiter):
    """Parse the table, collecting per-row errors instead of stopping.

    Returns (table, row_errors) where row_errors is a list of
    (image key or None, DataError). Structural problems (missing file,
    missing column) raise immediately: no row can be trusted then.
    """
    path = Path(tsv_path)
    lines = _read_text(path)
    rows = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(rows, [])]
    for col in (image_column, class_column):
        if col not in header:
            raise DataError(f"{path}: line 1: missing column {col!r} (header is {header})")
    i_img, i_cls = header.index(image_column), header.index(class_column)
    index = {name: i for i, name in enumerate(class_names)}
    table, errors = {}, []
    for n, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}: line {n}"
        if len(row) != len(header):
            errors.append((None, DataError(f"{where}: expected {len(header)} fields, got {len(row)}")))
            continue
        key, name = _normalise_rel_path(row[i_img]), row[i_cls].strip()
        if name not in index:
            errors.append((key, DataError(f"{where}: unknown class {name!r} (known: {list(class_names)})")))
        elif table.get(key, index[name]) != index[name]:
            errors.append((key, DataError(f"{where}: {key} listed again with a different class {name!r}")))
        else:
            table[key] = index[name]
    return table, errors


def read_class_table(
    tsv_path: str | Path,
    class_names: Sequence[str],
    image_column: str = "image",
    class_column: str = "disaster_class",
    delimiter: str = "\t",
) -> dict[str, int]:
    """Map relative image path -> disaster class index from a delimited table.

    The table holds class *names*, not indices, so reordering the class list
    in the config cannot silently relabel a site's data. Raises ``DataError``
    (file + line) on the first bad row.
    """
    table, errors = _parse_class_table(tsv_path, class_names, image_column, class_column, delimiter)
    if errors:
        raise errors[0][1]
    return table


def read_class_folders(root: str | Path, class_names: Sequence[str]) -> dict[str, int]:
    """Map image path -> class index for ``root/<class_name>/*.jpg|png`` layouts.

    A missing class folder is fine (a site need not hold every class); folders
    not in ``class_names`` are ignored with a warning, since a typo there would
    otherwise drop a whole class silently.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: class folder root is not a directory")
    known = set(class_names)
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in known):
        log.warning("%s: folder %r is not a known class, ignored (known: %s)",
                    root, d.name, list(class_names))
    out = {}
    for idx, name in enumerate(class_names):
        folder = root / name
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                    out[str(p)] = idx
    if not out:
        raise DataError(f"{root}: no images found in any class folder {list(class_names)}")
    return out


# --------------------------------------------------------------------------- whole data set


def _list_images(images_dir: Path) -> list[Path]:
    """Sorted image files, so record order (and thus splits) is reproducible."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images directory not found")
    return sorted(p for p in images_dir.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _load_record(
    image: Path, root: Path, num_victims: int, classes: dict[str, int], full_decode: bool
) -> Record:
    """Build one Record; raises DataError for anything wrong with this image."""
    width, height = check_image(image, full_decode)
    label = root / "labels" / f"{image.stem}.txt"
    boxes, victim_classes, has_boxes = np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), False
    if label.is_file():
        boxes, victim_classes = read_yolo_labels(label, width, height, num_victims)
        has_boxes = True
    key = image.relative_to(root).as_posix()
    return Record(
        image_path=str(image),
        boxes=boxes,
        victim_classes=victim_classes,
        disaster_class=classes.get(key, -1),
        has_boxes=has_boxes,
        has_class=key in classes,
    )


def load_yolo_dataset(
    root: str | Path,
    victim_classes: Sequence[str],
    disaster_classes: Sequence[str],
    class_table: str | None = "classes.tsv",
    on_error: str = "raise",
    full_decode: bool = False,
    only: Collection[str] | None = None,
) -> tuple[list[Record], ErrorReport]:
    """Read a YOLO-layout data set (plus optional class table) into Records.

    on_error='raise' stops at the first problem; 'skip' drops the affected
    image, records why in the returned ``ErrorReport`` and carries on, so one
    bad file at a site does not block a federated round. A missing class
    table just means no image has a disaster class; structural problems
    (no images dir, table without its columns) always raise.
    full_decode=True decodes every image once (slower) to also catch
    truncated JPEGs, which the default header + verify() check misses.
    only: relative image paths (``images/x.jpg``) to read; the others are not
    opened at all (a site reads its own images, not the whole data root).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    root = Path(root)
    images = _list_images(root / "images")
    report = ErrorReport()
    classes, bad_rows = {}, {}
    table_path = root / class_table if class_table else None
    if table_path is not None and table_path.is_file():
        classes, row_errors = _parse_class_table(table_path, disaster_classes, "image", "disaster_class", "\t")
        if row_errors and on_error == "raise":
            raise row_errors[0][1]
        for key, err in row_errors:
            if key is None:
                report.add(str(err), skipped_image=False)
            else:
                bad_rows.setdefault(key, err)
    records = []
    selected = images if only is None else [p for p in images if p.relative_to(root).as_posix() in only]
    for image in selected:
        try:
            key = image.relative_to(root).as_posix()
            if key in bad_rows:
                raise bad_rows[key]
            records.append(_load_record(image, root, len(victim_classes), classes, full_decode))
        except DataError as err:
            if on_error == "raise":
                raise
            report.add(str(err))
    image_keys = {p.relative_to(root).as_posix() for p in images}
    for key, err in bad_rows.items():
        if key not in image_keys:  # bad row for an image that is not there
            report.add(str(err), skipped_image=False)
    _warn_unmatched(root, images, classes)
    if report.messages:
        log.warning("%s: %s", root, report.summary())
    return records, report


def _warn_unmatched(root: Path, images: list[Path], classes: dict[str, int]) -> None:
    """Warn about labels/table rows with no image: usually a naming mismatch."""
    stems = {p.stem for p in images}
    labels_dir = root / "labels"
    labels = sorted(labels_dir.glob("*.txt")) if labels_dir.is_dir() else []
    orphans = [p.name for p in labels if p.stem not in stems]
    if orphans:
        log.warning("%s: %d label file(s) without an image, e.g. %s", labels_dir, len(orphans), orphans[:3])
    keys = {p.relative_to(root).as_posix() for p in images}
    stray = sorted(k for k in classes if k not in keys)
    if stray:
        log.warning("%s: %d class-table row(s) name no image, e.g. %s", root, len(stray), stray[:3])
