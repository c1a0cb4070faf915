"""The federation, for real: OpenFL's own Aggregator and Collaborator classes from our plan.

- in process (fast): two sites, two rounds, tiny images, direct calls in place of gRPC;
- end to end: `workspace.simulate` runs real `fx` processes with real certificates.
"""
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from src.settings import load_config

from tests.tiny_federation import REPO, TINY, write_tiny_plan, write_tiny_site_split


@pytest.fixture(scope="module")
def tiny_sites(tmp_path_factory):
    """A 48-image synthetic data set split over two sites holding both labels (plus a test split)."""
    root = tmp_path_factory.mktemp("fed")
    write_tiny_site_split(root, num_images=48, num_sites=2, labels=["both"], seed=1)
    return root


def test_in_process_federation_averages_site_uploads(tiny_sites, tmp_path, monkeypatch):
    from src.federated.in_process import run_federation
    from src.federated.checkpoint import load_pbuf_weights

    write_tiny_plan(tmp_path, tiny_sites / "splits", rounds=2)
    monkeypatch.chdir(tmp_path)
    started_with = {}  # round -> the global model it started with (the aggregate of the round before)

    def snapshot(aggregator, closed_round):
        started_with[closed_round + 1] = aggregator.global_tensors()

    aggregator, clients = run_federation(tmp_path, on_round_end=snapshot)

    # two training rounds, then the plan's final validation round (round 2): the sites
    # only validate the last aggregate
    assert aggregator.round_number == 3
    events = [json.loads(line) for line in (tmp_path / "logs" / "events.jsonl").read_text().splitlines()]
    sent = {(e["round"], e["site"]) for e in events if e["event"] == "tasks_sent"}
    assert sent == {(r, s) for r in (0, 1, 2) for s in ("site1", "site2")}
    for site in ("site1", "site2"):
        assert sorted(clients[site].uploads) == [(0, "aggregated_model_validation"), (0, "train"),
                                                 (1, "aggregated_model_validation"), (1, "train"),
                                                 (2, "aggregated_model_validation")]
    metrics = {(e["round"], e["site"], e["name"]) for e in events if e["event"] == "metric"}
    for name in ("loss", "map50", "accuracy", "score"):
        assert (1, "site1", name) in metrics

    # The global model after the last round (final.pbuf) is the plan's aggregation of exactly
    # what the two sites uploaded in that round: the train-size-weighted mean, stepped
    # server_lr times as far from the model the round started with; batch-norm
    # statistics plainly averaged.
    plan = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    server_lr = plan["tasks"]["train"]["aggregation_type"]["settings"]["server_lr"]
    uploads = [clients[s].uploads[(1, "train")] for s in ("site1", "site2")]
    sizes = np.array([u["data_size"] for u in uploads], float)
    assert sizes.min() > 0
    last, final_round = load_pbuf_weights(tmp_path / "save" / "final.pbuf")
    start = started_with[1]
    assert final_round == 2
    names = [n for n in last if n in uploads[0]["tensors"]]
    assert len(names) == len(last) and len(names) > 50
    for name in names:
        mean = sum(w * u["tensors"][name] for w, u in zip(sizes / sizes.sum(), uploads))
        step = 1.0 if name.endswith(("moving_mean", "moving_variance")) else server_lr
        expected = start[name].reshape(mean.shape) + step * (mean - start[name].reshape(mean.shape))
        np.testing.assert_allclose(last[name].ravel(), np.ravel(expected), rtol=1e-5, atol=1e-6)
        # it is the model the validation-only round 2 validated
        np.testing.assert_array_equal(last[name].ravel(), np.ravel(started_with[2][name]))
    # which aggregated nothing: no round-3 model exists
    assert all(value is None for value in started_with[3].values())
    # and the sites really trained: their uploads differ from each other
    assert any(not np.allclose(uploads[0]["tensors"][n], uploads[1]["tensors"][n]) for n in names)

    # best.pbuf: the best-scored of the three validated models, the last aggregate among them
    scores = {e["round"]: e["value"] for e in events
              if e["event"] == "metric" and e["site"] == "aggregator" and e["name"] == "score"}
    assert sorted(scores) == [0, 1, 2]
    best, best_round = load_pbuf_weights(tmp_path / "save" / "best.pbuf")
    assert best_round == max(scores, key=lambda r: (scores[r], -r))
    assert aggregator.best_model_score == pytest.approx(max(scores.values()))
    chosen = started_with[best_round] if best_round else load_pbuf_weights(tmp_path / "save" / "init.pbuf")[0]
    for name in names:
        np.testing.assert_array_equal(best[name].ravel(), np.ravel(chosen[name]))


