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
`group_server_lr` ({group: step}) overrides server_lr per task group, e.g. for
the detection parts only: with decoupled weights the detector is averaged over
the box-labeled sites alone, each of which took one pass over its own images,
where a centralized epoch applies all of those steps in sequence.
`statistic` replaces the weighted mean by a coordinate-wise `median` or
`trimmed_mean` (`trim_fraction` per side) of the sites' values, against a site
that sends a poisoned update (src/robust_aggregation.py says what each costs).

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

from src.model.config import TASK_GROUPS, task_group_of
from src.robust_aggregation import check_statistic, combine

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
    def __init__(self, server_lr: float = 1.0, group_server_lr: dict | None = None, statistic: str = "mean",
                 trim_fraction: float = 0.0):
        super().__init__()
        check_statistic(statistic, trim_fraction)
        self.statistic, self.trim_fraction = statistic, float(trim_fraction)
        self.server_lr = float(server_lr)
        self.group_server_lr = {g: float(v) for g, v in (group_server_lr or {}).items()}
        unknown = set(self.group_server_lr) - set(TASK_GROUPS)
        if unknown:
            raise ValueError(f"group_server_lr: unknown task groups {sorted(unknown)}; known: {TASK_GROUPS}")
        steps = {"server_lr": self.server_lr, **{f"group_server_lr.{g}": v for g, v in self.group_server_lr.items()}}
        for name, value in steps.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    def step_size(self, tensor_name: str) -> float:
        """server_lr of this tensor's task group (1.0 = plain averaging)."""
        if tensor_name.split("/")[-1] in STATISTICS:
            return 1.0
        if not self.group_server_lr:
            return self.server_lr
        return self.group_server_lr.get(task_group_of(tensor_name), self.server_lr)

    def call(self, local_tensors, db_iterator, tensor_name, fl_round, tags) -> np.ndarray:
        mean = combine([t.tensor for t in local_tensors], [t.weight for t in local_tensors], self.statistic,
                       self.trim_fraction)
        step = self.step_size(tensor_name)
        if step == 1.0:
            return mean
        base = previous_global(db_iterator, tensor_name, fl_round)
        if base is None:  # e.g. a tensor the aggregator never sent: nothing to step from
            return mean
        return base + step * (mean - base)
