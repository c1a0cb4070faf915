"""Where a run's wall time goes: setup, cold start, each round's phases, shutdown, final evaluation.

Derived from what a run records already: the orchestrator's own clock marks (`Marks`),
the aggregator's event log (round starts and ends, when each site got its tasks and when
each upload arrived) and the seconds each site's tasks report as metrics
(`seconds_validate`, `seconds_label`, `seconds_train`: src/federated/task_runner.py).
Per site and round:

- download: tasks handed out -> validation result in, less the validation itself (the
  global model's transfer and load, and the small validation upload);
- validate, label (the active-learning step), data (building the round's training
  dataset), train: as the site measured them;
- upload: validation result in -> trained update in, less label, data and train
  (building, serializing and sending the update);
- idle: the rest of the round's wall time (waiting for work, then for the other sites).

Per round, `aggregation` is the last update in -> round end (the aggregator's combine and
save), and `slowest` names the site whose update came last: its phases, idle before its
tasks and the aggregation add up to the round's wall time. A phase a run did not record
(a site that reports no seconds) is None.
"""
from __future__ import annotations

import statistics
import time

VALIDATION_TASK = "aggregated_model_validation"
SITE_PHASES = ("download", "validate", "label", "data", "train", "upload")
# orchestrator marks, in the order a run passes them (Marks.mark)
MARKS = ("start", "split", "workspace", "certified", "fx_started", "federation_end", "end")


class Marks:
    """Wall-clock times (time.time(), the event log's clock) of the orchestrator's steps."""

    def __init__(self):
        self.times: dict[str, float] = {"start": time.time()}

    def mark(self, name: str) -> None:
        if name not in MARKS:
            raise ValueError(f"unknown mark {name!r}; known: {', '.join(MARKS)}")
        self.times[name] = time.time()


def _span(times: dict, start: str, end: str):
    return times[end] - times[start] if start in times and end in times else None


def _minus(total, *parts):
    """total - parts, None when any is unknown."""
    if total is None or any(p is None for p in parts):
        return None
    return total - sum(parts)


def round_phases(events: list[dict], rnd: int) -> dict | None:
    """One round's wall time, aggregation, slowest site and per-site phases; None if it did not end."""
    start = next((e["time"] for e in events if e["event"] == "round_start" and e.get("round") == rnd), None)
    end = next((e["time"] for e in events if e["event"] == "round_end" and e.get("round") == rnd), None)
    if start is None or end is None:
        return None
    sent, uploads, seconds = {}, {}, {}
    for e in events:
        if e.get("round") != rnd:
            continue
        if e["event"] == "tasks_sent":
            sent.setdefault(e["site"], e["time"])
        elif e["event"] == "upload":
            uploads.setdefault((e["site"], e["task"]), e["time"])
        elif e["event"] == "metric" and e["name"].startswith("seconds_") and e["site"] != "aggregator":
            seconds[(e["site"], e["name"][len("seconds_"):])] = e["value"]
    wall = end - start
    sites = {}
    for site, handed_out in sent.items():
        validated, trained = uploads.get((site, VALIDATION_TASK)), uploads.get((site, "train"))
        validate = seconds.get((site, "validate"))
        label, data, train = (seconds.get((site, p)) for p in ("label", "data", "train"))
        phases = {"waited_for_tasks": handed_out - start,
                  "download": _minus(None if validated is None else validated - handed_out, validate),
                  "validate": validate}
        if trained is not None:
            phases.update(label=label, data=data, train=train,
                          upload=_minus(None if validated is None else trained - validated, label, data, train))
        last = trained if trained is not None else validated
        phases["idle"] = None if last is None else wall - (last - handed_out)
        phases["done_at"] = None if last is None else last - start
        sites[site] = phases
    finished = {s: p["done_at"] for s, p in sites.items() if p["done_at"] is not None}
    slowest = max(finished, key=finished.get) if finished else None
    return {"round": rnd, "wall_s": wall, "slowest": slowest,
            "aggregation_s": wall - finished[slowest] if slowest else None, "sites": sites}