def test_the_final_validation_round_assigns_only_the_named_validation_tasks():
    from openfl.component import RandomGroupedAssigner
    from src.federated.final_validation import FinalValidationAssigner

    tasks = {"aggregated_model_validation": {"function": "validate_task"}, "train": {"function": "train_task"}}
    plan_assigner = RandomGroupedAssigner(
        task_groups=[{"name": "learning", "percentage": 1.0, "tasks": list(tasks)}], tasks=tasks,
        authorized_cols=["site1", "site2"], rounds_to_train=2)
    assigner = FinalValidationAssigner(plan_assigner, 2, ["aggregated_model_validation"])
    assert sorted(assigner.get_tasks_for_collaborator("site1", 1)) == ["aggregated_model_validation", "train"]
    assert assigner.get_tasks_for_collaborator("site1", 2) == ["aggregated_model_validation"]
    assert assigner.get_all_tasks_for_round(2) == ["aggregated_model_validation"]
    assert sorted(assigner.get_collaborators_for_task("aggregated_model_validation", 2)) == ["site1", "site2"]
    assert assigner.get_collaborators_for_task("train", 2) == []
    assert assigner.is_validation_only(2) and not assigner.is_validation_only(1)
    with pytest.raises(ValueError, match="final_validation_tasks .*'validate'.*aggregated_model_validation"):
        FinalValidationAssigner(plan_assigner, 2, ["validate"])


@pytest.fixture(scope="module")
def real_format_sources(tmp_path_factory):
    """Real-format sources: C2A-style COCO json boxes + AIDER-style class folders, and
    class labels from a TSV only."""
    from src.data.sources import load_sources
    from tests.real_formats import write_sources_spec

    root = tmp_path_factory.mktemp("real")
    spec = write_sources_spec(root / "data", coco_images=60)
    cfg = load_config()
    per_source, _ = load_sources(spec, cfg["classes"]["victim"], cfg["classes"]["disaster"])
    return root, spec, per_source


def _split_by_source(real_format_sources, name: str, seed_fraction: float = 1.0) -> Path:
    from src.data.splits import build_split

    root, spec, per_source = real_format_sources
    build_split(per_source, root / "splits" / name, spec, strategy="by-source", seed_fraction=seed_fraction)
    return root / "splits" / name


@pytest.fixture(scope="module")
def real_format_split(real_format_sources):
    """A split built by the split builder, one site per source: `c2a` (boxes and classes)
    and `crisis` (class labels only)."""
    return _split_by_source(real_format_sources, "real")


