"""The paired experiment's runs: per seed every arm, each scored on the held-out test split,
finished runs kept for a restart.

The federated arms are `make al-experiment` runs (workspace/al_experiment/runs.py: OpenFL's
own aggregator and collaborators in one process, op determinism seeded per run), scored
after the last round only; the centralized arm is src/central.py's trainer as `make
train-central --split` runs it, on the all-labels federation's split. An arm of some tasks
runs on that split cut to them (task_split). Seed by seed, so an interrupted experiment
leaves whole seeds behind.
"""
from __future__ import annotations

import copy
import gc
import logging
import shutil
import time
from pathlib import Path

import yaml

from workspace.al_experiment.experiment import FULL
from workspace.al_experiment.runs import (build_splits, experiment_plan, held_out_test, kept_or_run, op_determinism,
                                          prepare_data, run_one)
from workspace.paired_experiment.experiment import (CENTRAL, Arm, arm_experiment, arm_key, arm_settings, arms_of,
                                                    central_epochs, federation_experiment, federation_run_name)

log = logging.getLogger("paired_experiment")
# what the report reads of a run's final test scores (and mIoU, when the model segments)
SCORES = ("map50", "map50_95", "accuracy", "macro_f1", "score")


def task_split(split_dir: Path, tasks, out: Path) -> Path:
    """`split_dir` cut to the label kinds `tasks`: the sites holding one of them, each manifest
    row with only those labels (a row left with none is dropped); the same test split. Written
    beside `split_dir` (at the same depth, so its relative data paths still hold)."""
    from src.data.manifests import MASK_MANIFEST_COLUMNS, read_manifest
    from src.data.splits import LABEL_KINDS

    if (out / "split.yaml").exists():
        return out
    unknown = sorted(set(tasks) - set(LABEL_KINDS))
    if unknown:
        raise ValueError(f"tasks {unknown}: known label kinds {list(LABEL_KINDS)}")
    tmp = out.with_name(out.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(split_dir, tmp)
    meta = yaml.safe_load((tmp / "split.yaml").read_text())
    kept = []
    for entry in meta["sites"]:
        manifest = tmp / entry["site"] / "manifest.tsv"
        # the manifest reader's rows (validated): image, split, then a flag per LABEL_KINDS
        rows = [(image, split, *(int(held and kind in tasks) for kind, held in zip(LABEL_KINDS, flags)))
                for image, split, *flags in read_manifest(manifest, with_masks=True)]
        rows = [row for row in rows if any(row[2:])]
        if rows:
            manifest.write_text("".join("\t".join(map(str, r)) + "\n" for r in [MASK_MANIFEST_COLUMNS, *rows]))
            kept.append(entry)
        else:
            shutil.rmtree(tmp / entry["site"])
    if not kept:
        raise ValueError(f"{split_dir}: no site holds {list(tasks)}")
    meta["sites"] = kept
    (tmp / "split.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    tmp.rename(out)
    return out


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
    """The centralized trainer on the union of the split's sites; its test scores (in `out`)."""
    import keras

    from src.central import run
    from src.federated.task_runner import validation_score

    settings, backbone_mode, backbone_init = central_settings(fexp, cfg, seed)
    start = time.monotonic()
    with op_determinism(seed, fexp.get("deterministic", False)):
        result = run(settings, out, split_dir, backbone_mode, backbone_init)
    test = result["test"]
    keras.backend.clear_session()
    gc.collect()
    scores = {k: test[k] for k in (*SCORES[:-1], "miou") if k in test}
    return {"final": {**scores, "score": validation_score(test)},
            "epochs": result["epochs"], "train_images": result["images"]["train"], "labeled_fraction": 1.0,
            "backbone_mode": backbone_mode, "backbone_init": backbone_init, "wall_s": time.monotonic() - start}


def run_arm(fexp: dict, cfg: dict, out: Path, arm: Arm, seed: int, test: list) -> dict:
    """One arm's run for one seed (not kept: see run_all)."""
    from src.settings import apply_overrides

    splits = build_splits(fexp, cfg, out, seed)
    split = splits["al" if arm.strategy is not None else "full"]
    if arm.tasks is not None:
        split = task_split(split, arm.tasks, split.with_name(f"{split.name}-{'+'.join(arm.tasks)}"))
        fexp, cfg = arm_experiment(fexp, arm), apply_overrides(cfg, arm_settings(arm))
    if arm.runs_as == CENTRAL:
        return run_central(fexp, cfg, out / "central" / f"{arm.name}-seed{seed}", split, seed)
    where = out if arm.tasks is None else out / "arms" / arm.name  # its own workspaces/ folder
    result = run_one(fexp, cfg, where, split, federation_run_name(arm), seed, test, every_round=False)
    return {k: result[k] for k in ("final", "rounds", "labeled_fraction", "train_images", "wall_s")}


def run_all(exp: dict, out: Path) -> list[dict]:
    """Every arm of every seed, seed by seed, each kept in out/runs/<arm>-seed<S>.json and
    reused while its settings (arm_key) are unchanged."""
    fexp = federation_experiment(exp)
    cfg = prepare_data(fexp)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo = [(arms_of(exp)[name], seed) for seed in exp["seeds"] for name in exp["arms"]]
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
