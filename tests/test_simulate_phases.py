"""A run's time breakdown (workspace/simulate/phases.py) from an event log and the orchestrator's
marks: each round's slowest site, its phases and the aggregation add up to the round's wall
time; the other sites' idle time is what they waited; the console and the results page show it."""
import json

import pytest

from workspace.simulate.phases import phase_lines, run_phases

MARKS = {"start": 0.0, "split": 7.0, "workspace": 8.0, "certified": 38.0, "fx_started": 40.0,
         "federation_end": 210.0, "end": 230.0}


def site_round(rnd, site, sent, validated, trained, validate, label=None, train=None, data=0.0):
    """The events of one site's round: tasks handed out, the two uploads, the seconds it reported."""
    events = [{"event": "tasks_sent", "time": sent, "round": rnd, "site": site, "idle_s": 0.1},
              {"event": "upload", "time": validated, "round": rnd, "site": site,
               "task": "aggregated_model_validation"},
              {"event": "metric", "time": validated, "round": rnd, "site": site,
               "task": "aggregated_model_validation", "name": "seconds_validate", "value": validate}]
    if trained is not None:
        events += [{"event": "upload", "time": trained, "round": rnd, "site": site, "task": "train"},
                   {"event": "metric", "time": trained, "round": rnd, "site": site, "task": "train",
                    "name": "seconds_label", "value": label},
                   {"event": "metric", "time": trained, "round": rnd, "site": site, "task": "train",
                    "name": "seconds_data", "value": data},
                   {"event": "metric", "time": trained, "round": rnd, "site": site, "task": "train",
                    "name": "seconds_train", "value": train}]
    return events


def federation_events():
    """Two training rounds and the final validation round of two sites; site2 labels and is slower."""
    return [
        {"event": "round_start", "time": 50.0, "round": 0},
        *site_round(0, "site1", 52.0, 55.0, 90.0, validate=2.0, label=4.0, train=30.0),
        *site_round(0, "site2", 51.0, 54.0, 120.0, validate=2.5, label=20.0, train=41.0, data=4.0),
        # the aggregated metric (the sites' mean) is not a site's phase
        {"event": "metric", "time": 120.2, "round": 0, "site": "aggregator", "task": "train",
         "name": "seconds_train", "value": 37.5},
        {"event": "round_end", "time": 120.5, "round": 0},
        {"event": "round_start", "time": 120.5, "round": 1},
        *site_round(1, "site1", 120.6, 122.0, 150.0, validate=1.0, label=3.0, train=24.0),
        *site_round(1, "site2", 120.7, 122.5, 170.0, validate=1.5, label=15.0, train=32.0),
        {"event": "round_end", "time": 170.25, "round": 1},
        {"event": "round_start", "time": 170.25, "round": 2},
        *site_round(2, "site1", 170.3, 172.0, None, validate=1.2),
        *site_round(2, "site2", 170.4, 172.5, None, validate=1.6),
        {"event": "round_end", "time": 172.75, "round": 2},
    ]


