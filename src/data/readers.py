"""Readers that turn on-disk label formats into ``Record``s.

Supported layouts (the synthetic generator writes the first; real sites
often have one of them already):

* YOLO detection: ``root/images/<stem>.jpg`` with ``root/labels/<stem>.txt``
  holding ``class cx cy w h`` lines normalised to [0, 1]; an empty label file
  means "annotated, no victims", a missing one means "never annotated".
* Disaster-class table: ``root/classes.tsv`` with a header row and class
  *names* (``images/00000.jpg<TAB>fire``).
* AIDER-style class folders: ``root/<class_name>/*.jpg``.

(COCO json is in ``coco.py``; ``sources.py`` combines all of them.)

Every problem is a ``DataError`` whose message names the file (and line),
because at a federated site nobody else can look at the data to find it.

Images are checked here, not in the tf.data pipeline, because a decode error
there names no file. ``check_image`` rejects what the pipeline's decoder
(``tf.io.decode_image``) would get wrong or choke on:

* EXIF orientation other than 1: TensorFlow decodes the stored pixels and
  ignores the tag, while viewers and most annotation tools show (and box) the
  rotated image, so the boxes would not fit the pixels the model sees.
  Rotating in both reader and pipeline would fix only the tools that honour
  the tag, so such images are rejected with a message asking to bake the
  rotation in (``PIL.ImageOps.exif_transpose(im).save(...)``).
* formats TensorFlow cannot decode (TIFF, ...) and palette / 1-bit BMPs,
  which it silently misreads as grey levels.
* decompression bombs: more than ``MAX_IMAGE_PIXELS`` pixels declared in the
  header; rejected from the header, before any pixel is decoded.
* truncated JPEGs (no end-of-image marker after the image data): found by
  reading the file's tail, not by decoding; TensorFlow refuses them.
Grey, RGBA, palette and 16-bit PNGs are fine: the pipeline decodes them to
3-channel float in [0, 1].

Paths are confined to the data folder: a listed path that is absolute or
climbs out with '..', and a file or folder that is a symlink resolving
outside the folder, are refused and never opened (reason ``OUTSIDE``).
Under ``on_error='skip'`` an image or per-image label file doing so is
skipped and counted like any bad file: it is not read either way, and one
planted link should not stop a site. A whole label file (the class table)
doing so raises, like any label file that cannot be read; so does a
manifest row (see ``src.data.manifests``).

File names that are not valid UTF-8 cannot become record keys or tf.data
strings; listings report them by their bytes' repr instead of crashing.
"""
from __future__ import annotations

import csv
import logging
import mmap
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from src.data.records import Record

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
# Exporters round normalised coordinates (e.g. 1.0000001); tolerate that much.
COORD_TOLERANCE = 1e-3
# Largest image accepted, in pixels (header width x height). The pipeline
# decodes an image whole before resizing it: 3 bytes a pixel, then 12 as
# float32, so 50 MP is ~750 MB per image in flight. Real photos stay below
# (drone 12-20 MP, phones up to 48 MP); a bigger file is more likely a
# decompression bomb. Read at call time, so a site with bigger images can
# raise it (PIL itself refuses more than 2 x PIL.Image.MAX_IMAGE_PIXELS).
MAX_IMAGE_PIXELS = 50_000_000
# A YOLO label file is a few lines per box; 1 MiB is ~25,000 boxes. Anything
# bigger is the wrong file, and is not read into memory.
MAX_LABEL_BYTES = 1 << 20

