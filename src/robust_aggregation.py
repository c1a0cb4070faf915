"""Robust aggregation: bound each site's update, then combine coordinate-wise.

Why: averaging lets one site move the global model as far as it likes. A site
that sends a finite but scaled (x10, x-10) or sign-flipped update, or a
backdoored one, passes every NaN/shape check and, averaged in, drags every
site's model with it. Two standard defences, per task group (each group is
averaged over its own set of sites):

- **Norm bounding** (Sun et al. 2019, "Can you really backdoor federated
  learning?"): each site's update (its weights minus the round's starting
  global weights) is scaled down to at most `clip` in L2 norm over the
  group's tensors. `clip="median"` bounds every site by the median norm of the
  group's senders this round, so with a majority of honest sites the bound is
  an honest site's norm and needs no tuning.
- **A robust statistic per coordinate** (Yin et al. 2018, "Byzantine-robust
  distributed learning"): `median`, or `trimmed_mean` dropping the
  `trim_fraction` largest and smallest values of each coordinate. With n
  sites a median tolerates fewer than n/2 bad ones; with 3 sites it is the
  middle site's value, and a trimmed mean trims nothing unless
  `trim_fraction >= 1/3`.

What it does not do: it cannot tell a bad site from an honest one whose data
differ (non-IID sites are "outliers" too, so a median costs quality), and a
majority of colluding sites wins. Sample weights do not enter the median or
the trimmed mean: a site that claims many images must not buy more influence.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

STATISTICS = ("mean", "median", "trimmed_mean")


def check_statistic(statistic: str, trim_fraction: float) -> None:
    """Refuse a statistic that cannot work, naming the setting."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if not 0 <= float(trim_fraction) < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")


def check_clip(clip) -> None:
    """Refuse a norm bound that cannot work, naming the setting."""
    if clip is not None and clip != "median" and not (
            isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip > 0):
        raise ValueError(f"clip_updates must be null, 'median' or a norm > 0, got {clip!r}")


def group_norms(deltas: Mapping[str, np.ndarray], group_of: Callable[[str], str]) -> dict[str, float]:
    """L2 norm of one site's update per task group ({tensor name: delta} -> {group: norm})."""
    squares: dict[str, float] = {}
    for name, delta in deltas.items():
        group = group_of(name)
        squares[group] = squares.get(group, 0.0) + float(np.sum(np.square(delta, dtype=np.float64)))
    return {group: float(np.sqrt(total)) for group, total in squares.items()}


def clip_scales(norms: Mapping[str, Mapping[str, float]], clip) -> dict[str, dict[str, float]]:
    """{site: {group: factor <= 1}} that bounds each site's group update to the clip norm.

    `norms` is {site: {group: norm}}; `clip` None (no bound), a number, or
    "median" (the median norm of the group's senders)."""
    scales = {site: {group: 1.0 for group in groups} for site, groups in norms.items()}
    if clip is None:
        return scales
    groups = {group for site_norms in norms.values() for group in site_norms}
    for group in groups:
        senders = {site: site_norms[group] for site, site_norms in norms.items() if group in site_norms}
        bound = float(np.median(list(senders.values()))) if clip == "median" else float(clip)
        for site, norm in senders.items():
            if norm > bound > 0:
                scales[site][group] = bound / norm
    return scales


def bound_updates(updates: Mapping[str, Mapping[str, np.ndarray]], start: Mapping[str, np.ndarray], clip,
                  group_of: Callable[[str], str]) -> tuple[dict, dict, dict]:
    """The sites' values with each group update bounded by `clip` (see clip_scales).

    `updates` is {site: {tensor name: value}}, `start` {tensor name: the round's
    starting global value}. Returns (bounded values, {site: {group: norm}},
    {site: {group: scale}})."""
    norms = {site: group_norms({n: v - start[n] for n, v in values.items()}, group_of)
             for site, values in updates.items()}
    scales = clip_scales(norms, clip)
    bounded = {site: {n: (start[n] + scales[site][group_of(n)] * (v - start[n])).astype(np.asarray(v).dtype)
                      for n, v in values.items()}
               for site, values in updates.items()}
    return bounded, norms, scales


def combine(values: Sequence[np.ndarray], weights: Sequence[float], statistic: str = "mean",
            trim_fraction: float = 0.0) -> np.ndarray:
    """One tensor from the sites' values: the weighted mean, or an unweighted robust statistic."""
    stacked = np.stack([np.asarray(v) for v in values])
    if statistic == "mean":
        return np.average(stacked, weights=np.asarray(weights, dtype=np.float64), axis=0)
    if statistic == "median":
        return np.median(stacked, axis=0)
    if statistic == "trimmed_mean":
        cut = int(np.floor(trim_fraction * len(values)))
        if cut == 0:
            return stacked.mean(axis=0)
        ordered = np.sort(stacked, axis=0)
        return ordered[cut:len(values) - cut].mean(axis=0)
    raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
