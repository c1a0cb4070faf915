"""The experiment's federations, each evaluated on the test split, finished runs kept for a restart.

In process (`src/federated/in_process.py`: OpenFL's own aggregator and collaborators from
the repository's plan), as `make al-experiment` runs: 20+ federations on 2 cores would
otherwise spend much of their time starting processes; the attacks over real `fx`
processes are in `make test-faults`.

A scaling attacker is the real site with its upload changed on the way out: its
task runner's train_task is wrapped for the run so that each trained tensor becomes
start + scale * (trained - start). The backdoor attacker trains on a poisoned copy of
its data (backdoor.py) and uploads honestly.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import yaml

from workspace.al_experiment.experiment import base_config, experiment_settings
from workspace.al_experiment.runs import IN_PROCESS_PLAN, op_determinism
from workspace.privacy_experiment.backdoor import Backdoor, attack_success, poisoned_split, stamped_records
from workspace.privacy_experiment.experiment import BACKDOOR, all_runs, clean_name, run_key
from workspace.simulate.data import ensure_backbone_checkpoint
from workspace.simulate.fx_workspace import EVENT_LOG, REPO, prepare_workspace, split_sites, workspace_values
from workspace.simulate.plan_edits import edit_plan

log = logging.getLogger("privacy_experiment")


def experiment_plan(exp: dict, run: dict, seed: int, clip_norm: float | None = None) -> dict:
    """plan/plan.yaml with the experiment's plan values and one run's defence or DP."""
    from src.privacy import noise_multiplier_for

    values = {**exp["plan"], **IN_PROCESS_PLAN, **workspace_values(exp["rounds"], port=0)}
    if run["defence"]:
        values.update(exp["attacks"]["defence"])
    if run["epsilon"] is not None:
        delta = float(exp["privacy"]["delta"])
        values["aggregator.settings.differential_privacy"] = {
            "noise_multiplier": noise_multiplier_for(run["epsilon"], delta, exp["rounds"]),
            "clip_norm": float(clip_norm), "delta": delta}
    repo_plan = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    return edit_plan(repo_plan, values, overrides={"seed": seed, **experiment_settings(exp)})


def build_split(exp: dict, cfg: dict, out: Path, sites: int, seed: int) -> Path:
    """The clean split of `sites` sites (every label), made once per partition setting."""
    from src.data.splits import build_site_splits

    partition = json.dumps([exp["alpha"], exp["labels"], cfg["data"]], sort_keys=True, default=str)
    folder = out / "splits" / f"sites{sites}-seed{seed}-{hashlib.sha256(partition.encode()).hexdigest()[:8]}"
    if not (folder / "test.tsv").exists():
        build_site_splits(cfg, folder, sites, exp["alpha"], seed, exp["labels"], 1.0)
    return folder


def backdoor_split(exp: dict, clean: Path, seed: int) -> Path:
    """The clean split with the attacker's data poisoned (backdoor.py), made once."""
    folder = clean.with_name(clean.name + "-backdoor")
    done = folder / "poisoned.json"
    if not done.exists():
        if folder.exists():
            shutil.rmtree(folder)  # an unfinished copy starts over
        keys = poisoned_split(clean, folder, exp["attacks"]["attacker"], Backdoor(**exp["attacks"][BACKDOOR]), seed)
        done.write_text(json.dumps({"poisoned": keys}, indent=1))
    return folder


@contextlib.contextmanager
def scaled_uploads(attacker: str | None, scale: float):
    """While it is open, `attacker` uploads start + scale * its real update of every trained tensor."""
    from src.federated.task_runner import MultiTaskRunner

    if attacker is None:
        yield
        return
    honest = MultiTaskRunner.train_task

    def train_task(self, col_name, round_num, input_tensor_dict, *args, **kwargs):
        upload, local = honest(self, col_name, round_num, input_tensor_dict, *args, **kwargs)
        if col_name == attacker:
            start = dict(input_tensor_dict)  # {tensor name: the global value this round started from}
            for key, value in upload.items():
                if "trained" in key.tags and key.tensor_name in start:
                    upload[key] = (start[key.tensor_name] + scale * (value - start[key.tensor_name])).astype(value.dtype)
        return upload, local

    MultiTaskRunner.train_task = train_task
    try:
        yield
    finally:
        MultiTaskRunner.train_task = honest


