"""`make al-experiment` at a tiny scale: real in-process federations (OpenFL's own
classes, the repository's plan, a tiny model), one per strategy and one with every
label, evaluated on the test split after every round; the report, table and plot.
Inside them, active learning in a federation: the site queries its pool with the
global model it received, trains only on what is labeled, keeps its labeled set in
its local state and reports the step."""
import json

import pytest
import yaml

from src.active_learning.pool import LabelPool
from tests.test_al_pool import DISASTER, VICTIM
from workspace.al_experiment.experiment import FULL, REPO, base_config, load_experiment, run_key, strategy_settings
from workspace.al_experiment.report import summarize
from workspace.al_experiment.runs import experiment_plan, op_determinism, run_experiment
from workspace.simulate.fx_workspace import EVENT_LOG

TINY_EXPERIMENT = {
    "config": {"data.num_images": 40, "data.min_size": 96, "data.max_size": 128,
               "data.test_fraction": 0.2, "data.val_fraction": 0.2,
               "model.input_size": 64, "model.width": 0.125, "model.depth": [1, 1, 1, 1, 1],
               "model.cls_head_blocks": 1, "pipeline.batch_size": 8},
    # the shipped backbone fits the default model only; every site one pass at batch 8 an epoch
    "plan": {"task_runner.settings.backbone_init": "scratch", "tasks.train.kwargs.epochs": 1,
             "data_loader.settings.min_batches_per_epoch": None, "data_loader.settings.repeat_to_batches": None},
    "sites": 1, "labels": ["both"], "alpha": 100.0, "rounds": 3,
    "seed_fraction": 0.25, "final_fraction": 0.5, "query_every": 1,
    "strategies": ["hybrid"], "seeds": [0],  # (several strategies and seeds: the summary test)
}


