"""AIDER-style class folders: ``root/<class_name>/*.jpg``, the folder names the disaster class.

A folder that names no class is reported rather than skipped quietly, since a
typo there would otherwise drop a whole class.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from src.data.formats.errors import DataError
from src.data.formats.labels import class_lookup
from src.data.formats.paths import list_images, utf8_name_error

log = logging.getLogger(__name__)


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
