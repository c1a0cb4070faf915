"""FedAvg with a server learning rate (the aggregation function named in plan.yaml).

global_new = global + server_lr * (sample-weighted mean of the sites' models - global)

Why: averaging models that trained in parallel moves the global model less
than the same steps taken in sequence (the sites' updates partly cancel), so
the federation lags the centralized run epoch for epoch. server_lr > 1 takes
a longer step along the averaged update (FedAvg with server step size,
Reddi et al. 2021 "Adaptive Federated Optimization" with plain SGD on the
server). server_lr = 1 is OpenFL's WeightedAverage exactly. Batch-norm
moving statistics are always plainly averaged: they are estimates, not
parameters, and extrapolating a variance can make it negative.

Not a singleton: OpenFL 1.9 gives every AggregationFunction a metaclass that
returns the first instance ever built for the class and ignores later
constructor arguments, so one `ServerStepAverage(server_lr=1.5)` made anywhere
in a process (another federation, a test module being collected) silently set
the server step of every later plan in that process.
"""
from __future__ import annotations

import numpy as np
from openfl.interface.aggregation_functions.core import AggregationFunction
from openfl.utilities.types import SingletonABCMeta

STATISTICS = ("moving_mean", "moving_variance")


def previous_global(db_iterator, tensor_name: str, fl_round: int):
    """The global value this round started from (OpenFL tags it `model` in round 0, then `aggregated`)."""
    tag = "aggregated" if fl_round != 0 else "model"
    value = None
    for record in db_iterator:
        if (record["round"] == fl_round and record["tensor_name"] == tensor_name
                and tag in record["tags"] and "delta" not in record["tags"]):
            value = record["nparray"]
    return value


class PerPlanInstances(SingletonABCMeta):
    """AggregationFunction's metaclass without the instance cache (see the module docstring)."""

    def __call__(cls, *args, **kwargs):
        return type.__call__(cls, *args, **kwargs)


class ServerStepAverage(AggregationFunction, metaclass=PerPlanInstances):
    def __init__(self, server_lr: float = 1.0):
        super().__init__()
        if server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = float(server_lr)

    def call(self, local_tensors, db_iterator, tensor_name, fl_round, tags) -> np.ndarray:
        mean = np.average([t.tensor for t in local_tensors], weights=[t.weight for t in local_tensors], axis=0)
        if self.server_lr == 1.0 or tensor_name.split("/")[-1] in STATISTICS:
            return mean
        base = previous_global(db_iterator, tensor_name, fl_round)
        if base is None:  # e.g. a tensor the aggregator never sent: nothing to step from
            return mean
        return base + self.server_lr * (mean - base)
