"""YOLO detection layout: ``root/images/<stem>.jpg`` with ``root/labels/<stem>.txt``.

Label files hold ``class cx cy w h`` lines normalised to [0, 1]; an empty
label file means "annotated, no victims", a missing one means "never
annotated". The synthetic generator writes this layout, plus a disaster-class
table ``root/classes.tsv`` (see ``tsv``) and segmentation masks
``root/masks/<stem>.png`` (see ``masks``; a missing mask means "never
annotated"), so ``load_yolo_dataset`` reads the built-in data set as well as
a real site's YOLO export.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from src.data.formats.errors import DataError, ErrorReport
from src.data.formats.images import check_image
from src.data.formats.labels import COORD_TOLERANCE, clip_box, read_lines
from src.data.formats.masks import MaskClassMap, mask_file, read_mask, yolo_mask_lookup
from src.data.formats.paths import inside_folder, list_images, listing_of, missing_image
from src.data.formats.tsv import parse_class_table
from src.data.records import Record

log = logging.getLogger(__name__)

# A YOLO label file is a few lines per box; 1 MiB is ~25,000 boxes. Anything
# bigger is the wrong file, and is not read into memory.
MAX_LABEL_BYTES = 1 << 20


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
        raise DataError(f"{where}: non-finite value in {fields}")
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
    the file and 1-based line number. Files over ``MAX_LABEL_BYTES`` are not read.
    """
    path = Path(label_path)
    boxes, classes = [], []
    for n, line in enumerate(read_lines(path, MAX_LABEL_BYTES), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        cls, (cx, cy, w, h) = _parse_yolo_line(line, where, num_victim_classes)
        boxes.append(clip_box([(cx - w / 2) * image_width, (cy - h / 2) * image_height,
                               (cx + w / 2) * image_width, (cy + h / 2) * image_height],
                              image_width, image_height, where))
        classes.append(cls)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int32)


def yolo_label_files(root: Path, images: Sequence[Path]) -> tuple[dict[Path, Path | None], dict[Path, DataError]]:
    """Label file of each image of a YOLO layout (None: never annotated), and the ambiguous ones.

    ``images/a.jpg`` and ``images/a.png`` would share ``labels/a.txt``; which
    one it describes cannot be known, so both are errors rather than a guess.
    """
    by_stem = defaultdict(list)
    for image in images:
        by_stem[image.stem].append(image)
    labels, errors = {}, {}
    for stem, group in by_stem.items():
        label = root / "labels" / f"{stem}.txt"
        found = label if label.is_file() else None
        if found is not None and len(group) > 1:
            names = sorted(p.name for p in group)
            for image in group:
                errors[image] = DataError(f"{label}: ambiguous, images {names} share this label file; "
                                          "rename all but one image (and its label)")
        else:
            labels.update((image, found) for image in group)
    return labels, errors


def _load_record(
    image: Path, root: Path, label: Path | None, num_victims: int, classes: dict[str, int], full_decode: bool,
    masks: MaskClassMap | None = None,
) -> Record:
    """Build one Record; raises DataError for anything wrong with this image (its mask included)."""
    width, height = check_image(inside_folder(image, root, "image"), full_decode)
    boxes, victim_classes = np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
    if label is not None:
        label = inside_folder(label, root, "label file")
        boxes, victim_classes = read_yolo_labels(label, width, height, num_victims)
    mask = mask_file(root, image) if masks is not None else None
    if mask is not None:
        read_mask(inside_folder(mask, root, "mask"), masks, (width, height), image)
    key = image.relative_to(root).as_posix()
    return Record(
        image_path=str(image),
        boxes=boxes,
        victim_classes=victim_classes,
        disaster_class=classes.get(key, -1),
        has_boxes=label is not None,
        has_class=key in classes,
        mask_path=None if mask is None else str(mask),
        has_mask=mask is not None,
    )


