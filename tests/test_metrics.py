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


def test_iou_tie_goes_to_the_later_ground_truth():
    # D1 has IoU 0.6 with both GTs; like pycocotools' ">=" scan the later one
    # (G2) takes it, so D2 (= G1) is a TP too: AP 1. Had G1 been taken, D2
    # (IoU 1/3 with G2) would be an FP. With D2 = G2 instead, D2 is the FP:
    # recall stops at 1/2 -> AP 51/101.
    g1, g2 = [0.0, 0.0, 100.0, 100.0], [50.0, 0.0, 150.0, 100.0]
    out = detection_map([pred([[25, 0, 125, 100], g1], [0.9, 0.8])], [gt([g1, g2])], 1)
    assert out["map50"] == pytest.approx(1.0)
    out = detection_map([pred([[25, 0, 125, 100], g2], [0.9, 0.8])], [gt([g1, g2])], 1)
    assert out["map50"] == pytest.approx(51 / 101)


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        detection_map([], [gt([GT_BOX])], 1)
    with pytest.raises(ValueError, match="class id"):
        detection_map([pred([GT_BOX], [0.9], [3])], [gt([GT_BOX])], 1)


# --------------------------------------------------------------------------- crowd regions, by hand

CROWD = [500.0, 0.0, 700.0, 200.0]


def crowd_gt(boxes, classes, crowd_boxes, crowd_classes):
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "classes": np.asarray(classes),
            "crowd_boxes": np.asarray(crowd_boxes, np.float64).reshape(-1, 4),
            "crowd_classes": np.asarray(crowd_classes)}


def test_crowd_iou_divides_by_detection_area():
    det, region = [[0, 0, 10, 10]], [[5, 0, 100, 100]]
    assert box_iou(det, region, crowd=[True])[0, 0] == pytest.approx(50 / 100)
    assert box_iou(det, region, crowd=[False])[0, 0] == pytest.approx(50 / (100 + 9500 - 50))
    assert box_iou(det, region)[0, 0] == box_iou(det, region, crowd=[False])[0, 0]


def test_detections_in_a_crowd_are_ignored_and_it_absorbs_several():
    # Ranked: in-crowd 0.95, in-crowd 0.93, TP 0.9, FP 0.5.
    # Without the crowd region: FP, FP, TP, FP -> precision at the only recall
    # step is 1/3 -> AP 1/3. With it the first two are ignored: TP, FP -> AP 1.
    dets = pred([[510, 10, 560, 60], [600, 100, 690, 190], GT_BOX, FAR_BOX], [0.95, 0.93, 0.9, 0.5])
    assert detection_map([dets], [gt([GT_BOX])], 1)["map50"] == pytest.approx(1 / 3)
    out = detection_map([dets], [crowd_gt([GT_BOX], [0], [CROWD], [0])], 1)
    assert out["map50"] == pytest.approx(1.0) and out["map50_95"] == pytest.approx(1.0)
    assert out["num_gt"] == [1] and out["num_crowd"] == [1]
    # the crowd region of another class does nothing for class 0
    other = detection_map([dets], [crowd_gt([GT_BOX], [0], [CROWD], [1])], 2)
    assert other["per_class_ap50"][0] == pytest.approx(1 / 3)


def test_real_ground_truth_is_matched_before_a_crowd():
    # B lies inside a crowd region; the detection's IoU with B is 9000/11000 =
    # 0.818, its crowd "IoU" is 1. It is a TP wherever 0.818 clears the
    # threshold (0.50 .. 0.80, 7 of 10) even though the crowd overlaps more;
    # at 0.85 .. 0.95 it falls to the crowd (ignored) and B is missed: AP 0.
    # The duplicate (0.8) finds B taken and is absorbed by the crowd, not an FP.
    b = [300.0, 0.0, 400.0, 100.0]
    g = crowd_gt([b], [0], [[300, 0, 500, 100]], [0])
    det = [310.0, 0.0, 410.0, 100.0]
    out = detection_map([pred([det, det], [0.9, 0.8])], [g], 1)
    assert out["map50"] == pytest.approx(1.0)
    assert out["map50_95"] == pytest.approx(0.7)
    assert out["per_class_ap_by_iou"][0] == pytest.approx([1.0] * 7 + [0.0] * 3)
    # without the crowd the duplicate is an FP below the TP: still AP 1 at 0.5
    assert detection_map([pred([det, det], [0.9, 0.8])], [gt([b])], 1)["map50"] == pytest.approx(1.0)