def update_norms(clients: dict, starts: dict, rounds: int) -> dict[str, list[float]]:
    """Each site's whole-update L2 norm per round (all its trained tensors, as DP clips it)."""
    norms = {}
    for site, client in clients.items():
        for r in range(rounds):
            tensors = client.uploads[(r, "train")]["tensors"]
            total = sum(float(np.sum(np.square(v - starts[r][n], dtype=np.float64)))
                        for n, v in tensors.items() if n in starts[r])
            norms.setdefault(site, []).append(total ** 0.5)
    return norms


def evaluate(model, mcfg, cfg: dict, test: list, patched: list, target: int) -> dict:
    """Test mAP@0.5, accuracy and macro-F1, and the backdoor's success with and without the patch."""
    from src.evaluation import Predictor, score_predictions

    predictor = Predictor(model, mcfg, **cfg.get("evaluation", {}))
    predictions = predictor.predict(test)
    result = score_predictions(predictions, test, mcfg)
    true = [r.disaster_class if r.has_class else -1 for r in test]
    classes = lambda predicted: [None if p is None else int(np.argmax(p["disaster_probs"]))  # noqa: E731
                                 for p in predicted]
    return {"map50": result["map50"], "accuracy": result["accuracy"], "macro_f1": result["macro_f1"],
            "backdoor_patched": attack_success(classes(predictor.predict(patched)), true, target),
            "backdoor_unpatched": attack_success(classes(predictions), true, target)}


def run_one(exp: dict, cfg: dict, out: Path, split_dir: Path, run: dict, seed: int, clip_norm, test, patched,
            target: int) -> dict:
    """One federation; the test metrics of its last aggregate."""
    import keras

    from src.federated.checkpoint import assign_weights, load_pbuf_weights
    from src.federated.in_process import run_federation
    from src.model import build_model
    from src.settings import model_config

    ws = out / "workspaces" / f"{run['name']}-seed{seed}"
    if ws.exists():
        shutil.rmtree(ws)  # an unfinished run starts over
    prepare_workspace(ws, experiment_plan(exp, run, seed, clip_norm), split_dir)
    sites = split_sites(split_dir)
    (ws / "plan" / "cols.yaml").write_text(yaml.safe_dump({"collaborators": sites}))
    (ws / "plan" / "data.yaml").write_text("".join(f"{s},data_splits/{split_dir.name}/{s}\n" for s in sites))
    aggregates = {}
    scale = exp["attacks"]["scales"].get(run["attack"])
    start, cwd = time.monotonic(), os.getcwd()
    os.chdir(ws)
    try:
        with op_determinism(seed, exp.get("deterministic", False)), \
                scaled_uploads(exp["attacks"]["attacker"] if scale is not None else None, scale):
            _, clients = run_federation(ws, on_round_end=lambda agg, r: aggregates.__setitem__(r, agg.global_tensors()))
    finally:
        os.chdir(cwd)
    rounds = exp["rounds"]
    starts = {0: load_pbuf_weights(ws / "save" / "init.pbuf")[0], **{r + 1: aggregates[r] for r in aggregates}}
    mcfg = model_config(cfg)
    model = build_model(mcfg)
    assign_weights(model, aggregates[rounds - 1])
    result = {**run, "seed": seed, "test": evaluate(model, mcfg, cfg, test, patched, target),
              "update_norms": update_norms(clients, starts, rounds), "federation_s": time.monotonic() - start}
    events = [json.loads(x) for x in (ws / EVENT_LOG).read_text().splitlines()]
    privacy = [e for e in events if e["event"] == "privacy"]
    if privacy:
        last = max(privacy, key=lambda e: e["round"])
        result["privacy"] = {k: last[k] for k in ("round", "epsilon", "delta", "noise_multiplier", "clip_norm")}
    result["clipped"] = sum(e["event"] == "clipped" for e in events)
    keras.backend.clear_session()
    gc.collect()
    result["wall_s"] = time.monotonic() - start
    return result