def test_each_round_splits_into_the_slowest_sites_phases_the_aggregation_and_idle_sites():
    phases = run_phases(federation_events(), MARKS, training_rounds=2)
    first, second, final = phases["rounds"]
    assert first["slowest"] == "site2" and first["wall_s"] == pytest.approx(70.5)
    s2 = first["sites"]["site2"]
    assert s2["validate"] == 2.5 and s2["label"] == 20.0 and s2["data"] == 4.0 and s2["train"] == 41.0
    assert s2["download"] == pytest.approx(0.5)  # handed out at 51, validated (2.5 s) at 54
    assert s2["upload"] == pytest.approx(1.0)  # validated at 54, 65 s of work, update in at 120
    assert first["aggregation_s"] == pytest.approx(0.5)
    parts = s2["waited_for_tasks"] + sum(s2[p] for p in ("download", "validate", "label", "data", "train", "upload"))
    assert parts + first["aggregation_s"] == pytest.approx(first["wall_s"])
    assert s2["idle"] == pytest.approx(1.5)  # before its tasks, and the aggregation
    assert first["sites"]["site1"]["idle"] == pytest.approx(70.5 - (90.0 - 52.0))  # waited for site2
    assert first["sites"]["site1"]["upload"] == pytest.approx(1.0)
    assert second["slowest"] == "site2" and second["aggregation_s"] == pytest.approx(0.25)
    # the final validation round: validation only, no train phases
    assert final["validation_only"] and "train" not in final["sites"]["site1"]
    assert final["slowest"] == "site2" and final["aggregation_s"] == pytest.approx(0.25)

    assert phases["setup_s"] == 40.0 and phases["setup"] == {
        "split_s": 7.0, "workspace_s": 1.0, "certificates_s": 30.0, "start_processes_s": 2.0}
    assert phases["cold_start_s"] == 12.0  # fx started at 40, the last first task at 52
    assert phases["training_rounds_s"] == pytest.approx(70.5 + 49.75)
    assert phases["final_validation_s"] == pytest.approx(2.5)
    assert phases["first_round_extra_s"] == pytest.approx(70.5 - 49.75)
    assert phases["shutdown_s"] == pytest.approx(210.0 - 172.75)
    assert phases["final_evaluation_s"] == 20.0 and phases["wall_s"] == 230.0
    mean = phases["per_round"]
    assert mean["label_s"] == pytest.approx(17.5) and mean["train_s"] == pytest.approx(36.5)
    assert mean["data_s"] == pytest.approx(2.0)
    assert mean["idle_s"]["site1"] == pytest.approx((32.5 + (49.75 - 29.4)) / 2)
    json.dumps(phases)  # metrics.json holds it as is


def test_a_site_that_reports_no_seconds_leaves_those_phases_unknown_not_zero():
    events = [e for e in federation_events() if not (e["event"] == "metric" and e.get("site") == "site1")]
    first = run_phases(events, MARKS, training_rounds=2)["rounds"][0]["sites"]["site1"]
    assert first["validate"] is None and first["train"] is None
    assert first["download"] is None and first["upload"] is None
    assert first["idle"] == pytest.approx(70.5 - (90.0 - 52.0))  # from the aggregator's own times


def test_the_console_and_the_results_page_show_the_breakdown(tmp_path):
    from tests.test_results_pages import simulate_metrics
    from workspace.results import main

    phases = run_phases(federation_events(), MARKS, training_rounds=2)
    lines = phase_lines(phases, training_rounds=2)
    assert lines[0].startswith("time (wall 230 s): setup 40 s (split 7 s, workspace 1 s, certificates 30 s) | "
                               "cold start 12 s | 2 rounds 120 s (round 1 21 s over a typical round)")
    assert lines[1] == ("  round 1: 70 s | slowest site2: download 0.5 s validate 2.5 s label 20.0 s data 4.0 s "
                        "train 41.0 s "
                        "upload 1.0 s | aggregation 0.5 s | idle site1 32 s")
    assert lines[3].startswith("  final validation: 2 s | slowest site2: download 0.5 s validate 1.6 s |")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({**simulate_metrics(), "phases": phases}))
    out, readme = tmp_path / "pages", tmp_path / "README.md"
    readme.write_text("<!-- results:simulate (make results) -->\n<!-- /results:simulate -->\n")
    assert main(["--simulate", str(metrics), "--bench", str(tmp_path / "none.json"),
                 "--al", str(tmp_path / "none.json"), "--privacy", str(tmp_path / "none.json"),
                 "--out", str(out), "--readme", str(readme)]) == 0
    page = (out / "simulate.md").read_text()
    assert "## Time by phase" in page
    assert "| setup: certificates | 30.0 | 13.04 % |" in page
    assert "| test evaluation and report | 20.0 | 8.70 % |" in page
    assert "| 1 | 70.5 | site2 | 0.5 | 2.5 | 20.0 | 4.0 | 41.0 | 1.0 | 0.5 | site1 32 |" in page
    assert "| final validation | 2.5 | site2 | 0.5 | 1.6 | n/a | n/a | n/a | n/a | 0.2 | site1 1 |" in page