@pytest.mark.slow  # (in `make test-faults`: 100 s that pushed `make test` past 15 min here)
def test_simulate_end_to_end_with_real_fx_processes_and_certificates(real_format_split, tmp_path):
    """`make simulate SPLIT=...` on real-format data: two sites, two rounds, real
    `fx aggregator start` / `fx collaborator start` with mTLS, a plan key set from the
    command line. (`make test-faults` runs it on the synthetic data too.)"""
    cmd = [sys.executable, "-m", "workspace.simulate", "--rounds", "2", "--split", str(real_format_split),
           "--runs-dir", str(tmp_path), "--set", "model.input_size=96", "--set", "model.width=0.125",
           "--backbone-init", "scratch", "--plan-set", "aggregator.settings.backbone_weighting=samples"]
    env = {k: v for k, v in os.environ.items() if k != "MAKE_COMMAND"}  # (a make target would name itself)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = (tmp_path / "latest").resolve()
    for name in ("metrics.json", "curves.png", "detections.png", "model.keras"):
        assert (run / name).stat().st_size > 0, name
    certs = run / "workspace" / "cert"
    assert (certs / "cert_chain.crt").exists() and list(certs.glob("client/col_c2a.crt"))
    plan = yaml.safe_load((run / "workspace" / "plan" / "plan.yaml").read_text())
    assert plan["aggregator"]["settings"]["backbone_weighting"] == "samples"
    metrics = json.loads((run / "metrics.json").read_text())
    # where the numbers come from: the command as typed, the code, the machine
    assert metrics["run"]["command"] == shlex.join(["python", "-m", "workspace.simulate", *cmd[3:]])
    assert metrics["run"]["commit"] and metrics["run"]["machine"]["cpus"] == os.cpu_count()
    # two training rounds, then the plan's validation-only round on the last aggregate
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert [r.get("validation_only", False) for r in metrics["rounds"]] == [False, False, True]
    assert set(metrics["rounds"][1]["sites"]) == {"c2a", "crisis"}
    assert metrics["rounds"][2]["score"] is not None
    # `crisis` holds disaster classes only: over the real gRPC transport it uploads
    # no neck/det_head, and the accounting says so.
    assert metrics["backbone_mode"] == "joint" and metrics["exchange"] == "decoupled"
    assert metrics["model_bytes"] > 0
    for rnd in metrics["rounds"][:2]:
        for site, m in rnd["sites"].items():
            # (tensor messages carry a few bytes of header each way)
            assert 0 < m["upload_bytes"] < 1.01 * metrics["model_bytes"] < 1.02 * m["download_bytes"], (site, m)
    groups = {s: set(metrics["rounds"][1]["sites"][s]["upload_bytes_by_group"]) for s in ("c2a", "crisis")}
    assert groups == {"c2a": {"backbone", "neck", "det_head", "cls_head", "metrics"},
                      "crisis": {"backbone", "cls_head", "metrics"}}
    # the test split comes from the json sources; the model improved on it
    test = metrics["last_aggregate"]["test"]
    assert test["images"] == len((real_format_split / "test.tsv").read_text().split()) - 1
    assert test["detection_images"] > 0 and test["classification_images"] > 0
    assert test["loss"] < 0.9 * metrics["initial"]["test"]["loss"], (test["loss"], metrics["initial"]["test"])
    assert metrics["median_idle_s"] is not None and metrics["median_idle_s"] < 2.0
    assert metrics["wall_s"] > metrics["federation_s"] > 0  # (wall includes the test evaluation)
    assert "round 2/2" in result.stdout and "final validation (the aggregate of round 2)" in result.stdout
    # where the time went: the orchestrator's steps, and per round each site's phases as it
    # measured them (seconds_* metrics over the wire) beside the aggregator's own times
    phases = metrics["phases"]
    for key in ("setup_s", "cold_start_s", "training_rounds_s", "final_validation_s", "shutdown_s",
                "final_evaluation_s"):
        assert phases[key] > 0, key
    assert all(v > 0 for v in phases["setup"].values()), phases["setup"]
    assert phases["wall_s"] == pytest.approx(metrics["wall_s"], abs=1.0)
    assert [r["round"] for r in phases["rounds"]] == [0, 1, 2] and phases["rounds"][2]["validation_only"]
    for rnd in phases["rounds"][:2]:
        assert rnd["slowest"] in ("c2a", "crisis") and rnd["aggregation_s"] >= 0
        for site, p in rnd["sites"].items():
            assert p["validate"] > 0 and p["train"] > 0 and p["label"] == 0.0, (site, p)  # no active learning
            assert p["download"] > -0.05 and p["upload"] > -0.05 and p["idle"] > -0.05, (site, p)
    # without active learning a site's training images stay the same: its dataset is built once
    assert [[r["sites"][s]["data"] > 0 for s in ("c2a", "crisis")] for r in phases["rounds"][:2]] == \
        [[True, True], [False, False]]
    assert "time (wall " in result.stdout and "  round 1: " in result.stdout
    assert _processes_under(run) == []


