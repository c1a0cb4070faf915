"""Check a data set before training: python -m src.data.validate SPEC [--full-decode] [--on-error skip|raise]

Why: a bad file found during a federated round costs the round; found here
it costs a minute, with the file and line named. SPEC is a sources.yaml
(see ``src.data.sources``) or a folder in the built-in YOLO layout (images/,
labels/, classes.tsv). Everything is read as training would read it (no
model, no TensorFlow); the output is one row per source (images, with
boxes, boxes, crowd regions, with class, class histogram), the pictures found
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
from src.data.sources import load_sources
from src.settings import DEFAULT_CONFIG, load_config

COLUMNS = ("source", "images", "with boxes", "boxes", "crowd regions", "with class", "class histogram")


def yolo_folder_spec(root: Path) -> dict:
    """The built-in layout (root/images, root/labels, root/classes.tsv) as a one-source spec."""
    root = root.resolve()
    source = {"name": root.name or "data", "root": str(root), "boxes": {"format": "yolo"}}
    if (root / "classes.tsv").is_file():
        source["classes"] = {"format": "tsv", "file": "classes.tsv", "image_column": "image",
                             "class_column": "disaster_class"}
    return {"sources": [source]}


def source_rows(per_source: dict, disaster_classes) -> list[tuple]:
    """One row per source (plus a total when there are several), in COLUMNS order."""
    rows, totals = [], Counter()
    for name, records in per_source.items():
        hist = Counter(disaster_classes[r.disaster_class] for r in records if r.has_class)
        counts = Counter(images=len(records), with_boxes=sum(r.has_boxes for r in records),
                         boxes=sum(len(r.boxes) for r in records),
                         crowd=sum(len(r.crowd_boxes) for r in records),
                         with_class=sum(r.has_class for r in records))
        rows.append((name, counts, hist))
        totals.update(counts)
        totals.update({f"class:{k}": v for k, v in hist.items()})
    if len(rows) > 1:
        rows.append(("total", totals, Counter({k[6:]: v for k, v in totals.items() if k.startswith("class:")})))
    return [(name, c["images"], c["with_boxes"], c["boxes"], c["crowd"], c["with_class"],
             " ".join(f"{k}:{hist[k]}" for k in disaster_classes if hist[k]) or "-")
            for name, c, hist in rows]


def format_table(rows: list[tuple]) -> str:
    cells = [COLUMNS] + [tuple(str(v) for v in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) if i in (0, 6) else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
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
        _, merges = merge_duplicates(per_source, disaster)
    except (ValueError, OSError) as err:  # DataError, a missing file, a bad setting
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(source_rows(per_source, disaster)))
    print()
    print("\n".join(merges.lines(images=sum(len(records) for records in per_source.values()))))
    print()
    print(report.summary(max_messages=50))
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
