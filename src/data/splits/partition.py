"""Dealing a split's images out to sites, and which of a site's images start labeled.

Both split builders (the built-in data's and user sources') use these, so a
site's share and its active-learning seed set come out of one seeded path.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

# fewer training images than this of one disaster class at the sites that label classes: warned
SPARSE_CLASS_IMAGES = 10


class SplitError(ValueError):
    """The requested split cannot be made from this data; the message says why and what to change."""


def dirichlet_partition(labels: np.ndarray, num_sites: int, alpha: float, seed: int,
                        rounding: str = "floor") -> list[np.ndarray]:
    """Indices per site; each class is spread over sites by Dirichlet(alpha) shares.

    Small alpha = strongly skewed (non-IID) class mixes. Every site gets at
    least one image of the data (re-drawn otherwise). rounding="floor" (how the
    committed default split is made) rounds every cut down, which hands the
    last site the remainders: with a handful of images per class the last site
    gets nearly all. "nearest" has no such bias (the sources split builder uses it).
    """
    if num_sites < 1 or not alpha > 0:
        raise SplitError(f"a Dirichlet split needs at least one site and alpha > 0, got {num_sites} "
                         f"site(s) and alpha {alpha}")
    if len(labels) < num_sites:
        raise SplitError(f"{len(labels)} images cannot give each of {num_sites} sites one; use fewer sites")
    if rounding not in ("floor", "nearest"):
        raise ValueError(f"rounding must be 'floor' or 'nearest', got {rounding!r}")
    to_int = np.floor if rounding == "floor" else np.round
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts = [[] for _ in range(num_sites)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet([alpha] * num_sites)
            cuts = to_int(np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if all(len(p) > 0 for p in parts):
            return [np.array(sorted(p)) for p in parts]
    raise SplitError(f"Dirichlet({alpha:g}) class shares left some of the {num_sites} sites without images in "
                     f"100 draws ({len(labels)} images, {len(np.unique(labels))} classes); use fewer sites or a "
                     "larger alpha")


def active_learning_seed(keys: list, fraction: float, rng: np.random.Generator) -> set:
    """The keys of a site's training images that start labeled (the active-learning
    seed set): `fraction` of them, at least one, drawn by `rng`; all at fraction 1.
    The rest become its `pool` rows."""
    if not 0 < fraction <= 1:
        raise SplitError(f"--seed-fraction must be in (0, 1], got {fraction}")
    if fraction == 1 or not keys:
        return set(keys)
    count = max(1, int(round(fraction * len(keys))))
    return set(rng.choice(keys, size=count, replace=False).tolist())


def manifest_rows(keys: list, split: str, labels: Sequence[int], seed_fraction: float,
                  rng: np.random.Generator) -> list[tuple]:
    """A site's manifest rows for its share `keys` of `split` (train or val):
    (key, split, *labels). Training images outside the active-learning seed
    set go to the site's `pool`; labels: the flags the site holds, (boxes, class)
    or (boxes, class, masks)."""
    labeled = active_learning_seed(keys, seed_fraction, rng) if split == "train" else set(keys)
    return [(k, split if k in labeled else "pool", *labels) for k in keys]


def trained_classes(rows: dict, records: dict) -> dict[str, list[int]]:
    """Each site holding class labels -> the disaster class of its class-labeled train and pool
    images. rows: site -> manifest rows (key, split, boxes, class, ...); records: key -> Record."""
    labeled = lambda key, cls: cls and records[key].has_class  # noqa: E731
    return {site: [records[k].disaster_class for k, split, _, cls, *_ in site_rows
                   if split in ("train", "pool") and labeled(k, cls)]
            for site, site_rows in rows.items() if any(labeled(k, cls) for k, _, _, cls, *_ in site_rows)}


def sparse_class_warnings(trained_classes: dict[str, list[int]], class_names: Sequence[str], remedy: str) -> list[str]:
    """Why the classification task may miss a class: a skewed partition can leave the sites that
    label classes with almost no image of one, which no amount of training makes up for (the
    test split still holds its share). trained_classes: each class-labeling site -> the disaster
    class of every image it trains the class head on or may label (train and pool rows);
    remedy: what to change, in the builder's own options."""
    counts = Counter(c for classes in trained_classes.values() for c in classes)
    sites = ", ".join(trained_classes)
    return [f"disaster class {name!r}: {counts.get(c, 0)} training image(s) at the sites that label classes "
            f"({sites}); the federation can hardly learn it. {remedy} deals the classes out more evenly"
            for c, name in enumerate(class_names) if trained_classes and counts.get(c, 0) < SPARSE_CLASS_IMAGES]
