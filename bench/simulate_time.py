"""`make simulate`'s wall time and test quality over seeds: the default federation as a
newcomer runs it (real `fx` processes and certificates, hybrid active learning).

python -m bench.simulate_time [--seeds 0,1,2] [--out bench/simulate_time.json]

Each seed runs `make simulate SEED=<s>` in this checkout, one after the other (each must
have the machine to itself: the figure is wall time), and keeps its metrics.json in
`<out>.seeds/seed<S>.json`. A kept seed is reused while nothing a run depends on
(RUN_INPUTS) changed since its commit, so seeds can run one at a time and a last call
gathers them. Writes every seed's wall time, phases and test quality, and their medians.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

from src.run_record import REPO, git_commit, run_record

log = logging.getLogger("bench.simulate_time")
# what a `make simulate` run's time and result depend on, in the repository
RUN_INPUTS = ("src", "workspace", "plan", "configs", "data/pretrained", "Makefile", "requirements.txt",
              "constraints.txt")
QUALITY = ("map50", "map50_95", "accuracy")


def run_inputs_clean(repo: Path = REPO) -> bool:
    """Whether the working tree's RUN_INPUTS (untracked files included) are HEAD's. The tree
    as a whole is not: the first call of a seeds-one-at-a-time series rewrites the tracked
    bench/simulate_time.json, so every later run's commit reads "-dirty"."""
    changed = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--", *RUN_INPUTS],
                             cwd=repo, capture_output=True, text=True, check=True).stdout
    return not changed.strip()


def run_commit(metrics: dict) -> str | None:
    """The commit a kept run ran: its record's, without "-dirty" when its RUN_INPUTS were clean."""
    commit = metrics["run"]["commit"]
    return commit.removesuffix("-dirty") if commit and metrics.get("run_inputs_clean") else commit


def kept_run_is_current(metrics: dict, repo: Path = REPO) -> bool:
    """True when the kept run ran its commit's RUN_INPUTS and the working tree's are still
    those of that commit."""
    commit = run_commit(metrics)
    if not commit or commit.endswith("-dirty"):
        return False
    return subprocess.run(["git", "diff", "--quiet", commit, "--", *RUN_INPUTS], cwd=repo).returncode == 0


def run_seed(seed: int, kept: Path) -> dict:
    """One `make simulate SEED=seed` (or the kept one); its metrics.json, with whether the
    run's RUN_INPUTS were clean (`run_inputs_clean`)."""
    if kept.exists():
        metrics = json.loads(kept.read_text())
        if kept_run_is_current(metrics):
            log.info("seed %d: kept run of %s", seed, run_commit(metrics)[:10])
            return metrics
    log.info("seed %d: make simulate SEED=%d", seed, seed)
    clean = run_inputs_clean()
    subprocess.run(["make", "simulate", f"SEED={seed}"], cwd=REPO, check=True)
    metrics = json.loads((REPO / "workspace" / "runs" / "latest" / "metrics.json").read_text())
    metrics["run_inputs_clean"] = clean and run_inputs_clean()
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(metrics, indent=2))
    return metrics


def seed_summary(metrics: dict) -> dict:
    """The figures the issue's target reads: wall time, federation phases, best model's test quality."""
    phases = metrics["phases"]
    test = metrics["final"]["test"]
    return {"seed": metrics["seed"], "commit": run_commit(metrics), "date": metrics["run"]["date"],
            "wall_s": metrics["wall_s"], "training_rounds_s": phases["training_rounds_s"],
            "round_s": phases["per_round"]["wall_s"], "setup_s": phases["setup_s"],
            "cold_start_s": phases["cold_start_s"], "final_evaluation_s": phases["final_evaluation_s"],
            **{k: test[k] for k in QUALITY}}


def summarize(seeds: list[dict]) -> dict:
    keys = ("wall_s", "round_s", *QUALITY)
    return {"median": {k: statistics.median(s[k] for s in seeds) for k in keys},
            "max_wall_s": max(s["wall_s"] for s in seeds), "seeds": seeds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "simulate_time.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    seeds = [int(s) for s in args.seeds.split(",")]
    kept = args.out.with_suffix(".seeds")
    runs = [seed_summary(run_seed(s, kept / f"seed{s}.json")) for s in seeds]
    result = {**summarize(runs), "commit": git_commit(REPO),
              "run": run_record("bench.simulate_time", argv or sys.argv[1:])}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    m = result["median"]
    log.info("median over seeds %s: wall %.0f s (max %.0f), round %.1f s, test mAP50 %.3f mAP50-95 %.3f "
             "accuracy %.3f -> %s", seeds, m["wall_s"], result["max_wall_s"], m["round_s"], m["map50"],
             m["map50_95"], m["accuracy"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
