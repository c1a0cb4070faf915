"""The coordinator's live view (src/federated/live_view.py): the TensorBoard event files the
aggregator writes while a federation runs, read back with TensorBoard's own event reader.

- a tiny real federation in process (two sites labeling with active learning, updates
  clipped and noised, one site's update broken in round 1): every round and every site is
  in the event files, and every number is the event log's;
- a round with a straggler: the site's straggler curve and the round's count;
- a live view that cannot write logs it once and raises nothing;
- `tensorboard: false` in the plan writes no event files.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from src.federated.live_view import LiveView
from src.federated.task_runner import MultiTaskRunner
from src.settings import load_config, parse_assignments
from tests.tiny_federation import write_tiny_plan

SITES, ROUNDS, BROKEN_SITE, BROKEN_ROUND = ("site1", "site2"), 2, "site2", 1
CLIP_NORM = 1e-3  # below any real update: every group of every site is clipped
SECTIONS = {"train": "train", "aggregated_model_validation": "validation"}


def read_scalars(logdir: Path) -> dict:
    """{run: {tag: {step: value}}} of every event file under logdir, by TensorBoard's reader."""
    runs = {}
    for run in sorted(p for p in logdir.iterdir() if p.is_dir()):
        reader = EventAccumulator(str(run), size_guidance={"tensors": 0})
        reader.Reload()
        runs[run.name] = {tag: {t.step: float(tensor_util.make_ndarray(t.tensor_proto)) for t in reader.Tensors(tag)}
                          for tag in reader.Tags()["tensors"]}
    return runs


def expected_scalars(events: list[dict]) -> dict:
    """What the docs/monitoring.md tag table promises for an event log: {run: {tag: {step: value}}}."""
    out = {}

    def put(run, tag, step, value):
        if math.isfinite(value):
            out.setdefault(run, {}).setdefault(tag, {})[step] = value

    for e in events:
        kind, rnd = e["event"], e.get("round")
        if kind == "metric":
            tag = (f"active_learning/{e['name'][3:]}" if e["name"].startswith("al_")
                   else f"{SECTIONS[e['task']]}/{e['name']}")
            put(e["site"], tag, rnd, e["value"])
        elif kind == "tasks_sent":
            put(e["site"], "timing/idle_s", rnd, e["idle_s"])
        elif kind == "upload" and e["task"] == "train":
            put(e["site"], "traffic/upload_MB", rnd, e["bytes"] / 1e6)
        elif kind == "download":
            put(e["site"], "traffic/download_MB", rnd, e["bytes"] / 1e6)
        elif kind == "clipped":
            put(e["site"], f"updates/clip_scale_{e['group']}", rnd, e["scale"])
        elif kind == "privacy":
            put("aggregator", "privacy/epsilon", rnd, e["epsilon"])
        elif kind == "round_end":
            rejected = [r["site"] for r in events if r["event"] == "rejected" and r["round"] == rnd]
            for site in SITES:
                put(site, "updates/rejected", rnd, rejected.count(site))
                put(site, "updates/straggler", rnd, int(site in e["stragglers"]))
            put("aggregator", "round/rejected", rnd, len(rejected))
            put("aggregator", "round/stragglers", rnd, len(e["stragglers"]))
            start = next(s["time"] for s in events if s["event"] == "round_start" and s["round"] == rnd)
            put("aggregator", "round/wall_s", rnd, e["time"] - start)
    return out


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Two sites, half of their training images labeled, hybrid active learning with the
    simulated oracle; clip_updates and differential privacy on; site2's round-1 update broken
    (NaN). Returns the workspace and its event log."""
    from src.data.splits import build_site_splits
    from src.data.synthetic import generate_dataset
    from src.federated.in_process import run_federation

    root = tmp_path_factory.mktemp("live_view")
    generate_dataset(root / "data", num_images=40, seed=2, min_size=96, max_size=128, workers=1)
    cfg = load_config(overrides=parse_assignments([f"data.root={root / 'data'}", "data.test_fraction=0.2",
                                                        "data.val_fraction=0.25"]))
    build_site_splits(cfg, root / "splits", num_sites=len(SITES), alpha=100.0, seed=0, labels=["both"],
                      seed_fraction=0.5)
    workspace = root / "ws"
    write_tiny_plan(workspace, root / "splits", rounds=ROUNDS, sites=SITES,
                    runner={"active_learning": {"strategy": "hybrid", "budget": 2, "oracle": "simulated", "seed": 0}},
                    aggregator={"clip_updates": CLIP_NORM,
                                "differential_privacy": {"noise_multiplier": 0.5, "clip_norm": 0.5}})
    real_train = MultiTaskRunner.train_task

    def train_task(self, col_name, round_num, *args, **kwargs):
        upload, local = real_train(self, col_name, round_num, *args, **kwargs)
        if col_name == BROKEN_SITE and round_num == BROKEN_ROUND:
            key = next(k for k in upload if "trained" in k.tags)
            upload[key] = np.full_like(upload[key], np.nan)
        return upload, local

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MultiTaskRunner, "train_task", train_task)
        mp.chdir(workspace)
        run_federation(workspace)
    events = [json.loads(x) for x in (workspace / "logs" / "events.jsonl").read_text().splitlines()]
    return workspace, events


def test_every_round_and_site_of_a_federation_is_in_its_event_files_with_the_event_logs_values(federation):
    workspace, events = federation
    written = read_scalars(workspace / "logs" / "tensorboard")
    expected = expected_scalars(events)
    assert sorted(written) == sorted(expected) == ["aggregator", *SITES]
    for run, tags in expected.items():
        assert sorted(written[run]) == sorted(tags), run
        for tag, points in tags.items():
            assert written[run][tag] == pytest.approx(points, rel=1e-6, abs=1e-9), (run, tag)

    # the round the plan validates only (ROUNDS) is there too; every site trained and labeled in
    # each training round, and its labeled count grew while its pool shrank
    every_round, training_rounds = set(range(ROUNDS + 1)), set(range(ROUNDS))
    for site in SITES:
        curves = written[site]
        for tag in ("validation/accuracy", "validation/score", "timing/idle_s", "traffic/download_MB",
                    "updates/rejected", "updates/straggler"):
            assert set(curves[tag]) == every_round, (site, tag)
        for tag in ("train/loss", "active_learning/labeled", "active_learning/pool", "traffic/upload_MB"):
            assert set(curves[tag]) == training_rounds, (site, tag)
        labeled, pool = curves["active_learning/labeled"], curves["active_learning/pool"]
        assert labeled[1] > labeled[0] and pool[1] < pool[0]
        # every update the rounds took was clipped; the broken one was not taken
        taken = training_rounds - ({BROKEN_ROUND} if site == BROKEN_SITE else set())
        assert set(curves["updates/clip_scale_backbone"]) == taken
        assert all(0 < scale < 1 for scale in curves["updates/clip_scale_backbone"].values())
    assert written[BROKEN_SITE]["updates/rejected"] == {0: 0, 1: 1, 2: 0}
    assert written["aggregator"]["round/rejected"] == {0: 0, 1: 1, 2: 0}
    assert set(written["aggregator"]["privacy/epsilon"]) == training_rounds
    assert written["aggregator"]["privacy/epsilon"][1] > written["aggregator"]["privacy/epsilon"][0] > 0
    assert set(written["aggregator"]["validation/score"]) == every_round


def test_a_straggler_is_marked_at_its_site_and_counted_for_the_round(tmp_path):
    """The events of a round a straggler policy cut off, as the aggregator writes them."""
    view = LiveView(str(tmp_path), ["site1", "site2"])
    for event in ({"event": "round_start", "round": 4, "time": 100.0},
                  {"event": "members", "round": 4, "time": 100.0, "sites": ["site1", "site2", "site3"],
                   "added": ["site3"], "removed": []},
                  {"event": "tasks_sent", "round": 4, "site": "site1", "tasks": ["train"], "idle_s": 0.5,
                   "time": 101.0},
                  {"event": "round_end", "round": 4, "stragglers": ["site2"], "time": 190.0}):
        view.record(event)
    written = read_scalars(tmp_path)  # flushed by the round's end, with the writers still open
    assert {run: curves["updates/straggler"] for run, curves in written.items() if run != "aggregator"} == {
        "site1": {4: 0.0}, "site2": {4: 1.0}, "site3": {4: 0.0}}
    assert written["aggregator"]["round/stragglers"] == {4: 1.0}
    assert written["aggregator"]["round/wall_s"] == {4: 90.0}
    assert written["site1"]["timing/idle_s"] == {4: 0.5}


def test_a_live_view_that_cannot_write_turns_itself_off_and_raises_nothing(tmp_path, caplog):
    """The dashboard never stops a federation: its folder's place is taken by a file here."""
    blocked = tmp_path / "tensorboard"
    blocked.write_text("not a folder")
    view = LiveView(str(blocked), ["site1"])
    for rnd in (0, 1):
        view.record({"event": "metric", "round": rnd, "site": "site1", "task": "train", "name": "loss",
                     "value": 1.0, "time": 1.0})
        view.record({"event": "round_end", "round": rnd, "stragglers": [], "time": 2.0})
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"TensorBoard live view in {blocked} stopped; the event log goes on"]