def median_update_norm(result: dict) -> float:
    """The median whole-update norm over every site and round of a run."""
    return float(statistics.median(n for norms in result["update_norms"].values() for n in norms))


def run_all(exp: dict, out: Path, only: list[str] | None = None) -> list[dict]:
    """Every run of the experiment (or those named in `only`), seed by seed, each kept in
    out/runs/<name>-seed<S>.json and reused while its settings (run_key) are unchanged."""
    from src.data.manifests import load_test_split
    from src.data.synthetic import generate_from_config

    cfg = base_config(exp)
    ensure_backbone_checkpoint(experiment_plan(exp, all_runs(exp, 0)[0], seed=0))
    data_root = REPO / cfg["data"]["root"]
    generate_from_config(cfg, data_root)
    cfg["data"]["root"] = str(data_root)
    classes = cfg["classes"]["disaster"]
    backdoor = Backdoor(**exp["attacks"][BACKDOOR])
    target = classes.index(backdoor.target)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo = [(run, seed) for seed in exp["seeds"] for run in all_runs(exp, seed) if not only or run["name"] in only]
    runs, started, test, patched = [], time.monotonic(), None, None
    for i, (run, seed) in enumerate(todo, 1):
        clip_norm = None
        if run["epsilon"] is not None:
            clip_norm = dp_clip_norm(exp, out, seed)
        kept = out / "runs" / f"{run['name']}-seed{seed}.json"
        key = run_key(exp, run, seed, clip_norm)
        earlier = json.loads(kept.read_text()) if kept.exists() else {}
        if earlier.get("key") == key:
            runs.append(earlier)
            log.info("[%d/%d] %s seed %d: kept from an earlier run", i, len(todo), run["name"], seed)
            continue
        split = build_split(exp, cfg, out, run["sites"], seed)
        if run["attack"] == BACKDOOR:
            split = backdoor_split(exp, split, seed)
        if test is None:  # one test split for every run (the config's seed draws it)
            test = load_test_split(split, cfg["classes"]["victim"], classes, default_data_root=data_root)
            patched = stamped_records(test, out / "test_patched", backdoor)
        log.info("[%d/%d] %s seed %d ...", i, len(todo), run["name"], seed)
        result = run_one(exp, cfg, out, split, run, seed, clip_norm, test, patched, target)
        result["key"] = key
        kept.write_text(json.dumps(result, indent=1))
        runs.append(result)
        t = result["test"]
        log.info("[%d/%d] %s seed %d: test mAP@0.5 %.3f accuracy %.3f backdoor %s%s (%.0f s; %.0f s so far)",
                 i, len(todo), run["name"], seed, t["map50"], t["accuracy"], t["backdoor_patched"]["rate"],
                 f" epsilon {result['privacy']['epsilon']:.2f}" if "privacy" in result else "",
                 result["wall_s"], time.monotonic() - started)
    return runs


def dp_clip_norm(exp: dict, out: Path, seed: int) -> float:
    """privacy.clip_norm: a number as given, or the median update norm of the seed's run without DP."""
    clip = exp["privacy"]["clip_norm"]
    if clip != "median":
        return float(clip)
    reference = out / "runs" / f"{clean_name(exp['privacy']['sites'], False)}-seed{seed}.json"
    if not reference.exists():
        raise SystemExit(f"privacy.clip_norm: median needs the run without DP first ({reference} is missing)")
    return median_update_norm(json.loads(reference.read_text()))


def run_experiment(exp: dict, out: Path, run: dict | None = None, only: list[str] | None = None) -> dict:
    """Every run, then the report: out/report.json (with `run`, where it comes from:
    src/run_record.py) and out/report.md."""
    from workspace.privacy_experiment.report import summarize, write_report

    report = summarize(run_all(exp, out, only), exp)
    if run is not None:
        report = {"run": run, **report}
    write_report(report, out)
    return report
