"""Check a data set before training: python -m src.data.validate SPEC [--full-decode] [--on-error skip|raise]

Why: a bad file found during a federated round costs the round; found here
it costs a minute, with the file and line named. SPEC is a sources.yaml
(see ``src.data.sources``) or a folder in the built-in YOLO layout (images/,
labels/, classes.tsv, masks/). Everything is read as training would read it (no
model, no TensorFlow); the output is one row per source (images, with
boxes, boxes, crowd regions, with class, with masks when the folder has
masks/, class histogram), the pictures found
in two or more places (same file content: the split builder merges them, see
``src.data.duplicates``), and the problem summary with its warnings.

Exit code: 0 clean (warnings and merged copies included), 1 problems found
(``--on-error skip``, the default), 2 a problem stopped the check
(``--on-error raise``, or a broken spec), with one ``error:`` line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from src.data.duplicates import merge_duplicates
from src.data.formats import DataError, ErrorReport, image_size, inside_folder, mask_file, read_mask, yolo_mask_lookup
from src.data.sources import load_sources
from src.settings import DEFAULT_CONFIG, load_config

COLUMNS = ("source", "images", "with boxes", "boxes", "crowd regions", "with class", "class histogram")
MASK_COLUMN = "with masks"  # shown before the histogram when the data has masks


def yolo_folder_spec(root: Path) -> dict:
    """The built-in layout (root/images, root/labels, root/classes.tsv) as a one-source spec."""
    root = root.resolve()
    source = {"name": root.name or "data", "root": str(root), "boxes": {"format": "yolo"}}
    if (root / "classes.tsv").is_file():
        source["classes"] = {"format": "tsv", "file": "classes.tsv", "image_column": "image",
                             "class_column": "disaster_class"}
    return {"sources": [source]}


def folder_masks(root: Path, per_source: dict, mask_classes, report: ErrorReport, on_error: str) -> dict | None:
    """{source name: images with a good mask} of a YOLO-layout folder (None without masks/); each bad
    mask is a problem in `report` (or raised, with on_error='raise'), named by its file."""
    root = root.resolve()
    lookup = yolo_mask_lookup(root, mask_classes)
    if lookup is None:
        return None
    counts = {}
    for name, records in per_source.items():
        counts[name] = 0
        for record in records:
            mask = mask_file(root, Path(record.image_path))
            if mask is None:
                continue
            try:
                read_mask(inside_folder(mask, root, "mask"), lookup, image_size(record.image_path), record.image_path)
                counts[name] += 1
            except DataError as err:
                if on_error == "raise":
                    raise
                report.add(err)
    return counts


def source_rows(per_source: dict, disaster_classes, masks: dict | None = None) -> list[tuple]:
    """One row per source (plus a total when there are several), in COLUMNS order; with `masks`
    ({source: images with a mask}) a MASK_COLUMN before the histogram."""
    rows, totals = [], Counter()
    for name, records in per_source.items():
        hist = Counter(disaster_classes[r.disaster_class] for r in records if r.has_class)
        counts = Counter(images=len(records), with_boxes=sum(r.has_boxes for r in records),
                         boxes=sum(len(r.boxes) for r in records),
                         crowd=sum(len(r.crowd_boxes) for r in records),
                         with_class=sum(r.has_class for r in records),
                         with_masks=(masks or {}).get(name, 0))
        rows.append((name, counts, hist))
        totals.update(counts)
        totals.update({f"class:{k}": v for k, v in hist.items()})
    if len(rows) > 1:
        rows.append(("total", totals, Counter({k[6:]: v for k, v in totals.items() if k.startswith("class:")})))
    return [(name, c["images"], c["with_boxes"], c["boxes"], c["crowd"], c["with_class"],
             *((c["with_masks"],) if masks is not None else ()),
             " ".join(f"{k}:{hist[k]}" for k in disaster_classes if hist[k]) or "-")
            for name, c, hist in rows]


def format_table(rows: list[tuple]) -> str:
    """Rows of source_rows under their header (names and histograms left-aligned, counts right)."""
    columns = COLUMNS if not rows or len(rows[0]) == len(COLUMNS) else COLUMNS[:-1] + (MASK_COLUMN, COLUMNS[-1])
    cells = [columns] + [tuple(str(v) for v in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    last = len(columns) - 1
    lines = ["  ".join(v.ljust(w) if i in (0, last) else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="sources.yaml, or a folder in the built-in YOLO layout")
    p.add_argument("--full-decode", action="store_true",
                   help="decode every image (finds corrupt JPEG data; truncated files are found without it)")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="where the model's class lists are")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        classes = load_config(args.config)["classes"]
        disaster, victim = tuple(classes["disaster"]), tuple(classes["victim"])
        spec = yolo_folder_spec(args.spec) if args.spec.is_dir() else args.spec
        per_source, report = load_sources(spec, victim, disaster, on_error=args.on_error,
                                          full_decode=args.full_decode)
        masks = folder_masks(args.spec, per_source, classes.get("mask"), report, args.on_error) \
            if args.spec.is_dir() else None
        _, merges = merge_duplicates(per_source, disaster)
    except (ValueError, OSError) as err:  # DataError, a missing file, a bad setting
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(source_rows(per_source, disaster, masks)))
    print()
    print("\n".join(merges.lines(images=sum(len(records) for records in per_source.values()))))
    print()
    print(report.summary(max_messages=50))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
