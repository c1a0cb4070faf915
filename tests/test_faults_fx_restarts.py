"""Crashes and stragglers against the real thing (`fx` processes, mutual TLS), each
checked on the aggregator's event log (docs/operations.md#restarts-and-resume,
#stragglers):

- the aggregator is SIGKILLed after a site's results for the round are in and before
  the round ends; restarted with the documented command, it replays exactly those
  results, the site is not given that work again, and the round completes under
  the same number;
- a collaborator is SIGKILLed mid-round: the default policy keeps the round open
  although the healthy site's results are in, and closes it once the restarted site
  reports; a cutoff-time policy closes it without the dead site, which joins the
  next round;
- the race between a cutoff timer and the upload that completes the round, forced
  in process on the plan's aggregator: the round ends once.
"""
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.test_faults_fx import (ROUNDS, SITES, TASKS, assert_each_round_once, closed_rounds,
                                  round_results, taken)
from tests.tiny_federation import FxFederation, of, write_tiny_plan, write_tiny_site_split

pytestmark = pytest.mark.faults
# A restarted site's cold start (process start, model build, first traced step) until its
# first upload: up to 60 s here for the default model (docs/operations.md), 26-28 s
# measured for this tiny one. The cutoff is half as long again as the larger figure, so it
# closes rounds only for a site that is down.
COLD_START_S = 60
CUTOFF_S = int(1.5 * COLD_START_S)
CUTOFF_POLICY = {"straggler_handling_policy": {
    "template": "openfl.component.aggregator.straggler_handling.CutoffTimePolicy",
    "settings": {"straggler_cutoff_time": CUTOFF_S, "minimum_reporting": 1}}}
FAST_POLL_S = 0.1  # a site that got its tasks works for seconds: act on it well before it uploads


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_fx_restarts")
    write_tiny_site_split(root, num_images=40, num_sites=2, labels=("both",), seed=5, test_fraction=0.2)
    return root


def got_tasks(rnd: int, *sites: str):
    return lambda events: {e["site"] for e in of(events, "tasks_sent", round=rnd)} >= set(sites)


def took(rnd: int, site: str, task: str = "train"):
    """The aggregator has processed `site`'s `task` results of round `rnd` (event `accepted`)."""
    return lambda events: bool(of(events, "accepted", round=rnd, site=site, task=task))


def round_ended(rnd: int):
    return lambda events: bool(of(events, "round_end", round=rnd))


def assert_final_model(ws: Path, rounds: int = ROUNDS):
    from src.federated.checkpoint import load_pbuf_weights

    final, final_round = load_pbuf_weights(ws / "save" / "final.pbuf")
    assert final_round == rounds and all(np.isfinite(v).all() for v in final.values())


# ---- aggregator crash ---------------------------------------------------------------------------
def test_aggregator_killed_after_a_site_s_results_replays_them_and_finishes_the_round(tiny_split):
    """site2 is paused (SIGSTOP) as soon as it has its round-1 tasks, so round 1 cannot end;
    once the aggregator has processed site1's round-1 training results it is SIGKILLed,
    started again, and site2 resumed."""
    fed = FxFederation(tiny_split, tiny_split / "splits", "ws_crash", SITES, ROUNDS)
    site2 = None
    try:
        agg = fed.start_aggregator()
        site1, site2 = fed.start_site("site1"), fed.start_site("site2")
        running = [("site1", site1), ("site2", site2)]
        fed.wait_for(got_tasks(1, "site2"), 600, "site2's round-1 tasks", running, FAST_POLL_S)
        os.killpg(site2.pid, signal.SIGSTOP)
        fed.wait_for(took(1, "site1"), 300, "site1's round-1 training results", running)
        os.killpg(agg.pid, signal.SIGKILL)
        agg.wait(timeout=30)
        before = fed.events()
        assert not of(before, "round_end", round=1)
        in_round = [(e["round"], e["site"], e["task"], e["bytes"]) for e in of(before, "accepted", round=1)]
        assert (1, "site1", "train") in [r[:3] for r in in_round], in_round

        fed.start_aggregator("aggregator-restarted.log")  # the documented command, again
        os.killpg(site2.pid, signal.SIGCONT)
        for name, proc in running:
            assert proc.wait(timeout=600) == 0, fed.log(f"{name}.log")[-3000:]
    finally:
        if site2 is not None and site2.poll() is None:
            os.killpg(site2.pid, signal.SIGCONT)
        fed.stop()

    events = fed.events()
    restarted = events[len(before):]  # the restarted aggregator's events
    # the restart replayed exactly the round's results that were in, byte for byte ...
    assert [(e["round"], e["site"], e["task"], e["bytes"]) for e in of(restarted, "replayed")] == in_round
    # ... resumed the same round ...
    assert of(restarted, "round_start")[0]["round"] == 1
    # ... and gave no site a task whose results it replayed: site1 trained round 1 once
    for sent in of(restarted, "tasks_sent", round=1):
        redone = [t for t in sent["tasks"] if (1, sent["site"], t) in [r[:3] for r in in_round]]
        assert not redone, f"{sent['site']} was given {redone} of round 1 again"
    assert fed.log("site1.log").count("Round: 1 Received Tasks") == 1
    # each round ended once, each result was taken once (live before the crash or after it)
    assert_each_round_once(events)
    assert of(restarted, "round_end", round=1)[0]["stragglers"] == []
    assert_final_model(fed.ws)


