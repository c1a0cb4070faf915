"""What every label format shares: reading its text, splitting table rows, mapping
class names to indices and clipping boxes to the image.

One place for these, so a YOLO file, a COCO json and a class table read with the
same tolerance and fail with the same file-and-line messages.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from src.data.formats.errors import MISSING, DataError

# Exporters round normalised coordinates (e.g. 1.0000001); tolerate that much.
COORD_TOLERANCE = 1e-3


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


def read_lines(path: Path, max_bytes: int | None = None) -> list[str]:
    """Lines of a UTF-8 text file, with file-named errors."""
    return read_text_file(path, max_bytes).splitlines()


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
