"""Seeded, class-stratified train/val/test splits of a record list.

The test split is a pure function of (records, seed, fractions), so the
centralized reference and every federated run score on the same images.
"""
from __future__ import annotations

import numpy as np

from src.data.records import Record


def stratified_split(records: list[Record], test_fraction: float, val_fraction: float,
                     seed: int) -> dict[str, list[Record]]:
    """{'train', 'val', 'test'} lists; each disaster class is cut in the same proportions."""
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ValueError(f"bad split fractions test={test_fraction} val={val_fraction}")
    rng = np.random.default_rng(seed)
    strata: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        strata.setdefault(r.disaster_class if r.has_class else -1, []).append(i)
    parts = {"train": [], "val": [], "test": []}
    for key in sorted(strata):
        idx = np.array(strata[key])[rng.permutation(len(strata[key]))]
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += idx[n_test:n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val:].tolist()
    return {name: [records[i] for i in sorted(idx)] for name, idx in parts.items()}
