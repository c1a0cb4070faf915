"""`make paired-experiment` and `make seg-experiment` end to end at a tiny scale: every arm of one
seed for real (in-process OpenFL federations with the repository's plan, the centralized
trainer), the report, and a second start that reuses every finished run."""
import json

import pytest
import yaml

from tests.test_al_experiment import TINY_EXPERIMENT
from workspace.paired_experiment.experiment import ARMS, DEFAULT_CONFIG, SEGMENTATION_ARMS, load_experiment
from workspace.simulate.fx_workspace import REPO
from workspace.paired_experiment.runs import run_experiment


@pytest.mark.slow  # ~135 s under the CPU lock: five real runs, TensorFlow graphs traced for each
def test_every_arm_of_a_seed_runs_and_is_paired_then_kept(tmp_path, caplog):
    spec = {**yaml.safe_load(DEFAULT_CONFIG.read_text()),
            **{k: TINY_EXPERIMENT[k] for k in ("config", "plan", "seed_fraction", "final_fraction")},
            # two sites (both labels, class labels only): a tiny val split cannot be cut three ways
            "rounds": 2, "alpha": 100.0, "seeds": [0], "sites": 2, "labels": ["both", "class"]}
    spec["config"] = {**spec["config"], "data.num_images": 60, "data.root": str(tmp_path / "data")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(spec))
    exp = load_experiment(tmp_path / "exp.yaml")
    out = tmp_path / "paired"
    report = run_experiment(exp, out)
    runs = {r["arm"]: r for r in report["runs"]}
    assert set(runs) == set(ARMS)
    for name, run in runs.items():
        assert all(0 <= run["final"][k] <= 1 for k in ("map50", "map50_95", "accuracy")), name
    # active learning labels part of the training images, the other arms all of them
    assert runs["fed_hybrid"]["labeled_fraction"] < 1 and runs["fed_random"]["labeled_fraction"] < 1
    assert runs["fed_all_labels"]["labeled_fraction"] == 1 == runs["central_all_labels"]["labeled_fraction"]
    assert runs["central_all_labels"]["train_images"] == runs["fed_all_labels"]["train_images"]
    assert runs["central_all_labels"]["epochs"] == 2  # 2 rounds x 1 local epoch
    plan = yaml.safe_load((out / "workspaces" / "fed_hybrid_full_exchange-seed0" / "plan" / "plan.yaml").read_text())
    assert plan["task_runner"]["settings"]["exchange"] == "full"
    # one seed: every comparison paired on it, with its difference and no interval
    for c in report["comparisons"].values():
        assert c["seeds"] == [0] and c["metrics"]["map50"]["low"] is None
    first = runs["fed_hybrid"]["final"]["accuracy"] - runs["fed_random"]["final"]["accuracy"]
    assert report["comparisons"]["hybrid_vs_random"]["metrics"]["accuracy"]["mean"] == first
    assert json.loads((out / "report.json").read_text())["wall_per_seed"][0]["total_s"] > 0
    assert "## federated_vs_centralized: fed_all_labels - central_all_labels" in (out / "report.md").read_text()
    # started again with the same settings, every finished run is kept, not re-run
    caplog.clear()
    with caplog.at_level("INFO", logger="paired_experiment"):
        again = run_experiment(exp, out)
    assert sum("kept from an earlier run" in m for m in caplog.messages) == len(ARMS)
    assert again["comparisons"] == report["comparisons"]


@pytest.mark.slow  # ~2 min under the CPU lock: five real runs with and without the segmentation head
def test_every_segmentation_arm_trains_its_tasks_and_is_scored_on_them(tmp_path):
    spec = {**yaml.safe_load((REPO / "configs" / "segmentation_experiment.yaml").read_text()),
            **{k: TINY_EXPERIMENT[k] for k in ("plan", "seed_fraction", "final_fraction")},
            "extends": str(REPO / "configs" / "paired_experiment.yaml"),
            "rounds": 2, "alpha": 100.0, "seeds": [0], "sites": 2, "labels": ["both", "masks"]}
    spec["config"] = {**TINY_EXPERIMENT["config"], "model.segmentation": True, "data.num_images": 60,
                      "data.root": str(tmp_path / "data")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(spec))
    exp = load_experiment(tmp_path / "exp.yaml")
    report = run_experiment(exp, tmp_path / "seg")
    runs = {r["arm"]: r for r in report["runs"]}
    assert set(runs) == set(SEGMENTATION_ARMS)
    # mIoU exactly where the model segments, detection and accuracy where it has those labels
    assert {name for name, r in runs.items() if "miou" in r["final"]} == {"fed_3task", "central_3task",
                                                                           "central_masks"}
    assert all(0 <= r["final"]["miou"] <= 1 for r in runs.values() if "miou" in r["final"])
    # the 2-task arms hold the box site's images only; the masks-only arm the mask site's
    assert runs["central_2task"]["train_images"] < runs["central_3task"]["train_images"]
    assert runs["central_masks"]["train_images"] + runs["central_2task"]["train_images"] == runs[
        "central_3task"]["train_images"]
    plan = yaml.safe_load((tmp_path / "seg" / "arms" / "fed_2task" / "workspaces" / "full_labels-seed0" / "plan"
                           / "cols.yaml").read_text())
    assert plan["collaborators"] == ["site1"]
    c = report["comparisons"]
    assert c["multi_vs_single_task_masks"]["seeds"] == [0] and list(c["multi_vs_single_task_masks"]["metrics"]) == [
        "miou"]
    assert c["federated_vs_centralized"]["metrics"]["miou"]["n"] == 1