def test_crowd_match_depends_on_the_threshold():
    # GT [0,0,100,100], crowd [50,0,250,100]. Ranked: X 0.95 (IoU 0 with the
    # GT, crowd "IoU" 10000/20000 = 0.5 exactly), TP 0.9. At 0.5 X is
    # ignored -> AP 1; above 0.5 it is an FP ranked above the TP -> AP 0.5.
    g = crowd_gt([GT_BOX], [0], [[50, 0, 250, 100]], [0])
    out = detection_map([pred([[150, 0, 350, 100], GT_BOX], [0.95, 0.9])], [g], 1)
    assert out["per_class_ap_by_iou"][0] == pytest.approx([1.0] + [0.5] * 9)


def test_crowd_is_not_a_positive():
    # only a crowd region: no positives -> NaN, whatever is detected in it
    out = detection_map([pred([[510, 10, 560, 60]], [0.9])], [crowd_gt(np.zeros((0, 4)), [], [CROWD], [0])], 1)
    assert math.isnan(out["map50"]) and out["num_gt"] == [0]
    # a crowd-only image next to a normal one changes nothing
    preds = [pred([GT_BOX], [0.8]), pred([[510, 10, 560, 60], [520, 20, 600, 90]], [0.99, 0.98])]
    gts = [gt([GT_BOX]), crowd_gt(np.zeros((0, 4)), [], [CROWD], [0])]
    assert detection_map(preds, gts, 1)["map50"] == pytest.approx(1.0)


def test_ground_truth_forms_agree():
    dets = [pred([[510, 10, 560, 60], GT_BOX, FAR_BOX], [0.95, 0.9, 0.92])]
    as_dict = detection_map(dets, [crowd_gt([GT_BOX], [0], [CROWD], [0])], 1)
    as_tuple = detection_map(dets, [(np.array([GT_BOX]), [0], np.array([CROWD]), [0])], 1)
    assert as_dict == as_tuple
    # no crowd: the 2-tuple, a 4-tuple with empty crowd and a dict without crowd keys agree
    empty = detection_map(dets, [(np.array([GT_BOX]), [0], np.zeros((0, 4)), [])], 1)
    assert empty == detection_map(dets, [gt([GT_BOX])], 1) == detection_map(
        dets, [{"boxes": [GT_BOX], "classes": [0]}], 1)
    with pytest.raises(ValueError, match="entries"):
        detection_map(dets, [(np.array([GT_BOX]), [0], np.array([CROWD]))], 1)
    with pytest.raises(ValueError, match="all of"):
        detection_map(dets, [{"boxes": [GT_BOX], "classes": [0], "crowd_boxes": [CROWD]}], 1)
    with pytest.raises(ValueError, match="class id"):
        detection_map(dets, [crowd_gt([GT_BOX], [0], [CROWD], [4])], 1)