# Why a file or entry was refused; ErrorReport counts problems by these.
MISSING = "missing file"
UNREADABLE = "unreadable image"      # not an image, corrupt, truncated
TOO_LARGE = "image too large"        # over MAX_IMAGE_PIXELS: possible decompression bomb
UNSUPPORTED = "unsupported image"    # a format, mode or EXIF rotation the pipeline would misread
BAD_LABEL = "bad label"              # label file, line, annotation or table row
OUTSIDE = "outside the data folder"  # absolute, '..', or a symlink leaving the folder
BAD_NAME = "bad file name"           # not valid UTF-8


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message says where.

    reason: one of the reason constants above, for counting; most errors are
    about labels, hence the default.
    """

    def __init__(self, message: str, reason: str = BAD_LABEL):
        super().__init__(message)
        self.reason = reason


@dataclass
class ErrorReport:
    """What a loader with ``on_error='skip'`` left out, and why.

    reasons: problems per ``DataError.reason``, so a log says at a glance
    whether a site lost images to corrupt files, bad labels or something else.
    notes: things left out on purpose (``drop_unmapped``), counted so that a
    typo in a class map cannot hide, but not problems.
    """

    skipped: int = 0
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)

    def add(self, problem: DataError | str, skipped_image: bool | int = True) -> None:
        """One problem; skipped_image: True (one image), False, or a number of images."""
        self.skipped += int(skipped_image)
        self.messages.append(str(problem))
        self.reasons[getattr(problem, "reason", BAD_LABEL)] += 1

    def note(self, message: str) -> None:
        self.notes.append(message)

    @property
    def clean(self) -> bool:
        return not self.messages

    def reason_counts(self) -> str:
        """'2 unreadable image, 1 bad label', most frequent first."""
        return ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())

    def summary(self, max_messages: int = 10) -> str:
        """One readable block for logs: counts (by reason) plus the first few messages."""
        lines = ["no data problems"]
        if self.messages:
            lines = [f"{self.skipped} image(s) skipped, {len(self.messages)} problem(s) "
                     f"({self.reason_counts()}):"]
            lines += [f"  {m}" for m in self.messages[:max_messages]]
            if len(self.messages) > max_messages:
                lines.append(f"  ... and {len(self.messages) - max_messages} more")
        lines += [f"  note: {m}" for m in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------- images


# Formats tf.io.decode_image reads (PIL names); MPO is a multi-picture JPEG.
DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP"})
# TensorFlow reads 8-bit BMPs as grey levels, right only for a grey palette.
DECODABLE_BMP_MODES = frozenset({"RGB", "RGBA", "L"})
EXIF_ORIENTATION = 0x0112


def display_path(path: str | Path) -> str:
    """The path for messages; a name that is not valid UTF-8 as the repr of its bytes."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(text))
    return text


def utf8_name_error(path: Path) -> DataError | None:
    """A DataError if ``path`` (as listed from disk) is not valid UTF-8, else None."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return DataError(f"{display_path(path)}: file name is not valid UTF-8; rename it "
                         "(e.g. `convmv -f latin1 -t utf8`)", BAD_NAME)
    return None


def listing_of(keys: Collection[str] | Mapping[str, str]) -> dict[str, str]:
    """Image keys, or key -> where each is listed ('manifest.tsv: line 3'), as the latter."""
    return dict(keys) if isinstance(keys, Mapping) else dict.fromkeys(keys, "")


def missing_image(key: str, listed_at: str, detail: str) -> DataError:
    """A requested image that is not there, reported where it is listed (if said)."""
    where = f"{listed_at}: " if listed_at else ""
    return DataError(f"{where}image {key} not found{detail}", MISSING)


def inside_folder(path: Path, root: Path, what: str = "file") -> Path:
    """``path`` itself; DataError (reason OUTSIDE) when it resolves outside ``root``.

    Symlinks are followed first, so a link planted in a data set
    (``images/x.jpg -> /etc/passwd``) is refused before anything reads it.
    A non-regular file (a FIFO, a device) is refused too: opening one can
    block or never end.
    """
    target, folder = path.resolve(), root.resolve()
    if not target.is_relative_to(folder):
        raise DataError(f"{display_path(path)}: {what} resolves to {display_path(target)}, outside the "
                        f"data folder {display_path(folder)}; refused, not read (a symlink or path "
                        "leaving the folder: copy the file in, or point the root at its real folder)",
                        OUTSIDE)
    if target.exists() and not target.is_file():
        raise DataError(f"{display_path(path)}: {what} is not a regular file; refused, not read", UNREADABLE)
    return path


def _open_image(path: str | Path) -> Image.Image:
    """PIL image (header only), with file-named errors; more than MAX_IMAGE_PIXELS rejected."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            im = Image.open(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found", MISSING) from e
    except Image.DecompressionBombError as e:  # PIL's hard stop, far above ours
        raise DataError(f"{path}: rejected as a possible decompression bomb, not decoded: {e} "
                        f"(limit {MAX_IMAGE_PIXELS:,} pixels, readers.MAX_IMAGE_PIXELS)", TOO_LARGE) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({e})", UNREADABLE) from e
    width, height = im.size
    if width * height > MAX_IMAGE_PIXELS:
        im.close()
        raise DataError(f"{path}: rejected as a possible decompression bomb, not decoded: the header "
                        f"declares {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{MAX_IMAGE_PIXELS:,} (readers.MAX_IMAGE_PIXELS); downscale the image, or raise "
                        "the limit if such images are intended", TOO_LARGE)
    return im


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding pixels.

    YOLO labels are relative to the original size, so we need it for every
    image; reading only the header keeps a dataset scan cheap.
    """
    with _open_image(path) as im:
        return im.size


def _check_decodable(im: Image.Image, path: str | Path) -> None:
    """Reject what the tf.data pipeline would fail on or misread (see module docstring)."""
    if im.format not in DECODABLE_FORMATS:
        raise DataError(f"{path}: {im.format} images cannot be decoded by the pipeline; "
                        f"convert to JPEG or PNG (readable: {sorted(DECODABLE_FORMATS)})", UNSUPPORTED)
    if im.format == "BMP" and im.mode not in DECODABLE_BMP_MODES:
        raise DataError(f"{path}: BMP with mode {im.mode} (palette or 1-bit) would be misread "
                        "by the pipeline; convert it to PNG", UNSUPPORTED)
    orientation = _exif_orientation(im)
    if orientation not in (None, 0, 1):
        raise DataError(
            f"{path}: EXIF orientation {orientation} (rotated/mirrored): the pipeline decodes the "
            "stored pixels and ignores EXIF, so boxes drawn on the displayed image would not "
            "match; bake the rotation in (PIL: ImageOps.exif_transpose(im).save(...)) and "
            "re-check the boxes", UNSUPPORTED)


def _exif_orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag, None when absent or unreadable (TF ignores EXIF too)."""
    if "exif" not in im.info:  # also keeps PNG's getexif() from decoding pixels
        return None
    try:
        return im.getexif().get(EXIF_ORIENTATION)
    except Exception:  # PIL's EXIF parser raises many types on malformed blocks
        return None