@pytest.mark.slow
def test_experiment_runs_each_strategy_at_the_same_budget_and_reports(tmp_path, caplog):
    spec = {**TINY_EXPERIMENT, "config": {**TINY_EXPERIMENT["config"], "data.root": str(tmp_path / "data")}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(spec))
    exp = load_experiment(tmp_path / "exp.yaml")
    out = tmp_path / "al"
    with caplog.at_level("INFO", logger="src.federated.task_runner"):
        report = run_experiment(exp, out)
    train = report["runs"][0]["train_images"]  # of 40 images; the rest test and val
    # every run trains as many images per round as all labels give (the labeled ones
    # repeated: the budget limits labels, not steps): full batches of 8, 3 rounds x 2 runs
    trained = [int(m.split(" on ")[1].split()[0]) for m in caplog.messages if m.startswith("train: loss")]
    assert trained == [train // 8 * 8] * 6, (trained, train)
    full = next(r for r in report["runs"] if r["strategy"] == FULL)
    assert [p["labeled"] for p in full["rounds"]] == [train] * 3 and full["labeled_fraction"] == 1
    seed_count, final_count = round(0.25 * train), -(-train // 2)
    run = next(r for r in report["runs"] if r["strategy"] == "hybrid")
    labeled = [p["labeled"] for p in run["rounds"]]
    # the seed set in round 0, then two queries of the same per-query budget up to 50 %
    assert labeled[0] == seed_count and labeled[1] - labeled[0] == labeled[2] - labeled[1] > 0, labeled
    assert labeled[2] == seed_count + 2 * -(-(final_count - seed_count) // 2)
    assert all(0 <= p[k] <= 1 for p in run["rounds"] for k in ("map50", "accuracy", "macro_f1", "score"))
    s = report["strategies"]["hybrid"]
    assert s["labeled_fraction"] == labeled[2] / train
    assert s["score_mean"] == pytest.approx((run["final"]["map50"] + run["final"]["accuracy"]) / 2)
    # inside the federation: every round the site trained on exactly its labeled
    # images (all with both labels), reported the step, and kept its labeled set
    ws = out / "workspaces" / "hybrid-seed0"
    events = [json.loads(x) for x in (ws / EVENT_LOG).read_text().splitlines()]
    metric = {(e["round"], e["name"]): e["value"] for e in events if e["event"] == "metric" and e["site"] == "site1"}
    assert [metric[(r, "samples_backbone")] for r in range(3)] == [metric[(r, "al_labeled")] for r in range(3)]
    budget = labeled[1] - labeled[0]
    assert metric[(1, "al_selected")] == budget and 0 <= metric[(1, "al_mean_uncertainty")] <= 1
    assert sum(metric[(1, f"al_chosen_class_{i}")] for i in range(len(DISASTER))) == budget
    resumed = LabelPool.from_site(out / "splits" / "seed0-al" / "site1", ws / "local_state" / "al_site1.json",
                                  VICTIM, DISASTER)  # what a restarted site would read
    assert resumed.counts()["labeled"] == labeled[-1]

    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk["full_labels"]) >= {"score_mean", "score_std"}
    assert set(on_disk["strategies"]["hybrid"]) >= {"labeled_fraction", "score_mean", "score_std", "map50_mean",
                                                    "accuracy_mean"}
    assert "| hybrid |" in (out / "report.md").read_text()
    assert s["macro_f1_mean"] == run["final"]["macro_f1"]
    assert (out / "curves.png").stat().st_size > 10_000

    # started again with the same settings, every finished run is kept, not re-run
    caplog.clear()
    with caplog.at_level("INFO", logger="al_experiment"):
        again = run_experiment(exp, out)
    assert sum("kept from an earlier run" in m for m in caplog.messages) == 2
    assert again["strategies"] == report["strategies"]


def test_summary_is_mean_and_sample_spread_over_seeds_and_checks_the_targets():
    def run(strategy, seed, score, labeled=30):
        final = {"round": 1, "labeled": labeled, "map50": score - 0.1, "accuracy": score + 0.1, "score": score}
        return {"strategy": strategy, "seed": seed, "rounds": [final], "final": final,
                "labeled_fraction": labeled / 100}

    runs = ([run(FULL, s, v, 100) for s, v in enumerate((0.60, 0.62, 0.64))]
            + [run("random", s, v) for s, v in enumerate((0.50, 0.52, 0.54))]
            + [run("hybrid", s, v) for s, v in enumerate((0.59, 0.60, 0.61))])
    report = summarize(runs, {"strategies": ["random", "hybrid"]})
    assert report["strategies"]["random"]["macro_f1_mean"] is None  # runs without it (kept from before it)
    assert report["full_labels"]["score_mean"] == pytest.approx(0.62)
    assert report["full_labels"]["score_std"] == pytest.approx(0.02)  # sample standard deviation
    hybrid = report["strategies"]["hybrid"]
    assert hybrid["labeled_fraction"] == pytest.approx(0.3) and hybrid["map50_mean"] == pytest.approx(0.5)
    assert hybrid["relative_to_full"] == pytest.approx(0.6 / 0.62)
    t = report["targets"]["hybrid"]
    assert t["reaches_95pct_of_full"] and t["minus_random"] == pytest.approx(0.08)
    assert t["seed_spread"] == pytest.approx(0.02) and t["beats_random_beyond_spread"]
    # seed by seed: 0.59 - 0.50, 0.60 - 0.52, 0.61 - 0.54
    assert t["per_seed_minus_random"] == pytest.approx([0.09, 0.08, 0.07])
    assert t["per_seed_minus_random_std"] == pytest.approx(0.01)
    # a variant of hybrid is held to the same targets, by its own name
    wide = [run("hybrid_wide", s, v) for s, v in enumerate((0.50, 0.53, 0.56))]
    close = summarize(runs + wide, {"strategies": ["random", "hybrid", "hybrid_wide"],
                                    "variants": {"hybrid_wide": {"strategy": "hybrid"}}})
    assert close["targets"]["hybrid"] == t
    assert not close["targets"]["hybrid_wide"]["beats_random_beyond_spread"]  # +0.01 within a spread of 0.03
    assert not close["targets"]["hybrid_wide"]["reaches_95pct_of_full"]


def test_all_label_runs_are_kept_when_only_active_learning_settings_change():
    """A variant of a strategy (say a larger hybrid candidate_factor) reruns the
    strategy's runs but reuses the all-labels baseline, which never reads those
    settings; a setting both read (rounds) reruns both."""
    variant = {**TINY_EXPERIMENT, "final_fraction": 0.4, "active_learning": {"candidate_factor": 10}}
    assert run_key(variant, FULL, 0) == run_key(TINY_EXPERIMENT, FULL, 0)
    assert run_key(variant, "hybrid", 0) != run_key(TINY_EXPERIMENT, "hybrid", 0)
    longer = {**TINY_EXPERIMENT, "rounds": 4}
    assert run_key(longer, FULL, 0) != run_key(TINY_EXPERIMENT, FULL, 0)


def test_a_strategy_variant_runs_its_strategy_with_its_own_settings(tmp_path):
    """`variants:` runs hybrid twice side by side (say over a wider candidate set):
    a variant's runs depend on its own entry only, and a bad entry is a clear error."""
    exp = {**TINY_EXPERIMENT, "strategies": ["hybrid", "hybrid_wide"], "active_learning": {"candidate_factor": 3},
           "variants": {"hybrid_wide": {"strategy": "hybrid", "active_learning": {"candidate_factor": 10}}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    exp = load_experiment(tmp_path / "exp.yaml")
    assert strategy_settings(exp, "hybrid") == ("hybrid", {"candidate_factor": 3})
    assert strategy_settings(exp, "hybrid_wide") == ("hybrid", {"candidate_factor": 10})
    other = {**exp, "variants": {**exp["variants"], "hybrid_all": {"strategy": "hybrid"}}}
    assert run_key(other, "hybrid_wide", 0) == run_key(exp, "hybrid_wide", 0)
    assert run_key(other, "hybrid", 0) == run_key(exp, "hybrid", 0) and run_key(other, FULL, 0) == run_key(exp, FULL, 0)
    wider = {**exp, "variants": {"hybrid_wide": {"strategy": "hybrid", "active_learning": {"candidate_factor": 20}}}}
    assert run_key(wider, "hybrid_wide", 0) != run_key(exp, "hybrid_wide", 0)
    for bad, message in (({"hybrid_wide": {"strategy": "kmeans"}}, "must be {strategy"),
                         ({"hybrid_wide": {"strategy": "hybrid", "budget": 3}}, "must be {strategy"),
                         ({"random": {"strategy": "hybrid"}}, "has the name of a strategy")):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**exp, "variants": bad}))
        with pytest.raises(SystemExit, match=message.replace("{", r"\{")):
            load_experiment(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**exp, "variants": {}}))
    with pytest.raises(SystemExit, match="unknown strategies"):
        load_experiment(tmp_path / "bad.yaml")
    # a setting the label step would refuse is refused before any run, named
    for settings, message in (({"candidate_factr": 10}, r"hybrid_wide: active_learning: unknown settings"),
                              ({"detection_weight": 2}, r"hybrid_wide: active_learning.detection_weight must be")):
        bad = {"hybrid_wide": {"strategy": "hybrid", "active_learning": settings}}
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**exp, "variants": bad}))
        with pytest.raises(SystemExit, match=message):
            load_experiment(tmp_path / "bad.yaml")


