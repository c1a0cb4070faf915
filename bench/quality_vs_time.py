"""Quality per CPU-minute: the centralized detector trained from scratch on every label,
scored on the test split at fixed wall-clock budgets.

python -m bench.quality_vs_time [--seeds 0,1,2] [--minutes 5,10,15] [--set key=value ...]
    [--out bench/quality_vs_time.json]

Each seed runs in its own process (a cold start, like a user's). Its clock starts after
the imports, before the data is read and the model built; it trains with a learning-rate
schedule that ends at the largest budget (retargeted from the measured step rate) and,
at each budget, stops training early enough that the test evaluation ends on the budget
(the evaluation's own time counts, the model evaluated is the weights' moving average
when `training.ema_decay` is on). Later budgets include the earlier evaluations' time.

Data: the built-in data set split with the data seed 0 (train 2,400 images, every box and
class label; test 450), whatever the training seed, so seeds differ only in training.
Writes the medians over seeds and every seed's figures to `--out`, and a plot beside it.
A seed already run with the same settings, budgets and commit (`<out>.seeds/seed<S>.json`)
is reused, so seeds can run one at a time and a last call gathers them.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLOCK_START = time.perf_counter()

import yaml  # noqa: E402

from src.run_record import REPO, git_commit, run_record  # noqa: E402
from src.settings import apply_overrides, load_config, parse_assignments  # noqa: E402

log = logging.getLogger("bench.quality_vs_time")
DATA_SEED = 0
METRICS = ("map50", "map50_95", "accuracy")
FIRST_EVALUATION_GUESS_S = 8.0  # reserved before the first evaluation, whose time is then measured


def train_and_score(cfg: dict, minutes: list[float], model_path: Path) -> dict:
    """One seed: train until each budget (less the evaluation's time), score the test split;
    the model as last scored is saved to `model_path` (after the clock stops)."""
    import keras

    from src.atomic_files import save_model_atomically
    from src.data.datasets import load_data
    from src.data.pipeline import pipeline_options, training_dataset
    from src.evaluation import Predictor, score_predictions
    from src.model import build_model
    from src.settings import model_config
    from src.training import Trainer, train_options

    splits = load_data(apply_overrides(cfg, {"seed": DATA_SEED}))
    keras.utils.set_random_seed(cfg["seed"])
    mcfg = model_config(cfg)
    model = build_model(mcfg)
    popts = pipeline_options(cfg)
    topts = train_options(cfg)
    steps_per_epoch = len(splits["train"]) // popts.batch_size
    trainer = Trainer(model, mcfg, topts, steps_per_epoch=steps_per_epoch)
    predictor = Predictor(model, mcfg, **cfg.get("evaluation", {}))
    batches = iter(training_dataset(splits["train"], mcfg, popts, num_batches=10 ** 9))
    end = CLOCK_START + 60 * max(minutes)
    evaluation_s = FIRST_EVALUATION_GUESS_S
    steps = 0
    checkpoints = {}
    for budget in sorted(minutes):
        stop = CLOCK_START + 60 * budget - evaluation_s
        while time.perf_counter() < stop:
            # a block of at most one epoch, then retarget the schedule's end at the last budget
            block_start, block_steps = time.perf_counter(), trainer.optimizer.iterations.numpy()
            result = trainer.train_epoch(_take(batches, steps_per_epoch), len(checkpoints), progress=False,
                                         deadline=stop)
            steps = int(trainer.optimizer.iterations.numpy())
            rate = (steps - block_steps) / max(time.perf_counter() - block_start, 1e-9)
            evaluations_left = sum(b > budget for b in minutes) + 1
            remaining = end - time.perf_counter() - evaluations_left * evaluation_s
            trainer.schedule.retarget(steps + rate * max(remaining, 0.0))
            log.info("%.0f s: step %d, %.1f img/s, loss %.3f", time.perf_counter() - CLOCK_START, steps,
                     result["images_per_s"], result["loss"])
        evaluation_start = time.perf_counter()
        with trainer.averaged_weights():
            test = score_predictions(predictor.predict(splits["test"]), splits["test"], mcfg)
        evaluation_s = time.perf_counter() - evaluation_start
        checkpoints[_key(budget)] = {
            **{k: test.get(k) for k in METRICS}, "wall_s": time.perf_counter() - CLOCK_START,
            "evaluation_s": evaluation_s, "steps": steps, "epochs": steps / steps_per_epoch}
        log.info("budget %s min: %s", _key(budget), json.dumps(checkpoints[_key(budget)]))
    trainer.finish()
    save_model_atomically(model, model_path)
    return {"seed": cfg["seed"], "checkpoints": checkpoints, "model_path": str(model_path), "parameters": int(model.count_params()),
            "train_images": len(splits["train"]), "test_images": len(splits["test"])}


def _take(iterator, n):
    for _ in range(n):
        yield next(iterator)


def _key(minutes: float) -> str:
    return f"{minutes:g}"


def _same_run(seed_result: dict, overrides: dict, minutes: list[float]) -> bool:
    """A finished seed is reused when it ran with these settings and budgets (same commit)."""
    return (seed_result.get("settings") == overrides and seed_result.get("minutes") == minutes
            and seed_result.get("commit") == git_commit(REPO))


def medians(seed_results: list[dict], minutes: list[float]) -> dict:
    return {_key(m): {k: statistics.median(r["checkpoints"][_key(m)][k] for r in seed_results) for k in METRICS}
            for m in minutes}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [float(m) for m in result["median"]]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, metric in zip(axes, METRICS):
        for seed in result["seeds"]:
            ax.plot(minutes, [seed["checkpoints"][_key(m)][metric] for m in minutes], "o", color="0.7", ms=4)
        ax.plot(minutes, [result["median"][_key(m)][metric] for m in minutes], "o-", label="median")
        for target in result.get("targets", {}).get(metric, []):
            ax.axhline(target["value"], ls="--", lw=1, color="tab:red")
            ax.annotate(target["label"], (minutes[0], target["value"]), fontsize=7, color="tab:red",
                        va="bottom")
        ax.set_xlabel("wall minutes (training + evaluation)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result['label']}: test quality vs CPU time, {len(result['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TARGETS = {  # issue 33: the peer (YOLOv8n, 15 min here) and the targets at 15 min
    "map50": [{"label": "peer YOLOv8n 0.350", "value": 0.350}, {"label": "target 0.45", "value": 0.45}],
    "map50_95": [{"label": "peer YOLOv8n 0.116", "value": 0.116}, {"label": "target 0.13", "value": 0.13}],
    "accuracy": [{"label": "target 0.94", "value": 0.94}],
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--minutes", default="5,10,15")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="settings override")
    p.add_argument("--label", default="default settings")
    p.add_argument("--out", type=Path, default=Path("bench/quality_vs_time.json"))
    p.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    minutes = [float(m) for m in args.minutes.split(",")]
    overrides = parse_assignments(args.set)
    if args.one_seed is not None:
        cfg = load_config(None, {**overrides, "seed": args.one_seed})
        result = train_and_score(cfg, minutes, args.out.with_suffix(".keras"))
        result.update(settings=overrides, minutes=minutes, commit=git_commit(REPO))
        args.out.write_text(json.dumps(result, indent=2))
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.out.with_suffix(".seeds")
    work.mkdir(parents=True, exist_ok=True)
    seed_results = []
    for seed in seeds:
        seed_out = work / f"seed{seed}.json"
        if seed_out.exists() and _same_run(json.loads(seed_out.read_text()), overrides, minutes):
            log.info("seed %d: reusing %s", seed, seed_out)
            seed_results.append(json.loads(seed_out.read_text()))
            continue
        child = [sys.executable, "-m", "bench.quality_vs_time", "--one-seed", str(seed), "--minutes", args.minutes,
                 "--out", str(seed_out), *[f"--set={s}" for s in args.set]]
        log.info("seed %d: %s", seed, " ".join(child))
        subprocess.run(child, check=True)
        seed_results.append(json.loads(seed_out.read_text()))
    result = {"label": args.label, "settings": overrides, "median": medians(seed_results, minutes),
              "seeds": seed_results, "targets": TARGETS, "data_seed": DATA_SEED,
              "run": run_record("bench.quality_vs_time", argv)}
    result["commit"] = result["run"]["commit"]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    for m, row in result["median"].items():
        log.info("%s min: mAP50 %.3f mAP50-95 %.3f accuracy %.3f (median of %d seeds)", m, row["map50"],
                 row["map50_95"], row["accuracy"], len(seeds))
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
