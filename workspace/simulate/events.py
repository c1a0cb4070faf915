"""The aggregator's event log (src/federated/aggregator.py writes it): progress lines while a
run goes, round summaries and traffic figures for its report.

The log is JSON lines; it is read as it grows, complete lines only, so a line the
aggregator is still writing is read on the next poll.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path


def read_events(path: Path) -> list[dict]:
    """Every event the log holds now, complete lines only (the line the aggregator is
    still writing waits for the next read)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in complete_lines(path.read_text()).splitlines()]


def complete_lines(text: str) -> str:
    """`text` up to its last newline: a line still being written is left for the next read."""
    return text[:text.rfind("\n") + 1]


class FederationEvents:
    """Every event of one run's log read so far, and what they say per round."""

    def __init__(self, path: Path, rounds: int, sites: list[str]):
        self.path, self.rounds, self.sites = path, rounds, sites
        self.offset = 0
        self.events: list[dict] = []

    def poll(self) -> list[int]:
        """Read what the log gained; returns the rounds that ended in it."""
        if not self.path.exists():
            return []
        with open(self.path) as f:
            f.seek(self.offset)
            chunk = f.read()
            complete = complete_lines(chunk)
            self.offset += len(complete)
        ended = []
        for line in complete.splitlines():
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == "round_end":
                ended.append(event["round"])
        return ended

    def round_summary(self, rnd: int) -> dict:
        """Score, per-site metrics, traffic, idle and wall time of round `rnd`."""
        sites = {s: {} for s in self.sites}
        score, privacy = None, None
        for e in self.events:
            if e.get("round") != rnd:
                continue
            if e["event"] == "metric":
                # NaN: a metric the site has no labels for (mAP at a classification-only site)
                value = e["value"] if math.isfinite(e["value"]) else None
                sites.setdefault(e["site"], {})[e["name"]] = value
                if e["site"] == "aggregator" and e["name"] == "score":
                    score = e["value"]
            elif e["event"] == "tasks_sent":
                sites.setdefault(e["site"], {})["idle_s"] = e["idle_s"]
            elif e["event"] == "upload" and e.get("task") == "train":
                site = sites.setdefault(e["site"], {})
                site["upload_bytes"] = e["bytes"]
                site["upload_bytes_by_group"] = e["by_group"]
            elif e["event"] == "rejected":  # a broken update left out (src/federated/update_checks.py)
                sites.setdefault(e["site"], {})["rejected"] = e["reason"]
            elif e["event"] == "clipped":  # bounded by clip_updates (docs/privacy.md)
                sites.setdefault(e["site"], {}).setdefault("clipped", {})[e["group"]] = e["scale"]
            elif e["event"] == "privacy":  # differential privacy spent so far (docs/privacy.md)
                privacy = {"epsilon": e["epsilon"], "delta": e["delta"]}
            elif e["event"] == "download":
                site = sites.setdefault(e["site"], {})
                site["download_bytes"] = e["bytes"]
                site["download_bytes_by_group"] = e["by_group"]
        agg = sites.pop("aggregator", {})
        idle = [s["idle_s"] for s in sites.values() if "idle_s" in s]
        start = next((e["time"] for e in self.events if e["event"] == "round_start" and e["round"] == rnd), None)
        end = next((e["time"] for e in self.events if e["event"] == "round_end" and e["round"] == rnd), None)
        summary = {"round": rnd, "score": score if score is not None else agg.get("score"),
                   "aggregated": agg, "sites": sites,
                   "idle_s": statistics.median(idle) if idle else None,
                   "wall_s": (end - start) if start and end else None}
        if privacy is not None:
            summary["privacy"] = privacy
        if rnd >= self.rounds:  # the plan's final_validation_tasks: validates, trains nothing
            summary["validation_only"] = True
        return summary

    def finished_rounds(self) -> list[int]:
        """Every round the aggregator closed, the validation-only one after training included."""
        return sorted({e["round"] for e in self.events if e["event"] == "round_end"})

    def model_bytes(self) -> dict:
        """The full model's size on the wire, as the aggregator measured it at start."""
        event = next((e for e in self.events if e["event"] == "model"), {})
        return {"model_bytes": event.get("model_bytes"), "by_group": event.get("model_bytes_by_group", {})}


def progress_lines(summary: dict, rounds: int) -> list[str]:
    """A round's console line (per site: loss, mAP, accuracy, upload, labels), then one
    line per rejected update."""
    s = summary
    parts = []
    for site, m in s["sites"].items():
        trained = "" if s.get("validation_only") else f"loss {_fmt(m.get('loss'), 2)} "
        uploaded = "" if s.get("validation_only") else f" up {m.get('upload_bytes', 0) / 1e6:.2f} MB"
        parts.append(f"{site} {trained}mAP {_fmt(m.get('map50'))} acc {_fmt(m.get('accuracy'))}{uploaded}"
                     + (f" labeled {m['al_labeled']:.0f} pool {m['al_pool']:.0f}" if "al_labeled" in m else "")
                     + (" REJECTED" if "rejected" in m else "")
                     + (f" clipped x{min(m['clipped'].values()):.2f}" if "clipped" in m else ""))
    title = (f"final validation (the aggregate of round {rounds})" if s.get("validation_only")
             else f"round {s['round'] + 1}/{rounds}")
    lines = [f"{title} | " + " | ".join(parts) +
             f" | score {_fmt(s['score'])}"
             f" | idle {s['idle_s'] if s['idle_s'] is not None else float('nan'):.2f} s"
             f" | {s['wall_s'] or 0:.0f} s"
             + (f" | epsilon {s['privacy']['epsilon']:.2f} (delta {s['privacy']['delta']:g})"
                if "privacy" in s else "")]
    for site, m in s["sites"].items():
        if "rejected" in m:
            lines.append(f"  {site}: update rejected, not averaged this round: {m['rejected']}")
    return lines


def traffic_summary(rounds: list[dict], model_bytes: int | None) -> dict:
    """Per site: mean bytes per round up and down, by group, and upload as a share of the model."""
    out = {}
    for site in sorted({s for r in rounds for s in r["sites"]}):
        per = [r["sites"][site] for r in rounds if "upload_bytes" in r["sites"].get(site, {})]
        if not per:
            continue
        groups = sorted({g for m in per for g in m.get("upload_bytes_by_group", {})})
        up = statistics.mean(m["upload_bytes"] for m in per)
        down = [m["download_bytes"] for m in per if "download_bytes" in m]
        out[site] = {"upload_bytes_per_round": up,
                     "download_bytes_per_round": statistics.mean(down) if down else None,
                     "upload_bytes_by_group": {g: statistics.mean(m["upload_bytes_by_group"].get(g, 0)
                                                                  for m in per) for g in groups},
                     "upload_fraction_of_model": up / model_bytes if model_bytes else None}
    return out


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
