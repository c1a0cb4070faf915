"""Evaluation metrics for both heads, in plain numpy.

No TensorFlow import on purpose: the same code scores the centralized
baseline, each federated collaborator's local validation and offline
prediction dumps, and it must give the same number everywhere.

Detection follows the COCO (pycocotools ``COCOeval``, bbox, area "all")
definition so numbers are comparable with published results:

* IoU uses ``w * h`` areas (no ``+1`` pixel convention).
* Per class and IoU threshold, detections of all images are ranked by score
  (descending, stable: ties keep image order, then within-image order).
* Each detection is greedily matched to the unmatched ground-truth box of the
  same class and image with the highest IoU ``>= threshold`` (on exact IoU ties
  the later ground-truth box wins, as in pycocotools).
* Precision is made monotone non-increasing from the right and sampled at the
  101 recall points ``np.linspace(0, 1, 101)`` (``searchsorted`` with
  ``side='left'``); recall points beyond the reached recall count as 0.
* Classes without ground truth have AP NaN and are left out of the means.
* ``max_detections`` caps detections per image *and class* -- that is what
  COCOeval's ``maxDets`` does when categories are used.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


# --------------------------------------------------------------------------- detection


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, (N, M), with COCO ``w * h`` areas."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    wa = np.clip(a[:, 2] - a[:, 0], 0, None)
    ha = np.clip(a[:, 3] - a[:, 1], 0, None)
    wb = np.clip(b[:, 2] - b[:, 0], 0, None)
    hb = np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (wa * ha)[:, None] + (wb * hb)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def _unpack(item, keys: tuple[str, ...], what: str, index: int) -> list[np.ndarray]:
    """Accept ``{"boxes": .., ...}`` dicts or positional tuples, so callers can
    pass model outputs or dataset records without reshaping them first."""
    if isinstance(item, Mapping):
        missing = [k for k in keys if k not in item]
        if missing:
            raise ValueError(f"{what}[{index}] is missing keys {missing}")
        values = [item[k] for k in keys]
    else:
        values = list(item)
        if len(values) != len(keys):
            raise ValueError(f"{what}[{index}] must have {len(keys)} entries {keys}, got {len(values)}")
    return values


def _image_arrays(pred, gt, index: int, num_classes: int):
    """Normalise one image's predictions and ground truth to numpy arrays."""
    p_boxes, p_scores, p_classes = _unpack(pred, ("boxes", "scores", "classes"), "predictions", index)
    g_boxes, g_classes = _unpack(gt, ("boxes", "classes"), "ground_truths", index)
    p_boxes = np.asarray(p_boxes, np.float64).reshape(-1, 4)
    p_scores = np.asarray(p_scores, np.float64).reshape(-1)
    p_classes = np.asarray(p_classes).reshape(-1).astype(np.int64)
    g_boxes = np.asarray(g_boxes, np.float64).reshape(-1, 4)
    g_classes = np.asarray(g_classes).reshape(-1).astype(np.int64)
    if not len(p_boxes) == len(p_scores) == len(p_classes):
        raise ValueError(f"predictions[{index}]: boxes/scores/classes lengths differ")
    if len(g_boxes) != len(g_classes):
        raise ValueError(f"ground_truths[{index}]: boxes/classes lengths differ")
    for name, cls in (("predictions", p_classes), ("ground_truths", g_classes)):
        if len(cls) and (cls.min() < 0 or cls.max() >= num_classes):
            raise ValueError(f"{name}[{index}]: class id outside [0, {num_classes})")
    return p_boxes, p_scores, p_classes, g_boxes, g_classes


