"""Refuse a site's model update that would corrupt the global model.

A site with a diverged optimizer, a bug, or bad intent can upload NaN/Inf
weights, a tensor of the wrong shape, or a tensor the model does not have;
averaged in, one such update makes the global model useless for every site
(NaN spreads through every later round) or crashes the aggregation. The
aggregator checks each site's whole update before averaging and leaves a
broken one out of that round, with the reason logged: the site's next round
starts from the (finite) global model again.

The same holds for the weights a site claims (`samples_<group>`): a negative
or non-finite count would poison the weighted mean just as well.
"""
from __future__ import annotations

import math

import numpy as np


def update_problem(update: dict, model_shapes: dict, group_weights: dict | None = None) -> str | None:
    """Why `update` ({tensor name: array}) must not be averaged into a model with
    `model_shapes` ({name: shape}), or None if it may. `group_weights` are the
    per-group sample counts the site reported (checked to be finite and >= 0)."""
    for name, value in update.items():
        if name not in model_shapes:
            return f"{name} is not a tensor of the model"
        value = np.asarray(value)
        if tuple(value.shape) != tuple(model_shapes[name]):
            return f"{name} has shape {tuple(value.shape)}, the model has {tuple(model_shapes[name])}"
        if not np.issubdtype(value.dtype, np.number):
            return f"{name} has dtype {value.dtype}, not numbers"
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            return f"{name} has {bad} non-finite values (NaN/Inf) of {value.size}"
    for group, weight in (group_weights or {}).items():
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            return f"samples_{group} = {weight!r} is not a finite count >= 0"
    return None
