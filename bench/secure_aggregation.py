"""Secure aggregation's overhead on the default federation: round time and bytes per site.

python -m bench.secure_aggregation [--rounds 2] [--seeds 0] [--out bench/secure_aggregation.json]

Runs `make simulate`'s federation (real fx processes, mutual TLS, the default model and
active learning) with and without `aggregator.settings.pairwise_masking`, alternating the
two per seed so both see the same machine load, and writes per variant the median wall
time of the training rounds (not the final validation-only round), the upload bytes per
site and round, test mAP@0.5 and accuracy, and the ratios masked / plain. --reuse keeps a
finished run's metrics.json instead of running it again.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from src.run_record import run_record

VARIANTS = {"plain": [], "masked": ["--plan-set", "aggregator.settings.pairwise_masking=true"]}
RUNS = Path("workspace/runs/secure_aggregation_bench")


def run_variant(name: str, seed: int, rounds: int, reuse: bool = False) -> dict:
    runs_dir = RUNS / f"{name}-{seed}"
    command = [sys.executable, "-m", "workspace.simulate", "--rounds", str(rounds), "--seed", str(seed),
               "--active-learning", "hybrid", "--runs-dir", str(runs_dir), *VARIANTS[name]]
    if not (reuse and (runs_dir / "latest" / "metrics.json").exists()):
        print(f"== {name}, seed {seed}: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True)
    metrics = json.loads((runs_dir / "latest" / "metrics.json").read_text())
    training = [r["wall_s"] for r in metrics["rounds"][:rounds] if r.get("wall_s") is not None]
    return {"seed": seed, "round_wall_s": [r.get("wall_s") for r in metrics["rounds"]],
            "median_round_s": statistics.median(training) if training else None,
            "upload_bytes_per_round": {s: t["upload_bytes_per_round"] for s, t in metrics["traffic"].items()},
            "upload_bytes_by_group": {s: t["upload_bytes_by_group"] for s, t in metrics["traffic"].items()},
            "test": {k: metrics["final"]["test"].get(k) for k in ("map50", "accuracy")},
            "federation_s": metrics["federation_s"], "run": str(runs_dir / "latest")}


def summary(runs: list[dict]) -> dict:
    return {"median_round_s": statistics.median(r["median_round_s"] for r in runs),
            "upload_bytes_per_round": {s: statistics.median(r["upload_bytes_per_round"][s] for r in runs)
                                       for s in runs[0]["upload_bytes_per_round"]}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--out", type=Path, default=Path("bench/secure_aggregation.json"))
    parser.add_argument("--reuse", action="store_true", help="keep finished runs (their metrics.json)")
    args = parser.parse_args(argv)
    runs = {name: [] for name in VARIANTS}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in VARIANTS:
            runs[name].append(run_variant(name, seed, args.rounds, args.reuse))
    medians = {name: summary(r) for name, r in runs.items()}
    ratios = {"round_time": medians["masked"]["median_round_s"] / medians["plain"]["median_round_s"],
              "upload_bytes": {s: medians["masked"]["upload_bytes_per_round"][s] / b
                               for s, b in medians["plain"]["upload_bytes_per_round"].items()}}
    out = {"run": run_record("bench.secure_aggregation", argv if argv is not None else sys.argv[1:]),
           "rounds": args.rounds, "median": medians, "masked_over_plain": ratios, "runs": runs}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({"median": medians, "masked_over_plain": ratios}, indent=1))


if __name__ == "__main__":
    main()
