"""Record keys of a sources spec: ``<source name>/<path relative to the source root>``.

Boxes and classes of a source meet on that key, and a split's manifests name
images by it, so a site finds the same image whatever the data root is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from src.data.records import Record


@dataclass(frozen=True)
class SourceRecord(Record):
    """A Record that knows its key (``source/relative/path``), e.g. for manifests, and
    its COCO image id when a COCO json lists it (evaluation ranks ties by it, as COCOeval)."""

    key: str = ""
    image_id: int | None = None


def record_key(source_name: str, relative_path: str) -> str:
    """``c2a`` + ``fire/img1.jpg`` -> ``c2a/fire/img1.jpg``."""
    return f"{source_name}/{PurePosixPath(relative_path).as_posix()}"


def split_record_key(key: str) -> tuple[str, str]:
    """Inverse of ``record_key``: (source name, path relative to the source root)."""
    name, sep, relative = key.partition("/")
    if not (name and sep and relative):
        raise ValueError(f"{key!r} is not a record key 'source/relative/path'")
    return name, relative