# ---- collaborator crash and stragglers -------------------------------------------------------------
def kill_site2_with_its_round_1_tasks(fed: FxFederation):
    """Start the federation; SIGKILL site2 as soon as both sites have their round-1 tasks.
    Returns site1's process."""
    fed.start_aggregator()
    site1, site2 = fed.start_site("site1"), fed.start_site("site2")
    fed.wait_for(got_tasks(1, *SITES), 600, "round 1 to start", [("site1", site1), ("site2", site2)], FAST_POLL_S)
    os.killpg(site2.pid, signal.SIGKILL)
    site2.wait(timeout=30)
    assert not took(1, "site2")(fed.events()), "site2 finished round 1 before it was killed"
    return site1


def finish_with_site2_restarted(fed: FxFederation, site1) -> float:
    """Restart site2 and let both sites run to the end; the time site2 was restarted."""
    restarted_at = time.time()
    restarted = fed.start_site("site2", "site2-restarted.log")
    assert site1.wait(timeout=600) == 0, fed.log("site1.log")[-3000:]
    assert restarted.wait(timeout=600) == 0, fed.log("site2-restarted.log")[-3000:]
    return restarted_at


def test_the_default_policy_keeps_the_round_open_for_a_killed_site_until_it_rejoins(tiny_split):
    fed = FxFederation(tiny_split, tiny_split / "splits", "ws_wait_for_all", SITES, ROUNDS)
    try:
        site1 = kill_site2_with_its_round_1_tasks(fed)
        # `accepted` is written once the aggregator has processed the results, so had they
        # closed the round, its round_end would come before it
        events = fed.wait_for(took(1, "site1"), 300, "site1's round-1 training results", [("site1", site1)])
        assert not of(events, "round_end", round=1), "round 1 closed without the killed site"
        finish_with_site2_restarted(fed, site1)
    finally:
        fed.stop()

    events = fed.events()
    assert_each_round_once(events)  # site2's round-1 results too: the restarted site finished round 1
    end = events.index(of(events, "round_end", round=1)[0])
    assert events.index(of(events, "upload", round=1, site="site2", task="train")[0]) < end
    assert events[end]["stragglers"] == []
    assert_final_model(fed.ws)


