"""An OpenFL aggregator that starts each round promptly and writes an event log.

Prompt rounds: stock OpenFL 1.9 tells a collaborator that finds no task to
sleep `Aggregator._get_sleep_time()` = 10 s (called on the base class, so a
subclass cannot override it; the protocol's sleep_time is an int). This
aggregator instead holds the GetTasks call open (a long poll) until work is
ready or `long_poll_s` passes, then answers "sleep 0": a collaborator starts
the next round within `poll_interval_s` of it becoming ready. The gRPC server
has 8 worker threads, so a few held polls do not starve result uploads.
`long_poll_s: 0` gives the stock behaviour (for measuring it).

Final model: OpenFL writes best.pbuf/last.pbuf from the global model each
round *starts* with (the one its validation scored), so the aggregate of the
last round's training is never saved; it goes to `final_state_path`.

Event log (`event_log`, JSON lines): round starts, when each site got its
tasks and how long it waited for work that was ready (idle_s), every metric
each site reported, and the aggregated metrics per round. `make simulate`
turns it into progress lines and metrics.json.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time

from openfl.component.aggregator import Aggregator


class PromptAggregator(Aggregator):
    def __init__(self, *args, poll_interval_s: float = 0.2, long_poll_s: float = 5.0,
                 event_log: str = "logs/federation_events.jsonl",
                 final_state_path: str = "save/final.pbuf", **kwargs):
        self._events_lock = threading.Lock()
        self.event_log = event_log
        self.final_state_path = final_state_path
        self._round_ready_at = {}
        super().__init__(*args, **kwargs)
        self.poll_interval_s = float(poll_interval_s)
        self.long_poll_s = float(long_poll_s)
        self._mark_round_ready(self.round_number)

    # ---- event log ---------------------------------------------------------------------------
    def _event(self, kind: str, **fields):
        os.makedirs(os.path.dirname(self.event_log) or ".", exist_ok=True)
        record = {"event": kind, "time": time.time(), **fields}
        with self._events_lock, open(self.event_log, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _mark_round_ready(self, round_number: int):
        self._round_ready_at[round_number] = time.monotonic()
        self._event("round_start", round=round_number)

    def _drain_metrics(self):
        while True:
            try:
                m = self.metric_queue.get_nowait()
            except queue.Empty:
                return
            self._event("metric", round=m["round"], site=m["metric_origin"], task=m["task_name"],
                        name=m["metric_name"], value=m["metric_value"])

    # ---- prompt task hand-out ----------------------------------------------------------------
    def get_tasks(self, collaborator_name):
        deadline = time.monotonic() + self.long_poll_s
        while True:
            tasks, round_number, sleep_time, time_to_quit = super().get_tasks(collaborator_name)
            if tasks:
                ready = self._round_ready_at.get(round_number, time.monotonic())
                self._event("tasks_sent", round=round_number, site=collaborator_name,
                            idle_s=time.monotonic() - ready)
                return tasks, round_number, 0, time_to_quit
            if time_to_quit:
                return tasks, round_number, 0, time_to_quit
            if time.monotonic() >= deadline:
                return tasks, round_number, (sleep_time if self.long_poll_s <= 0 else 0), time_to_quit
            time.sleep(self.poll_interval_s)

    def send_local_task_results(self, collaborator_name, round_number, task_name, data_size,
                                named_tensors):
        before = self.round_number
        super().send_local_task_results(collaborator_name, round_number, task_name, data_size,
                                        named_tensors)
        self._drain_metrics()
        if self.round_number != before:
            self._event("round_end", round=before)
            if not self._time_to_quit():
                self._mark_round_ready(self.round_number)
            elif self.final_state_path:
                # OpenFL saves last/best.pbuf from the model a round *started*
                # with, so the last round's training would be lost: keep it.
                self._save_model(self.round_number, self.final_state_path)
                self._event("final_model", round=self.round_number, path=self.final_state_path)
