"""Writing a split folder: one site folder per site (site.yaml + manifest.tsv) and test.tsv.

Both split builders write through here, so every split folder has the same
layout whatever data it names (see ``src.data.manifests`` for the format).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from src.data.manifests import write_site


def relative_path(target, start) -> str:
    """target relative to start, so a split folder moved with its data still resolves;
    absolute when the two share no root."""
    target, start = Path(target).resolve(), Path(start).resolve()
    try:
        return os.path.relpath(target, start)
    except ValueError:
        return str(target)


def write_split(out_dir: Path, rows: dict[str, list], test_keys: Iterable[str], data_root: Path | None = None,
                sources: Path | None = None) -> None:
    """Write out_dir/<site>/ for each site of `rows` (its manifest rows, sorted) and
    out_dir/test.tsv (`test_keys` in the given order). The sites' images are in
    `data_root` (a YOLO-layout folder) or named by the `sources` spec; each
    site.yaml points there by a path relative to its folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for site, site_rows in rows.items():
        folder = out_dir / site
        if sources is not None:
            write_site(folder, site, None, sorted(site_rows), sources=relative_path(sources, folder))
        else:
            write_site(folder, site, relative_path(data_root, folder), sorted(site_rows))
    (out_dir / "test.tsv").write_text("image\n" + "".join(f"{k}\n" for k in test_keys), encoding="utf-8")
