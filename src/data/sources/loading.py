"""Reading every source of a spec into records, under one ``on_error`` policy.

Problems with single images, rows or annotations follow ``on_error`` as in
``formats.load_yolo_dataset``: 'raise' stops at the first, 'skip' leaves the
images concerned out and counts them. ``only`` reads just the listed keys
(a site reads its own images, not every source).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from src.data.formats import MISSING, DataError, ErrorReport, check_image, inside_folder, listing_of, missing_image
from src.data.records import Record
from src.data.sources.keys import SourceRecord, record_key
from src.data.sources.listings import NO_BOXES, NO_CLASSES, CocoBoxes, YoloBoxes, folder_classes, table_classes
from src.data.sources.spec import SourceSpec, Spec, read_spec


def _check_listed_image(path: Path, root: Path, listed_at: str, full_decode: bool) -> tuple[int, int]:
    """check_image of a file inside root; a missing file listed in a label file is reported at that line."""
    if listed_at and not path.exists():
        raise DataError(f"{listed_at}: image file {path} not found", MISSING)
    return check_image(inside_folder(path, root, "image"), full_decode)


def _load_source(source: SourceSpec, spec: Spec, handle, only: Mapping[str, str] | None,
                 full_decode: bool) -> tuple[list[SourceRecord], list[str], list[str]]:
    """Records of one source (sorted by key), notes on what was dropped on purpose, warnings.

    handle(error, images) raises or records each problem; only: path relative
    to the root -> where it is listed ('' if nowhere in particular).
    """
    boxes, listings, classes = None, [], {}
    if source.boxes:
        boxes = (CocoBoxes if source.boxes["format"] == "coco" else YoloBoxes)(source, spec.victim_classes)
        listings.append(boxes.listing)
    if source.classes:
        read = folder_classes if source.classes["format"] == "folders" else table_classes
        class_listing, classes = read(source, spec.disaster_classes)
        listings.append(class_listing)
    if only is None:  # problems tied to no listed image concern whoever reads everything
        for listing in listings:
            for err in listing.problems:
                handle(err, 0)
            for err, count in listing.skipped:
                handle(err, count)
    keys = sorted({key for listing in listings for key in listing.images})
    if only is not None:
        for relative in sorted(set(only) - set(keys)):
            handle(missing_image(record_key(source.name, relative), only[relative],
                                 f": source {source.name!r} ({source.root}) has no such image"), 1)
        keys = [k for k in keys if k in only]
    warnings = []
    if len(listings) == 2 and listings[0].images and listings[1].images \
            and not listings[0].images.keys() & listings[1].images.keys():
        warnings.append(f"{source.where} ({source.name}): no image has both boxes and a class: do the paths "
                        f"of the two label specs differ? e.g. {min(listings[0].images)} vs "
                        f"{min(listings[1].images)}")
    records = []
    for key in keys:
        try:
            err = next((listing.bad[key] for listing in listings if key in listing.bad), None)
            if err is not None:
                raise err
            path = source.root / key
            listed_at = next((listing.images[key] for listing in listings if listing.images.get(key)), "")
            try:
                width, height = _check_listed_image(path, source.root, listed_at, full_decode)
            except DataError as err:
                if err.reason == MISSING and isinstance(boxes, CocoBoxes) and key in boxes.listing.images:
                    raise DataError(f"{err}{boxes.missing_hint(key)}", MISSING) from err
                raise
            labels = boxes.labels(key, width, height) if boxes and key in boxes.listing.images else None
            box, cls, crowd, crowd_cls = labels if labels is not None else (NO_BOXES, NO_CLASSES) * 2
            records.append(SourceRecord(
                image_path=str(path), boxes=box, victim_classes=cls, crowd_boxes=crowd,
                crowd_classes=crowd_cls, has_boxes=labels is not None,
                disaster_class=classes.get(key, -1), has_class=key in classes,
                key=record_key(source.name, key),
                image_id=boxes.image_id(key) if isinstance(boxes, CocoBoxes) else None))
        except DataError as err:
            handle(err, 1)
    notes = [f"{source.where} ({source.name}): left out (drop_unmapped): "
             + ", ".join(f"{n} x {name!r}" for name, n in sorted(listing.dropped.items()))
             for listing in listings if listing.dropped]
    return records, notes, warnings


def load_sources(
    spec: str | Path | Mapping,
    victim_classes: Sequence[str] | None = None,
    disaster_classes: Sequence[str] | None = None,
    on_error: str = "raise",
    only: Collection[str] | Mapping[str, str] | None = None,
    full_decode: bool = False,
    base_dir: str | Path | None = None,
) -> tuple[dict[str, list[Record]], ErrorReport]:
    """Read every source of a spec: {source name: records sorted by key}, ErrorReport.

    on_error='raise' stops at the first data problem; 'skip' leaves out the
    images concerned and counts them in the report. The report is the caller's
    to show (``ErrorReport.summary``), once: a site logs it, the tools print it.
    only: record keys to read; other images are not opened, sources with no
    key in it are not read at all, and problems tied to no listed image are
    left to whoever reads everything (``python -m src.data.validate``). A key
    naming no image is a problem (reason MISSING); as a mapping, only gives
    where each key is listed ('manifest.tsv: line 3') for the message.
    full_decode: decode every image once to also catch corrupt JPEG data.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    parsed = read_spec(spec, victim_classes, disaster_classes, base_dir)
    report = ErrorReport()

    def handle(err: DataError, images: int) -> None:
        if on_error == "raise":
            raise err
        report.add(err, images)

    per_source = None  # source name -> {relative path: where listed}
    if only is not None:
        per_source = {source.name: {} for source in parsed.sources}
        for key, listed_at in sorted(listing_of(only).items()):
            name, _, relative = key.partition("/")
            if name in per_source and relative:
                per_source[name][relative] = listed_at
            else:
                handle(missing_image(key, listed_at, f": no source {name!r} in the spec "
                                                     f"(sources: {sorted(per_source)})"), 1)
    out = {}
    for source in parsed.sources:
        wanted = None if per_source is None else per_source[source.name]
        if wanted is not None and not wanted:
            out[source.name] = []
            continue
        out[source.name], notes, warnings = _load_source(source, parsed, handle, wanted, full_decode)
        for note in notes:
            report.note(note)
        for warning in warnings:
            report.warn(warning)
    return out, report
