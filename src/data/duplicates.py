"""The same picture reached through several sources: found by file content, merged into one record.

Why: public sets are built from each other (C2A pastes people onto AIDER
backgrounds; users keep a COCO-annotated copy and a class-folder copy of the
same images). Keyed by path, such a picture is two images: one copy can land
in the test split and the other at a training site, or the two at two sites.
Merged, it is one record that the split places once, with the labels of both
copies: boxes from one, the disaster class from the other.

Copies are found by a hash of the file bytes, not of the decoded pixels.
Byte-identical files are what copying a data set produces (``cp``, an
archive extracted twice, a symlink), and hashing bytes costs one read of the
few files whose byte size equals another file's size, while decoding every
picture of every source costs more than the rest of the split builder. A
decoded-pixel hash would add only copies stored losslessly in another way
(JPEG re-saved as PNG, metadata stripped); a JPEG re-encoded at another
quality changes the pixels too, so neither hash finds it.

Which copy leads: the first in the spec's source order (then by key). Its key
and file become the record's; for each task the first copy that holds the
label gives it. Copies that disagree on a label (other boxes, another class)
keep the leading copy's, and the disagreement is reported.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from src.data.records import Record

BOX_TOLERANCE = 1.0  # pixels: boxes of two copies closer than this are the same box
CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """blake2b of the file's bytes, read in chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def find_copies(records: Sequence[Record]) -> list[list[int]]:
    """Indices of records whose files hold the same bytes, groups of two or more, in record order.

    Only files whose size equals another's are read."""
    by_size = defaultdict(list)
    for i, record in enumerate(records):
        by_size[os.stat(record.image_path).st_size].append(i)
    by_digest = defaultdict(list)
    for indices in by_size.values():
        if len(indices) > 1:
            for i in indices:
                by_digest[file_digest(records[i].image_path)].append(i)
    return sorted((group for group in by_digest.values() if len(group) > 1), key=lambda g: g[0])


def name_of(record: Record) -> str:
    return getattr(record, "key", "") or record.image_path


def _sorted_boxes(boxes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(boxes.T[::-1]) if len(boxes) else np.zeros(0, int)
    return boxes[order], classes[order]


def same_boxes(a: Record, b: Record) -> bool:
    """The same boxes and victim classes (and crowd regions), in any order, within BOX_TOLERANCE."""
    for boxes_a, classes_a, boxes_b, classes_b in ((a.boxes, a.victim_classes, b.boxes, b.victim_classes),
                                                   (a.crowd_boxes, a.crowd_classes, b.crowd_boxes, b.crowd_classes)):
        if len(boxes_a) != len(boxes_b):
            return False
        boxes_a, classes_a = _sorted_boxes(boxes_a, classes_a)
        boxes_b, classes_b = _sorted_boxes(boxes_b, classes_b)
        if not (np.array_equal(classes_a, classes_b) and np.all(np.abs(boxes_a - boxes_b) <= BOX_TOLERANCE)):
            return False
    return True


def _class_name(index: int, disaster_classes: Sequence[str] | None) -> str:
    return disaster_classes[index] if disaster_classes else str(index)


def merge_copies(copies: Sequence[Record], disaster_classes: Sequence[str] | None = None) -> tuple[Record, list[str]]:
    """One record for copies of one picture (the first leads), and the label disagreements found.

    Boxes come from the first copy that has boxes, the class from the first
    that has a class (see the module docstring)."""
    lead = copies[0]
    with_boxes = [r for r in copies if r.has_boxes]
    with_class = [r for r in copies if r.has_class]
    disagreements = []
    if with_boxes:
        source = with_boxes[0]
        for other in with_boxes[1:]:
            if not same_boxes(source, other):
                disagreements.append(f"{name_of(source)} ({len(source.boxes)} boxes) and {name_of(other)} "
                                     f"({len(other.boxes)} boxes) are the same picture with other boxes; "
                                     f"kept those of {name_of(source)}")
        lead = replace(lead, boxes=source.boxes, victim_classes=source.victim_classes, has_boxes=True,
                       crowd_boxes=source.crowd_boxes, crowd_classes=source.crowd_classes)
    if with_class:
        source = with_class[0]
        kept = _class_name(source.disaster_class, disaster_classes)
        for other in with_class[1:]:
            if other.disaster_class != source.disaster_class:
                disagreements.append(f"{name_of(source)} ({kept}) and {name_of(other)} "
                                     f"({_class_name(other.disaster_class, disaster_classes)}) are the same "
                                     f"picture with another class; kept {kept}")
        lead = replace(lead, disaster_class=source.disaster_class, has_class=True)
    return lead, disagreements


@dataclass
class Merges:
    """What merging copies did. same_picture: leading key -> the other keys of its picture;
    kinds: 'c2a + aider: boxes from c2a, class from aider' -> pictures."""

    same_picture: dict[str, list[str]] = field(default_factory=dict)
    kinds: Counter = field(default_factory=Counter)
    disagreements: list[str] = field(default_factory=list)

    @property
    def pictures(self) -> int:
        return len(self.same_picture)

    @property
    def copies_merged(self) -> int:
        return sum(len(others) for others in self.same_picture.values())

    def lines(self, images: int | None = None, examples: int = 3) -> list[str]:
        """A readable account: one line per kind of merge, a few examples, every disagreement.
        images: how many images the sources list, to say how many distinct pictures they hold."""
        if not self.same_picture:
            return ["no picture found in two places (same file content)"]
        distinct = f": {images - self.copies_merged} distinct pictures in {images} images" if images else ""
        out = [f"{self.pictures} picture(s) found in two or more places (same file content){distinct}; "
               "each is one record, its copies' labels merged"]
        out += [f"  {n} x {kind}" for kind, n in self.kinds.most_common()]
        out += [f"  e.g. {lead} = {' = '.join(others)}" for lead, others in list(self.same_picture.items())[:examples]]
        out += [f"  label disagreement: {text}" for text in self.disagreements]
        return out

    def as_dict(self) -> dict:
        """For split.yaml."""
        return {"pictures": self.pictures, "copies_merged": self.copies_merged,
                "kinds": dict(self.kinds.most_common()), "label_disagreements": len(self.disagreements)}


def _kind(copies: Sequence[Record]) -> str:
    def source(record):
        return name_of(record).split("/", 1)[0]
    names = list(dict.fromkeys(source(r) for r in copies))
    boxes = next((source(r) for r in copies if r.has_boxes), None)
    cls = next((source(r) for r in copies if r.has_class), None)
    return (f"{' + '.join(names)}: " + (f"boxes from {boxes}" if boxes else "no boxes") + ", "
            + (f"class from {cls}" if cls else "no class"))


def merge_duplicates(per_source: Mapping[str, list[Record]], disaster_classes: Sequence[str] | None = None
                     ) -> tuple[dict[str, list[Record]], Merges]:
    """{source: records} with every picture once (copies merged into the first listed), and what merged."""
    ordered = [r for name in per_source for r in per_source[name]]
    merges, merged, dropped = Merges(), {}, set()
    for group in find_copies(ordered):
        copies = [ordered[i] for i in group]
        record, disagreements = merge_copies(copies, disaster_classes)
        lead = name_of(copies[0])
        merged[lead] = record
        merges.same_picture[lead] = [name_of(r) for r in copies[1:]]
        merges.kinds[_kind(copies)] += 1
        merges.disagreements += disagreements
        dropped.update(name_of(r) for r in copies[1:])
    out = {name: [merged.get(name_of(r), r) for r in records if name_of(r) not in dropped]
           for name, records in per_source.items()}
    return out, merges