def _jpeg_cut_short(path: str | Path, scan_start: int) -> bool:
    """True when no end-of-image marker (FF D9) follows the start of the image data.

    Inside JPEG scan data every FF byte is escaped, so the marker cannot
    occur before the real end: a file cut anywhere in its pixels lacks it
    (TensorFlow then fails the decode). Searched backwards from the end of a
    memory map, so an intact file costs a page read, not a decode.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.rfind(b"\xff\xd9", scan_start) < 0


def check_image(path: str | Path, full_decode: bool = False) -> tuple[int, int]:
    """Like ``image_size`` but also checks the file is intact and decodable.

    ``verify()`` catches broken or truncated PNG chunks cheaply; it does not
    decode JPEG scan data, so a cut-off JPEG is found by its missing
    end-of-image marker instead. Corrupt bytes inside otherwise complete
    JPEG data only show up with ``full_decode=True`` (TensorFlow decodes some
    of those to noisy pixels and fails on others). Better to find problems
    here, with a file name, than as an anonymous decode error deep inside a
    tf.data pipeline (which drops such an image, see ``pipeline``).
    """
    with _open_image(path) as im:  # file-not-found / not-an-image / too-large errors
        # PIL's JPEG header parser stops right after the start-of-scan header
        scan_start = im.fp.tell() if im.format == "JPEG" else None
        size = im.size
        _check_decodable(im, path)
        try:
            im.verify()
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: corrupt image ({e})", UNREADABLE) from e
    if scan_start is not None and _jpeg_cut_short(path, scan_start):
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker after the image data; "
                        "cut short in a copy or download?): the pipeline cannot decode it", UNREADABLE)
    if full_decode:
        with _open_image(path) as im:
            try:
                im.load()
            except (OSError, SyntaxError, ValueError) as e:
                raise DataError(f"{path}: corrupt image ({e})", UNREADABLE) from e
    return size


# --------------------------------------------------------------------------- YOLO labels


def read_text_file(path: Path, max_bytes: int | None = None) -> str:
    """A UTF-8 text file (BOM tolerated), with file-named errors.

    max_bytes: refuse a bigger file without reading it (bounded memory for
    files that should be small). Invalid UTF-8 (binary junk) is reported at
    its line.
    """
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise DataError(f"{path}: {size:,} bytes, more than the {max_bytes:,} such a file can "
                            "plausibly need; not read (wrong file?)")
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found", MISSING) from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r}: "
                        f"{e.reason}); binary junk or another encoding") from e


def _read_text(path: Path, max_bytes: int | None = None) -> list[str]:
    """Lines of a UTF-8 text file, with file-named errors."""
    return read_text_file(path, max_bytes).splitlines()


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


def clip_box(xyxy: Sequence[float], width: int, height: int, where: str) -> list[float]:
    """Clip a pixel xyxy box overhanging the image edge; DataError if nothing is left.

    Exporters often let boxes overhang a little (and formats' range checks
    allow it within ``COORD_TOLERANCE``); a box with no area inside the image
    would be a zero-sized training target.
    """
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    clipped = [min(max(x0, 0.0), width), min(max(y0, 0.0), height),
               min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise DataError(f"{where}: box {[round(v, 2) for v in (x0, y0, x1, y1)]} has no area "
                        f"inside the {width}x{height} image")
    return clipped


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
    for n, line in enumerate(_read_text(path, MAX_LABEL_BYTES), start=1):
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


# --------------------------------------------------------------------------- disaster classes


def relative_key(text: str, where: str) -> str:
    """A listed image path as a clean POSIX key relative to the data root.

    './images\\a.jpg' -> 'images/a.jpg'. Absolute paths (also 'C:/...') and '..'
    are errors (reason OUTSIDE): a key must name a file under the root, the
    same at every site, and a label file must not make a site read elsewhere.
    """
    if not text.strip():
        raise DataError(f"{where}: empty image path")
    path = PurePosixPath(text.strip().replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        raise DataError(f"{where}: image path {text!r} must be relative to the data root, without '..'; "
                        "refused, not read", OUTSIDE)
    return path.as_posix()


def split_row(line: str, delimiter: str, where: str) -> list[str]:
    """One line of a delimited table as fields; what the csv module rejects (e.g. a
    field over its 128 KB limit) as a DataError at that line."""
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error as e:
        raise DataError(f"{where}: not a {delimiter!r}-delimited row ({e})") from e


def class_lookup(class_names: Sequence[str], class_map: Mapping[str, str] | None = None) -> dict[str, int]:
    """Accepted label name -> class index: our names, plus source names that class_map maps onto them."""
    index = {name: i for i, name in enumerate(class_names)}
    for source_name, ours in (class_map or {}).items():
        if ours in index:
            index[source_name] = index[ours]
    return index


def _unknown_class_message(name: str, class_names: Sequence[str], class_map) -> str:
    known = list(class_names) + sorted(set(class_map or {}) - set(class_names))
    return f"unknown class {name!r} (known: {known})"


@dataclass
class ClassTable:
    """A parsed class table. errors: (image key or None, DataError) per bad row.

    dropped: rows left out because their class maps to nothing and the
    caller asked for ``drop_unmapped`` (class name -> rows).
    """

    classes: dict[str, int]
    lines: dict[str, int]
    errors: list[tuple[str | None, DataError]]
    dropped: Counter


def parse_class_table(
    tsv_path: str | Path,
    class_names: Sequence[str],
    image_column: str = "image",
    class_column: str = "disaster_class",
    delimiter: str = "\t",
    class_map: Mapping[str, str] | None = None,
    drop_unmapped: bool = False,
) -> ClassTable:
    """Parse the table, collecting per-row errors instead of stopping.

    Structural problems (missing file, missing column) raise immediately: no
    row can be trusted then.
    """
    path = Path(tsv_path)
    lines = _read_text(path)
    header = [h.strip() for h in split_row(lines[0], delimiter, f"{path}: line 1")] if lines else []
    for col in (image_column, class_column):
        if col not in header:
            raise DataError(f"{path}: line 1: missing column {col!r} (header is {header})")
    i_img, i_cls = header.index(image_column), header.index(class_column)
    index = class_lookup(class_names, class_map)
    out = ClassTable({}, {}, [], Counter())
    for n, line in enumerate(lines[1:], start=2):
        where = f"{path}: line {n}"
        try:
            row = split_row(line, delimiter, where)
        except DataError as err:
            out.errors.append((None, err))
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            out.errors.append((None, DataError(f"{where}: expected {len(header)} fields, got {len(row)}")))
            continue
        try:
            key = relative_key(row[i_img], where)
        except DataError as err:
            out.errors.append((None, err))
            continue
        name = row[i_cls].strip()
        if name not in index and drop_unmapped:  # as if the row were not there
            out.dropped[name] += 1
            continue
        out.lines.setdefault(key, n)
        if name not in index:
            out.errors.append((key, DataError(f"{where}: {_unknown_class_message(name, class_names, class_map)}")))
        elif out.classes.get(key, index[name]) != index[name]:
            out.errors.append((key, DataError(f"{where}: {key} listed again with a different class {name!r}")))
        else:
            out.classes[key] = index[name]
    return out


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
    table = parse_class_table(tsv_path, class_names, image_column, class_column, delimiter)
    if table.errors:
        raise table.errors[0][1]
    return table.classes


def list_images(folder: Path) -> tuple[list[Path], list[DataError]]:
    """Sorted image files of one folder, and errors for names that are not UTF-8.

    Sorted so record order (and thus splits) is reproducible. Hidden files
    ('._a.jpg' from macOS copies) are not images and are left out.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: images directory not found")
    images, errors = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        err = utf8_name_error(p)
        if err is None:
            images.append(p)
        else:
            errors.append(err)
    return images, errors


