"""Writing a split folder: one site folder per site, test.tsv, split.yaml, swapped in whole.

Both split builders write through here, so every split folder has the same
layout whatever data it names (see ``src.data.manifests`` for the format).
The folder is written next to its final place and swapped in at the end, so
a rebuild under an existing name leaves exactly what it reports: no site
folder of the split it replaces survives, and a failed build leaves that
split untouched. split.yaml lists the split's sites; readers take them from
there (``manifests.split_sites``).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import yaml

from src.data.manifests import MERGED_FILE, write_merged, write_site
from src.data.splits.partition import SplitError

SPLIT_FILES = ("split.yaml", "test.tsv", MERGED_FILE)
RENAME_EXCHANGE = 2  # renameat2 flag (Linux): swap two paths in one step
AT_FDCWD = -100


def relative_path(target, start) -> str:
    """target relative to start, so a split folder moved with its data still resolves;
    absolute when the two share no root."""
    target, start = Path(target).resolve(), Path(start).resolve()
    try:
        return os.path.relpath(target, start)
    except ValueError:
        return str(target)


def check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that is not a split folder: only split files and site
    folders (holding a site.yaml) may be there, so a wrong --out never deletes data."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise SplitError(f"{out_dir}: exists and is not a folder; choose another --out")
    foreign = sorted(p.name for p in out_dir.iterdir()
                     if not (p.name in SPLIT_FILES or (p.is_dir() and (p / "site.yaml").is_file())))
    if foreign:
        raise SplitError(f"{out_dir}: exists and holds {foreign[:3]}, which no split folder holds; "
                         "not replaced: choose another --name/--out or move them away")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def swap_in(new: Path, target: Path) -> None:
    """Put the folder `new` at `target`, removing what `target` holds. Atomic where the
    system can exchange two paths; elsewhere two renames, the replaced folder kept aside
    under a hidden name until the second is done."""
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, aside / target.name)
    os.rename(new, target)
    shutil.rmtree(aside)


def write_split(out_dir: Path, rows: dict[str, list], test_keys: Iterable[str], summary: list[dict],
                settings: dict, data_root: Path | None = None, sources: Path | None = None,
                same_picture: dict[str, list[str]] | None = None) -> None:
    """Write out_dir/<site>/ for each site of `rows` (its manifest rows, sorted),
    out_dir/test.tsv (`test_keys` in the given order) and out_dir/split.yaml (where the
    data is, `settings`, then `summary` as its `sites`). The sites' images are in
    `data_root` (a YOLO-layout folder) or named by the `sources` spec; each data path is
    written relative to the folder that names it. same_picture: image key -> the keys of
    its other copies (merged.tsv next to the manifest or test.tsv naming the image)."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become the split folder's mode
    try:
        for site, site_rows in rows.items():
            final = out_dir / site  # relative paths are those of the final place
            if sources is not None:
                write_site(tmp / site, site, None, sorted(site_rows), sources=relative_path(sources, final),
                           same_picture=same_picture)
            else:
                write_site(tmp / site, site, relative_path(data_root, final), sorted(site_rows),
                           same_picture=same_picture)
        test_keys = list(test_keys)
        (tmp / "test.tsv").write_text("image\n" + "".join(f"{k}\n" for k in test_keys), encoding="utf-8")
        write_merged(tmp, test_keys, same_picture)
        where = {"sources": relative_path(sources, out_dir)} if sources is not None else \
            {"data_root": relative_path(data_root, out_dir)}
        (tmp / "split.yaml").write_text(yaml.safe_dump({**where, **settings, "sites": summary}, sort_keys=False))
        check_replaceable(out_dir)
        swap_in(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
