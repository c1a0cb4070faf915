"""A site's label step round by round, in the code path its collaborator runs: the task
runner the plan names, built from the plan as OpenFL's collaborator builds it, its tasks
called in the plan's order (tiny model, real scoring, labeling and training).

- the pool is scored with the global model the site received for the round, not with
  the site's own weights from its last training;
- with `query_every: 2` the site labels in rounds 2 and 4 and in no other;
- a site killed in the middle of writing its pool state (tests/file_faults.py) leaves
  the previous or the new state, whole; restarted, it redoes the round without losing
  an image it had asked for or spending a second budget, and the next round goes on.
"""
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from openfl.federated import Plan

from src.active_learning.pool import LabelPool
from src.active_learning.site_labeling import SiteLabeling
from src.data.manifests import read_manifest, write_site
from src.federated.checkpoint import assign_weights
from src.model import build_model
from src.settings import load_config
from tests.tiny_federation import REPO, write_tiny_plan, write_tiny_site_split

CFG = load_config()
VICTIM, DISASTER = CFG["classes"]["victim"], CFG["classes"]["disaster"]
SITE, BUDGET, SEED_IMAGES = "site1", 3, 4
STATE = Path("local_state") / f"al_{SITE}.json"  # the plan's default, in the workspace


@pytest.fixture(scope="module")
def pool_split(tmp_path_factory) -> Path:
    """A split of one site with both labels: SEED_IMAGES labeled training images, the rest
    of its training images its unlabeled pool."""
    root = tmp_path_factory.mktemp("al_rounds")
    write_tiny_site_split(root, num_images=40, num_sites=1, labels=("both",), seed=8, test_fraction=0.1,
                          val_fraction=0.1)
    folder = root / "splits" / SITE
    rows = read_manifest(folder / "manifest.tsv")
    seed = [key for key, split, _, _ in rows if split == "train"][:SEED_IMAGES]
    write_site(folder, SITE, yaml.safe_load((folder / "site.yaml").read_text())["data_root"],
               [(k, "pool" if s == "train" and k not in seed else s, int(b), int(c)) for k, s, b, c in rows])
    return root / "splits"


def write_site_plan(workspace: Path, sites_dir: Path, rounds: int, query_every: int) -> None:
    """The repository's plan for SITE alone, labeling with hybrid and the simulated oracle."""
    write_tiny_plan(workspace, sites_dir, rounds=rounds, sites=(SITE,), runner={"active_learning": {
        "strategy": "hybrid", "budget": BUDGET, "query_every": query_every, "oracle": "simulated", "seed": 0}})


def site_runner():
    """SITE's task runner as its collaborator builds it from the plan (the current folder is
    the workspace), and the plan's tasks."""
    plan = Plan.parse(plan_config_path=Path("plan/plan.yaml"), cols_config_path=Path("plan/cols.yaml"),
                      data_config_path=Path("plan/data.yaml"))
    runner = plan.get_task_runner(plan.get_data_loader(SITE))
    runner.set_optimizer_treatment(plan.config["collaborator"]["settings"]["opt_treatment"])
    return runner, plan.config["tasks"]


def run_round(runner, tasks: dict, round_num: int, received: dict) -> dict:
    """One round at the site as its collaborator runs it with the global model `received`:
    the plan's validation task, then its train task; the metrics the site uploads."""
    runner.validate_task(SITE, round_num, received, **tasks["aggregated_model_validation"]["kwargs"])
    upload, _ = runner.train_task(SITE, round_num, received, **tasks["train"]["kwargs"])
    return {key.tensor_name: float(value) for key, value in upload.items() if "metric" in key.tags}


def requested(state: dict, round_num: int) -> list:
    return [key for h in state["history"] if h["event"] == "requested" and h["round"] == round_num
            for key in h["keys"]]


