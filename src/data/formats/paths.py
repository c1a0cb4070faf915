"""Where data files are, and whether a reader may open them.

Paths are confined to the data folder: a listed path that is absolute or
climbs out with '..', and a file or folder that is a symlink resolving
outside the folder, are refused and never opened (reason ``OUTSIDE``).
File names that are not valid UTF-8 cannot become record keys or tf.data
strings; listings report them by their bytes' repr instead of crashing.
"""
from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath

from src.data.formats.errors import BAD_NAME, MISSING, OUTSIDE, UNREADABLE, DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


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
