"""The experiment's federations: one per strategy and seed plus one per seed with every label,
each evaluated on the test split after every round, finished runs kept for a restart.

In-process (`src/federated/in_process.py`: OpenFL's own aggregator and collaborators from
the repository's plan) rather than `fx` processes: 16+ federations on 2 cores would
otherwise spend much of their time starting processes; the transport is tested
elsewhere (tests/test_federation.py, tests/test_faults_fx.py).
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import time
from pathlib import Path

import yaml

from workspace.al_experiment.experiment import (FULL, base_config, experiment_settings, labeling_settings, run_key,
                                                variant_plan)
from workspace.simulate.data import ensure_backbone_checkpoint
from workspace.simulate.fx_workspace import EVENT_LOG, REPO, prepare_workspace, split_sites, workspace_values
from workspace.simulate.plan_edits import edit_plan

# what every in-process run sets in the plan: a run that dies starts over (runs/ keeps
# finished ones), so no OpenFL restart database, whose writes cost seconds per round; and
# every round's aggregate is scored on the test split here (run_one), so no best.pbuf and
# no validation-only round after the last one
IN_PROCESS_PLAN = {"aggregator.settings.persist_checkpoint": False,
                   "aggregator.settings.final_validation_tasks": None}

log = logging.getLogger("al_experiment")


def experiment_plan(exp: dict, strategy: str, seed: int) -> dict:
    """plan/plan.yaml with the experiment's plan values and settings for one run."""
    values = {**exp.get("plan", {}), **variant_plan(exp, strategy), **IN_PROCESS_PLAN,
              **workspace_values(exp["rounds"], port=0)}
    if strategy != FULL:
        values["task_runner.settings.active_learning"] = labeling_settings(exp, strategy, seed)
    repo_plan = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    return edit_plan(repo_plan, values, overrides={"seed": seed, **experiment_settings(exp)})


def write_workspace(ws: Path, exp: dict, split_dir: Path, strategy: str, seed: int) -> None:
    """An OpenFL workspace (as `make simulate` writes one) for one in-process run."""
    prepare_workspace(ws, experiment_plan(exp, strategy, seed), split_dir)
    sites = split_sites(split_dir)
    (ws / "plan" / "cols.yaml").write_text(yaml.safe_dump({"collaborators": sites}))
    (ws / "plan" / "data.yaml").write_text("".join(f"{s},data_splits/{split_dir.name}/{s}\n" for s in sites))


def build_splits(exp: dict, cfg: dict, out: Path, seed: int) -> dict[str, Path]:
    """Per seed, one site partition twice: with the AL seed set (rest in the pool) and
    fully labeled. The test split is the same for every seed (the config's seed)."""
    from src.data.splits import build_site_splits

    splits = {}
    for name, fraction in (("al", exp["seed_fraction"]), ("full", 1.0)):
        folder = out / "splits" / f"seed{seed}-{name}"
        if not (folder / "test.tsv").exists():
            build_site_splits(cfg, folder, exp["sites"], exp["alpha"], seed, exp["labels"], fraction)
        splits[name] = folder
    return splits


def site_images(split_dir: Path) -> dict[str, tuple[int, int]]:
    """Per site of the split, (labeled training images, pool images), from its manifest."""
    from src.data.manifests import read_manifest

    out = {}
    for site in split_sites(split_dir):
        rows = read_manifest(split_dir / site / "manifest.tsv")
        out[site] = (sum(r[1] == "train" for r in rows), sum(r[1] == "pool" for r in rows))
    return out


def labeled_per_round(ws: Path, sites: dict[str, tuple[int, int]], rounds: int) -> list[int]:
    """Images the federation trained on in each round, summed over sites: a site's
    `al_labeled` metric, or its whole train split when it runs without active learning."""
    events = [json.loads(x) for x in (ws / EVENT_LOG).read_text().splitlines()]
    labeled = {(e["round"], e["site"]): e["value"] for e in events
               if e["event"] == "metric" and e["name"] == "al_labeled"}
    return [sum(int(labeled.get((r, site), train)) for site, (train, _) in sites.items())
            for r in range(rounds)]


def run_one(exp: dict, cfg: dict, out: Path, split_dir: Path, strategy: str, seed: int, test_records,
            every_round: bool = True) -> dict:
    """One federation; the test metrics of the global model after every round (every_round
    False: after the last round only, the others' entries hold their labeled counts only)."""
    import keras

    from src.settings import model_config
    from src.evaluation import Predictor, score_predictions
    from src.federated.checkpoint import assign_weights
    from src.federated.in_process import run_federation
    from src.federated.task_runner import validation_score
    from src.model import build_model

    ws = out / "workspaces" / f"{strategy}-seed{seed}"
    if ws.exists():
        shutil.rmtree(ws)  # an unfinished run starts over
    write_workspace(ws, exp, split_dir, strategy, seed)
    mcfg = model_config(cfg)
    model = build_model(mcfg)
    predictor = Predictor(model, mcfg, **cfg.get("evaluation", {}))
    per_round = {}

    def evaluate(aggregator, closed_round):
        if not every_round and closed_round != exp["rounds"] - 1:
            return
        assign_weights(model, aggregator.global_tensors())
        result = score_predictions(predictor.predict(test_records), test_records, mcfg)
        per_round[closed_round] = {"map50": result["map50"], "map50_95": result["map50_95"],
                                   "accuracy": result["accuracy"], "macro_f1": result["macro_f1"],
                                   **({"miou": result["miou"]} if "miou" in result else {}),
                                   "score": validation_score(result)}
        log.info("  %s seed %d round %d: test mAP@0.5 %.3f accuracy %.3f macro-F1 %.3f", strategy, seed,
                 closed_round, result["map50"], result["accuracy"], result["macro_f1"])

    start, cwd = time.monotonic(), os.getcwd()
    os.chdir(ws)
    try:
        with op_determinism(seed, exp.get("deterministic", False)):
            run_federation(ws, on_round_end=evaluate)
    finally:
        os.chdir(cwd)
    sites = site_images(split_dir)
    labeled = labeled_per_round(ws, sites, exp["rounds"])
    total = sum(train + pool for train, pool in sites.values())
    rounds = [{"round": r, "labeled": labeled[r], **per_round.get(r, {})} for r in range(exp["rounds"])]
    keras.backend.clear_session()
    gc.collect()
    return {"strategy": strategy, "seed": seed, "rounds": rounds, "final": rounds[-1],
            "labeled_fraction": labeled[-1] / total, "train_images": total,
            "wall_s": time.monotonic() - start}