def test_a_cutoff_closes_the_round_without_a_killed_site_and_it_joins_the_next(tiny_split):
    """The cutoff (CUTOFF_S) is well above a restarted site's cold start: site2, restarted
    as round 1 is cut off, is in time for round 2."""
    fed = FxFederation(tiny_split, tiny_split / "splits", "ws_cutoff_time", SITES, ROUNDS, CUTOFF_POLICY)
    try:
        site1 = kill_site2_with_its_round_1_tasks(fed)
        fed.wait_for(round_ended(1), CUTOFF_S + 120, "the cutoff to end round 1", [("site1", site1)])
        restarted_at = finish_with_site2_restarted(fed, site1)
    finally:
        fed.stop()

    events = fed.events()
    ends = of(events, "round_end")
    assert [e["round"] for e in ends] == closed_rounds()
    assert [e["stragglers"] for e in ends] == [[], ["site2"], [], []]
    first = next(e for e in of(events, "accepted", site="site2") if e["time"] > restarted_at)
    assert first["round"] == 2, f"site2's first results came {first['time'] - restarted_at:.0f} s after its " \
                                f"restart, for round {first['round']} (cutoff {CUTOFF_S} s)"
    # each result taken once; none of site2's round-1 training (it was dead), its
    # round-1 validation only if it sent it before it was killed
    results = taken(events)
    results.pop((1, "site2", "aggregated_model_validation"), None)
    assert results == round_results() - Counter({(1, "site2", t): 1 for t in TASKS}), results
    assert_final_model(fed.ws)


# ---- the cutoff timer against the upload that completes the round -----------------------------------
class WatchedLock:
    """A lock that records who had to wait for whom: (waiting thread, holder) pairs."""

    def __init__(self):
        self._lock = threading.Lock()
        self.holder: threading.Thread | None = None
        self.waits: list[tuple[threading.Thread, threading.Thread | None]] = []

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            self.waits.append((threading.current_thread(), self.holder))
            self._lock.acquire()
        self.holder = threading.current_thread()
        return self

    def __exit__(self, *exc):
        self.holder = None
        self._lock.release()


def test_a_cutoff_timer_firing_while_the_last_upload_ends_the_round_ends_it_once(tiny_split, tmp_path, monkeypatch):
    """In process, the plan's aggregator with a CutoffTimePolicy: when the upload that
    completes round 0 is ending it, the policy's timer callback fires in a thread of its
    own (as its threading.Timer runs it); the round end goes on once that thread waits
    for the aggregator's lock or is done. The round ends once, the timer raises nothing."""
    from openfl.federated import Plan

    from src.federated.in_process import run_federation
    from workspace.simulate.events import read_events

    policy = {**CUTOFF_POLICY["straggler_handling_policy"],
              "settings": {"straggler_cutoff_time": 3600, "minimum_reporting": 1}}  # fired by hand only
    write_tiny_plan(tmp_path, tiny_split / "splits", rounds=1, sites=SITES,
                    sections={"straggler_handling_policy": policy})
    lock, timer_threads, timer_errors = WatchedLock(), [], []

    def fire_cutoff(aggregator):
        timer = aggregator.straggler_handling_policy.timer
        timer.cancel()

        def run():
            try:
                timer.function()
            except BaseException as e:  # noqa: BLE001 - what the timer thread would die of
                timer_errors.append(e)

        thread = threading.Thread(target=run, name="cutoff timer")
        timer_threads.append(thread)
        thread.start()
        ending = (thread, threading.current_thread())  # the timer waiting for this round end
        deadline = time.monotonic() + 60
        while thread.is_alive() and ending not in lock.waits:
            assert time.monotonic() < deadline, "the cutoff timer neither ran nor waited"
            time.sleep(0.01)

    real_get_aggregator = Plan.get_aggregator

    def get_aggregator(self, *args, **kwargs):
        aggregator = real_get_aggregator(self, *args, **kwargs)
        aggregator.lock = lock
        metrics = aggregator._compute_validation_related_task_metrics

        def compute(task_name):  # the first step of ending a round (Aggregator._end_of_round_check)
            if not timer_threads:
                fire_cutoff(aggregator)
            return metrics(task_name)

        aggregator._compute_validation_related_task_metrics = compute
        return aggregator

    monkeypatch.setattr(Plan, "get_aggregator", get_aggregator)
    monkeypatch.chdir(tmp_path)
    run_federation(tmp_path)
    timer_threads[0].join(timeout=60)
    assert not timer_errors, timer_errors
    events = read_events(tmp_path / "logs" / "events.jsonl")
    assert [e["round"] for e in of(events, "round_end")] == [0, 1]  # round 0 once, then the final validation
    # the race was forced: the timer came while the upload was ending the round
    assert any(waiting is timer_threads[0] for waiting, _ in lock.waits)
