"""`make simulate`: a whole OpenFL federation on one machine, for real.

python -m workspace.simulate [--rounds N] [--sites N] [--seed S] [--split data_splits/NAME]
    [--labels both,boxes,class] [--backbone-mode joint|frozen] [--exchange decoupled|full]
    [--active-learning STRATEGY [--seed-fraction 0.1] [--final-fraction 0.3]]

Runs on the built-in synthetic data (generated if missing), or with --split on
any split folder the split builder wrote (src/data/split_builder.py). It builds a run folder
workspace/runs/<id>/ (workspace/runs/latest points at it) holding an OpenFL
workspace, issues a CA, aggregator and collaborator certificates with `fx`,
starts `fx aggregator start` and one `fx collaborator start -n SITE` per site
as separate processes on localhost with mutual TLS, prints one progress line
per round, and finally evaluates the best global model on the held-out test
split and writes metrics.json, curves.png, detections.png and model.keras.
With --active-learning each site starts with a seed fraction of its training
images labeled and labels more every round with the strategy and a simulated
oracle (src/active_learning/), up to the final fraction.

Any process failing stops the run with its log tail and a non-zero exit;
Ctrl-C (or SIGTERM) kills every child process group, so no `fx` is left behind.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUNS = REPO / "workspace" / "runs"
FX = str(Path(sys.executable).parent / "fx")
EVENT_LOG = "logs/federation_events.jsonl"
# --active-learning's budget: as configs/al_experiment.yaml measures it (README "Active learning")
AL_SEED_FRACTION, AL_FINAL_FRACTION = 0.1, 0.3

log = logging.getLogger("simulate")


class RunFailed(RuntimeError):
    pass


# ---- process management ---------------------------------------------------------------------
class Children:
    """Started processes, each in its own session so the whole tree can be killed."""

    def __init__(self):
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, name: str, cmd: list[str], cwd: Path, log_path: Path, env=None):
        log_file = open(log_path, "w")
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        self.procs[name] = (proc, log_path)
        return proc

    def kill_all(self, grace_s: float = 5.0):
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for proc, _ in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log_path: Path, timeout_s: float = 180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunFailed(f"aggregator exited with {proc.returncode} before listening:\n{tail(log_path)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RunFailed(f"aggregator did not listen on port {port} within {timeout_s:.0f} s:\n{tail(log_path)}")


# ---- workspace --------------------------------------------------------------------------------
def set_plan_value(plan: dict, item: str):
    """`aggregator.settings.backbone_weighting=task_balanced`: set one nested plan key (YAML value)."""
    path, sep, value = item.partition("=")
    if not sep or not path:
        raise RunFailed(f"--plan-set {item!r}: expected SECTION.KEY=VALUE")
    *parents, key = path.split(".")
    node = plan
    for name in parents:
        if not isinstance(node.get(name), dict):
            raise RunFailed(f"--plan-set {item!r}: the plan has no section {name!r} there")
        node = node[name]
    node[key] = yaml.safe_load(value)


def prepare_workspace(ws: Path, plan: dict, split_dir: Path, rounds: int, port: int, seed: int,
                      overrides: list[str] = (), stock_polling: bool = False):
    """An OpenFL workspace in the run folder: code and data linked, split copied, and
    `plan` (the repository's with the run's --plan-set items) written with this run's
    rounds, seed, port, config overrides and event log."""
    ws.mkdir(parents=True)
    (ws / ".workspace").write_text("")
    for name in ("src", "configs", "data"):
        (ws / name).symlink_to(REPO / name)
    (ws / "plan").mkdir()
    plan = copy.deepcopy(plan)
    plan["aggregator"]["settings"]["rounds_to_train"] = rounds
    plan["task_runner"]["settings"]["rounds"] = rounds
    runner_overrides = plan["task_runner"]["settings"].setdefault("overrides", {})
    runner_overrides["seed"] = seed
    for item in overrides:
        key, value = item.split("=", 1)
        runner_overrides[key] = yaml.safe_load(value)
    plan["network"]["settings"]["agg_port"] = port
    plan["aggregator"]["settings"]["event_log"] = EVENT_LOG
    if stock_polling:
        plan["aggregator"]["settings"]["long_poll_s"] = 0
    (ws / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    (ws / "plan" / "cols.yaml").write_text("collaborators: []\n")
    (ws / "plan" / "data.yaml").write_text("")
    copy_split(split_dir, ws / "data_splits" / split_dir.name)
    for folder in ("logs", "save", "local_state"):
        (ws / folder).mkdir()


def copy_split(split_dir: Path, target: Path):
    """Copy a split folder into the workspace; its data paths (relative to where the
    split was written) become absolute, so they stay valid in the copy."""
    shutil.copytree(split_dir, target)
    for meta_file in [target / "split.yaml", *target.glob("*/site.yaml")]:
        if not meta_file.exists():
            continue
        meta = yaml.safe_load(meta_file.read_text()) or {}
        original = split_dir / meta_file.relative_to(target).parent
        for key in ("sources", "data_root"):
            if meta.get(key):
                meta[key] = str((original / meta[key]).resolve())
        meta_file.write_text(yaml.safe_dump(meta, sort_keys=False))


def split_sites(split_dir: Path) -> list[str]:
    """Site folders of a split (those holding a site.yaml), in name order."""
    sites = sorted(p.name for p in split_dir.iterdir() if (p / "site.yaml").exists())
    if not sites:
        raise RunFailed(f"{split_dir}: no site folders (site*/site.yaml); build one with src.data.split_builder")
    return sites


def certify(ws: Path, sites: list[str], split_name: str, setup_log: Path, env):
    """The stock OpenFL sequence (see README "Deployment"): CA, aggregator, one cert per site.

    The command lines run through OpenFL's `fx` entry point in one process
    (workspace/fx_batch.py): the same commands, without ~5 s of imports each."""
    steps = [["plan", "initialize", "-a", "localhost"],
             ["workspace", "certify"],
             ["aggregator", "generate-cert-request", "--fqdn", "localhost"],
             ["aggregator", "certify", "--fqdn", "localhost", "--silent"]]
    for site in sites:
        steps += [["collaborator", "create", "-n", site, "-d", f"data_splits/{split_name}/{site}", "-s"],
                  ["collaborator", "generate-cert-request", "-n", site, "-s"],
                  ["collaborator", "certify", "-n", site, "-s"]]
    lines = [shlex.join(step) for step in steps]
    cmd = [sys.executable, str(Path(__file__).with_name("fx_batch.py")), *lines]
    done = 0
    with open(setup_log, "a") as f, subprocess.Popen(cmd, cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                     env=env, text=True) as proc:
        for out in proc.stdout:
            f.write(out)
            if out.startswith("$ fx "):
                done += 1
                log.info("setup %d/%d: %s", done, len(steps), out.strip()[2:])
    if proc.returncode != 0:
        raise RunFailed(f"fx setup failed (exit {proc.returncode}):\n{tail(setup_log)}")


# ---- progress ---------------------------------------------------------------------------------
class Progress:
    """Reads the aggregator's event log and prints one line per finished round."""

    def __init__(self, path: Path, rounds: int, sites: list[str]):
        self.path, self.rounds, self.sites = path, rounds, sites
        self.offset = 0
        self.events: list[dict] = []
        self.started = time.monotonic()
        self.last_round_end = self.started

    def poll(self):
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self.offset)
            chunk = f.read()
            complete = chunk[:chunk.rfind("\n") + 1]
            self.offset += len(complete)
        for line in complete.splitlines():
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == "round_end":
                self.print_round(event["round"])

    def round_summary(self, rnd: int) -> dict:
        sites = {s: {} for s in self.sites}
        score = None
        for e in self.events:
            if e.get("round") != rnd:
                continue
            if e["event"] == "metric":
                # NaN: a metric the site has no labels for (mAP at a classification-only site)
                value = e["value"] if math.isfinite(e["value"]) else None
                sites.setdefault(e["site"], {})[e["name"]] = value
                if e["site"] == "aggregator" and e["name"] == "score":
                    score = e["value"]
            elif e["event"] == "tasks_sent":
                sites.setdefault(e["site"], {})["idle_s"] = e["idle_s"]
            elif e["event"] == "upload" and e.get("task") == "train":
                site = sites.setdefault(e["site"], {})
                site["upload_bytes"] = e["bytes"]
                site["upload_bytes_by_group"] = e["by_group"]
            elif e["event"] == "rejected":  # a broken update left out (src/federated/update_checks.py)
                sites.setdefault(e["site"], {})["rejected"] = e["reason"]
            elif e["event"] == "download":
                site = sites.setdefault(e["site"], {})
                site["download_bytes"] = e["bytes"]
                site["download_bytes_by_group"] = e["by_group"]
        agg = sites.pop("aggregator", {})
        idle = [s["idle_s"] for s in sites.values() if "idle_s" in s]
        start = next((e["time"] for e in self.events if e["event"] == "round_start" and e["round"] == rnd), None)
        end = next((e["time"] for e in self.events if e["event"] == "round_end" and e["round"] == rnd), None)
        summary = {"round": rnd, "score": score if score is not None else agg.get("score"),
                   "aggregated": agg, "sites": sites,
                   "idle_s": statistics.median(idle) if idle else None,
                   "wall_s": (end - start) if start and end else None}
        if rnd >= self.rounds:  # the plan's final_validation_tasks: validates, trains nothing
            summary["validation_only"] = True
        return summary

    def finished_rounds(self) -> list[int]:
        """Every round the aggregator closed, the validation-only one after training included."""
        return sorted({e["round"] for e in self.events if e["event"] == "round_end"})

    def model_bytes(self) -> dict:
        """The full model's size on the wire, as the aggregator measured it at start."""
        event = next((e for e in self.events if e["event"] == "model"), {})
        return {"model_bytes": event.get("model_bytes"), "by_group": event.get("model_bytes_by_group", {})}

    def print_round(self, rnd: int):
        s = self.round_summary(rnd)
        parts = []
        for site, m in s["sites"].items():
            trained = "" if s.get("validation_only") else f"loss {_fmt(m.get('loss'), 2)} "
            uploaded = "" if s.get("validation_only") else f" up {m.get('upload_bytes', 0) / 1e6:.2f} MB"
            parts.append(f"{site} {trained}mAP {_fmt(m.get('map50'))} acc {_fmt(m.get('accuracy'))}{uploaded}"
                         + (f" labeled {m['al_labeled']:.0f} pool {m['al_pool']:.0f}" if "al_labeled" in m else "")
                         + (" REJECTED" if "rejected" in m else ""))
        title = (f"final validation (the aggregate of round {self.rounds})" if s.get("validation_only")
                 else f"round {rnd + 1}/{self.rounds}")
        print(f"{title} | " + " | ".join(parts) +
              f" | score {_fmt(s['score'])}"
              f" | idle {s['idle_s'] if s['idle_s'] is not None else float('nan'):.2f} s"
              f" | {s['wall_s'] or 0:.0f} s", flush=True)
        for site, m in s["sites"].items():
            if "rejected" in m:
                print(f"  {site}: update rejected, not averaged this round: {m['rejected']}", flush=True)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---- final report -----------------------------------------------------------------------------