@contextlib.contextmanager
def op_determinism(seed: int, enabled: bool):
    """TensorFlow op determinism for one run, its global random generator seeded.

    `tf.config.experimental.enable_op_determinism()` alone (or TF_DETERMINISTIC_OPS=1)
    makes keras-cv's augmentation layers fail: they draw from TensorFlow's global
    generator and its random ops, which under determinism need a seed (the global
    seed, which the task runner also sets from the plan; left set, as it leaves it).
    Switched off again afterwards (TensorFlow's own, unexported switch) so that the
    rest of the process - a test session - keeps TensorFlow's defaults. Measured on the
    bursts experiment: no time cost; round 0 (identical until the first query) scored
    the same in every run of a seed for 2 of 5 seeds and within 0.03 in accuracy for
    the others, instead of up to 0.22 apart (the sites' threads still train in either order).
    """
    if not enabled:
        yield
        return
    import tensorflow as tf
    from tensorflow.python.framework.config import disable_op_determinism

    previous = tf.random.get_global_generator()
    tf.random.set_global_generator(tf.random.Generator.from_seed(seed))
    tf.random.set_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        disable_op_determinism()
        tf.random.set_global_generator(previous)


def prepare_data(exp: dict) -> dict:
    """The experiment's settings (base_config) with its data set generated when missing, its
    data root absolute, and the backbone checkpoint the runs start from made when missing."""
    from src.data.synthetic import generate_from_config

    cfg = base_config(exp)
    ensure_backbone_checkpoint(experiment_plan(exp, FULL, seed=0))
    data_root = REPO / cfg["data"]["root"]
    log.info("data set %s (%d images; generated when missing)", data_root, cfg["data"]["num_images"])
    generate_from_config(cfg, data_root)
    cfg["data"]["root"] = str(data_root)
    return cfg


def held_out_test(cfg: dict, split_dir: Path) -> list:
    """The held-out test split the split folder names (the same for every seed of an
    experiment), with its masks when the experiment's model segments."""
    from src.data.manifests import load_test_split
    from src.settings import model_config

    masks = cfg["classes"].get("mask") if model_config(cfg).num_mask_classes else None
    return load_test_split(split_dir, cfg["classes"]["victim"], cfg["classes"]["disaster"],
                           default_data_root=cfg["data"]["root"], mask_classes=masks)


def kept_or_run(path: Path, key: str, label: str, run, logger: logging.Logger) -> tuple[dict, bool]:
    """(result, kept): the finished run kept at `path` when it was made with the settings
    hashed to `key`; else run() with `key` added, written to `path` for a restart to reuse."""
    earlier = json.loads(path.read_text()) if path.exists() else {}
    if earlier.get("key") == key:
        logger.info("%s: kept from an earlier run", label)
        return earlier, True
    logger.info("%s ...", label)
    result = {**run(), "key": key}
    path.write_text(json.dumps(result, indent=1))
    return result, False


def run_all(exp: dict, out: Path) -> list[dict]:
    """Every run of the experiment, seed by seed, each kept in out/runs/<name>-seed<S>.json
    and reused while its settings (run_key) are unchanged."""
    cfg = prepare_data(exp)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo = [(s, seed) for seed in exp["seeds"] for s in [FULL] + list(exp["strategies"])]
    runs, started, test = [], time.monotonic(), None
    for i, (strategy, seed) in enumerate(todo, 1):
        def run(strategy=strategy, seed=seed):
            nonlocal test
            splits = build_splits(exp, cfg, out, seed)
            test = test or held_out_test(cfg, splits["full"])  # one for every seed (the config's seed draws it)
            return run_one(exp, cfg, out, splits["full" if strategy == FULL else "al"], strategy, seed, test)

        result, kept = kept_or_run(out / "runs" / f"{strategy}-seed{seed}.json", run_key(exp, strategy, seed),
                                   f"[{i}/{len(todo)}] {strategy} seed {seed}", run, log)
        runs.append(result)
        if kept:
            continue
        f = result["final"]
        log.info("[%d/%d] %s seed %d: %.1f%% labeled, test mAP@0.5 %.3f accuracy %.3f score %.3f (%.0f s; "
                 "%.0f s so far)", i, len(todo), strategy, seed, 100 * result["labeled_fraction"], f["map50"],
                 f["accuracy"], f["score"], result["wall_s"], time.monotonic() - started)
    return runs


def run_experiment(exp: dict, out: Path, run: dict | None = None) -> dict:
    """Every run, then the report: out/report.json (with `run`, where it comes from:
    src/run_record.py), out/report.md, out/curves.png."""
    from workspace.al_experiment.report import summarize, write_report

    report = summarize(run_all(exp, out), exp)
    if run is not None:
        report = {"run": run, **report}
    write_report(report, out)
    return report
