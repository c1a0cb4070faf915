"""Pre- and post-processing for exported models, in numpy only.

Exported graphs (TFLite, OpenVINO, SavedModel `serve`) end at the raw YOLO
heads; this module letterboxes images in and turns raw heads into detections
out, without TensorFlow, so a drone or a laptop runs them with the runtime
alone. The decode mirrors `src.model.decode` and the NMS mirrors keras-cv's
`NonMaxSuppression` (class-agnostic greedy NMS on the best class score,
scores strictly above the threshold); a test checks both against the
TensorFlow path on the same raw outputs. A model with a segmentation head also
outputs per-pixel logits; their argmax, mapped from the letterboxed input back onto
the original image, is each result's `mask` (as `src.evaluation.Predictor` maps it).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from src.data.formats.masks import mask_in_image

HEAD_NAMES = ("det_s8", "det_s16", "det_s32")
DISASTER_NAME = "disaster"
SEGMENTATION_NAME = "segmentation"  # present when the model has a segmentation head
STRIDES = (8, 16, 32)
ANCHORS_PER_SCALE = 3
MAX_LOG_WH = 6.0             # as src.model.decode
CENTRE_RANGE_SCALED = 2.0    # as src.model.config
LETTERBOX_FILL = 0.5         # as src.data.pipeline
METADATA_FILE = "deploy.json"
REQUIRED_FIELDS = ("input_size", "anchors", "victim_classes", "disaster_classes")
OPTIONAL_FIELDS = ("centre_range", "mask_classes", "mask_palette")


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model needs besides its graph: written as deploy.json.

    centre_range: how the heads' box centres decode (src.model.config); a
    deploy.json without the field decodes with the YOLOv4/v5 range.
    mask_classes, mask_palette: a segmenting model's mask class names (classes.mask)
    and an (r, g, b) colour per class for overlays; both empty (and absent from
    deploy.json) for a model without the segmentation head."""

    input_size: int
    anchors: list
    victim_classes: list
    disaster_classes: list
    centre_range: float = CENTRE_RANGE_SCALED
    mask_classes: list = field(default_factory=list)
    mask_palette: list = field(default_factory=list)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / METADATA_FILE
        fields = {k: v for k, v in asdict(self).items() if k not in ("mask_classes", "mask_palette") or v}
        path.write_text(json.dumps(fields, indent=2))
        return path

    @classmethod
    def load(cls, folder: Path) -> "ModelMetadata":
        path = Path(folder) / METADATA_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; export the model with `python -m src.deploy.export`")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a JSON file ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        missing = set(REQUIRED_FIELDS) - set(data)
        if missing:
            raise ValueError(f"{path}: missing fields {sorted(missing)}")
        meta = cls(**{k: data[k] for k in REQUIRED_FIELDS + OPTIONAL_FIELDS if k in data})
        if np.asarray(meta.anchors, dtype=object).shape != (len(STRIDES) * ANCHORS_PER_SCALE, 2):
            raise ValueError(f"{path}: anchors must be {len(STRIDES) * ANCHORS_PER_SCALE} (w, h) pairs")
        if isinstance(meta.centre_range, bool) or not isinstance(meta.centre_range, (int, float)) \
                or meta.centre_range < 1:
            raise ValueError(f"{path}: centre_range must be a number >= 1, got {meta.centre_range!r}")
        colours = meta.mask_palette
        if not isinstance(colours, list) or len(colours) != len(meta.mask_classes) or not all(
                isinstance(c, list) and len(c) == 3 and all(type(v) is int and 0 <= v <= 255 for v in c)
                for c in colours):
            raise ValueError(f"{path}: mask_palette must hold one [r, g, b] (integers 0-255) per mask class "
                             f"{meta.mask_classes}, got {meta.mask_palette!r}")
        return meta


@dataclass(frozen=True)
class Thresholds:
    score: float = 0.25
    iou: float = 0.45
    max_detections: int = 100