def test_op_determinism_repeats_the_augmented_batches_and_is_switched_off_after(tiny_config, bright_box_records):
    """Under `deterministic: true` a run's keras-cv augmentation (which draws from
    TensorFlow's global generator, and fails under plain op determinism) repeats
    exactly for a seed; afterwards the process is back to TensorFlow's defaults."""
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework.config import is_op_determinism_enabled

    from src.data.pipeline import PipelineOptions, training_dataset

    options = PipelineOptions(batch_size=8, color_jitter=0.2, seed=3)

    def first_batch(seed):
        with op_determinism(seed, True):
            assert is_op_determinism_enabled()
            return next(iter(training_dataset(bright_box_records, tiny_config, options)))[0].numpy()

    before = tf.random.get_global_generator()
    again, other = first_batch(0), first_batch(1)
    np.testing.assert_array_equal(first_batch(0), again)
    assert np.abs(other - again).max() > 0.01
    assert not is_op_determinism_enabled() and tf.random.get_global_generator() is before
    with op_determinism(0, False):
        assert not is_op_determinism_enabled()


def test_a_variant_config_extends_its_base_and_null_keeps_the_default(tmp_path):
    """configs/al_experiment_256.yaml names only what differs from al_experiment.yaml:
    its `config:` and `plan:` entries replace the base's one by one, and a null setting
    drops the base's override (the model's anchors back to configs/default.yaml's)."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_EXPERIMENT))
    (tmp_path / "variant.yaml").write_text(yaml.safe_dump(
        {"extends": "base.yaml", "out": "elsewhere", "rounds": 5,
         "config": {"model.input_size": 96, "model.width": None}, "plan": {"tasks.train.kwargs.epochs": 2}}))
    base, variant = load_experiment(tmp_path / "base.yaml"), load_experiment(tmp_path / "variant.yaml")
    assert variant["rounds"] == 5 and variant["out"] == "elsewhere" and "extends" not in variant
    assert variant["config"]["model.depth"] == TINY_EXPERIMENT["config"]["model.depth"]
    assert variant["plan"] == {**TINY_EXPERIMENT["plan"], "tasks.train.kwargs.epochs": 2}
    default = base_config({"config": {}})["model"]
    cfg = base_config(variant)["model"]
    assert cfg["input_size"] == 96 and cfg["width"] == default["width"] != base_config(base)["model"]["width"]
    # where results go does not make a kept run stale
    assert run_key({**base, "out": "elsewhere"}, "hybrid", 0) == run_key(base, "hybrid", 0)


@pytest.mark.parametrize("name", ["al_experiment.yaml", "al_experiment_256.yaml", "al_experiment_bursts.yaml"])
def test_shipped_experiment_configs_load(name):
    exp = load_experiment(REPO / "configs" / name)
    model = base_config(exp)["model"]
    # anchors are pixels at the input size: the 256 px variant uses default.yaml's (k-means at 256 px)
    assert max(max(a) for a in model["anchors"]) < model["input_size"] / 4
    assert exp["seeds"] and exp["strategies"]
    # the plan of a run: the frozen backbone, two local epochs a round, every site at batch 16
    # one pass an epoch, this round count; the settings reach the data loader and the task runner alike
    plan = experiment_plan(exp, "hybrid", seed=2)
    runner, loader = plan["task_runner"]["settings"], plan["data_loader"]["settings"]
    assert runner["backbone_mode"] == "frozen" and plan["tasks"]["train"]["kwargs"]["epochs"] == 2
    assert runner["rounds"] == plan["aggregator"]["settings"]["rounds_to_train"] == exp["rounds"]
    assert loader["min_batches_per_epoch"] is None and loader["repeat_to_batches"] is None
    assert runner["overrides"] == loader["overrides"]
    assert runner["overrides"]["pipeline.batch_size"] == 16 and runner["overrides"]["seed"] == 2
    assert runner["active_learning"]["strategy"] == "hybrid" and runner["active_learning"]["oracle"] == "simulated"
    assert "active_learning" not in experiment_plan(exp, FULL, seed=2)["task_runner"]["settings"]
    if name == "al_experiment_bursts.yaml":  # its own data set: bursts of frames, imbalanced classes
        data = base_config(exp)["data"]
        assert data["root"] == "data/al_bursts" and data["burst_size"] == 4 and data["class_weights"]["normal"] == 4


def test_an_experiment_key_it_does_not_know_is_refused(tmp_path):
    """Settings keys go under `config:`, plan values under `plan:`; a key of neither is
    refused by name instead of being ignored."""
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({**TINY_EXPERIMENT, "epochs_per_round": 2}))
    with pytest.raises(SystemExit, match=r"unknown keys \['epochs_per_round'\]"):
        load_experiment(tmp_path / "exp.yaml")
