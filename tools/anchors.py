"""Anchor boxes fitted to a data set: k-means on box sizes with 1 - IoU distance (YOLOv2/v3).

The COCO anchors are far too large for 8-60 px victims on 256 px inputs, so
the default config stores anchors fitted to the synthetic data by this module
(`python -m tools.anchors`), sorted by area, 3 per stride.
"""
from __future__ import annotations

import argparse

import numpy as np


def shape_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """IoU of centred boxes: (N, 2) sizes vs (K, 2) centroids -> (N, K)."""
    inter = np.minimum(wh[:, None, 0], centroids[None, :, 0]) * np.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = wh[:, None].prod(-1) + centroids[None].prod(-1) - inter
    return inter / union


def kmeans_anchors(wh: np.ndarray, k: int = 9, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """k anchors (w, h) sorted by area; raises if there are fewer boxes than anchors."""
    wh = np.asarray(wh, np.float64)
    if len(wh) < k:
        raise ValueError(f"need at least {k} boxes to fit {k} anchors, got {len(wh)}")
    rng = np.random.default_rng(seed)
    centroids = wh[rng.choice(len(wh), k, replace=False)]
    for _ in range(iterations):
        assign = np.argmax(shape_iou(wh, centroids), axis=1)
        updated = np.array([np.median(wh[assign == i], axis=0) if np.any(assign == i) else centroids[i]
                            for i in range(k)])
        if np.allclose(updated, centroids):
            break
        centroids = updated
    return centroids[np.argsort(centroids.prod(1))]


def main(argv=None):
    from PIL import Image

    from src.settings import load_config
    from src.data.pipeline import letterbox_scale
    from src.data.formats import load_yolo_dataset

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--data", default=None, help="YOLO data root (default: config data.root)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    records, _ = load_yolo_dataset(args.data or cfg["data"]["root"], cfg["classes"]["victim"],
                                   cfg["classes"]["disaster"])
    size = cfg["model"]["input_size"]
    wh = []
    for r in records:
        if len(r.boxes):
            with Image.open(r.image_path) as im:
                scale = letterbox_scale(im.size, size)
            wh.append((r.boxes[:, 2:] - r.boxes[:, :2]) * scale)
    anchors = kmeans_anchors(np.concatenate(wh), seed=cfg.get("seed", 0))
    mean_iou = shape_iou(np.concatenate(wh), anchors).max(1).mean()
    print(f"# mean best IoU {mean_iou:.3f} over {sum(len(w) for w in wh)} boxes at {size} px")
    print("anchors: [" + ", ".join(f"[{w:.1f}, {h:.1f}]" for w, h in anchors) + "]")


if __name__ == "__main__":
    main()
