"""Evaluation metrics for both heads, in plain numpy.

No TensorFlow import on purpose: the same code scores the centralized
baseline, each federated collaborator's local validation and offline
prediction dumps, and it must give the same number everywhere.

Detection reproduces pycocotools' ``COCOeval`` (bbox, ``useCats=1``) exactly,
crowd regions included, so numbers are comparable with published results:

* IoU uses ``w * h`` areas (no ``+1`` pixel convention). Against a crowd
  region (COCO ``iscrowd=1``) the "IoU" is intersection / detection area.
* Ground truth of one image and class is ordered real boxes first, then the
  ignored ones (crowd regions, and real boxes whose area ``(x2-x1)*(y2-y1)``
  is outside ``area_range``, which for COCO's "all" range only catches
  inverted or absurdly large boxes), each group in input order.
* Per image and class, detections are ranked by score (stable) and cut to
  ``max_detections`` (COCO's ``maxDets``). Each in turn is matched to the
  still-unmatched real box with the highest IoU ``>= threshold`` (exact ties:
  the later box wins). Only when no real box qualifies is it matched against
  the ignored ones, the same way, except that a crowd region is never used
  up: it can absorb any number of detections. A detection matched to an
  ignored box is itself ignored (neither TP nor FP); so is an unmatched
  detection whose area is outside ``area_range``.
* Ignored boxes do not count as positives. A class without a single real
  box has AP NaN (COCOeval: -1) and is left out of the means.
* Per class and IoU threshold, the kept detections of all images are ranked
  by score with a stable sort over their concatenation in image order
  (COCOeval's mergesort), ignored ones stay in the ranking but count for
  nothing. Image order is ascending image id, as COCOeval evaluates
  ``sorted(imgIds)``, when ids are given, else the input order: tied scores
  in different images then rank as COCOeval ranks them;
  precision ``tp / (tp + fp + eps)`` is made monotone non-increasing from the
  right and sampled at the 101 recall points ``np.linspace(0, 1, 101)``
  (``searchsorted`` with ``side='left'``); recall points beyond the reached
  recall count as 0.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
# COCOeval's areaRng "all": [0 ** 2, 1e5 ** 2], bounds inclusive.
COCO_AREA_ALL = (0.0, 1e5 ** 2)


# --------------------------------------------------------------------------- detection


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray, crowd=None) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, (N, M), with COCO ``w * h`` areas.

    crowd: optional (M,) bools; for those columns ``boxes_b`` are crowd
    regions and the overlap is divided by the area of the ``boxes_a`` box
    (the detection) instead of the union, as pycocotools does for iscrowd.
    """
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    wa = np.clip(a[:, 2] - a[:, 0], 0, None)
    ha = np.clip(a[:, 3] - a[:, 1], 0, None)
    wb = np.clip(b[:, 2] - b[:, 0], 0, None)
    hb = np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    denom = (wa * ha)[:, None] + (wb * hb)[None, :] - inter
    if crowd is not None:
        crowd = np.asarray(crowd, bool).reshape(-1)
        if len(crowd) != len(b):
            raise ValueError(f"crowd has {len(crowd)} flags for {len(b)} boxes")
        denom = np.where(crowd[None, :], (wa * ha)[:, None], denom)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(denom > 0, inter / denom, 0.0)
    return iou


def _signed_area(boxes: np.ndarray) -> np.ndarray:
    """``w * h`` without clipping, like COCO's ``bbox[2] * bbox[3]`` (negative when inverted)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _unpack(item, keys: tuple[str, ...], what: str, index: int,
            optional: tuple[str, ...] = ()) -> list:
    """Accept ``{"boxes": .., ...}`` dicts or positional tuples, so callers can
    pass model outputs or dataset records without reshaping them first.

    ``optional`` keys may be left out (all of them together): they come back
    as None. A tuple then has either ``len(keys)`` or ``len(keys + optional)``
    entries.
    """
    if isinstance(item, Mapping):
        missing = [k for k in keys if k not in item]
        if missing:
            raise ValueError(f"{what}[{index}] is missing keys {missing}")
        given = [k for k in optional if k in item]
        if given and len(given) != len(optional):
            raise ValueError(f"{what}[{index}]: give all of {list(optional)} or none, got {given}")
        return [item[k] for k in keys] + [item.get(k) for k in optional]
    values = list(item)
    if len(values) == len(keys):
        return values + [None] * len(optional)
    if optional and len(values) == len(keys) + len(optional):
        return values
    expected = f"{len(keys)}" + (f" or {len(keys) + len(optional)}" if optional else "")
    raise ValueError(f"{what}[{index}] must have {expected} entries {keys + optional}, got {len(values)}")


def _image_arrays(pred, gt, index: int, num_classes: int):
    """Normalise one image's predictions and ground truth to numpy arrays."""
    p_boxes, p_scores, p_classes = _unpack(pred, ("boxes", "scores", "classes"), "predictions", index)
    g_boxes, g_classes, c_boxes, c_classes = _unpack(
        gt, ("boxes", "classes"), "ground_truths", index, optional=("crowd_boxes", "crowd_classes"))
    p_boxes = np.asarray(p_boxes, np.float64).reshape(-1, 4)
    p_scores = np.asarray(p_scores, np.float64).reshape(-1)
    p_classes = np.asarray(p_classes).reshape(-1).astype(np.int64)
    g_boxes = np.asarray(g_boxes, np.float64).reshape(-1, 4)
    g_classes = np.asarray(g_classes).reshape(-1).astype(np.int64)
    c_boxes = np.asarray(np.zeros((0, 4)) if c_boxes is None else c_boxes, np.float64).reshape(-1, 4)
    c_classes = np.asarray(np.zeros(0) if c_classes is None else c_classes).reshape(-1).astype(np.int64)
    if not len(p_boxes) == len(p_scores) == len(p_classes):
        raise ValueError(f"predictions[{index}]: boxes/scores/classes lengths differ")
    if len(g_boxes) != len(g_classes):
        raise ValueError(f"ground_truths[{index}]: boxes/classes lengths differ")
    if len(c_boxes) != len(c_classes):
        raise ValueError(f"ground_truths[{index}]: crowd_boxes/crowd_classes lengths differ")
    for name, cls in (("predictions", p_classes), ("ground_truths", g_classes),
                      ("ground_truths (crowd)", c_classes)):
        if len(cls) and (cls.min() < 0 or cls.max() >= num_classes):
            raise ValueError(f"{name}[{index}]: class id outside [0, {num_classes})")
    return p_boxes, p_scores, p_classes, g_boxes, g_classes, c_boxes, c_classes


