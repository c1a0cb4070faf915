"""Paired differences: the mean of per-seed differences between two arms and its t-interval.

Two arms run with the same seed share the site partition, the seed set, the model
initialisation and (with op determinism) the augmentations, so the difference seed by
seed removes what the seed alone moves; its spread is the noise left. The interval is
Student's t with n - 1 degrees of freedom over the n per-seed differences.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

CONFIDENCE = 0.95


def paired_difference(first: Sequence[float], second: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """{differences, n, mean, sd, low, high}: first[i] - second[i] for each pair, their mean,
    sample standard deviation and the two-sided `confidence` t-interval of the mean
    (sd, low and high None with fewer than two pairs)."""
    from scipy.stats import t

    if len(first) != len(second):
        raise ValueError(f"paired values: {len(first)} vs {len(second)}; every seed needs both arms")
    if not first:
        raise ValueError("paired values: none")
    differences = [a - b for a, b in zip(first, second)]
    n, mean = len(differences), statistics.fmean(differences)
    if n < 2:
        return {"differences": differences, "n": n, "mean": mean, "sd": None, "low": None, "high": None}
    sd = statistics.stdev(differences)
    half = t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"differences": differences, "n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}