def load_yolo_dataset(
    root: str | Path,
    victim_classes: Sequence[str],
    disaster_classes: Sequence[str],
    class_table: str | None = "classes.tsv",
    on_error: str = "raise",
    full_decode: bool = False,
    only: Collection[str] | Mapping[str, str] | None = None,
    mask_classes: Sequence[str] | None = None,
) -> tuple[list[Record], ErrorReport]:
    """Read a YOLO-layout data set (plus optional class table) into Records.

    on_error='raise' stops at the first problem; 'skip' drops the affected
    image, records why in the returned ``ErrorReport`` and carries on, so one
    bad file at a site does not block a federated round. A missing class
    table just means no image has a disaster class; structural problems
    (no images dir, table without its columns) always raise.
    full_decode=True decodes every image once (slower) to also catch
    corrupt bytes inside JPEG data, which the default checks miss.
    only: relative image paths (``images/x.jpg``) to read; the others are not
    opened at all (a site reads its own images, not the whole data root).
    A listed path with no image is a problem too (reason MISSING); as a
    mapping, only gives where each path is listed ('manifest.tsv: line 3').
    mask_classes: the model's mask classes, which root/masks/<stem>.png index
    (default: the list root/dataset.yaml records; see ``masks.yolo_mask_lookup``).
    A bad mask is a problem of its image, like a bad label file.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    root = Path(root)
    images, name_errors = list_images(root / "images")
    labels, ambiguous = yolo_label_files(root, images)
    masks = yolo_mask_lookup(root, mask_classes)
    report = ErrorReport()

    def handle(err: DataError, images: bool | int = True) -> None:
        if on_error == "raise":
            raise err
        report.add(err, images)

    classes, bad_rows = {}, {}
    table_path = root / class_table if class_table else None
    if table_path is not None and table_path.is_file():
        table = parse_class_table(inside_folder(table_path, root, "class table"), disaster_classes,
                                  "image", "disaster_class", "\t")
        classes = table.classes
        if table.errors and on_error == "raise":
            raise table.errors[0][1]
        for key, err in table.errors:
            if key is None:
                report.add(err, skipped_image=False)
            else:
                bad_rows.setdefault(key, err)
    if only is None:  # names that cannot be keys cannot be in `only` either
        for err in name_errors:
            handle(err)
    image_keys = {p.relative_to(root).as_posix() for p in images}
    if only is not None:
        listed_at = listing_of(only)
        for key in sorted(set(listed_at) - image_keys):
            handle(missing_image(key, listed_at[key], f" in {root / 'images'}"))
    records = []
    selected = images if only is None else [p for p in images if p.relative_to(root).as_posix() in only]
    for image in selected:
        try:
            key = image.relative_to(root).as_posix()
            if key in bad_rows:
                raise bad_rows[key]
            if image in ambiguous:
                raise ambiguous[image]
            records.append(_load_record(image, root, labels[image], len(victim_classes), classes, full_decode,
                                        masks))
        except DataError as err:
            handle(err)
    for key, err in bad_rows.items():
        if key not in image_keys:  # bad row for an image that is not there
            report.add(err, skipped_image=False)
    _warn_unmatched(root, images, classes)
    if report.messages:
        log.warning("%s: %s", root, report.summary())
    return records, report


def _warn_unmatched(root: Path, images: list[Path], classes: dict[str, int]) -> None:
    """Warn about labels/table rows with no image: usually a naming mismatch."""
    stems = {p.stem for p in images}
    labels_dir = root / "labels"
    labels = sorted(labels_dir.glob("*.txt")) if labels_dir.is_dir() else []
    for folder, files in ((labels_dir, labels), (root / "masks", sorted((root / "masks").glob("*.png")))):
        orphans = [p.name for p in files if p.stem not in stems]
        if orphans:
            log.warning("%s: %d label file(s) without an image, e.g. %s", folder, len(orphans), orphans[:3])
    keys = {p.relative_to(root).as_posix() for p in images}
    stray = sorted(k for k in classes if k not in keys)
    if stray:
        log.warning("%s: %d class-table row(s) name no image, e.g. %s", root, len(stray), stray[:3])