def _evaluate_image(det_boxes: np.ndarray, gt_boxes: np.ndarray, crowd_boxes: np.ndarray,
                    thresholds: np.ndarray, area_range: tuple[float, float]):
    """COCOeval.evaluateImg for one image and class.

    ``det_boxes`` are already ranked by score and cut to maxDets. Returns
    ``matched`` and ``ignored``, (T, D) bools per threshold and detection
    (TP = matched and not ignored, FP = neither), and the number of real
    (non-ignored) ground-truth boxes.
    """
    lo, hi = area_range
    gt_area = _signed_area(gt_boxes)
    real = (gt_area >= lo) & (gt_area <= hi)
    # COCOeval's stable sort with ignored ground truth last.
    order = np.concatenate([np.flatnonzero(real), np.flatnonzero(~real)])
    boxes = np.concatenate([gt_boxes[order], crowd_boxes])
    is_crowd = np.concatenate([np.zeros(len(gt_boxes), bool), np.ones(len(crowd_boxes), bool)])
    is_real = np.concatenate([real[order], np.zeros(len(crowd_boxes), bool)])

    num_t, num_d, num_g = len(thresholds), len(det_boxes), len(boxes)
    matched = np.zeros((num_t, num_d), bool)
    ignored = np.zeros((num_t, num_d), bool)
    if num_d and num_g:
        iou = box_iou(det_boxes, boxes, is_crowd)
        # pycocotools caps the threshold just below 1 so IoU == 1 can match at t=1.
        thr = np.minimum(thresholds, 1 - 1e-10)[:, None]
        used = np.zeros((num_t, num_g), bool)  # matched already (crowd regions never count as used)
        rows = np.arange(num_t)
        for d in range(num_d):
            if not (iou[d] >= thr.min()).any():
                continue  # matches nothing at any threshold
            ok = ~used & (iou[d][None, :] >= thr)
            hit = np.zeros(num_t, bool)
            best = np.zeros(num_t, np.int64)
            # real boxes first; ignored ones only for thresholds where no real box matched
            for group in (is_real, ~is_real):
                cand = np.where(ok & group[None, :] & ~hit[:, None], iou[d][None, :], -1.0)
                # last maximum wins on exact ties, like pycocotools' ">=" scan.
                idx = num_g - 1 - np.argmax(cand[:, ::-1], axis=1)
                new = cand[rows, idx] >= 0
                best[new] = idx[new]
                hit |= new
            matched[hit, d] = True
            ignored[hit, d] = ~is_real[best[hit]]
            used[rows[hit], best[hit]] = ~is_crowd[best[hit]]
    det_area = _signed_area(det_boxes)
    ignored |= ~matched & ((det_area < lo) | (det_area > hi))[None, :]
    return matched, ignored, int(real.sum())


def _image_order(image_ids, count: int) -> np.ndarray:
    """Indices of the images in COCOeval's order: ascending id (input order without ids)."""
    if image_ids is None:
        return np.arange(count)
    ids = np.asarray(image_ids)
    if ids.shape != (count,):
        raise ValueError(f"{ids.size} image ids for {count} images")
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"image ids must be distinct; given more than once: {values[counts > 1][:5].tolist()}")
    return np.argsort(ids, kind="stable")