def assert_a_failing_report_save_keeps_the_model(run: Path, split: Path, rounds: int, sites: list):
    """The run's report made again, its save failing partway (the disk refuses the rest of
    model.keras): the run's model.keras stays as it was, loadable."""
    from src.federated.checkpoint import load_keras_file
    from tests.file_faults import is_file_too_large, writes_fail_beyond
    from workspace.simulate.events import FederationEvents
    from workspace.simulate.final_report import final_report

    previous = (run / "model.keras").read_bytes()
    events = FederationEvents(run / "workspace" / "logs" / "federation_events.jsonl", rounds, sites)
    with writes_fail_beyond(len(previous) // 2), pytest.raises(OSError) as failed:
        final_report(run, run / "workspace", split, events, 0, time.monotonic())
    assert is_file_too_large(failed.value)
    assert (run / "model.keras").read_bytes() == previous, "overwritten in place: torn"
    assert load_keras_file(run / "model.keras").weights and not list(run.glob(".model.partial-*"))


@pytest.mark.slow  # (in `make test-faults`: 2 min that would push `make test` past 15 min here)
def test_simulate_with_active_learning_over_real_fx_processes(real_format_sources, real_format_split, tmp_path):
    """`make simulate AL=hybrid` on a split with unlabeled pools: each `fx collaborator`
    labels with the global model it received, the one with both tasks and the
    class-only one alike, up to the final fraction; what it did reaches the report. (And
    the report's model.keras survives a later save that fails partway.)"""
    split = _split_by_source(real_format_sources, "real-pool", seed_fraction=0.2)
    cmd = [sys.executable, "-m", "workspace.simulate", "--rounds", "2", "--split", str(split),
           "--runs-dir", str(tmp_path), "--set", "model.input_size=64", "--set", "model.width=0.125",
           "--backbone-init", "scratch", "--active-learning", "hybrid", "--final-fraction", "0.5"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = (tmp_path / "latest").resolve()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["active_learning"]["strategy"] == "hybrid"
    for site in ("c2a", "crisis"):
        rows = [line.split("\t") for line in (split / site / "manifest.tsv").read_text().splitlines()[1:]]
        train = sum(r[1] in ("train", "pool") for r in rows)
        first, second = (metrics["rounds"][r]["sites"][site] for r in (0, 1))
        assert first["al_labeled"] == sum(r[1] == "train" for r in rows) < train / 2, (site, first)
        # one query (round 1) up to half of the site's training images, all revealed
        assert second["al_labeled"] == math.ceil(train / 2) == second["samples_backbone"], (site, second)
        assert second["al_labeled"] + second["al_pool"] == train and second["al_pending"] == 0
        state = json.loads((run / "workspace" / "local_state" / f"al_{site}.json").read_text())
        assert len(state["seed"]) + len(state["acquired"]) == second["al_labeled"]
    assert "labeled at the end (hybrid, simulated oracle): c2a " in result.stdout
    assert_a_failing_report_save_keeps_the_model(run, split, 2, ["c2a", "crisis"])
    # a split without pools (every training image labeled) is refused before any fx starts
    bad = subprocess.run(cmd[:6] + [str(real_format_split)] + cmd[7:],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "no site has unlabeled `pool` rows" in bad.stderr, bad.stderr[-2000:]


def test_make_simulate_labels_with_hybrid_by_default_on_the_built_in_data():
    """`make simulate` runs the active-learning step (hybrid, 10 % -> 30 % labeled) on the
    built-in data; `AL=none` trains on every label; on a split of one's own (SPLIT=) the
    split's labels are used unless AL= names a strategy (such a split needs pool rows)."""
    def command(*args):
        out = subprocess.run(["make", "-n", "simulate", *args], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
        return " ".join(next(line for line in out.replace("\\\n", " ").splitlines()
                             if "workspace.simulate" in line).split())

    assert command().endswith("--active-learning hybrid")
    assert "--active-learning" not in command("AL=none")
    assert command("AL=random").endswith("--active-learning random")
    assert "--active-learning" not in command("SPLIT=data_splits/real")
    assert command("SPLIT=data_splits/real", "AL=hybrid").endswith("--active-learning hybrid")


@pytest.mark.parametrize("args, message", [
    (["--active-learning", "certainty"], "not a strategy; known: random, entropy"),
    (["--active-learning", "hybrid", "--seed-fraction", "0.4", "--final-fraction", "0.3"], "0 < seed < final <= 1"),
])
def test_simulate_refuses_a_bad_active_learning_request(args, message, capsys):
    from workspace.simulate.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_simulate_options_become_typed_plan_values_applied_once():
    """Each option is one typed plan value by plan path (no KEY=VALUE text on the way to
    the plan file); --set keys reach the settings overrides the data loader and the task
    runner share; rounds set both places the plan uses them; a misspelt path is named."""
    from workspace.simulate.cli import parse, plan_values
    from workspace.simulate.plan_edits import edit_plan

    args, settings, plan_set = parse(["--rounds", "2", "--backbone-mode", "frozen", "--stock-polling",
                                      "--set", "model.input_size=96", "--set", "model.depth=[1, 1, 1, 1, 1]",
                                      "--plan-set", "aggregator.settings.backbone_weighting=samples",
                                      "--plan-set", "task_runner.settings.active_learning.epoch_images=labeled",
                                      "--active-learning", "hybrid"])
    assert settings == {"model.input_size": 96, "model.depth": [1, 1, 1, 1, 1]}
    values = plan_values(args, plan_set, rounds=2, port=50123)
    assert values["task_runner.settings.backbone_mode"] == "frozen"
    assert values["aggregator.settings.long_poll_s"] == 0 and values["network.settings.agg_port"] == 50123
    repo_plan = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    plan = edit_plan(repo_plan, values, overrides={"seed": 0, **settings})
    runner, loader = plan["task_runner"]["settings"], plan["data_loader"]["settings"]
    assert runner["rounds"] == plan["aggregator"]["settings"]["rounds_to_train"] == 2
    assert plan["aggregator"]["settings"]["backbone_weighting"] == "samples"
    assert runner["active_learning"] == {"strategy": "hybrid", "final_fraction": 0.3, "query_every": 1,
                                         "oracle": "simulated", "seed": 0, "epoch_images": "labeled"}
    assert runner["overrides"] is loader["overrides"]  # one mapping, as the plan's YAML anchor makes it
    assert runner["overrides"] == {**repo_plan["task_runner"]["settings"]["overrides"], "seed": 0, **settings}
    assert repo_plan["task_runner"]["settings"]["overrides"].get("model.input_size") is None  # (a copy is edited)
    # the run's plan file reads back the same, typed
    assert yaml.safe_load(yaml.safe_dump(plan)) == plan
    with pytest.raises(ValueError, match="no section 'agregator'"):
        edit_plan(repo_plan, {"agregator.settings.backbone_weighting": "samples"})


def test_simulate_refuses_a_setting_that_is_not_key_value(capsys):
    from workspace.simulate.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--set", "model.input_size"])
    assert exit_info.value.code == 2 and "is not key=value" in capsys.readouterr().err


def _processes_under(folder: Path) -> list[int]:
    """PIDs whose working directory lies in folder (the fx processes of a run)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(str(folder)):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_fx_batch_stops_at_the_first_failing_fx_command_with_its_exit_code(tmp_path):
    """simulate's setup runs its fx command lines through fx's own entry point in one
    process: a failing command stops the batch, named, and later commands do not run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(REPO / "workspace" / "simulate" / "fx_batch.py"),
                             "collaborator certify -n nosuch -s", "workspace certify"],
                            cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "command 1/2 `fx collaborator certify -n nosuch -s` failed (exit 1)" in result.stdout
    assert "$ fx workspace certify" not in result.stdout and not (tmp_path / "cert").exists()