def test_the_plan_can_turn_the_live_view_off(federation, tmp_path, monkeypatch):
    """`tensorboard: false`: the aggregator writes its event log and no event file."""
    from openfl.federated import Plan

    workspace, _ = federation
    plan = yaml.safe_load((workspace / "plan" / "plan.yaml").read_text())
    (tmp_path / "plan").mkdir()
    for name in ("cols.yaml", "data.yaml"):
        (tmp_path / "plan" / name).write_text((workspace / "plan" / name).read_text())
    (tmp_path / "save").mkdir()
    (tmp_path / "save" / "init.pbuf").write_bytes((workspace / "save" / "init.pbuf").read_bytes())
    monkeypatch.chdir(tmp_path)
    for setting in (False, True):
        plan["aggregator"]["settings"].update(tensorboard=setting, event_log=f"logs{setting}/events.jsonl")
        (tmp_path / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan))
        aggregator = Plan.parse(plan_config_path=Path("plan/plan.yaml"), cols_config_path=Path("plan/cols.yaml"),
                                data_config_path=Path("plan/data.yaml")).get_aggregator()
        aggregator._event("metric", round=0, site="site1", task="train", name="loss", value=1.5)
        aggregator._event("round_end", round=0, stragglers=[])
        assert [json.loads(x)["event"] for x in Path(f"logs{setting}/events.jsonl").read_text().splitlines()][-2:] \
            == ["metric", "round_end"]
        assert (tmp_path / f"logs{setting}" / "tensorboard").exists() == setting
    assert read_scalars(tmp_path / "logsTrue" / "tensorboard")["site1"]["train/loss"] == {0: 1.5}