def read_image(path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any file PIL reads (grey, RGBA and palette -> RGB)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def letterbox(image: np.ndarray, size: int):
    """RGB uint8 (H, W, 3) -> float32 (size, size, 3) in [0, 1], scale, offset (x, y).

    Same geometry as the training pipeline: keep aspect ratio, centre on grey;
    model pixels = image pixels * scale + offset.
    """
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    new_w, new_h = int(round(w * scale)), int(round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR), np.float32) / 255.0
    canvas = np.full((size, size, 3), LETTERBOX_FILL, np.float32)
    off_x, off_y = (size - new_w) // 2, (size - new_h) // 2
    canvas[off_y:off_y + new_h, off_x:off_x + new_w] = resized
    return canvas, scale, np.array([off_x, off_y], np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def decode(raw: dict, meta: ModelMetadata):
    """Raw heads -> boxes (B, N, 4) xyxy input px and scores (B, N, C) = objectness x class."""
    anchors = np.asarray(meta.anchors, np.float32).reshape(len(STRIDES), ANCHORS_PER_SCALE, 2)
    all_boxes, all_scores = [], []
    for name, scale_anchors, stride in zip(HEAD_NAMES, anchors, STRIDES):
        out = np.asarray(raw[name], np.float32)
        batch, grid = out.shape[0], out.shape[1]
        gy, gx = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        cell = np.stack([gx, gy], axis=-1)[:, :, None, :].astype(np.float32)
        centre = (meta.centre_range * _sigmoid(out[..., 0:2]) - (meta.centre_range - 1) / 2 + cell) * stride
        size = np.exp(np.clip(out[..., 2:4], -MAX_LOG_WH, MAX_LOG_WH)) * scale_anchors
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=-1)
        scores = _sigmoid(out[..., 4:5]) * _sigmoid(out[..., 5:])
        all_boxes.append(boxes.reshape(batch, -1, 4))
        all_scores.append(scores.reshape(batch, -1, scores.shape[-1]))
    return np.concatenate(all_boxes, axis=1), np.concatenate(all_scores, axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Greedy class-agnostic NMS for one image: indices kept, best first."""
    candidates = np.flatnonzero(scores > thresholds.score)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    areas = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 0), axis=1)
    keep = []
    while order.size and len(keep) < thresholds.max_detections:
        best, order = order[0], order[1:]
        keep.append(best)
        top_left = np.maximum(boxes[best, :2], boxes[order, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[order, 2:])
        inter = np.prod(np.maximum(bottom_right - top_left, 0), axis=1)
        iou = inter / np.maximum(areas[best] + areas[order] - inter, 1e-9)
        order = order[iou <= thresholds.iou]
    return np.array(keep, np.int64)


def detections(raw: dict, meta: ModelMetadata, thresholds: Thresholds,
               scales=None, offsets=None, image_hws=None) -> list[dict]:
    """Per image: boxes (K, 4) in original pixels (input px when no scale is given),
    scores (K,), classes (K,), disaster_probs (D,); with a segmentation output also
    mask, (h, w) uint8 mask class indices on the original image ((size, size) on the
    letterboxed input when no image_hws (h, w) are given)."""
    boxes, scores = decode(raw, meta)
    disaster = np.asarray(raw[DISASTER_NAME], np.float32)
    masks = np.argmax(raw[SEGMENTATION_NAME], axis=-1).astype(np.uint8) if SEGMENTATION_NAME in raw else None
    results = []
    for i in range(len(boxes)):
        best = scores[i].max(axis=-1)
        keep = nms(boxes[i], best, thresholds)
        kept = boxes[i][keep]
        if scales is not None:
            kept = (kept - np.tile(offsets[i], 2)) / scales[i]
        results.append({"boxes": kept.astype(np.float32), "scores": best[keep].astype(np.float32),
                        "classes": scores[i][keep].argmax(axis=-1).astype(np.int32),
                        "disaster_probs": disaster[i]})
        if masks is not None:
            results[-1]["mask"] = masks[i] if image_hws is None else \
                mask_in_image(masks[i], image_hws[i], scales[i], offsets[i])
    return results
