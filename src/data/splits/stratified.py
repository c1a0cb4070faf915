"""Seeded, class-stratified train/val/test splits of a record list.

The test split is a pure function of (records, seed, fractions), so the
centralized reference and every federated run score on the same images.
Records may come in groups that must not be torn apart (the frames of one
burst): a near-duplicate of a test image in training would flatter the score.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from src.data.records import Record


def record_groups(groups: Sequence[Hashable] | None, count: int) -> dict[Hashable, list[int]]:
    """{group: record indices}, in order of first appearance; None: every record its own group."""
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(range(count) if groups is None else groups):
        members.setdefault(group, []).append(i)
    return members


def stratified_split(records: list[Record], test_fraction: float, val_fraction: float,
                     seed: int, groups: Sequence[Hashable] | None = None) -> dict[str, list[Record]]:
    """{'train', 'val', 'test'} lists; each disaster class is cut in the same proportions.
    With groups (one key per record), a group goes whole to one split, stratified by the
    class of its first record; counts are then counts of groups."""
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ValueError(f"bad split fractions test={test_fraction} val={val_fraction}")
    if groups is not None and len(groups) != len(records):
        raise ValueError(f"{len(groups)} group keys for {len(records)} records")
    rng = np.random.default_rng(seed)
    members = list(record_groups(groups, len(records)).values())
    strata: dict[int, list[int]] = {}
    for g, idx in enumerate(members):
        r = records[idx[0]]
        strata.setdefault(r.disaster_class if r.has_class else -1, []).append(g)
    parts = {"train": [], "val": [], "test": []}
    for key in sorted(strata):
        order = np.array(strata[key])[rng.permutation(len(strata[key]))]
        n_test = int(round(len(order) * test_fraction))
        n_val = int(round(len(order) * val_fraction))
        for name, chosen in (("test", order[:n_test]), ("val", order[n_test:n_test + n_val]),
                             ("train", order[n_test + n_val:])):
            parts[name] += [i for g in chosen for i in members[g]]
    return {name: [records[i] for i in sorted(idx)] for name, idx in parts.items()}
