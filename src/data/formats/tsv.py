"""Disaster-class tables: a delimited file of image paths and class *names*.

The built-in layout has ``root/classes.tsv`` with a header row
(``images/00000.jpg<TAB>fire``); real sources name their own file, columns
and delimiter (CrisisIBD / MEDIC tables as tsv or csv). Class names, not
indices, so reordering the class list in the config cannot silently relabel
a site's data.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from src.data.formats.errors import DataError
from src.data.formats.labels import class_lookup, read_lines, split_row
from src.data.formats.paths import relative_key


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
    lines = read_lines(path)
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


def read_class_table(tsv_path: str | Path, class_names: Sequence[str], image_column: str = "image",
                     class_column: str = "disaster_class", delimiter: str = "\t") -> dict[str, int]:
    """Map relative image path -> disaster class index from a delimited table.

    The table holds class *names*, not indices, so reordering the class list
    in the config cannot silently relabel a site's data. Raises ``DataError``
    (file + line) on the first bad row.
    """
    table = parse_class_table(tsv_path, class_names, image_column, class_column, delimiter)
    if table.errors:
        raise table.errors[0][1]
    return table.classes
