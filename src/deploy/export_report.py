"""Quality vs speed of every exported format on the held-out test split.

python -m src.deploy.export_report [--model workspace/runs/central/model.keras] \
    [--out workspace/runs/export] [--rounds 3] [--latency-images 40]

Exports the model to every format, then for each: victim mAP@0.5 (and
0.5:0.95), disaster accuracy (and macro-F1), and a segmenting model's mIoU
(on the test images with masks) on the test split, their change
against the Keras float32 model, latency per image at batch 1 (median) and
the images/s that follows, and file size. Every format gets the same numpy
letterbox and post-processing, so differences are the runtime's and the
precision's. Latency is measured in `rounds` interleaved passes over all
formats (a noisy, shared machine slows them alike) on `latency-images` test
images each; the median over every timed call is reported.
Writes report.json, report.md and report.png into --out. Input it cannot use
ends the command with one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from src.cli.command import load_settings, positive_int, run_command
from src.deploy.export import DEFAULT_CALIBRATION_IMAGES, FORMATS, export
from src.deploy.postprocess import ModelMetadata, Thresholds, detections, letterbox, read_image
from src.deploy.runtimes import open_runtime

log = logging.getLogger("export_report")
BASELINE = "keras"


def preprocess(records, size: int):
    """Letterboxed float32 images (N, S, S, 3) with their scales and offsets."""
    boxed = [letterbox(read_image(r.image_path), size) for r in tqdm(records, desc="letterbox", leave=False)]
    return (np.stack([b[0] for b in boxed]), [b[1] for b in boxed], [b[2] for b in boxed])


def predict_all(runtime, meta: ModelMetadata, images, scales, offsets, thresholds: Thresholds,
                batch_size: int = 16, image_hws=None) -> list[dict]:
    results = []
    for start in range(0, len(images), batch_size):
        end = start + batch_size
        raw = runtime.raw(images[start:end])
        results += detections(raw, meta, thresholds, scales[start:end], offsets[start:end],
                              None if image_hws is None else image_hws[start:end])
    return results


def time_batch1(runtime, meta: ModelMetadata, images, thresholds: Thresholds) -> list[float]:
    """Seconds per image at batch 1: runtime + decode + NMS (letterboxing is the same for all)."""
    runtime.raw(images[:1])  # warm-up
    times = []
    for i in range(len(images)):
        start = time.perf_counter()
        detections(runtime.raw(images[i:i + 1]), meta, thresholds)
        times.append(time.perf_counter() - start)
    return times


def run(model_path: Path, cfg: dict, out_dir: Path, rounds: int = 3, latency_images: int = 40,
        calibration_count: int = DEFAULT_CALIBRATION_IMAGES, formats=FORMATS) -> dict:
    from src.settings import model_config
    from src.evaluation import score_predictions
    from src.data.datasets import load_data

    out_dir = Path(out_dir)
    splits = load_data(cfg)  # read once: calibration (train) and evaluation (test)
    written = export(model_path, cfg, out_dir / "models", formats, calibration_count, splits["train"])
    meta = ModelMetadata.load(out_dir / "models")
    mcfg = model_config(cfg)
    test = splits["test"]
    images, scales, offsets = preprocess(test, meta.input_size)
    # a segmenting model's masks map back to each image's own size to be scored
    image_hws = [read_image(r.image_path).shape[:2] for r in test] if meta.mask_classes else None
    evaluation = cfg.get("evaluation", {})
    thresholds = Thresholds(evaluation.get("score_threshold", 0.01), evaluation.get("iou_threshold", 0.45),
                            evaluation.get("max_detections", 100))
    runtimes = {fmt: open_runtime(info["runtime"], info["path"]) for fmt, info in written.items()}
    rows = {}
    for fmt, runtime in tqdm(runtimes.items(), desc="evaluate", unit="format"):
        predictions = predict_all(runtime, meta, images, scales, offsets, thresholds, image_hws=image_hws)
        scores = score_predictions(predictions, test, mcfg, mask_class_names=meta.mask_classes or None)
        rows[fmt] = {k: scores[k] for k in ("map50", "map50_95", "accuracy", "macro_f1", "miou") if k in scores}
        rows[fmt]["bytes"] = written[fmt]["bytes"]
        log.info("%-14s mAP50 %.4f accuracy %.4f", fmt, rows[fmt].get("map50", float("nan")),
                 rows[fmt].get("accuracy", float("nan")))
    timed = {fmt: [] for fmt in runtimes}
    sample = images[:latency_images]
    for _ in tqdm(range(rounds), desc="latency rounds"):
        for fmt, runtime in runtimes.items():
            timed[fmt] += time_batch1(runtime, meta, sample, Thresholds(0.25, thresholds.iou,
                                                                        thresholds.max_detections))
    base = rows.get(BASELINE)
    base_latency = statistics.median(timed[BASELINE]) if BASELINE in timed else None
    for fmt, row in rows.items():
        latency = statistics.median(timed[fmt])
        row.update(latency_ms=1000 * latency, images_per_s=1 / latency,
                   latency_ms_per_round=[1000 * statistics.median(timed[fmt][r * len(sample):(r + 1) * len(sample)])
                                         for r in range(rounds)])
        if base:
            row.update(delta_map50=row["map50"] - base["map50"],
                       delta_accuracy=row["accuracy"] - base["accuracy"],
                       speedup_vs_keras=base_latency / latency)
            if "miou" in row and "miou" in base:
                row["delta_miou"] = row["miou"] - base["miou"]
    report = {
        "source": str(model_path), "baseline": BASELINE, "test_images": len(test),
        "latency": {"batch": 1, "rounds": rounds, "images_per_round": len(sample),
                    "includes": "runtime + numpy decode + NMS (score > 0.25); not letterboxing"},
        "thresholds_for_map": asdict(thresholds),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "formats": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown_table(report))
    plot(report, out_dir / "report.png")
    print(markdown_table(report))
    return report


def markdown_table(report: dict) -> str:
    masks = any("miou" in r for r in report["formats"].values())  # a segmenting model's columns
    lines = [f"Held-out test split: {report['test_images']} images; latency at batch 1, median of "
             f"{report['latency']['rounds']} x {report['latency']['images_per_round']} calls "
             f"({report['latency']['includes']}).", "",
             "| format | mAP@0.5 | Δ mAP | accuracy | Δ acc | " + ("mIoU | Δ mIoU | " if masks else "")
             + "latency ms | images/s | x Keras | size MB |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if masks else "")]
    for fmt, r in report["formats"].items():
        miou = f"{r.get('miou', float('nan')):.4f} | {r.get('delta_miou', 0):+.4f} | " if masks else ""
        lines.append(f"| {fmt} | {r['map50']:.4f} | {r.get('delta_map50', 0):+.4f} | {r['accuracy']:.4f} | "
                     f"{r.get('delta_accuracy', 0):+.4f} | {miou}{r['latency_ms']:.1f} | {r['images_per_s']:.1f} | "
                     f"{r.get('speedup_vs_keras', float('nan')):.2f} | {r['bytes'] / 1e6:.2f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    markers = "osD^v<>PX*"
    for i, (fmt, r) in enumerate(report["formats"].items()):
        for ax, key in zip(axes, ("map50", "accuracy")):
            ax.scatter(r["images_per_s"], r[key], s=40, marker=markers[i % len(markers)], label=fmt, alpha=0.8)
    axes[1].legend(fontsize=7, loc="best")
    for ax, label in zip(axes, ("victim mAP@0.5", "disaster accuracy")):
        ax.set_xlabel("images/s (batch 1, this CPU)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Exported formats: quality vs speed on the held-out test split")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="workspace/runs/central/model.keras", help=".keras or OpenFL .pbuf")
    p.add_argument("--out", default="workspace/runs/export")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--latency-images", type=positive_int, default=40)
    p.add_argument("--calibration-images", type=positive_int, default=DEFAULT_CALIBRATION_IMAGES)
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def report():
        if not Path(args.model).exists():
            raise FileNotFoundError(f"{args.model}: no model; train one with `make train-central` first")
        run(Path(args.model), load_settings(args.config, args.set), Path(args.out), args.rounds,
            args.latency_images, args.calibration_images)

    return run_command(report)


if __name__ == "__main__":
    sys.exit(main())
