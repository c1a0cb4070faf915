"""`make paired-experiment`: the paired statistics against a hand-computed case, what each arm
runs (the two arms of a comparison differ in one thing only), the report and its results
page. Pure Python: no training (the end-to-end run: tests/test_paired_experiment_run.py)."""
import copy
import json

import pytest
import yaml

from workspace.al_experiment.experiment import FULL, base_config
from workspace.al_experiment.runs import experiment_plan
from workspace.paired_experiment.differences import paired_difference
from workspace.paired_experiment.experiment import (ARMS, CENTRAL, COMPARISONS, DEFAULT_CONFIG, SEGMENTATION_ARMS,
                                                    arm_experiment, arm_key, federation_experiment,
                                                    federation_run_name, load_experiment)
from workspace.paired_experiment.report import markdown, summarize
from workspace.paired_experiment.runs import central_settings, task_split
from workspace.results import main as results_main
from workspace.simulate.fx_workspace import REPO


def test_paired_difference_is_the_mean_of_the_per_seed_differences_with_its_t_interval():
    # differences 0.10, 0.00, 0.10: mean 1/15, sample sd sqrt(1/300) = 0.057735;
    # t(0.975, 2 degrees of freedom) = 4.302653 (a t table): half width 4.302653 x 0.057735 / sqrt(3)
    d = paired_difference([0.30, 0.25, 0.40], [0.20, 0.25, 0.30])
    assert d["differences"] == pytest.approx([0.10, 0.0, 0.10])
    assert d["n"] == 3 and d["mean"] == pytest.approx(1 / 15)
    assert d["sd"] == pytest.approx(0.057735, abs=1e-6)
    assert d["low"] == pytest.approx(1 / 15 - 0.143422, abs=1e-6)
    assert d["high"] == pytest.approx(1 / 15 + 0.143422, abs=1e-6)
    # five seeds: t(0.975, 4) = 2.776445; differences -0.02, 0.01, 0.03, 0.00, 0.03: mean 0.01, sd 0.021213
    five = paired_difference([0.18, 0.21, 0.23, 0.20, 0.23], [0.20] * 5)
    assert five["mean"] == pytest.approx(0.01) and five["sd"] == pytest.approx(0.0212132, abs=1e-6)
    assert five["high"] - five["mean"] == pytest.approx(2.776445 * 0.0212132 / 5 ** 0.5, abs=1e-6)
    one = paired_difference([0.3], [0.2])  # one seed: a difference, no interval
    assert one["mean"] == pytest.approx(0.1) and one["low"] is None and one["sd"] is None
    with pytest.raises(ValueError, match="every seed needs both arms"):
        paired_difference([0.3, 0.2], [0.2])


