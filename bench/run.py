"""Throughput benchmark: training and inference images/s for both variants.

python -m bench.run [--repeats 5] [--out bench/results.json]

Measures the compiled train step (forward, multi-task loss, backward, AdamW)
and the compiled inference path (forward, decode, NMS) on in-memory batches,
so the numbers are the model's, not the disk's. Each figure is the median of
`repeats` timed runs after a warm-up; all runs are written too.
"""
from __future__ import annotations

import argparse
import json
import sys
import statistics
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from src.settings import load_config, model_config
from src.evaluation import Predictor
from src.model import build_model
from src.model.config import full_variant
from src.model.targets import encode_targets
from src.run_record import run_record
from src.training import TrainOptions, Trainer

VARIANTS = {
    # name: (train batch, steps per timed run, inference batch)
    "small": (16, 4, 16),
    "full": (2, 2, 2),
}


def _batch(config, batch_size, rng):
    images = tf.constant(rng.random((batch_size, config.input_size, config.input_size, 3)), tf.float32)
    boxes = np.zeros((batch_size, 32, 4), np.float32)
    classes = -np.ones((batch_size, 32), np.int32)
    for b in range(batch_size):
        for k in range(4):
            x, y = rng.uniform(0, config.input_size - 60, 2)
            w, h = rng.uniform(6, 60, 2)
            boxes[b, k] = [x, y, x + w, y + h]
            classes[b, k] = 0
    s8, s16, s32 = encode_targets(boxes, classes, config)
    targets = {"det_s8": s8, "det_s16": s16, "det_s32": s32, "gt_boxes": tf.constant(boxes),
               "has_boxes": tf.ones(batch_size), "disaster": tf.zeros(batch_size, tf.int32),
               "has_class": tf.ones(batch_size)}
    return images, targets


def _timed(fn, repeats):
    fn()  # warm-up / trace
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return runs


def bench_variant(name, config, repeats, rng):
    train_batch, steps, infer_batch = VARIANTS[name]
    keras.backend.clear_session()
    model = build_model(config)
    images, targets = _batch(config, train_batch, rng)
    trainer = Trainer(model, config, TrainOptions(epochs=1), steps_per_epoch=100)

    def train():
        for _ in range(steps):
            out = trainer._step(images, targets)
        float(out["loss"])

    train_runs = _timed(train, repeats)
    predictor = Predictor(model, config)
    infer_images = images[:infer_batch]

    def infer():
        out = predictor._run(infer_images)
        int(out["num_detections"][0])

    infer_runs = _timed(infer, repeats)
    train_ips = [train_batch * steps / t for t in train_runs]
    infer_ips = [infer_batch / t for t in infer_runs]
    return {
        "input_size": config.input_size, "parameters": int(model.count_params()),
        "train_batch": train_batch, "infer_batch": infer_batch,
        "train_images_per_s": statistics.median(train_ips),
        "inference_images_per_s": statistics.median(infer_ips),
        "train_images_per_s_runs": train_ips, "inference_images_per_s_runs": infer_ips,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--out", default="bench/results.json")
    args = p.parse_args(argv)
    cfg = load_config()
    configs = {"small": model_config(cfg), "full": full_variant()}
    rng = np.random.default_rng(0)
    results = {}
    for name in args.variants:
        results[name] = bench_variant(name, configs[name], args.repeats, rng)
        r = results[name]
        print(f"{name}: {r['parameters']:,} params @ {r['input_size']} px | "
              f"train {r['train_images_per_s']:.1f} img/s | inference {r['inference_images_per_s']:.1f} img/s")
    run = run_record("bench.run", argv if argv is not None else sys.argv[1:])
    run["machine"].update(tensorflow=tf.__version__, keras=keras.__version__)
    out = {"run": run, "repeats": args.repeats, "variants": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