def test_area_range_all_ignores_inverted_and_huge_boxes():
    # COCO "all" is [0, 1e10] on w*h: an inverted detection (negative area)
    # that matches nothing is ignored instead of an FP; a GT box larger than
    # 1e10 px^2 is ignored (not a positive, a detection on it is ignored once).
    inverted = [100.0, 300.0, 50.0, 400.0]
    out = detection_map([pred([inverted, GT_BOX], [0.9, 0.8])], [gt([GT_BOX])], 1)
    assert out["map50"] == pytest.approx(1.0)
    # GT [GT_BOX, huge (1.21e10 px^2)]. Ranked: D 0.95 (1e10 px^2, in range,
    # IoU 0.826 with huge) -> matched to the ignored GT -> ignored; its
    # duplicate 0.94 finds huge used (not a crowd) -> FP; TP 0.9 -> AP 0.5.
    # A detection of more than 1e10 px^2 matching nothing is ignored.
    huge, d = [0.0, 0.0, 1.1e5, 1.1e5], [0.0, 0.0, 1e5, 1e5]
    out = detection_map([pred([d, d, GT_BOX], [0.95, 0.94, 0.9])], [gt([GT_BOX, huge])], 1)
    assert out["num_gt"] == [1]
    assert out["map50"] == pytest.approx(0.5)
    out = detection_map([pred([[0, 300, 2e5, 2e5], GT_BOX], [0.95, 0.9])], [gt([GT_BOX])], 1)
    assert out["map50"] == pytest.approx(1.0)


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


def _boxes_in(rng, region, n, min_frac=0.05, max_frac=0.5):
    """n boxes inside an xyxy region."""
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    wh = rng.uniform(min_frac, max_frac, (n, 2)) * [w, h]
    xy = [x0, y0] + rng.uniform(0, 1, (n, 2)) * ([w, h] - wh)
    return np.concatenate([xy, xy + wh], 1)


def _crowd_scene(rng, num_images=30):
    """Four classes: 0 and 1 with real boxes and crowd regions, 2 with no
    ground truth at all (only FPs), 3 with crowd regions only.

    Every sixth image is empty (no GT, no detections), the next one holds
    only crowd regions. Real boxes often lie inside crowd regions; detections
    sit on real boxes (jittered, duplicated), inside crowd regions, half
    outside them, and anywhere (FPs); image 9 has >100 per class (maxDets);
    a third of the scores are rounded to 0.1, so ties across and within
    images are common. Ground truth alternates between the accepted forms.
    """
    preds, gts = [], []
    for i in range(num_images):
        kind = i % 6
        if kind == 0:
            preds.append(pred(np.zeros((0, 4)), []))
            gts.append(gt(np.zeros((0, 4)), []))
            continue
        n_crowd = int(rng.integers(1, 3)) if kind == 1 else int(rng.integers(0, 3))
        cxy = rng.uniform(0, 300, (n_crowd, 2))
        c_boxes = np.concatenate([cxy, cxy + rng.uniform(80, 250, (n_crowd, 2))], 1)
        c_cls = rng.choice([0, 1, 3], n_crowd)
        m = 0 if kind == 1 else int(rng.integers(0, 7))
        xy = rng.uniform(0, 400, (m, 2))
        wh = rng.uniform(8, 120, (m, 2))
        g_boxes = np.concatenate([xy, xy + wh], 1)
        g_cls = rng.integers(0, 2, m)
        for j in range(m):  # half of the real boxes inside a crowd region of their class... or another
            if n_crowd and rng.uniform() < 0.5:
                k = int(rng.integers(n_crowd))
                g_boxes[j] = _boxes_in(rng, c_boxes[k], 1, 0.2, 0.6)[0]
                g_cls[j] = c_cls[k] if c_cls[k] != 3 and rng.uniform() < 0.8 else g_cls[j]
        gw = np.concatenate([g_boxes[:, 2:] - g_boxes[:, :2]] * 2, 1)
        jitter = rng.normal(0, 0.12, (m, 4)) * gw
        d_boxes = [g_boxes + jitter, g_boxes + jitter[::-1] * 0.5]
        d_cls = [g_cls, g_cls if i % 4 else rng.integers(0, 4, m)]
        for k in range(n_crowd):
            n_in = int(rng.integers(0, 6))
            inside = _boxes_in(rng, c_boxes[k], n_in)
            # shift some so they stick out of the region (crowd IoU < 1)
            shift = rng.uniform(0, 1, (n_in, 1)) < 0.4
            inside += shift * np.tile(rng.uniform(-0.5, 0.5, (n_in, 2)) * (c_boxes[k, 2:] - c_boxes[k, :2]), 2)
            d_boxes.append(inside)
            d_cls.append(np.where(rng.uniform(0, 1, n_in) < 0.85, c_cls[k], rng.integers(0, 4, n_in)))
        n_fp = 230 if i == 9 else int(rng.integers(0, 6))
        fxy = rng.uniform(0, 400, (n_fp, 2))
        d_boxes.append(np.concatenate([fxy, fxy + rng.uniform(8, 120, (n_fp, 2))], 1))
        d_cls.append(rng.integers(0, 4, n_fp))
        d_boxes = np.concatenate(d_boxes)
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)
        scores = rng.uniform(0, 1, len(d_boxes))
        tied = rng.uniform(0, 1, len(d_boxes)) < 0.35
        scores[tied] = np.round(scores[tied], 1)
        preds.append(pred(d_boxes, scores, np.concatenate(d_cls)))
        if i % 3 == 0:
            gts.append((g_boxes, g_cls, c_boxes, c_cls))
        elif i % 3 == 1 and n_crowd == 0:
            gts.append(gt(g_boxes, g_cls))
        else:
            gts.append(crowd_gt(g_boxes, g_cls, c_boxes, c_cls))
    return preds, gts