def flat(tree: dict, prefix: str = "") -> dict:
    """{dotted path: leaf value} of a nested mapping."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_paths(exp: dict, first: str, second: str, seed: int = 3) -> set[str]:
    fexp = federation_experiment(exp)
    a, b = (flat(experiment_plan(fexp, federation_run_name(ARMS[n]), seed)) for n in (first, second))
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_each_comparison_changes_one_thing_of_the_default_federation():
    exp = load_experiment(DEFAULT_CONFIG)
    assert exp["seeds"] == [0, 1, 2, 3, 4] and exp["arms"] == list(ARMS) and exp["plan"] == {}
    repo_plan = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    plan = experiment_plan(federation_experiment(exp), federation_run_name(ARMS["fed_hybrid"]), seed=3)
    runner = plan["task_runner"]["settings"]
    # fed_hybrid is the default federation: the plan's exchange, backbone, local epochs, step floors,
    # and make simulate's active learning (hybrid, 30 % at the end, every round, simulated oracle)
    for path in ("task_runner.settings.exchange", "task_runner.settings.backbone_mode",
                 "task_runner.settings.backbone_init", "tasks.train.kwargs.epochs",
                 "data_loader.settings.min_batches_per_epoch", "data_loader.settings.repeat_to_batches",
                 "data_loader.settings.max_images_per_epoch"):
        section = plan
        expected = repo_plan
        for name in path.split("."):
            section, expected = section[name], expected[name]
        assert section == expected, path
    assert runner["exchange"] == "decoupled" and runner["rounds"] == 8
    assert runner["active_learning"] == {"strategy": "hybrid", "final_fraction": 0.3, "query_every": 1,
                                         "oracle": "simulated", "seed": 3, "epoch_images": "all"}
    assert "model.input_size" not in runner["overrides"] and runner["overrides"]["seed"] == 3  # the default model
    # each comparison's arms differ in exactly the named plan value
    assert differing_paths(exp, "fed_hybrid", "fed_hybrid_full_exchange") == {"task_runner.settings.exchange"}
    assert differing_paths(exp, "fed_hybrid", "fed_random") == {"task_runner.settings.active_learning.strategy"}
    all_labels = experiment_plan(federation_experiment(exp), FULL, seed=3)
    assert "active_learning" not in all_labels["task_runner"]["settings"]
    assert federation_run_name(ARMS["fed_all_labels"]) == FULL
    assert [(c.first, c.second) for c in COMPARISONS] == [("fed_all_labels", "central_all_labels"),
                                                           ("fed_hybrid", "fed_hybrid_full_exchange"),
                                                           ("fed_hybrid", "fed_random")]


def test_the_centralized_arm_trains_rounds_x_local_epochs_from_the_federations_backbone():
    exp = load_experiment(DEFAULT_CONFIG)
    fexp = federation_experiment(exp)
    cfg = base_config(fexp)
    settings, mode, init = central_settings(fexp, cfg, seed=3)
    assert ARMS["central_all_labels"].runs_as == CENTRAL
    assert (mode, init) == ("joint", "checkpoint") and settings["seed"] == 3
    assert settings["training"]["epochs"] == 8  # 8 rounds x 1 local epoch
    # otherwise configs/default.yaml's training, as `make train-central` runs it (weight averaging on)
    expected = copy.deepcopy(cfg)
    expected["seed"], expected["training"]["epochs"] = 3, 8
    assert settings == expected and settings["training"]["ema_decay"] == 0.99
    longer = load_experiment(DEFAULT_CONFIG, rounds=3)
    assert central_settings(federation_experiment(longer), cfg, 0)[0]["training"]["epochs"] == 3
    two_epochs = {**exp, "plan": {"tasks.train.kwargs.epochs": 2}}
    assert central_settings(federation_experiment(two_epochs), cfg, 0)[0]["training"]["epochs"] == 16


def test_a_kept_run_depends_on_what_its_arm_reads():
    exp = load_experiment(DEFAULT_CONFIG)
    keys = {name: arm_key(exp, arm, 0) for name, arm in ARMS.items()}
    assert len(set(keys.values())) == len(ARMS)
    # the budget: the active-learning arms only; the round count: every arm, the centralized one too
    budget = {**exp, "final_fraction": 0.4}
    rounds = {**exp, "rounds": 4}
    for name, arm in ARMS.items():
        assert (arm_key(budget, arm, 0) != keys[name]) == (arm.strategy is not None), name
        assert arm_key(rounds, arm, 0) != keys[name], name
        assert arm_key({**exp, "arms": ["fed_random"], "seeds": [7]}, arm, 0) == keys[name], name
        assert arm_key(exp, arm, 1) != keys[name], name


def test_an_unknown_arm_or_key_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown arms \['fed_kmeans'\]"):
        load_experiment(DEFAULT_CONFIG, arms=["fed_hybrid", "fed_kmeans"])
    spec = yaml.safe_load(DEFAULT_CONFIG.read_text())
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({**spec, "strategies": ["random"]}))
    with pytest.raises(SystemExit, match=r"unknown keys \['strategies'\]"):
        load_experiment(tmp_path / "exp.yaml")


def fake_runs(values: dict) -> list[dict]:
    """{arm: [(mAP@0.5, mAP@0.5:0.95, accuracy) per seed]} -> runs as runs.py keeps them."""
    return [{"arm": arm, "seed": seed, "wall_s": 100.0 + 10 * seed + len(arm),
             "labeled_fraction": 1.0 if arm == "fed_all_labels" else 0.3,
             "final": {"map50": m, "map50_95": m95, "accuracy": acc, "macro_f1": acc - 0.01, "score": (m + acc) / 2}}
            for arm, per_seed in values.items() for seed, (m, m95, acc) in enumerate(per_seed)]


REPORTED = {"fed_hybrid": [(0.30, 0.10, 0.90), (0.25, 0.08, 0.92), (0.40, 0.12, 0.94)],
            "fed_hybrid_full_exchange": [(0.20, 0.07, 0.91), (0.25, 0.08, 0.90), (0.30, 0.09, 0.93)],
            "fed_random": [(0.10, 0.03, 0.80), (0.12, 0.04, 0.82), (0.11, 0.03, 0.81)],
            "fed_all_labels": [(0.35, 0.11, 0.95), (0.36, 0.12, 0.96), (0.34, 0.10, 0.95)]}


def test_report_pairs_the_arms_seed_by_seed_and_says_what_is_missing():
    exp = {**load_experiment(DEFAULT_CONFIG, seeds=[0, 1, 2]), "arms": list(REPORTED)}
    report = summarize(fake_runs(REPORTED), exp)
    exchange = report["comparisons"]["decoupled_vs_full_exchange"]
    assert exchange["seeds"] == [0, 1, 2]
    assert exchange["metrics"]["map50"] == {"first": [0.30, 0.25, 0.40], "second": [0.20, 0.25, 0.30],
                                            **paired_difference([0.30, 0.25, 0.40], [0.20, 0.25, 0.30])}
    assert exchange["metrics"]["accuracy"]["differences"] == pytest.approx([-0.01, 0.02, 0.01])
    random = report["comparisons"]["hybrid_vs_random"]["metrics"]
    assert random["map50"]["low"] > 0 and set(random) == {"map50", "map50_95", "accuracy"}
    # the centralized arm did not run: its comparison has no seed, and says so
    assert report["comparisons"]["federated_vs_centralized"] == {
        "first": "fed_all_labels", "second": "central_all_labels", "seeds": [], "metrics": {},
        "differs_in": COMPARISONS[0].differs_in}
    assert report["arms"]["fed_random"]["mean"]["map50"] == pytest.approx(0.11)
    assert report["wall_per_seed"][1]["total_s"] == pytest.approx(sum(110.0 + len(a) for a in REPORTED))
    json.dumps(report)  # report.json
    title, lines = markdown(report)
    assert title == "Paired comparisons of the default federation: 3 seeds x 4 arms"
    text = "\n".join(lines)
    assert lines[0].startswith("Settings (configs/default.yaml and plan/plan.yaml as at the commit above): the "
                               "config with no changes; the plan's values unchanged")
    assert "| 0 | 0.300 | 0.200 | +0.100 | 0.100 | 0.070 | +0.030 | 0.900 | 0.910 | -0.010 |" in lines
    assert ("- mAP@0.5: mean paired difference +0.067 [-0.077, +0.210] (95% t-interval, 2 degrees of freedom): "
            "no difference shown (the interval holds 0)") in lines
    assert "- mAP@0.5: mean paired difference +0.207 [" in text and "first arm ahead" in text
    assert "Not measured: no seed has both arms." in text
    one_seed = markdown(summarize(fake_runs({k: v[:1] for k, v in REPORTED.items()}), {**exp, "seeds": [0]}))[1]
    assert "- accuracy: difference -0.010 (one seed: no interval)" in one_seed
    assert "| 2 | 130 | 144 | 130 | 134 | 538 |" in lines  # wall time per arm and in total
    assert "| fed_random | random picks at the same labeling budget | 3 | 30% | 0.110 | 0.033 | 0.810 | 120 |" in lines


def test_results_page_names_run_and_comparisons(tmp_path, capsys):
    exp = {**load_experiment(DEFAULT_CONFIG, seeds=[0, 1, 2]), "arms": list(REPORTED)}
    run = {"date": "2026-12-07T10:00:00+00:00", "commit": "abc123", "command": "make paired-experiment SEEDS=0,1,2",
           "machine": {"cpus": 2}}
    (tmp_path / "report.json").write_text(json.dumps({"run": run, **summarize(fake_runs(REPORTED), exp)}))
    missing = str(tmp_path / "none.json")
    assert results_main(["--simulate", missing, "--bench", missing, "--quality", missing, "--al", missing,
                         "--privacy", missing, "--paired", str(tmp_path / "report.json"), "--segmentation", missing,
                         "--out",
                         str(tmp_path / "pages"), "--readme", ""]) == 0
    page = (tmp_path / "pages" / "paired.md").read_text()
    for text in ("# `make paired-experiment`: Paired comparisons of the default federation: 3 seeds x 4 arms",
                 "2026-12-07T10:00:00+00:00", "`abc123`", "`make paired-experiment SEEDS=0,1,2`", "2 CPUs",
                 "## hybrid_vs_random: fed_hybrid - fed_random",
                 "Settings (configs/default.yaml and plan/plan.yaml as at the commit above)"):
        assert text in page, text
    assert "wrote" in capsys.readouterr().out


SEGMENTATION_CONFIG = REPO / "configs" / "segmentation_experiment.yaml"


def test_the_segmentation_arms_differ_in_their_tasks_and_the_head_they_need_only():
    exp = load_experiment(SEGMENTATION_CONFIG)
    assert exp["arm_set"] == "segmentation" and exp["arms"] == list(SEGMENTATION_ARMS)
    assert exp["sites"] == 4 and exp["labels"] == ["both", "boxes", "class", "masks"] and exp["rounds"] == 8
    fexp = federation_experiment(exp)
    plans = {name: flat(experiment_plan(arm_experiment(fexp, SEGMENTATION_ARMS[name]), FULL, seed=3))
             for name in ("fed_3task", "fed_2task")}
    differ = {k for k in plans["fed_3task"].keys() | plans["fed_2task"].keys()
              if plans["fed_3task"].get(k) != plans["fed_2task"].get(k)}
    assert differ and all(k.endswith(".overrides.model.segmentation") for k in differ), differ
    assert plans["fed_3task"]["task_runner.settings.overrides.model.segmentation"] is True
    assert plans["fed_2task"]["task_runner.settings.overrides.model.segmentation"] is False
    assert "task_runner.settings.active_learning" not in plans["fed_3task"]  # every label, as the centralized arms
    keys = {name: arm_key(exp, arm, 0) for name, arm in SEGMENTATION_ARMS.items()}
    assert len(set(keys.values())) == len(keys)
    with pytest.raises(SystemExit, match=r"unknown arms \['fed_hybrid'\]"):
        load_experiment(SEGMENTATION_CONFIG, arms=["fed_hybrid"])


def write_split(root, sites: dict):
    """A split folder: {site: manifest rows (image, split, boxes, class, masks)}, a test.tsv."""
    root.mkdir(parents=True)
    for site, rows in sites.items():
        (root / site).mkdir()
        (root / site / "site.yaml").write_text(f"site: {site}\ndata_root: ../../data\nformat: yolo\n")
        (root / site / "manifest.tsv").write_text(
            "image\tsplit\tboxes\tclass\tmasks\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    (root / "test.tsv").write_text("image\nimages/t.jpg\n")
    (root / "split.yaml").write_text(yaml.safe_dump({"data_root": "../../data", "sites": [
        {"site": s, "labels": "x", "train": len(r)} for s, r in sites.items()]}, sort_keys=False))


def test_a_task_split_keeps_the_sites_and_labels_of_its_tasks_only(tmp_path):
    split = tmp_path / "splits" / "seed0-full"
    write_split(split, {"site1": [("images/a.jpg", "train", 1, 1, 0), ("images/b.jpg", "val", 1, 0, 0)],
                        "site2": [("images/c.jpg", "train", 0, 1, 0)],
                        "site3": [("images/d.jpg", "train", 0, 0, 1), ("images/e.jpg", "train", 1, 0, 1)]})
    two = task_split(split, ("boxes", "class"), split.with_name("seed0-full-boxes+class"))
    meta = yaml.safe_load((two / "split.yaml").read_text())
    assert [s["site"] for s in meta["sites"]] == ["site1", "site2", "site3"] and meta["data_root"] == "../../data"
    assert (two / "site3" / "manifest.tsv").read_text().splitlines()[1:] == ["images/e.jpg\ttrain\t1\t0\t0"]
    assert (two / "site1" / "manifest.tsv").read_text() == (split / "site1" / "manifest.tsv").read_text()
    masks = task_split(split, ("masks",), split.with_name("seed0-full-masks"))
    assert [s["site"] for s in yaml.safe_load((masks / "split.yaml").read_text())["sites"]] == ["site3"]
    assert not (masks / "site1").exists() and (masks / "test.tsv").read_text() == "image\nimages/t.jpg\n"
    assert (masks / "site3" / "manifest.tsv").read_text().splitlines()[1:] == [
        "images/d.jpg\ttrain\t0\t0\t1", "images/e.jpg\ttrain\t0\t0\t1"]
    with pytest.raises(ValueError, match="no site holds"):
        task_split(task_split(split, ("class",), split.with_name("c")), ("masks",), split.with_name("none"))
    with pytest.raises(ValueError, match="known label kinds"):
        task_split(split, ("victims",), split.with_name("v"))


def test_the_segmentation_report_compares_miou_where_the_arms_segment():
    exp = load_experiment(SEGMENTATION_CONFIG, seeds=[0, 1])
    scores = {"fed_3task": [(0.30, 0.10, 0.95, 0.50), (0.28, 0.09, 0.96, 0.52)],
              "central_3task": [(0.35, 0.12, 0.97, 0.55), (0.33, 0.11, 0.96, 0.58)],
              "fed_2task": [(0.31, 0.10, 0.95, None), (0.27, 0.09, 0.95, None)],
              "central_2task": [(0.36, 0.12, 0.97, None), (0.34, 0.12, 0.97, None)],
              "central_masks": [(0.0, 0.0, 0.2, 0.45), (0.0, 0.0, 0.2, 0.50)]}
    runs = [{"arm": arm, "seed": seed, "wall_s": 100.0, "labeled_fraction": 1.0,
             "final": {"map50": m, "map50_95": m95, "accuracy": acc, "macro_f1": acc, "score": 0.0,
                       **({} if miou is None else {"miou": miou})}}
            for arm, per_seed in scores.items() for seed, (m, m95, acc, miou) in enumerate(per_seed)]
    report = summarize(runs, exp)
    c = report["comparisons"]
    assert list(c["federated_vs_centralized"]["metrics"]) == ["miou", "map50", "map50_95", "accuracy"]
    assert c["federated_vs_centralized"]["metrics"]["miou"]["differences"] == pytest.approx([-0.05, -0.06])
    assert list(c["multi_vs_single_task_masks"]["metrics"]) == ["miou"]
    assert c["multi_vs_single_task_masks"]["metrics"]["miou"]["mean"] == pytest.approx(0.09)
    assert list(c["three_vs_two_tasks_federated"]["metrics"]) == ["map50", "map50_95", "accuracy"]
    assert report["arms"]["fed_2task"]["mean"]["miou"] is None and report["arms"]["fed_2task"]["tasks"] == [
        "boxes", "class"]
    title, lines = markdown(report)
    assert title == "Segmentation as a third task: paired comparisons: 2 seeds x 5 arms"
    assert "every label of the split (no active learning)" in lines[0]
    assert "| arm | what | seeds | labeled | mAP@0.5 | mAP@0.5:0.95 | accuracy | mIoU | wall s |" in lines
    assert any(line.startswith("| fed_2task |") and line.endswith("| 0.950 | n/a | 100 |") for line in lines)
    assert "| 0 | 0.550 | 0.450 | +0.100 |" in lines  # multi- vs single-task mIoU, seed 0