def _interpolated_ap(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> float:
    """101-point interpolated AP from TP / FP flags of score-ranked detections
    (both False for an ignored detection), COCOeval.accumulate's arithmetic."""
    if len(tp) == 0:
        return 0.0
    tp_cum = np.cumsum(tp, dtype=np.float64)
    fp_cum = np.cumsum(fp, dtype=np.float64)
    recall = tp_cum / num_gt
    precision = tp_cum / (tp_cum + fp_cum + np.spacing(1))
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
    area_range: tuple[float, float] = COCO_AREA_ALL,
    image_ids: Sequence | None = None,
) -> dict:
    """COCO mean average precision for box detections (= COCOeval, see module doc).

    predictions: one entry per image, a dict with ``boxes`` (N, 4) xyxy,
      ``scores`` (N,), ``classes`` (N,) or the tuple ``(boxes, scores, classes)``.
    ground_truths: one entry per image, a dict with ``boxes`` (M, 4) xyxy and
      ``classes`` (M,) and optionally ``crowd_boxes`` (C, 4) xyxy and
      ``crowd_classes`` (C,) -- COCO ``iscrowd=1`` regions, the same names as
      on ``Record`` -- or the tuple ``(boxes, classes)`` or
      ``(boxes, classes, crowd_boxes, crowd_classes)``.
    iou_thresholds: thresholds averaged into ``map50_95`` (default COCO's
      0.50:0.05:0.95). ``map50`` is always reported at IoU 0.5.
    max_detections: keep only the top-scoring detections per image and class
      (COCO's maxDets, 100); None keeps all.
    area_range: (min, max) box area ``w * h`` in px^2, inclusive; ground
      truth outside it is ignored, and so are unmatched detections outside it.
      Default COCO's "all". (COCOeval takes a ground-truth area from the
      annotation's ``area`` field, the mask area for COCO itself, so other
      ranges reproduce COCO's small/medium/large only where area = box area.)
    image_ids: one distinct id per image (COCO ``image_id``s): images are
      ranked in ascending id order, so detections with tied scores in
      different images rank as in COCOeval on the same ids. None: input order
      (what COCOeval does when the ids count 1, 2, ... in input order).

    Returns ``map50``, ``map50_95`` (NaN when no class has real ground truth),
    and per class (lists, NaN where the class has no real ground-truth box):
    ``per_class_ap50``, ``per_class_ap`` (mean over ``iou_thresholds``, i.e.
    AP@0.5:0.95 by default) and ``per_class_ap_by_iou`` (one list per class,
    one AP per threshold); ``num_gt`` (real boxes per class, the positives),
    ``num_crowd`` (crowd regions per class) and ``iou_thresholds``.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction entries but {len(ground_truths)} ground truths")
    thresholds = COCO_IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, np.float64)
    at50 = np.flatnonzero(np.isclose(thresholds, 0.5))
    all_thr = thresholds if len(at50) else np.append(thresholds, 0.5)
    i50 = int(at50[0]) if len(at50) else len(thresholds)

    scores = [[] for _ in range(num_classes)]
    matched = [[] for _ in range(num_classes)]
    ignored = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, np.int64)
    num_crowd = np.zeros(num_classes, np.int64)
    for i in _image_order(image_ids, len(predictions)):
        p_boxes, p_scores, p_classes, g_boxes, g_classes, c_boxes, c_classes = _image_arrays(
            predictions[i], ground_truths[i], i, num_classes)
        for c in range(num_classes):
            crowd_c = c_boxes[c_classes == c]
            num_crowd[c] += len(crowd_c)
            sel = np.flatnonzero(p_classes == c)
            sel = sel[np.argsort(-p_scores[sel], kind="stable")][:max_detections]
            m, ig, n_real = _evaluate_image(p_boxes[sel], g_boxes[g_classes == c], crowd_c,
                                            all_thr, area_range)
            num_gt[c] += n_real
            if len(sel):
                scores[c].append(p_scores[sel])
                matched[c].append(m)
                ignored[c].append(ig)

    ap = np.full((num_classes, len(all_thr)), np.nan)
    for c in range(num_classes):
        if num_gt[c] == 0:
            continue
        if not scores[c]:
            ap[c] = 0.0
            continue
        order = np.argsort(-np.concatenate(scores[c]), kind="stable")
        m = np.concatenate(matched[c], axis=1)[:, order]
        ig = np.concatenate(ignored[c], axis=1)[:, order]
        ap[c] = [_interpolated_ap(m[t] & ~ig[t], ~m[t] & ~ig[t], int(num_gt[c]))
                 for t in range(len(all_thr))]

    per_class_ap50 = ap[:, i50]
    by_iou = ap[:, : len(thresholds)]
    per_class_ap = by_iou.mean(axis=1)
    return {
        "map50": _nanmean(per_class_ap50),
        "map50_95": _nanmean(per_class_ap),
        "per_class_ap50": per_class_ap50.tolist(),
        "per_class_ap": per_class_ap.tolist(),
        "per_class_ap_by_iou": by_iou.tolist(),
        "num_gt": num_gt.tolist(),
        "num_crowd": num_crowd.tolist(),
        "iou_thresholds": thresholds.tolist(),
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
