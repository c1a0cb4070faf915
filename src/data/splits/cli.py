"""Split builder: per-site split folders under data_splits/<name>/, for the built-in data or user sources.

python -m src.data.splits [--name default] [--sites 3] [--alpha 0.5] [--seed 0]
    [--labels both,boxes,class[,masks]] [--seed-fraction 1.0]
  the built-in synthetic data (the config's data.root and test/val fractions),
  as the default federation holds it; see src/data/splits/builtin_data.py
python -m src.data.splits --sources data/real/sources.yaml --name real \\
    [--sites 3] [--strategy dirichlet:0.5|iid|by-source|task-disjoint] \\
    [--test-fraction 0.15] [--val-fraction 0.05] [--seed-fraction 1.0] [--seed 0]
  user data: one or more sources in their own formats (see src/data/sources/);
  see src/data/splits/user_sources.py

Either way the folder holds test.tsv (the global test split, at no site),
split.yaml (its settings and the list of its sites) and one folder per site
(site.yaml + manifest.tsv) naming its train and val images and, with
--seed-fraction < 1, its active-learning pool. Building into an existing split
replaces it whole. A split that cannot be made ends with one `error:` line and
exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from src.data.sources import load_sources
from src.data.splits.builtin_data import DEFAULT_LABELS, build_site_splits, format_summary
from src.data.splits.output import check_replaceable
from src.data.splits.user_sources import (DEFAULT_SITES, PARTITION_STRATEGIES, build_split, check_settings,
                                          format_table)
from src.settings import load_config

BUILTIN_ONLY = {"alpha": 0.5, "labels": ",".join(DEFAULT_LABELS)}
SOURCES_ONLY = {"strategy": "dirichlet:0.5", "test_fraction": 0.15, "val_fraction": 0.05, "on_error": "raise"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.data.splits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", type=Path, help="sources.yaml: split user data (default: the built-in data)")
    p.add_argument("--name", help="writes data_splits/<name>/ (or --out); default 'default' for the "
                                  "built-in data, required with --sources")
    p.add_argument("--out", type=Path, help="output folder (default data_splits/<name>)")
    p.add_argument("--sites", type=int, help="number of sites (default 3; by-source: one per source)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seed-fraction", type=float, default=1.0,
                   help="fraction of each site's training images that start labeled; the rest "
                        "are its active-learning pool (default %(default)s)")
    p.add_argument("--config", default=None, help="class lists, and for the built-in data its root and "
                                                  "test/val fractions (default configs/default.yaml)")
    builtin = p.add_argument_group("built-in data only")
    builtin.add_argument("--alpha", type=float, help=f"Dirichlet alpha of the class mix per site "
                                                     f"(default {BUILTIN_ONLY['alpha']})")
    builtin.add_argument("--labels", help=f"label set per site, cycled: both | boxes | class | masks | all, or a "
                                          f"'+'-joined subset such as boxes+masks (default {BUILTIN_ONLY['labels']})")
    user = p.add_argument_group("with --sources only")
    user.add_argument("--strategy", help=f"one of {PARTITION_STRATEGIES} (default {SOURCES_ONLY['strategy']})")
    user.add_argument("--test-fraction", type=float, help=f"default {SOURCES_ONLY['test_fraction']}")
    user.add_argument("--val-fraction", type=float, help=f"default {SOURCES_ONLY['val_fraction']}")
    user.add_argument("--on-error", choices=("raise", "skip"), help=f"default {SOURCES_ONLY['on_error']}")
    return p


def _fill_mode_defaults(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the other case's options; fill in this case's defaults."""
    own, other = (SOURCES_ONLY, BUILTIN_ONLY) if args.sources else (BUILTIN_ONLY, SOURCES_ONLY)
    given = [f"--{name.replace('_', '-')}" for name in other if getattr(args, name) is not None]
    if given:
        p.error(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} "
                f"{'without' if args.sources else 'with'} --sources")
    for name, default in own.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.sources and not args.name and not args.out:
        p.error("--name (or --out) is required with --sources")
    if not args.sources and args.sites is None:
        args.sites = DEFAULT_SITES


def main(argv=None) -> int:
    """Exit 0 with the split written; 2 with one `error:` line when it cannot be made."""
    p = _parser()
    args = p.parse_args(argv)
    _fill_mode_defaults(p, args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or Path("data_splits") / (args.name or "default")
    try:
        cfg = load_config(args.config)
        if args.sources is None:
            summary = build_site_splits(cfg, out, args.sites, args.alpha, args.seed, args.labels.split(","),
                                        args.seed_fraction)
            print(format_summary(summary))
            print(f"wrote {out}/ ({', '.join(s['site'] for s in summary)}, test.tsv, split.yaml)")
            return 0
        check_settings(args.strategy, args.sites, args.test_fraction, args.val_fraction, args.seed_fraction)
        check_replaceable(out)
        per_source, report = load_sources(args.sources, cfg["classes"]["victim"], cfg["classes"]["disaster"],
                                          on_error=args.on_error)
        if not report.clean or report.warnings or report.notes:
            print(report.summary(), file=sys.stderr)
        summary, merges = build_split(per_source, out, args.sources, args.sites, args.strategy, args.test_fraction,
                                      args.val_fraction, args.seed_fraction, args.seed, cfg["classes"]["disaster"])
    except (ValueError, OSError) as err:  # SplitError, DataError, a missing file, a bad setting
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(summary))
    print("\n".join(merges.lines(images=sum(len(records) for records in per_source.values()))))
    print(f"wrote {out}/ ({', '.join(s['site'] for s in summary)}, test.tsv, split.yaml)")
    return 0