def _fixed_crowd_scene():
    """Hand-placed, integer coordinates, 4 classes (2: no GT, 3: crowd only):
    crowd absorbing several detections, a detection on a real box inside a
    crowd (real first; crowd above 0.818), a duplicate meeting a crowd at IoU
    exactly 0.5, a crowd-only image, an empty image, zero-area and inverted
    GT, a huge (>1e10 px^2, ignored) GT, an inverted detection, tied scores,
    an exact IoU tie between two real boxes."""
    e4 = np.zeros((0, 4))
    preds = [
        pred([GT_BOX, [60, 10, 100, 90], [150, 0, 250, 100], GT_BOX, [310, 0, 410, 100], [310, 0, 410, 100],
              FAR_BOX, [100, 300, 50, 400]],
             [0.9, 0.8, 0.7, 0.6, 0.8, 0.5, 0.7, 0.9], [0, 0, 0, 0, 0, 0, 0, 0]),
        pred([[510, 10, 560, 60], [520, 20, 600, 90], [650, 150, 750, 250], [0, 0, 30, 30]],
             [0.8, 0.7, 0.7, 0.6], [0, 0, 0, 3]),
        pred(e4, []),
        pred([[10, 10, 50, 50], [12, 10, 52, 50], [100, 100, 150, 140], [0, 0, 2e5, 2e5], [0, 0, 2e5, 2e5],
              [300, 300, 320, 320], [5, 5, 45, 45]],
             [0.7, 0.7, 0.8, 0.9, 0.85, 0.7, 0.8], [1, 1, 1, 1, 1, 2, 3]),
        pred([[100, 100, 150, 150], [100, 100, 150, 150]], [0.7, 0.7], [1, 1]),
        pred([[25, 0, 125, 100], [0, 0, 100, 100], [50, 0, 150, 100]], [0.9, 0.8, 0.7], [0, 0, 1]),
    ]
    gts = [
        crowd_gt([GT_BOX, [300, 0, 400, 100]], [0, 0], [[50, 0, 250, 100], [300, 0, 500, 100]], [0, 0]),
        crowd_gt(e4, [], [CROWD, [0, 0, 100, 100]], [0, 3]),
        gt(e4, []),
        # zero-area box, inverted box (negative area: ignored), huge box (ignored)
        crowd_gt([[10, 10, 50, 50], [100, 100, 150, 140], [200, 200, 200, 260], [80, 80, 40, 120],
                  [0, 0, 2e5, 2e5]], [1, 1, 1, 1, 1], [[0, 0, 60, 60]], [3]),
        (np.array([[100, 100, 150, 150]], float), [1], np.array([[90, 90, 160, 160]], float), [1]),
        # IoU tie: [25,0,125,100] has 0.6 with both; the later GT wins (as in COCOeval)
        gt([[0, 0, 100, 100], [50, 0, 150, 100], [60, 0, 160, 100]], [0, 0, 1]),
    ]
    return preds, gts


