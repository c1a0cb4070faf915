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
last round's training is never saved; it goes to `final_state_path`. With
`final_validation_tasks` (e.g. [aggregated_model_validation]) one more round
runs only those tasks on it, so it is validated and can become best.pbuf
(src/federated/final_validation.py); `rounds_to_train` stays the number of
training rounds.

Round ends are serialized: OpenFL 1.9 ends a round either from the result
upload that completes it (a gRPC thread, no lock) or from a straggler
policy's cutoff timer (a timer thread, under `self.lock`). The two can run
at once when the timer fires while the last upload is ending the round
(seen under CutoffTimePolicy: a TypeError in the timer thread and a
half-processed round); here uploads take `self.lock` too, so a late timer
finds the round already closed and does nothing.

Tensor store: OpenFL's pandas TensorDB is replaced by the dict-keyed one of
src/federated/tensor_db.py (the same interface, without OpenFL's DataFrame filter
per tensor, which costs seconds at every round end).

Sites joining, leaving and rotating certificates while it runs
(src/federated/admission.py): the round's sites are the ones plan/cols.yaml lists
when the round starts, and a site must present the certificate the coordinator
signed last for it; no restart is needed for either.

Restarts: OpenFL stores each result that arrives in `local_state/tensor.db`
before processing it and, when the aggregator starts again, replays the stored
results of the round in progress (`Aggregator._recover`), so a site whose
results are in is not given that task again. The event log says which results a round took
(`accepted`, written once the aggregator has processed them: the upload that
completes a round comes after that round's `round_end`) and which a restart
replayed (`replayed`), so an operator can see that nothing was lost or redone.

Event log (`event_log`, JSON lines): round starts, when each site got which
tasks and how long it waited for work that was ready (idle_s), every metric
each site reported, the aggregated metrics per round, and the bytes each site
uploaded and downloaded per task group (the serialized NamedTensor messages,
i.e. what crosses the wire inside gRPC/TLS framing), the results each round
took, live or replayed after a restart, the round's sites (`members`) and
every refused call (`refused`). `make simulate` turns it into progress lines
and metrics.json. With `tensorboard` (on by default) every event also goes to
src/federated/live_view.py, which writes its numbers as TensorBoard event files in
`tensorboard/` next to the event log (`make dashboard`).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import defaultdict

import grpc
from openfl.component.aggregator import Aggregator
from openfl.protocols import utils as openfl_utils
from openfl.utilities import TaskResultKey, TensorKey

from src.atomic_files import dump_proto_atomically
from src.federated.admission import Admission, install_server_check
from src.federated.final_validation import FinalValidationAssigner
from src.federated.live_view import LiveView
from src.federated.tensor_db import KeyedTensorDB
from src.model.config import task_group_of

# OpenFL 1.9 writes best/last.pbuf in place (protocols.utils.dump_proto), so an
# aggregator killed mid-write would leave a truncated state file and lose the
# previous one. In a process that runs this aggregator, every state file is
# written to a temporary file and renamed over the old one instead.
openfl_utils.dump_proto = dump_proto_atomically
install_server_check()
log = logging.getLogger(__name__)


def wire_group(named_tensor) -> str:
    """Accounting bucket of a tensor message: its task group, or `metrics` for scalars."""
    if "metric" in named_tensor.tags:
        return "metrics"
    try:
        return task_group_of(named_tensor.name)
    except ValueError:
        return "other"


def bytes_by_group(named_tensors) -> dict:
    out = defaultdict(int)
    for t in named_tensors:
        out[wire_group(t)] += t.ByteSize()
    return dict(out)


class PromptAggregator(Aggregator):
    def __init__(self, *args, poll_interval_s: float = 0.2, long_poll_s: float = 5.0,
                 event_log: str = "logs/federation_events.jsonl",
                 final_state_path: str = "save/final.pbuf", final_validation_tasks: list | None = None,
                 tensorboard: bool = True, **kwargs):
        self._events_lock = threading.Lock()
        self._replaying = False  # while OpenFL replays stored results at start (_recover)
        self.admission = Admission()
        self.event_log = event_log
        # before OpenFL's __init__: replaying a restart's results there writes events already
        self.live_view = (LiveView(os.path.join(os.path.dirname(event_log), "tensorboard"),
                                   kwargs.get("authorized_cols", [])) if tensorboard else None)
        self.final_state_path = final_state_path
        self._round_ready_at = {}
        self._downloads = defaultdict(lambda: defaultdict(int))  # (site, round) -> group -> bytes
        self.training_rounds = int(kwargs.get("rounds_to_train", 256))
        if final_validation_tasks:
            kwargs["assigner"] = FinalValidationAssigner(kwargs["assigner"], self.training_rounds,
                                                         list(final_validation_tasks))
            kwargs["rounds_to_train"] = self.training_rounds + 1
        super().__init__(*args, **kwargs)
        self.tensor_db = KeyedTensorDB.from_tensor_db(self.tensor_db)
        self.callbacks.set_tensor_db(self.tensor_db)
        self._event("model", model_bytes=sum(t.ByteSize() for t in self.model.tensors),
                    model_bytes_by_group=bytes_by_group(self.model.tensors))
        self.poll_interval_s = float(poll_interval_s)
        self.long_poll_s = float(long_poll_s)
        self._event("members", round=self.round_number, sites=list(self.authorized_cols))
        self._mark_round_ready(self.round_number)

    def global_tensors(self) -> dict:
        """The global model the current round starts with (the aggregate of the round
        before), by tensor name, from the aggregator's tensor store."""
        names = [t.name for t in self.model.tensors]
        return {n: self.tensor_db.get_tensor_from_cache(TensorKey(n, self.uuid, self.round_number, False, ("model",)))
                for n in names}

    # ---- event log ---------------------------------------------------------------------------
    def _event(self, kind: str, **fields):
        os.makedirs(os.path.dirname(self.event_log) or ".", exist_ok=True)
        record = {"event": kind, "time": time.time(), **fields}
        with self._events_lock, open(self.event_log, "a") as f:
            f.write(json.dumps(record) + "\n")
            if self.live_view is not None:  # the same event as TensorBoard scalars (docs/monitoring.md)
                self.live_view.record(record)

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
            with self.lock:  # not while a round end changes the round's sites
                if collaborator_name not in self.authorized_cols:  # removed as the round ended
                    return None, self.round_number, 0, False
                tasks, round_number, sleep_time, time_to_quit = super().get_tasks(collaborator_name)
            if tasks:
                ready = self._round_ready_at.get(round_number, time.monotonic())
                self._event("tasks_sent", round=round_number, site=collaborator_name,
                            tasks=[getattr(t, "name", t) for t in tasks], idle_s=time.monotonic() - ready)
                return tasks, round_number, 0, time_to_quit
            if time_to_quit:
                return tasks, round_number, 0, time_to_quit
            if time.monotonic() >= deadline:
                return tasks, round_number, (sleep_time if self.long_poll_s <= 0 else 0), time_to_quit
            time.sleep(self.poll_interval_s)

    # ---- wire accounting -----------------------------------------------------------------
    def get_aggregated_tensor(self, tensor_name, round_number, report, tags, require_lossless,
                              requested_by):
        named_tensor = super().get_aggregated_tensor(tensor_name, round_number, report, tags,
                                                     require_lossless, requested_by)
        with self._events_lock:
            self._downloads[(requested_by, round_number)][wire_group(named_tensor)] += named_tensor.ByteSize()
        return named_tensor

    def _log_downloads(self, round_number: int):
        with self._events_lock:
            done = {k: dict(v) for k, v in self._downloads.items() if k[1] == round_number}
            for k in done:
                del self._downloads[k]
        for (site, rnd), by_group in sorted(done.items()):
            self._event("download", round=rnd, site=site, bytes=sum(by_group.values()), by_group=by_group)

    def send_local_task_results(self, collaborator_name, round_number, task_name, data_size,
                                named_tensors):
        by_group = bytes_by_group(named_tensors)
        self._event("upload", round=round_number, site=collaborator_name, task=task_name,
                    bytes=sum(by_group.values()), by_group=by_group)
        with self.lock:  # the cutoff timer ends rounds under it too (module docstring)
            super().send_local_task_results(collaborator_name, round_number, task_name, data_size,
                                            named_tensors)
        self._drain_metrics()

    # ---- results a round took, live or replayed (module docstring: Restarts) ------------------
    def _recover(self):
        self._replaying = True
        try:
            return super()._recover()
        finally:
            self._replaying = False

    def process_task_results(self, collaborator_name, round_number, task_name, data_size, named_tensors):
        """OpenFL's processing; then an `accepted` (or at start `replayed`) event if the
        round took the results: not a straggler's, another round's or a repeat."""
        key = TaskResultKey(task_name, collaborator_name, round_number)
        before, repeat = self.round_number, key in self.collaborator_tasks_results
        super().process_task_results(collaborator_name, round_number, task_name, data_size, named_tensors)
        if not repeat and (self.round_number != before or key in self.collaborator_tasks_results):
            self._event("replayed" if self._replaying else "accepted", round=round_number,
                        site=collaborator_name, task=task_name,
                        bytes=sum(t.ByteSize() for t in named_tensors))

    # ---- round transitions -------------------------------------------------------------------
    def _end_of_round_check(self):
        """Every way a round ends passes here: the last result arriving, a straggler
        policy's cutoff timer (another thread), or results replayed after a restart."""
        before, stragglers = self.round_number, list(self.stragglers)
        super()._end_of_round_check()
        if self.round_number == before:
            return
        self._drain_metrics()
        self._log_downloads(before)
        self._event("round_end", round=before, stragglers=stragglers)
        if not self._time_to_quit():
            self._follow_cols_yaml()
            self._mark_round_ready(self.round_number)
        elif self.final_state_path:
            # OpenFL saves last/best.pbuf from the model a round *started*
            # with, so the last round's training would be lost: keep it. (After a
            # validation-only round, the model it validated: nothing was aggregated.)
            final_round = min(self.round_number, self.training_rounds)
            self._save_model(final_round, self.final_state_path)
            self._event("final_model", round=final_round, path=self.final_state_path)

    # ---- who takes part (src/federated/admission.py) -------------------------------------------
    def admission_verdict(self, common_name: str, header, pem: bytes):
        """The refusal of a call (None: admitted), logged as a `refused` event."""
        plan_matches = header.receiver == self.uuid and header.federation_uuid == self.federation_uuid
        verdict = self.admission.verdict(common_name, header.sender, pem, self.authorized_cols,
                                         plan_matches, self.round_number)
        if verdict is not None and verdict.code != grpc.StatusCode.UNAVAILABLE:
            log.warning("refused %s: %s", header.sender, verdict.reason)
            self._event("refused", round=self.round_number, site=header.sender, reason=verdict.reason)
        return verdict

    def _follow_cols_yaml(self):
        """At a round start: the round's sites become the ones plan/cols.yaml lists now."""
        listed = self.admission.listed()
        if not listed or listed == list(self.authorized_cols):
            if not listed:
                log.error("%s lists no site; round %d keeps %s", self.admission.cols_path, self.round_number,
                          self.authorized_cols)
            return
        added = [s for s in listed if s not in self.authorized_cols]
        removed = [s for s in self.authorized_cols if s not in listed]
        # the plan hands one list to the aggregator and its assigner; both follow
        for cols in (self.authorized_cols, self.assigner.authorized_cols):
            cols[:] = listed
        self.assigner.collaborator_tasks.clear()  # no assignment left for a removed site
        self.assigner.define_task_assignments()
        log.info("round %d: sites %s (added %s, removed %s)", self.round_number, listed, added, removed)
        self._event("members", round=self.round_number, sites=listed, added=added, removed=removed)