def traffic_summary(rounds: list[dict], model_bytes: int | None) -> dict:
    """Per site: mean bytes per round up and down, by group, and upload as a share of the model."""
    out = {}
    for site in sorted({s for r in rounds for s in r["sites"]}):
        per = [r["sites"][site] for r in rounds if "upload_bytes" in r["sites"].get(site, {})]
        if not per:
            continue
        groups = sorted({g for m in per for g in m.get("upload_bytes_by_group", {})})
        up = statistics.mean(m["upload_bytes"] for m in per)
        down = [m["download_bytes"] for m in per if "download_bytes" in m]
        out[site] = {"upload_bytes_per_round": up,
                     "download_bytes_per_round": statistics.mean(down) if down else None,
                     "upload_bytes_by_group": {g: statistics.mean(m["upload_bytes_by_group"].get(g, 0)
                                                                  for m in per) for g in groups},
                     "upload_fraction_of_model": up / model_bytes if model_bytes else None}
    return out


def final_report(run_dir: Path, ws: Path, split_dir: Path, progress: Progress, seed: int,
                 started: float) -> dict:
    """Evaluate init/last/best on the test split, write the report files.

    `wall_s` is everything a user waits for, from `started` (monotonic) to the
    report written, this evaluation included; `federation_s` stops when the last
    fx process exits."""
    federation_s = time.monotonic() - started
    import numpy as np

    from src.config import load_config, model_config, train_options
    from src.evaluation import Predictor, score_predictions
    from src.model.loss import MultiTaskLoss
    from src.atomic_files import save_model_atomically
    from src.model import build_model
    from src.federated.checkpoint import assign_weights, load_pbuf_weights
    from src.data.manifests import load_test_split
    from workspace.report import load_central, plot_curves, plot_detections

    plan = yaml.safe_load((ws / "plan" / "plan.yaml").read_text())
    overrides = plan["task_runner"]["settings"].get("overrides", {})
    cfg = load_config(REPO / "configs" / "default.yaml", [f"{k}={v}" for k, v in overrides.items()])
    mcfg = model_config(cfg)
    records = load_test_split(split_dir, cfg["classes"]["victim"], cfg["classes"]["disaster"],
                              default_data_root=REPO / cfg["data"]["root"])
    loss_weights = train_options(cfg).loss_weights

    evaluated = []  # (weights, evaluation): a state equal to one already evaluated is not evaluated again

    def evaluate_state(path: Path):
        weights, state_round = load_pbuf_weights(path)
        for seen, result in evaluated:
            if seen.keys() == weights.keys() and all(np.array_equal(seen[k], weights[k]) for k in weights):
                return result[:3] + (state_round,)
        model = build_model(mcfg)
        assign_weights(model, weights)
        predictions, loss = Predictor(model, mcfg, **cfg.get("evaluation", {})).predict_with_loss(
            records, MultiTaskLoss(mcfg, loss_weights), progress=True)
        result = score_predictions(predictions, records, mcfg)
        result["loss"] = loss
        evaluated.append((weights, (model, predictions, result, state_round)))
        return model, predictions, result, state_round

    initial = evaluate_state(ws / "save" / "init.pbuf")[2]
    last_aggregate = evaluate_state(ws / "save" / "final.pbuf")[2]
    best_path = ws / "save" / "best.pbuf"
    # with the plan's final validation round the best model is often the last aggregate
    model, predictions, test, best_round = evaluate_state(
        best_path if best_path.exists() else ws / "save" / "last.pbuf")
    save_model_atomically(model, run_dir / "model.keras")
    rounds = [progress.round_summary(r) for r in progress.finished_rounds()]
    idle = [r["idle_s"] for r in rounds[1:] if r["idle_s"] is not None]
    runner = plan["task_runner"]["settings"]
    model_bytes = progress.model_bytes()
    central = load_central(REPO)
    plot_curves(rounds, run_dir / "curves.png", central)
    plot_detections(records, predictions, cfg["classes"]["disaster"], run_dir / "detections.png")
    metrics = {
        "final": {"test": test, "best_round": int(best_round)},
        "initial": {"test": initial},
        # the aggregate after the last round's training (OpenFL's best/last.pbuf hold
        # models a round started with: without the plan's final validation round,
        # best has at most rounds-1 epochs)
        "last_aggregate": {"test": last_aggregate},
        "rounds": rounds,
        "median_idle_s": statistics.median(idle) if idle else None,
        "wall_s": time.monotonic() - started, "federation_s": federation_s,
        "seed": seed, "sites": progress.sites,
        "model": mcfg.to_dict(),
        "backbone_mode": runner.get("backbone_mode", "joint"), "exchange": runner.get("exchange", "decoupled"),
        "active_learning": runner.get("active_learning"),
        "model_bytes": model_bytes["model_bytes"], "model_bytes_by_group": model_bytes["by_group"],
        "traffic": traffic_summary(rounds, model_bytes["model_bytes"]),
    }
    if central:
        metrics["central_reference"] = {"test": central["test"], "epochs": central["epochs"],
                                        "split": central.get("split"), "labels": central.get("labels")}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