@dataclass
class ClassFolders:
    """A scanned ``root/<class>/`` tree.

    classes: 'fire/a.jpg' -> class index; unknown: folder name -> number of
    images in a folder that names no class; errors: unusable file or folder
    names (not UTF-8).
    """

    classes: dict[str, int]
    unknown: dict[str, int]
    errors: list[DataError]


def scan_class_folders(
    root: str | Path, class_names: Sequence[str], class_map: Mapping[str, str] | None = None
) -> ClassFolders:
    """Images of ``root/<class_name>/`` by class; folder names go through class_map."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: class folder root is not a directory")
    index = class_lookup(class_names, class_map)
    out = ClassFolders({}, {}, [])
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name_error = utf8_name_error(folder)
        if name_error is not None:
            out.errors.append(name_error)
            continue
        images, errors = list_images(folder)
        out.errors += errors
        if folder.name not in index:
            out.unknown[folder.name] = len(images)
            continue
        out.classes.update((p.relative_to(root).as_posix(), index[folder.name]) for p in images)
    return out


def read_class_folders(root: str | Path, class_names: Sequence[str]) -> dict[str, int]:
    """Map image path -> class index for ``root/<class_name>/*.jpg|png`` layouts.

    A missing class folder is fine (a site need not hold every class); folders
    not in ``class_names`` are ignored with a warning, since a typo there would
    otherwise drop a whole class silently.
    """
    root = Path(root)
    scan = scan_class_folders(root, class_names)
    for name in scan.unknown:
        log.warning("%s: folder %r is not a known class, ignored (known: %s)", root, name, list(class_names))
    for err in scan.errors:
        log.warning("%s, ignored", err)
    if not scan.classes:
        raise DataError(f"{root}: no images found in any class folder {list(class_names)}")
    return {str(root / key): idx for key, idx in scan.classes.items()}


# --------------------------------------------------------------------------- whole data set


def _load_record(
    image: Path, root: Path, label: Path | None, num_victims: int, classes: dict[str, int], full_decode: bool
) -> Record:
    """Build one Record; raises DataError for anything wrong with this image."""
    width, height = check_image(inside_folder(image, root, "image"), full_decode)
    boxes, victim_classes = np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
    if label is not None:
        label = inside_folder(label, root, "label file")
        boxes, victim_classes = read_yolo_labels(label, width, height, num_victims)
    key = image.relative_to(root).as_posix()
    return Record(
        image_path=str(image),
        boxes=boxes,
        victim_classes=victim_classes,
        disaster_class=classes.get(key, -1),
        has_boxes=label is not None,
        has_class=key in classes,
    )


def load_yolo_dataset(
    root: str | Path,
    victim_classes: Sequence[str],
    disaster_classes: Sequence[str],
    class_table: str | None = "classes.tsv",
    on_error: str = "raise",
    full_decode: bool = False,
    only: Collection[str] | Mapping[str, str] | None = None,
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
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    root = Path(root)
    images, name_errors = list_images(root / "images")
    labels, ambiguous = yolo_label_files(root, images)
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
            records.append(_load_record(image, root, labels[image], len(victim_classes), classes, full_decode))
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
    orphans = [p.name for p in labels if p.stem not in stems]
    if orphans:
        log.warning("%s: %d label file(s) without an image, e.g. %s", labels_dir, len(orphans), orphans[:3])
    keys = {p.relative_to(root).as_posix() for p in images}
    stray = sorted(k for k in classes if k not in keys)
    if stray:
        log.warning("%s: %d class-table row(s) name no image, e.g. %s", root, len(stray), stray[:3])