def _match_image(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Greedy COCO matching for one image and class.

    ``iou`` is (D, G) with detections already sorted by descending score.
    Returns (T, D) bool: detection is a true positive at threshold t.
    """
    num_t, (num_d, num_g) = len(thresholds), iou.shape
    tp = np.zeros((num_t, num_d), bool)
    if num_g == 0:
        return tp
    gt_taken = np.zeros((num_t, num_g), bool)
    # pycocotools caps the threshold just below 1 so IoU == 1 can match at t=1.
    thr = np.minimum(thresholds, 1 - 1e-10)[:, None]
    rows = np.arange(num_t)
    for d in range(num_d):
        cand = np.where(~gt_taken & (iou[d][None, :] >= thr), iou[d][None, :], -1.0)
        # last maximum wins on exact ties, like pycocotools' ">=" scan.
        best = num_g - 1 - np.argmax(cand[:, ::-1], axis=1)
        ok = cand[rows, best] >= 0
        tp[ok, d] = True
        gt_taken[rows[ok], best[ok]] = True
    return tp


def _interpolated_ap(tp_sorted: np.ndarray, num_gt: int) -> float:
    """101-point interpolated AP from TP flags of score-ranked detections."""
    if len(tp_sorted) == 0:
        return 0.0
    tp_cum = np.cumsum(tp_sorted, dtype=np.float64)
    fp_cum = np.cumsum(~tp_sorted, dtype=np.float64)
    recall = tp_cum / num_gt
    precision = tp_cum / (tp_cum + fp_cum)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    sampled = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(sampled.mean())


def detection_map(
    predictions: Sequence,
    ground_truths: Sequence,
    num_classes: int,
    iou_thresholds: Sequence[float] | None = None,
    max_detections: int | None = None,
) -> dict:
    """COCO-style mean average precision for box detections.

    predictions: one entry per image, a dict with ``boxes`` (N, 4) xyxy,
      ``scores`` (N,), ``classes`` (N,) or the tuple ``(boxes, scores, classes)``.
    ground_truths: one entry per image, ``(boxes (M, 4) xyxy, classes (M,))``
      or a dict with ``boxes`` and ``classes``.
    iou_thresholds: thresholds averaged into ``map50_95`` (default COCO's
      0.50:0.05:0.95). ``map50`` is always reported at IoU 0.5.
    max_detections: keep only the top-scoring detections per image and class
      (COCO uses 100); None keeps all.

    Returns ``map50``, ``map50_95`` (NaN when no class has ground truth),
    ``per_class_ap50`` and ``per_class_ap`` (mean over thresholds), lists with
    NaN for classes without ground truth.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction entries but {len(ground_truths)} ground truths")
    thresholds = COCO_IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, np.float64)
    at50 = np.flatnonzero(np.isclose(thresholds, 0.5))
    all_thr = thresholds if len(at50) else np.append(thresholds, 0.5)
    i50 = int(at50[0]) if len(at50) else len(thresholds)

    scores = [[] for _ in range(num_classes)]
    tps = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, np.int64)
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths)):
        p_boxes, p_scores, p_classes, g_boxes, g_classes = _image_arrays(pred, gt, i, num_classes)
        for c in range(num_classes):
            gt_c = g_boxes[g_classes == c]
            num_gt[c] += len(gt_c)
            sel = np.flatnonzero(p_classes == c)
            sel = sel[np.argsort(-p_scores[sel], kind="stable")][:max_detections]
            if len(sel) == 0:
                continue
            scores[c].append(p_scores[sel])
            tps[c].append(_match_image(box_iou(p_boxes[sel], gt_c), all_thr))

    ap = np.full((num_classes, len(all_thr)), np.nan)
    for c in range(num_classes):
        if num_gt[c] == 0:
            continue
        if not scores[c]:
            ap[c] = 0.0
            continue
        order = np.argsort(-np.concatenate(scores[c]), kind="stable")
        tp = np.concatenate(tps[c], axis=1)[:, order]
        ap[c] = [_interpolated_ap(tp[t], int(num_gt[c])) for t in range(len(all_thr))]

    per_class_ap50 = ap[:, i50]
    per_class_ap = ap[:, : len(thresholds)].mean(axis=1)
    return {
        "map50": _nanmean(per_class_ap50),
        "map50_95": _nanmean(per_class_ap),
        "per_class_ap50": per_class_ap50.tolist(),
        "per_class_ap": per_class_ap.tolist(),
    }


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN (without a RuntimeWarning) when all are NaN."""
    values = np.asarray(values, np.float64)
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if len(valid) else float("nan")


# --------------------------------------------------------------------------- classification


def _labels(y_true, y_pred, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flatten integer label arrays and check they line up (and are in range)."""
    t = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} labels but y_pred has {len(p)}")
    if num_classes is not None:
        for name, arr in (("y_true", t), ("y_pred", p)):
            if len(arr) and (arr.min() < 0 or arr.max() >= num_classes):
                raise ValueError(f"{name} has a label outside [0, {num_classes})")
    return t, p


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact label matches; NaN for empty input (nothing was scored)."""
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p)) if len(t) else float("nan")


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows = truth, cols = prediction."""
    t, p = _labels(y_true, y_pred, num_classes)
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN).

    The mean runs over classes that occur in y_true or y_pred (sklearn's
    default label set). A class absent from both has F1 = 0/0; counting it as
    0 would punish a federated site merely for not holding that class, and
    counting it as 1 would reward it, so it is left out. A class that is
    predicted but never true (or vice versa) scores 0 and is included.
    NaN for empty input.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        return float("nan")
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(f1.mean())
