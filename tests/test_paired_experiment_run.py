"""`make paired-experiment` end to end at a tiny scale: every arm of one seed for real (in-process
OpenFL federations with the repository's plan, the centralized trainer), the report, and a
second start that reuses every finished run."""
import json

import pytest
import yaml

from tests.test_al_experiment import TINY_EXPERIMENT
from workspace.paired_experiment.experiment import ARMS, DEFAULT_CONFIG, load_experiment
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
