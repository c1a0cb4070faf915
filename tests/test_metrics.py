"""Hand-computed checks of src.metrics plus an agreement test with pycocotools."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from src.metrics import accuracy, box_iou, confusion_matrix, detection_map, macro_f1

GT_BOX = [0.0, 0.0, 100.0, 100.0]
FAR_BOX = [300.0, 300.0, 400.0, 400.0]  # IoU 0 with GT_BOX


def pred(boxes, scores, classes=None):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.zeros(len(boxes), int) if classes is None else classes
    return {"boxes": boxes, "scores": np.asarray(scores, float), "classes": np.asarray(classes)}


def gt(boxes, classes=None):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return boxes, (np.zeros(len(boxes), int) if classes is None else np.asarray(classes))


# --------------------------------------------------------------------------- detection, by hand


def test_box_iou_uses_coco_area_without_plus_one():
    # [0,0,100,62] inside [0,0,100,100]: 6200 / 10000. With the +1 convention
    # it would be 101*63 / 101^2 = 0.6238 instead.
    assert box_iou([[0, 0, 100, 62]], [GT_BOX])[0, 0] == pytest.approx(0.62, abs=1e-12)


def test_perfect_detections_score_one():
    gts = [gt([GT_BOX, [200, 200, 250, 260]], [0, 1]), gt([[10, 20, 30, 40]], [1])]
    preds = [pred(b, np.full(len(b), 0.9), c) for b, c in gts]
    out = detection_map(preds, gts, num_classes=2)
    assert out["map50"] == pytest.approx(1.0)
    assert out["map50_95"] == pytest.approx(1.0)
    assert out["per_class_ap50"] == pytest.approx([1.0, 1.0])


def test_tp_above_fp_is_still_ap_one():
    # ranked TP(0.9), FP(0.5): recall [1, 1], precision [1, .5]; every recall
    # threshold maps (searchsorted left) to index 0 -> precision 1.
    out = detection_map([pred([GT_BOX, FAR_BOX], [0.9, 0.5])], [gt([GT_BOX])], 1)
    assert out["map50"] == pytest.approx(1.0)
    assert out["map50_95"] == pytest.approx(1.0)


def test_fp_ranked_above_tp():
    # One GT, ranked FP(0.9), TP(0.5): recall [0, 1], precision [0, 1/2].
    # Envelope from the right: [1/2, 1/2]. r=0 -> idx 0 -> 1/2; r>0 -> idx 1 -> 1/2.
    # AP = 101 * 0.5 / 101 = 0.5.
    out = detection_map([pred([FAR_BOX, GT_BOX], [0.9, 0.5])], [gt([GT_BOX])], 1)
    assert out["map50"] == pytest.approx(0.5)


def test_fp_between_two_tps_101_point_value():
    # Two GTs, ranked TP(0.9), FP(0.8), TP(0.7):
    #   recall    [1/2, 1/2, 1]
    #   precision [1,   1/2, 2/3]  -> envelope [1, 2/3, 2/3]
    # recall thresholds 0.00..0.50 (51 points) -> idx 0 -> 1
    # recall thresholds 0.51..1.00 (50 points) -> idx 2 -> 2/3
    # AP = (51 * 1 + 50 * 2/3) / 101 = 84.3333 / 101 = 0.834983...
    g2 = [200.0, 0.0, 300.0, 100.0]
    out = detection_map([pred([GT_BOX, FAR_BOX, g2], [0.9, 0.8, 0.7])], [gt([GT_BOX, g2])], 1)
    assert out["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert out["map50"] == pytest.approx(0.834983, abs=1e-6)


def test_missed_gt_caps_recall():
    # Two GTs, one TP: recall tops out at 1/2, so thresholds 0.00..0.50
    # (51 of 101) get precision 1 and the remaining 50 get 0: AP = 51/101.
    g2 = [200.0, 0.0, 300.0, 100.0]
    out = detection_map([pred([GT_BOX], [0.9])], [gt([GT_BOX, g2])], 1)
    assert out["map50"] == pytest.approx(51 / 101)


def test_iou_threshold_behaviour():
    # IoU 0.62: a match at thresholds 0.50, 0.55, 0.60 (AP 1), not at
    # 0.65 ... 0.95 (AP 0, seven thresholds): map50 = 1, map50_95 = 3/10.
    out = detection_map([pred([[0, 0, 100, 62]], [0.9])], [gt([GT_BOX])], 1)
    assert out["map50"] == pytest.approx(1.0)
    assert out["map50_95"] == pytest.approx(0.3)
    # Custom thresholds: map50 is still reported at 0.5.
    out = detection_map([pred([[0, 0, 100, 62]], [0.9])], [gt([GT_BOX])], 1, iou_thresholds=[0.7])
    assert out["map50"] == pytest.approx(1.0)
    assert out["map50_95"] == pytest.approx(0.0)


def test_empty_predictions_score_zero():
    out = detection_map([pred(np.zeros((0, 4)), [])], [gt([GT_BOX])], 1)
    assert out["map50"] == 0.0
    assert out["map50_95"] == 0.0


def test_fp_on_image_without_gt_counts():
    # Image 2 has no GT but a 0.9 FP which ranks above image 1's 0.8 TP:
    # same as FP-above-TP with one GT -> 0.5.
    preds = [pred([GT_BOX], [0.8]), pred([GT_BOX], [0.9])]
    gts = [gt([GT_BOX]), gt(np.zeros((0, 4)))]
    assert detection_map(preds, gts, 1)["map50"] == pytest.approx(0.5)


def test_multiclass_mean_ignores_class_without_gt():
    # class 0: perfect (1.0); class 1: FP above TP (0.5); class 2: only FPs, no GT -> NaN.
    preds = [pred([GT_BOX, FAR_BOX, GT_BOX, FAR_BOX], [0.9, 0.9, 0.5, 0.3], [0, 1, 1, 2])]
    gts = [gt([GT_BOX, GT_BOX], [0, 1])]
    out = detection_map(preds, gts, 3)
    assert out["per_class_ap50"][:2] == pytest.approx([1.0, 0.5])
    assert math.isnan(out["per_class_ap50"][2]) and math.isnan(out["per_class_ap"][2])
    assert out["map50"] == pytest.approx(0.75)


def test_no_gt_anywhere_gives_nan():
    out = detection_map([pred([GT_BOX], [0.9])], [gt(np.zeros((0, 4)))], 1)
    assert math.isnan(out["map50"]) and math.isnan(out["map50_95"])


def test_max_detections_keeps_top_scores_per_image_and_class():
    # Without a cap: ranked FP(0.9), TP(0.5) -> 0.5. Cap 1 keeps only the FP -> 0.
    p = [pred([FAR_BOX, GT_BOX], [0.9, 0.5])]
    assert detection_map(p, [gt([GT_BOX])], 1)["map50"] == pytest.approx(0.5)
    assert detection_map(p, [gt([GT_BOX])], 1, max_detections=1)["map50"] == 0.0


def test_tuple_inputs_and_each_gt_matched_once():
    # Two identical detections on one GT: the second is a duplicate (FP), AP still 1.
    p = [(np.array([GT_BOX, GT_BOX]), np.array([0.9, 0.8]), np.array([0, 0]))]
    out = detection_map(p, [gt([GT_BOX])], 1)
    assert out["map50"] == pytest.approx(1.0)


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        detection_map([], [gt([GT_BOX])], 1)
    with pytest.raises(ValueError, match="class id"):
        detection_map([pred([GT_BOX], [0.9], [3])], [gt([GT_BOX])], 1)


# --------------------------------------------------------------------------- agreement with pycocotools


def _random_scene(rng, num_images=20, num_classes=2):
    """Random GT plus jittered true detections, duplicates and pure FPs."""
    preds, gts = [], []
    for i in range(num_images):
        m = rng.integers(0, 6)
        xy = rng.uniform(0, 400, (m, 2))
        wh = rng.uniform(8, 120, (m, 2))
        g_boxes = np.concatenate([xy, xy + wh], 1)
        g_cls = rng.integers(0, num_classes, m)
        jitter = rng.normal(0, 0.12, (m, 4)) * np.concatenate([wh, wh], 1)
        d_boxes = [g_boxes + jitter, g_boxes + jitter[::-1] * 0.5]
        d_cls = [g_cls, g_cls if i % 3 else rng.integers(0, num_classes, m)]
        # image 7: >100 detections per class, so the per-image-and-class maxDets=100 cap matters
        n_fp = 260 if i == 7 else rng.integers(0, 5)
        fxy = rng.uniform(0, 400, (n_fp, 2))
        d_boxes.append(np.concatenate([fxy, fxy + rng.uniform(8, 120, (n_fp, 2))], 1))
        d_cls.append(rng.integers(0, num_classes, n_fp))
        d_boxes = np.concatenate(d_boxes)
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)
        preds.append(pred(d_boxes, rng.uniform(0, 1, len(d_boxes)), np.concatenate(d_cls)))
        gts.append(gt(g_boxes, g_cls))
    return preds, gts


def _coco_map(preds, gts, num_classes):
    """mAP@0.5 and @0.5:0.95 from COCOeval (bbox, area 'all', maxDets 100)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    anns, dets = [], []
    for img_id, ((g_boxes, g_cls), p) in enumerate(zip(gts, preds), start=1):
        for b, c in zip(g_boxes, g_cls):
            # ids start at 1: COCOeval stores the matched GT id and treats 0 as "unmatched".
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(c) + 1,
                         "bbox": xywh(b), "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0})
        for b, s, c in zip(p["boxes"], p["scores"], p["classes"]):
            dets.append({"image_id": img_id, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i, "width": 640, "height": 640} for i in range(1, len(gts) + 1)],
            "annotations": anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [100]
        ev.params.areaRng = [[0, 1e5**2]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    assert ev.params.iouThrs[0] == 0.5
    p50 = precision[0]
    return float(p50[p50 > -1].mean()), float(precision[precision > -1].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools(seed):
    pytest.importorskip("pycocotools")
    preds, gts = _random_scene(np.random.default_rng(seed))
    coco50, coco50_95 = _coco_map(preds, gts, 2)
    ours = detection_map(preds, gts, 2, max_detections=100)
    assert 0.05 < coco50 < 0.99  # the scene is neither trivial nor hopeless
    assert abs(ours["map50"] - coco50) < 1e-3
    assert abs(ours["map50_95"] - coco50_95) < 1e-3
    # and the cap really is exercised: without it the numbers differ
    assert abs(detection_map(preds, gts, 2)["map50"] - coco50) > 1e-4


# --------------------------------------------------------------------------- classification

Y_TRUE = [0, 0, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0]


def test_accuracy():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(3 / 5)
    assert accuracy([1, 2], [1, 2]) == 1.0
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])


def test_confusion_matrix_rows_are_truth():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    expected = np.array([[1, 1, 0, 0],
                         [0, 2, 0, 0],
                         [1, 0, 0, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    with pytest.raises(ValueError):
        confusion_matrix([4], [0], 4)


def test_macro_f1_over_classes_present():
    # class 0: TP 1, FP 1 (true 2 -> pred 0), FN 1 -> 2/(2+1+1) = 0.5
    # class 1: TP 2, FP 1, FN 0 -> 4/5 = 0.8
    # class 2: TP 0, FN 1 -> 0;  class 3 absent from both -> left out
    # macro = (0.5 + 0.8 + 0) / 3
    assert macro_f1(Y_TRUE, Y_PRED, 4) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1([0, 1], [0, 1], 5) == pytest.approx(1.0)
    # a class only predicted (never true) counts as 0
    assert macro_f1([0, 0], [0, 3], 4) == pytest.approx((2 / 3 + 0.0) / 2)
