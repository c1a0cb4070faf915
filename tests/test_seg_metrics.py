"""mIoU and per-class IoU (src/segmentation_metrics.py) against a case computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from src.segmentation_metrics import SegmentationScore, confusion_matrix, segmentation_scores

NAMES = ("background", "water", "fire_smoke", "rubble")
# Two images, 255 = unlabeled. Scored (truth, prediction) pixels over both images: (0,0) x2, (0,1), (0,2),
# (1,1) x2, (1,0), (2,1); the only rubble prediction sits on an unlabeled pixel and is not scored.
#   background: truth 4, predicted 3, both 2 -> IoU 2 / (4 + 3 - 2) = 2/5
#   water:      truth 3, predicted 4, both 2 -> IoU 2 / (3 + 4 - 2) = 2/5
#   fire_smoke: truth 1, predicted 1, both 0 -> IoU 0 / 2 = 0
#   rubble:     in neither truth nor prediction -> no IoU (None), left out of the mean
# mIoU = (2/5 + 2/5 + 0) / 3; pixel accuracy = 4 of 8 scored pixels.
TRUTH = [np.array([[0, 0, 1], [1, 255, 2]]), np.array([[0, 0, 1], [255, 255, 255]])]
PREDICTION = [np.array([[0, 1, 1], [0, 3, 1]]), np.array([[0, 2, 1], [0, 0, 0]])]


def test_miou_and_per_class_iou_match_the_hand_computed_case():
    report = segmentation_scores(zip(TRUTH, PREDICTION), NAMES)
    assert report["per_class_iou"] == {"background": pytest.approx(2 / 5), "water": pytest.approx(2 / 5),
                                       "fire_smoke": 0.0, "rubble": None}
    assert report["miou"] == pytest.approx((2 / 5 + 2 / 5 + 0) / 3)
    assert report["pixel_accuracy"] == pytest.approx(4 / 8) and report["pixels"] == 8


def test_the_matrix_is_summed_over_images_not_averaged_per_image():
    """Image 1 alone has water IoU 1/4, image 2 alone 1/1; over both it is 2/5, not their mean."""
    score = SegmentationScore(len(NAMES))
    for truth, prediction in zip(TRUTH, PREDICTION):
        score.update(truth, prediction)
    np.testing.assert_array_equal(score.matrix, confusion_matrix(np.concatenate([t.ravel() for t in TRUTH]),
                                                                 np.concatenate([p.ravel() for p in PREDICTION]), 4))
    assert score.iou()[1] == pytest.approx(2 / 5)
    assert math.isnan(score.iou()[3])


def test_nothing_scored_is_undefined_and_bad_classes_are_refused():
    empty = SegmentationScore(2)
    empty.update(np.full((2, 2), 255), np.zeros((2, 2)))
    assert empty.report(("a", "b")) == {"miou": None, "per_class_iou": {"a": None, "b": None},
                                        "pixel_accuracy": None, "pixels": 0}
    with pytest.raises(ValueError, match="prediction holds class 4, outside 0..3"):
        confusion_matrix(np.zeros((1, 2)), np.array([[0, 4]]), 4)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((1, 2)), np.zeros((2, 1)), 4)