def _gt_parts(g):
    if isinstance(g, dict):
        return g["boxes"], g["classes"], g.get("crowd_boxes", np.zeros((0, 4))), g.get("crowd_classes", [])
    return tuple(g) if len(g) == 4 else (g[0], g[1], np.zeros((0, 4)), [])


def _coco_eval(preds, gts, num_classes, max_dets=100, rng=None, image_ids=None):
    """COCOeval (bbox, area 'all', maxDets) -> mAP@0.5, mAP@0.5:0.95 and per-class
    AP@0.5 and AP@0.5:0.95 (NaN where COCOeval reports -1).

    Crowd regions become iscrowd=1 annotations with area = w * h (COCOeval
    takes a GT's area from that field). With ``rng`` they are interleaved
    at random positions among the image's real boxes: COCOeval's stable
    ignored-last sort must undo that. Image i gets the id ``image_ids[i]``
    (default i + 1), and the json lists the images in input order."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    def ann(img_id, b, c, crowd):
        # ids start at 1: COCOeval stores the matched GT id and treats 0 as "unmatched".
        return {"image_id": img_id, "category_id": int(c) + 1, "bbox": xywh(b),
                "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": int(crowd)}

    anns, dets = [], []
    image_ids = [int(i) for i in (range(1, len(gts) + 1) if image_ids is None else image_ids)]
    for img_id, g, p in zip(image_ids, gts, preds):
        g_boxes, g_cls, c_boxes, c_cls = _gt_parts(g)
        real = [ann(img_id, b, c, False) for b, c in zip(np.asarray(g_boxes).reshape(-1, 4), g_cls)]
        crowd = [ann(img_id, b, c, True) for b, c in zip(np.asarray(c_boxes).reshape(-1, 4), c_cls)]
        if rng is None:
            image_anns = real + crowd
        else:
            slots = np.sort(rng.choice(len(real) + len(crowd), len(crowd), replace=False))
            image_anns, ri, ci = [], iter(real), iter(crowd)
            for s in range(len(real) + len(crowd)):
                image_anns.append(next(ci) if s in slots else next(ri))
        anns += image_anns
        for b, s, c in zip(p["boxes"], p["scores"], p["classes"]):
            dets.append({"image_id": img_id, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)})
    for k, a in enumerate(anns, start=1):
        a["id"] = k
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i, "width": 640, "height": 640} for i in image_ids],
            "annotations": anns,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [max_dets]
        ev.params.areaRng = [[0, 1e5**2]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    assert ev.params.iouThrs[0] == 0.5
    p50 = precision[0]
    per50 = [float(p50[:, k].mean()) if (p50[:, k] > -1).all() else math.nan for k in range(num_classes)]
    per = [float(precision[:, :, k].mean()) if (precision[:, :, k] > -1).all() else math.nan
           for k in range(num_classes)]
    return {"map50": float(p50[p50 > -1].mean()), "map50_95": float(precision[precision > -1].mean()),
            "per_class_ap50": per50, "per_class_ap": per}


def _max_difference(ours, coco):
    """Largest |ours - coco| over both means and all per-class APs; NaN must meet NaN."""
    worst = 0.0
    for key in ("map50", "map50_95", "per_class_ap50", "per_class_ap"):
        a, b = np.atleast_1d(ours[key]).astype(float), np.atleast_1d(coco[key]).astype(float)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=key)
        if (~np.isnan(a)).any():
            worst = max(worst, float(np.abs(a - b)[~np.isnan(a)].max()))
    return worst


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools(seed):
    pytest.importorskip("pycocotools")
    preds, gts = _random_scene(np.random.default_rng(seed))
    coco = _coco_eval(preds, gts, 2)
    ours = detection_map(preds, gts, 2, max_detections=100)
    assert 0.05 < coco["map50"] < 0.99  # the scene is neither trivial nor hopeless
    assert _max_difference(ours, coco) < 1e-3
    # and the cap really is exercised: without it the numbers differ
    assert abs(detection_map(preds, gts, 2)["map50"] - coco["map50"]) > 1e-4


@pytest.mark.parametrize("seed", range(6))
def test_matches_pycocotools_with_crowd_regions(seed):
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(100 + seed)
    preds, gts = _crowd_scene(rng)
    coco = _coco_eval(preds, gts, 4, rng=rng)
    ours = detection_map(preds, gts, 4, max_detections=100)
    assert _max_difference(ours, coco) < 1e-3
    assert 0.05 < coco["map50"] < 0.99
    # class 2 has no GT, class 3 only crowd regions: both NaN, both left out
    assert math.isnan(ours["per_class_ap50"][2]) and math.isnan(ours["per_class_ap50"][3])
    assert ours["num_gt"][2] == ours["num_gt"][3] == 0 and ours["num_crowd"][3] > 0
    # the crowd regions matter: dropping them, or counting them as real boxes, changes the numbers
    plain = [_gt_parts(g)[:2] for g in gts]
    assert abs(detection_map(preds, plain, 4, max_detections=100)["map50_95"] - coco["map50_95"]) > 1e-3
    as_real = [(np.concatenate([np.reshape(b, (-1, 4)), np.reshape(cb, (-1, 4))]), np.concatenate([c, cc]))
               for b, c, cb, cc in map(_gt_parts, gts)]
    assert abs(detection_map(preds, as_real, 4, max_detections=100)["map50_95"] - coco["map50_95"]) > 1e-3


def test_matches_pycocotools_fixed_crowd_cases():
    pytest.importorskip("pycocotools")
    preds, gts = _fixed_crowd_scene()
    coco = _coco_eval(preds, gts, 4)
    ours = detection_map(preds, gts, 4, max_detections=100)
    assert _max_difference(ours, coco) < 1e-12
    assert [math.isnan(x) for x in ours["per_class_ap50"]] == [False, False, True, True]
    # maxDets small enough to cut into image 0 (8 class-0 detections)
    for cap in (1, 3):
        assert _max_difference(detection_map(preds, gts, 4, max_detections=cap),
                               _coco_eval(preds, gts, 4, max_dets=cap)) < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_matches_pycocotools_on_tied_scores_whatever_the_image_ids(seed):
    """Scores rounded to 0.1 tie across and within images; the images' ids follow neither
    their input order nor any pattern (a COCO file whose ids do not follow the file names
    the evaluation lists images by). Ranked by ascending id, as COCOeval ranks them, the
    two agree exactly."""
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(200 + seed)
    preds, gts = _random_scene(rng, num_images=30)
    for p in preds:
        p["scores"] = np.round(p["scores"], 1)
    ids = rng.permutation(30) * 7 + 3
    coco = _coco_eval(preds, gts, 2, image_ids=ids)
    ours = detection_map(preds, gts, 2, max_detections=100, image_ids=ids)
    assert 0.05 < coco["map50"] < 0.99
    assert _max_difference(ours, coco) < 1e-12
    # the image order decides: ranked in input order, the tied scores give other numbers
    assert _max_difference(detection_map(preds, gts, 2, max_detections=100), coco) > 1e-6


def test_image_ids_must_be_one_distinct_id_per_image():
    preds, gts = [pred([GT_BOX], [0.9])] * 2, [gt([GT_BOX])] * 2
    with pytest.raises(ValueError, match=r"given more than once: \[5\]"):
        detection_map(preds, gts, 1, image_ids=[5, 5])
    with pytest.raises(ValueError, match="1 image ids for 2 images"):
        detection_map(preds, gts, 1, image_ids=[5])


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