# ---- main -------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="default: plan/plan.yaml rounds_to_train")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet non-IID-ness of a new split")
    p.add_argument("--split", type=Path, default=None,
                   help="a split folder (data_splits/NAME from src.data.split_builder); sites are its folders")
    p.add_argument("--labels", default=None,
                   help="label set per site of a new split, cycled: both|boxes|class "
                        "(default both,boxes,class: the committed default split)")
    p.add_argument("--backbone-mode", choices=("joint", "frozen"), default=None,
                   help="default: the plan's (joint); frozen needs the pretrained backbone "
                        "(made here with src.pretrain_backbone when missing)")
    p.add_argument("--backbone-init", choices=("checkpoint", "scratch"), default=None,
                   help="where a joint backbone starts: default the plan's (checkpoint, the public "
                        "pretrained backbone); scratch = random initialization")
    p.add_argument("--exchange", choices=("decoupled", "full"), default=None,
                   help="default: the plan's (decoupled); full = naive baseline averaging every tensor")
    p.add_argument("--active-learning", default=None, metavar="STRATEGY",
                   help="label under a budget: each site starts with --seed-fraction of its training "
                        "images labeled and queries every round with STRATEGY (random, entropy, margin, "
                        "emh, hybrid) and the simulated oracle up to --final-fraction (a new split)")
    p.add_argument("--seed-fraction", type=float, default=AL_SEED_FRACTION,
                   help="with --active-learning: labeled at the start (default %(default)s)")
    p.add_argument("--final-fraction", type=float, default=AL_FINAL_FRACTION,
                   help="with --active-learning: labeled after the last query (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the sites' task runner, e.g. model.input_size=128")
    p.add_argument("--plan-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="set any plan key, e.g. aggregator.settings.backbone_weighting=task_balanced")
    p.add_argument("--stock-polling", action="store_true",
                   help="OpenFL's stock 10 s sleep between rounds (to measure what the long poll saves)")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS, help="where run folders go")
    args = p.parse_args(argv)
    if args.active_learning is not None:
        from src.active_learning.selection import STRATEGIES

        if args.active_learning not in STRATEGIES:
            p.error(f"--active-learning {args.active_learning}: not a strategy; known: {', '.join(STRATEGIES)}")
        if not 0 < args.seed_fraction < args.final_fraction <= 1:
            p.error("--seed-fraction and --final-fraction: need 0 < seed < final <= 1, "
                    f"got {args.seed_fraction} and {args.final_fraction}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.chdir(REPO)  # config paths (data/synthetic, configs/) are relative to the repository
    sys.path.insert(0, str(REPO))

    plan = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    rounds = args.rounds or plan["aggregator"]["settings"]["rounds_to_train"]
    started = time.monotonic()

    run_id = time.strftime("%Y%m%d-%H%M%S")
    runs = args.runs_dir.resolve()
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    latest = runs / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    log.info("run folder %s", run_dir)

    children = Children()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        split_dir = ensure_data_and_split(args, run_dir)
        sites = split_sites(split_dir)
        ws = run_dir / "workspace"
        port = free_port()
        # --backbone-mode / --backbone-init / --exchange are shorthands for --plan-set task_runner.settings.*
        shorthands = [f"task_runner.settings.{k}={v}" for k, v in
                      (("backbone_mode", args.backbone_mode), ("backbone_init", args.backbone_init),
                       ("exchange", args.exchange)) if v]
        for item in shorthands + args.plan_set:
            set_plan_value(plan, item)
        runner = plan["task_runner"]["settings"]
        if args.active_learning:
            runner["active_learning"] = simulated_labeling(args.active_learning, args.final_fraction, args.seed)
        from src.task_groups import starts_from_checkpoint

        if starts_from_checkpoint(runner.get("backbone_mode", "joint"), runner.get("backbone_init", "scratch")):
            ensure_backbone_checkpoint(runner["backbone_checkpoint"], args.set)
        prepare_workspace(ws, plan, split_dir, rounds, port, args.seed, args.set, args.stock_polling)
        # fx puts the workspace on sys.path itself; an inherited PYTHONPATH (the
        # Makefile exports the repository root) would shadow OpenFL's own
        # `workspace` template package with our workspace/ tools folder.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONUNBUFFERED"] = "1"
        certify(ws, sites, split_dir.name, run_dir / "setup.log", env)

        log.info("starting aggregator on localhost:%d (mutual TLS) and %d collaborators", port, len(sites))
        agg = children.start("aggregator", [FX, "aggregator", "start"], ws, run_dir / "aggregator.log", env)
        # the sites start up (imports, model, data: ~10 s each) while the aggregator does;
        # each waits for it before its first task (src/federated/collaborator.py)
        for site in sites:
            children.start(site, [FX, "collaborator", "start", "-n", site], ws, run_dir / f"{site}.log", env)
        wait_for_port(port, agg, run_dir / "aggregator.log")
        progress = Progress(ws / EVENT_LOG, rounds, sites)
        while True:
            progress.poll()
            states = {name: proc.poll() for name, (proc, _) in children.procs.items()}
            failed = {n: c for n, c in states.items() if c not in (None, 0)}
            if failed:
                name, code = next(iter(failed.items()))
                raise RunFailed(f"{name} exited with {code}:\n{tail(children.procs[name][1])}")
            if all(c == 0 for c in states.values()):
                break
            time.sleep(1.0)
        progress.poll()
        metrics = final_report(run_dir, ws, split_dir, progress, args.seed, started)
        t = metrics["final"]["test"]
        print(f"test (best global model: the aggregate of round {metrics['final']['best_round']} "
              f"of {rounds}, chosen by the sites' validation score): "
              f"mAP50 {t.get('map50', float('nan')):.3f} mAP50-95 {t.get('map50_95', float('nan')):.3f} "
              f"accuracy {t.get('accuracy', float('nan')):.3f} macro-F1 {t.get('macro_f1', float('nan')):.3f} | "
              f"median idle {metrics['median_idle_s'] or 0:.2f} s/round | wall {metrics['wall_s']:.0f} s "
              f"(federation {metrics['federation_s']:.0f} s, then the test evaluation)")
        la = metrics["last_aggregate"]["test"]
        print(f"test (aggregate after the last round): mAP50 {la.get('map50', float('nan')):.3f} "
              f"accuracy {la.get('accuracy', float('nan')):.3f}")
        print(f"upload per round ({metrics['exchange']}, backbone {metrics['backbone_mode']}; "
              f"full model {(metrics['model_bytes'] or 0) / 1e6:.2f} MB): " + " | ".join(
                  f"{site} {t['upload_bytes_per_round'] / 1e6:.2f} MB "
                  f"({100 * (t['upload_fraction_of_model'] or 0):.1f} %: "
                  + ", ".join(f"{g} {b / 1e6:.2f}" for g, b in t["upload_bytes_by_group"].items()) + ")"
                  for site, t in metrics["traffic"].items()))
        if metrics["active_learning"]:
            last = metrics["rounds"][rounds - 1]["sites"]
            print(f"labeled at the end ({metrics['active_learning']['strategy']}, simulated oracle): " + " | ".join(
                f"{site} {m['al_labeled']:.0f} of {m['al_labeled'] + m['al_pool'] + m.get('al_pending', 0):.0f}"
                for site, m in last.items() if "al_labeled" in m))
        print(f"report: {run_dir}/(metrics.json, curves.png, detections.png, model.keras)")
        return 0
    except RunFailed as e:
        print(f"simulate: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("simulate: interrupted; stopping all processes", file=sys.stderr)
        return 130
    finally:
        children.kill_all()


def ensure_data_and_split(args, run_dir: Path) -> Path:
    """--split as given, the default split when it fits the request, else a new one in the run folder."""
    if args.split is not None:
        if not args.split.is_dir():
            raise RunFailed(f"--split {args.split}: no such folder")
        if args.active_learning and not split_has_pool(args.split):
            raise RunFailed(f"--split {args.split}: no site has unlabeled `pool` rows for --active-learning; "
                            "build one with `python -m src.data.site_splits --seed-fraction 0.1`")
        return args.split.resolve()
    from src.config import load_config
    from src.data.site_splits import DEFAULT_LABELS, build_site_splits
    from src.data.synthetic import generate_from_config

    cfg = load_config(REPO / "configs" / "default.yaml")
    generate_from_config(cfg, REPO / cfg["data"]["root"])
    default = REPO / "data_splits" / "default"
    labels = args.labels.split(",") if args.labels else list(DEFAULT_LABELS)
    seed_fraction = args.seed_fraction if args.active_learning else 1.0
    if (args.sites == 3 and args.seed == 0 and args.alpha == 0.5 and labels == list(DEFAULT_LABELS)
            and seed_fraction == 1.0 and default.exists()):
        return default
    split_dir = run_dir / "split" / f"sites{args.sites}-seed{args.seed}"
    for s in build_site_splits(cfg, split_dir, args.sites, args.alpha, args.seed, labels, seed_fraction):
        log.info("%s (%s labels): %d train, %d pool, %d val", s["site"], s["labels"], s["train"], s["pool"],
                 s["val"])
    return split_dir


def simulated_labeling(strategy: str, final_fraction: float, seed: int, query_every: int = 1) -> dict:
    """The plan's task_runner.settings.active_learning for a run whose oracle reveals held-back labels."""
    return {"strategy": strategy, "final_fraction": final_fraction, "query_every": query_every,
            "oracle": "simulated", "seed": seed}


def split_has_pool(split_dir: Path) -> bool:
    """Whether any site of the split holds unlabeled (`pool`) training images."""
    from src.data.manifests import read_manifest

    return any(row[1] == "pool" for site in split_sites(split_dir)
               for row in read_manifest(split_dir / site / "manifest.tsv"))


def ensure_backbone_checkpoint(path: str, overrides: list[str]):
    """frozen (and joint with backbone_init checkpoint) start from the public pretrained
    backbone: make it when missing."""
    if (REPO / path).exists():
        return
    from src.config import load_config
    from src.pretrain_backbone import pretrain

    cfg = load_config(REPO / "configs" / "default.yaml", list(overrides) + [f"pretrain.checkpoint={path}"])
    log.info("backbone checkpoint %s missing: pretraining it on the public slice (%d images, %d epochs)",
             path, cfg["pretrain"]["num_images"], cfg["pretrain"]["epochs"])
    pretrain(cfg, REPO / "workspace" / "runs" / "pretrain")


if __name__ == "__main__":
    sys.exit(main())