# ---- which model scores the pool, and when ---------------------------------------------------
@pytest.fixture(scope="module")
def five_rounds(pool_split, tmp_path_factory):
    """Rounds 0-4 at a site querying every 2 rounds. The global model it receives in a round
    is the mean of its own model and another site's (a model of another seed), as an
    aggregator would send it; the site's own weights before the round are kept beside it."""
    workspace = tmp_path_factory.mktemp("every2")
    write_site_plan(workspace, pool_split, rounds=5, query_every=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        runner, tasks = site_runner()
        keras.utils.set_random_seed(1)
        other = {v.path: v.numpy() for v in build_model(runner.model_config).weights}
        rounds = []
        for r in range(5):
            own = runner.get_tensor_dict()
            received = own if r == 0 else {name: (own[name] + other[name]) / 2 for name in own}
            before = STATE.read_bytes()
            rounds.append({"own": own, "received": received, "state_before": before,
                           "uploaded": run_round(runner, tasks, r, received),
                           "traces": {"validate": runner.predictor.tracing_count(),
                                      "score pool": runner.labeling.scorer.tracing_count(),
                                      "train step": runner.trainer._step.experimental_get_tracing_count()}})
        yield runner, rounds, json.loads(STATE.read_text())


def test_the_pool_is_scored_with_the_global_model_the_site_received(five_rounds, tmp_path):
    """The site's choice and the uncertainty it reported, recomputed from the pool state
    before each query round with the received global model, match; from the site's own
    weights they differ (so the check tells the two apart)."""
    runner, rounds, state = five_rounds
    scoring_model = build_model(runner.model_config)
    for r in (2, 4):
        recomputed = {}
        for weights in ("received", "own"):
            assign_weights(scoring_model, rounds[r][weights])
            copy = tmp_path / f"{weights}{r}.json"
            copy.write_bytes(rounds[r]["state_before"])
            labeling = SiteLabeling(replace(runner.labeling.settings, state=str(copy)), runner.data_loader.site,
                                    runner.data_loader.site_folder, scoring_model, runner.model_config, VICTIM,
                                    DISASTER, rounds=5)
            metrics = labeling.start_round(r)
            recomputed[weights] = (requested(json.loads(copy.read_text()), r), metrics["mean_uncertainty"])
        chosen, reported = requested(state, r), rounds[r]["uploaded"]["al_mean_uncertainty"]
        assert len(chosen) == BUDGET
        assert recomputed["received"][0] == chosen, r
        assert recomputed["received"][1] == pytest.approx(reported, rel=1e-5), r
        assert recomputed["own"][1] != pytest.approx(reported, rel=1e-3), r


def test_compiled_passes_are_traced_once_and_reused_for_every_new_global_model(five_rounds):
    """Validation, pool scoring (the pool and the labeled set shrink and grow, so batch
    sizes change) and the train step are traced in the first round that runs them and
    never again: a new round's global model only changes weights."""
    _, rounds, _ = five_rounds
    traces = [r["traces"] for r in rounds]
    assert traces[0]["validate"] == 1 and traces[0]["score pool"] == 0  # no query in round 0
    assert traces[2]["score pool"] == 2  # the pool pass and the labeled images' embeddings
    assert traces[4]["validate"] == 1 and traces[4]["score pool"] == 2, traces
    assert traces[4]["train step"] == traces[1]["train step"], traces


def test_the_training_dataset_is_built_once_and_labels_that_arrive_need_no_new_build(five_rounds):
    """The site reports the seconds it spent building its training dataset: some in round 0
    (the one build), none later, not even in the query rounds 2 and 4 whose new labels the
    same pipeline reads (src/data/pipeline.py:RecordStream)."""
    _, rounds, _ = five_rounds
    seconds = [r["uploaded"]["seconds_data"] for r in rounds]
    assert seconds[0] > 0 and seconds[1:] == [0, 0, 0, 0], seconds
    for r in rounds:
        assert r["uploaded"]["seconds_train"] > 0 and r["uploaded"]["seconds_label"] >= 0
    assert rounds[2]["uploaded"]["seconds_label"] > 0 and rounds[1]["uploaded"]["seconds_label"] < \
        rounds[2]["uploaded"]["seconds_label"]


def test_with_query_every_2_the_site_labels_in_rounds_2_and_4_only(five_rounds):
    _, rounds, state = five_rounds
    assert [(h["event"], h["round"]) for h in state["history"]] == [
        ("requested", 2), ("labeled", 2), ("requested", 4), ("labeled", 4)]
    labeled = [rounds[r]["uploaded"]["al_labeled"] for r in range(5)]
    assert labeled == [SEED_IMAGES, SEED_IMAGES, SEED_IMAGES + BUDGET, SEED_IMAGES + BUDGET, SEED_IMAGES + 2 * BUDGET]
    assert [r for r in range(5) if "al_selected" in rounds[r]["uploaded"]] == [2, 4]
    # each round trains on exactly the images labeled by then
    assert [rounds[r]["uploaded"]["samples_backbone"] for r in range(5)] == labeled
    assert all(np.isfinite(rounds[r]["uploaded"]["loss"]) for r in range(5))


# ---- killed mid-write ---------------------------------------------------------------------------
CRASHING_SITE = """
import sys
from tests.file_faults import die_in_the_middle_of_writing
from tests.test_al_site_rounds import STATE, run_round, site_runner
runner, tasks = site_runner()
die_in_the_middle_of_writing(f"*{STATE.stem}*", 64, nth=int(sys.argv[2]))  # the state or its temporary file
run_round(runner, tasks, int(sys.argv[1]), runner.get_tensor_dict())
"""


def crash_mid_write(round_num: int, nth_write: int) -> None:
    """SITE's round `round_num` in a process of its own (the current folder is the workspace),
    SIGKILLed 64 bytes into the nth write of its pool state in that round."""
    result = subprocess.run([sys.executable, "-c", CRASHING_SITE, str(round_num), str(nth_write)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    for partial in STATE.parent.glob(f".{STATE.stem}.partial-*"):  # what the killed write left beside the state
        assert partial.stat().st_size == 64
        partial.unlink()


@pytest.mark.faults
def test_a_site_killed_while_writing_its_pool_state_resumes_from_a_whole_state(pool_split, tmp_path, monkeypatch):
    write_site_plan(tmp_path, pool_split, rounds=4, query_every=1)
    monkeypatch.chdir(tmp_path)
    LabelPool.from_site(pool_split / SITE, STATE, VICTIM, DISASTER)  # the state a site starts with
    start = STATE.read_bytes()

    # killed while writing its request (the label step's first write, round 1): the state is the previous one
    crash_mid_write(1, nth_write=1)
    assert STATE.read_bytes() == start, "the state file was written in place and is torn"
    runner, tasks = site_runner()  # restarted, it redoes round 1 and labels its budget
    run_round(runner, tasks, 1, runner.get_tensor_dict())
    labeled_1 = json.loads(STATE.read_text())
    assert len(labeled_1["acquired"]) == BUDGET and labeled_1["pending"] == {}

    # killed while writing the answers (its second write, round 2): the state is its request, whole
    crash_mid_write(2, nth_write=2)
    asked = json.loads(STATE.read_text())
    assert len(asked["pending"]) == BUDGET and asked["acquired"] == labeled_1["acquired"]
    # restarted, it takes the answers to exactly that request and asks for no second batch
    runner, tasks = site_runner()
    uploaded = run_round(runner, tasks, 2, runner.get_tensor_dict())
    labeled_2 = json.loads(STATE.read_text())
    assert labeled_2["pending"] == {} and set(labeled_2["acquired"]) == set(labeled_1["acquired"]) | set(asked["pending"])
    assert uploaded["al_labeled"] == uploaded["samples_backbone"] == SEED_IMAGES + 2 * BUDGET
    # round 2 redone once more (a kill after its label step): nothing is asked again
    run_round(runner, tasks, 2, runner.get_tensor_dict())
    assert json.loads(STATE.read_text()) == labeled_2
    # and the next round labels as planned
    uploaded = run_round(runner, tasks, 3, runner.get_tensor_dict())
    assert uploaded["al_labeled"] == SEED_IMAGES + 3 * BUDGET
    assert [h["round"] for h in json.loads(STATE.read_text())["history"] if h["event"] == "requested"] == [1, 2, 3]
