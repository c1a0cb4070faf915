"""The federation as TensorBoard event files, written by the aggregator while it runs
(`make dashboard`, docs/monitoring.md).

One source: every event the aggregator writes to its event log (src/federated/aggregator.py,
docs/operations.md) passes through `LiveView.record`, which turns the numbers it carries into
TensorBoard scalars. The dashboard therefore shows the values of the event log and of
`make simulate`'s progress lines; nothing is measured or computed a second time. One run
folder per site and one, `aggregator`, for the federation as a whole, so that TensorBoard
draws the sites of one tag in one chart. Step = the event's round (rounds count from 0),
wall time = the event's time. Each run's file is flushed when a round ends, so the curves
grow round by round while the federation runs.

The writer is `tensorboard.summary.Writer`, TensorBoard's own framework-free writer (numpy
and protobuf), rather than `tf.summary`: a scalar is one protobuf record handed to a writer
thread, from whichever gRPC thread wrote the event, with no TF op, eager context or
per-thread default writer involved.

A dashboard must never stop a federation: if writing fails (a full disk, a removed folder),
the live view logs the error once and turns itself off; the event log goes on.
"""
from __future__ import annotations

import logging
import math
import os
from collections import defaultdict

from tensorboard.summary import Writer

FEDERATION_RUN = "aggregator"  # the event log's `site` of the aggregated metrics
# the plan's task names as chart sections; any other task keeps its own name
TASK_SECTIONS = {"train": "train", "aggregated_model_validation": "validation"}
ACTIVE_LEARNING_PREFIX = "al_"
log = logging.getLogger(__name__)


def metric_tag(task: str, name: str) -> str:
    """The tag of a metric a site (or the aggregator) reported for a task."""
    if name.startswith(ACTIVE_LEARNING_PREFIX):
        return f"active_learning/{name[len(ACTIVE_LEARNING_PREFIX):]}"
    return f"{TASK_SECTIONS.get(task, task)}/{name}"


class LiveView:
    """TensorBoard scalars from the aggregator's events, one run folder per site under `logdir`.

    Not thread-safe: the aggregator calls `record` under its event-log lock, in log order."""

    def __init__(self, logdir: str, sites: list[str]):
        self.logdir = logdir
        self._writers: dict[str, Writer] = {}
        self._sites = list(sites)  # the round's sites: the plan's, then as the last `members` event lists them
        self._round_start: dict[int, float] = {}
        self._rejected: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._on = True

    def record(self, event: dict):
        """Write the scalars `event` carries; flush every run when a round ends, close them when
        the final model is saved."""
        if not self._on:
            return
        try:
            self._record(event)
        except Exception:  # noqa: BLE001 -- whatever broke, the federation goes on without its dashboard
            log.exception("TensorBoard live view in %s stopped; the event log goes on", self.logdir)
            self._on = False

    def _record(self, e: dict):
        kind, rnd, when = e["event"], e.get("round"), e["time"]
        if kind == "members":
            self._sites = list(e["sites"])
        elif kind == "round_start":
            self._round_start[rnd] = when
        elif kind == "metric":
            self._scalar(e["site"], metric_tag(e["task"], e["name"]), e["value"], rnd, when)
        elif kind == "tasks_sent":
            self._scalar(e["site"], "timing/idle_s", e["idle_s"], rnd, when)
        elif kind == "upload" and e["task"] == "train":
            self._scalar(e["site"], "traffic/upload_MB", e["bytes"] / 1e6, rnd, when)
        elif kind == "download":
            self._scalar(e["site"], "traffic/download_MB", e["bytes"] / 1e6, rnd, when)
        elif kind == "rejected":
            self._rejected[rnd][e["site"]] += 1
        elif kind == "clipped":
            self._scalar(e["site"], f"updates/clip_scale_{e['group']}", e["scale"], rnd, when)
        elif kind == "privacy":
            self._scalar(FEDERATION_RUN, "privacy/epsilon", e["epsilon"], rnd, when)
        elif kind == "round_end":
            self._round_end(e, rnd, when)
        elif kind == "final_model":  # the federation is over: write out and end the writer threads
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()

    def _round_end(self, e: dict, rnd: int, when: float):
        """Per site of the round: rejected updates and whether it straggled (0 or 1); for the
        federation their totals and the round's wall time. Then every run is flushed."""
        rejected = self._rejected.pop(rnd, {})
        for site in self._sites:
            self._scalar(site, "updates/rejected", rejected.get(site, 0), rnd, when)
            self._scalar(site, "updates/straggler", int(site in e["stragglers"]), rnd, when)
        self._scalar(FEDERATION_RUN, "round/rejected", sum(rejected.values()), rnd, when)
        self._scalar(FEDERATION_RUN, "round/stragglers", len(e["stragglers"]), rnd, when)
        if rnd in self._round_start:
            self._scalar(FEDERATION_RUN, "round/wall_s", when - self._round_start.pop(rnd), rnd, when)
        for writer in self._writers.values():
            writer.flush()

    def _scalar(self, run: str, tag: str, value: float, step: int, when: float):
        if not math.isfinite(value):  # e.g. mAP at a site without box labels: no point, as in make simulate
            return
        if run not in self._writers:
            self._writers[run] = Writer(os.path.join(self.logdir, run))
        self._writers[run].add_scalar(tag, value, step, wall_time=when)
