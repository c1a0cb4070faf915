"""The paired experiment's runs: per seed every arm, each scored on the held-out test split,
finished runs kept for a restart.

The federated arms are `make al-experiment` runs (workspace/al_experiment/runs.py: OpenFL's
own aggregator and collaborators in one process, op determinism seeded per run), scored
after the last round only; the centralized arm is src/central.py's trainer as `make
train-central --split` runs it, on the all-labels federation's split. Seed by seed, so an
interrupted experiment leaves whole seeds behind.
"""
from __future__ import annotations

import copy
import gc
import logging
import time
from pathlib import Path

from workspace.al_experiment.experiment import FULL
from workspace.al_experiment.runs import (build_splits, experiment_plan, held_out_test, kept_or_run, op_determinism,
                                          prepare_data, run_one)
from workspace.paired_experiment.experiment import (ARMS, CENTRAL, Arm, arm_key, central_epochs,
                                                    federation_experiment, federation_run_name)

log = logging.getLogger("paired_experiment")
# what the report reads of a run's final test scores
SCORES = ("map50", "map50_95", "accuracy", "macro_f1", "score")


def central_settings(fexp: dict, cfg: dict, seed: int) -> tuple[dict, str, str]:
    """(settings, backbone_mode, backbone_init) of the centralized arm: the experiment's
    settings (configs/default.yaml's training, as `make train-central` runs it) with the seed
    and the federation's rounds x local epochs, and the federation's backbone start."""
    plan = experiment_plan(fexp, FULL, seed)
    runner = plan["task_runner"]["settings"]
    settings = copy.deepcopy(cfg)
    settings["seed"] = seed
    settings["training"]["epochs"] = central_epochs(fexp, plan)
    return settings, runner.get("backbone_mode", "joint"), runner.get("backbone_init", "checkpoint")


def run_central(fexp: dict, cfg: dict, out: Path, split_dir: Path, seed: int) -> dict:
    """The centralized trainer on the union of the split's sites; its test scores."""
    import keras

    from src.central import run
    from src.federated.task_runner import validation_score

    settings, backbone_mode, backbone_init = central_settings(fexp, cfg, seed)
    start = time.monotonic()
    with op_determinism(seed, fexp.get("deterministic", False)):
        result = run(settings, out / "central" / f"seed{seed}", split_dir, backbone_mode, backbone_init)
    test = result["test"]
    keras.backend.clear_session()
    gc.collect()
    return {"final": {**{k: test[k] for k in SCORES[:-1]}, "score": validation_score(test)},
            "epochs": result["epochs"], "train_images": result["images"]["train"], "labeled_fraction": 1.0,
            "backbone_mode": backbone_mode, "backbone_init": backbone_init, "wall_s": time.monotonic() - start}


def run_arm(fexp: dict, cfg: dict, out: Path, arm: Arm, seed: int, test: list) -> dict:
    """One arm's run for one seed (not kept: see run_all)."""
    splits = build_splits(fexp, cfg, out, seed)
    if arm.runs_as == CENTRAL:
        return run_central(fexp, cfg, out, splits["full"], seed)
    split = splits["al" if arm.strategy is not None else "full"]
    result = run_one(fexp, cfg, out, split, federation_run_name(arm), seed, test, every_round=False)
    return {k: result[k] for k in ("final", "rounds", "labeled_fraction", "train_images", "wall_s")}


def run_all(exp: dict, out: Path) -> list[dict]:
    """Every arm of every seed, seed by seed, each kept in out/runs/<arm>-seed<S>.json and
    reused while its settings (arm_key) are unchanged."""
    fexp = federation_experiment(exp)
    cfg = prepare_data(fexp)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo = [(ARMS[name], seed) for seed in exp["seeds"] for name in exp["arms"]]
    runs, started, test = [], time.monotonic(), None
    for i, (arm, seed) in enumerate(todo, 1):
        def run(arm=arm, seed=seed):
            nonlocal test
            test = test or held_out_test(cfg, build_splits(fexp, cfg, out, seed)["full"])
            return {"arm": arm.name, "seed": seed, **run_arm(fexp, cfg, out, arm, seed, test)}

        result, kept = kept_or_run(out / "runs" / f"{arm.name}-seed{seed}.json", arm_key(exp, arm, seed),
                                   f"[{i}/{len(todo)}] {arm.name} seed {seed}", run, log)
        runs.append(result)
        if kept:
            continue
        f = result["final"]
        log.info("[%d/%d] %s seed %d: test mAP@0.5 %.3f mAP@0.5:0.95 %.3f accuracy %.3f (%.0f s; %.0f s so far)",
                 i, len(todo), arm.name, seed, f["map50"], f["map50_95"], f["accuracy"], result["wall_s"],
                 time.monotonic() - started)
    return runs


def run_experiment(exp: dict, out: Path, run: dict | None = None) -> dict:
    """Every run, then the report: out/report.json (with `run`, where it comes from:
    src/run_record.py) and out/report.md."""
    from workspace.paired_experiment.report import summarize, write_report

    report = summarize(run_all(exp, out), exp)
    if run is not None:
        report = {"run": run, **report}
    write_report(report, out)
    return report