def run_phases(events: list[dict], marks: dict, training_rounds: int) -> dict:
    """The whole run: setup, cold start, every round, shutdown and final evaluation (seconds)."""
    ended = sorted({e["round"] for e in events if e["event"] == "round_end"})
    rounds = [r for r in (round_phases(events, rnd) for rnd in ended) if r is not None]
    for r in rounds:
        if r["round"] >= training_rounds:  # the plan's final validation round: validates, trains nothing
            r["validation_only"] = True
    training = [r for r in rounds if not r.get("validation_only")]
    first_sent = [e["time"] for e in events if e["event"] == "tasks_sent" and e.get("round") == (ended or [0])[0]]
    last_end = max((e["time"] for e in events if e["event"] == "round_end"), default=None)
    times = dict(marks)
    if first_sent:
        times["every_site_working"] = max(first_sent)
    if last_end is not None:
        times["last_round_end"] = last_end
    walls = [r["wall_s"] for r in training[1:]]
    phases = {
        "wall_s": _span(times, "start", "end"),
        "setup_s": _span(times, "start", "fx_started"),
        "setup": {"split_s": _span(times, "start", "split"), "workspace_s": _span(times, "split", "workspace"),
                  "certificates_s": _span(times, "workspace", "certified"),
                  "start_processes_s": _span(times, "certified", "fx_started")},
        # fx processes started -> the last site got its first task
        "cold_start_s": _span(times, "fx_started", "every_site_working"),
        "training_rounds_s": sum(r["wall_s"] for r in training),
        "final_validation_s": sum(r["wall_s"] for r in rounds if r.get("validation_only")),
        # round 1's wall time beyond a typical later round's: first traces, caches, warm-up
        "first_round_extra_s": training[0]["wall_s"] - statistics.median(walls) if walls else None,
        "shutdown_s": _span(times, "last_round_end", "federation_end"),
        "final_evaluation_s": _span(times, "federation_end", "end"),
        "per_round": mean_round(training),
        "rounds": rounds,
    }
    return phases


def mean_round(rounds: list[dict]) -> dict:
    """Mean over `rounds` of the slowest site's phases, the aggregation, and each site's idle time."""
    def mean(values):
        values = [v for v in values if v is not None]
        return statistics.mean(values) if values else None

    slowest = [r["sites"][r["slowest"]] for r in rounds if r["slowest"]]
    out = {"wall_s": mean(r["wall_s"] for r in rounds)}
    out.update({f"{p}_s": mean(s.get(p) for s in slowest) for p in SITE_PHASES})
    out["aggregation_s"] = mean(r["aggregation_s"] for r in rounds)
    sites = sorted({s for r in rounds for s in r["sites"]})
    out["idle_s"] = {s: mean(r["sites"].get(s, {}).get("idle") for r in rounds) for s in sites}
    return out


def phase_lines(phases: dict, training_rounds: int) -> list[str]:
    """The console's time breakdown: one line for the run, then one per round."""
    setup = phases["setup"]
    lines = [f"time (wall {_s(phases['wall_s'])}): setup {_s(phases['setup_s'])} (split {_s(setup['split_s'])}, "
             f"workspace {_s(setup['workspace_s'])}, certificates {_s(setup['certificates_s'])}) | cold start "
             f"{_s(phases['cold_start_s'])} | {training_rounds} rounds {_s(phases['training_rounds_s'])} (round 1 "
             f"{_s(phases['first_round_extra_s'])} over a typical round) | final validation "
             f"{_s(phases['final_validation_s'])} | shutdown {_s(phases['shutdown_s'])} | test evaluation "
             f"{_s(phases['final_evaluation_s'])}"]
    for r in phases["rounds"]:
        title = "final validation" if r.get("validation_only") else f"round {r['round'] + 1}"
        slowest = r["sites"].get(r["slowest"], {})
        parts = " ".join(f"{p} {_s(slowest.get(p), 1)}" for p in SITE_PHASES if p in slowest)
        idle = ", ".join(f"{s} {_s(p['idle'], 0)}" for s, p in r["sites"].items() if s != r["slowest"])
        lines.append(f"  {title}: {_s(r['wall_s'])} | slowest {r['slowest']}: {parts} | aggregation "
                     f"{_s(r['aggregation_s'], 1)} | idle {idle or 'n/a'}")
    return lines


def _s(value, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"
