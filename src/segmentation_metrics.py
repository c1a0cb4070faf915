"""Segmentation scores: per-class IoU and their mean (mIoU), from a confusion matrix over whole images.

Why a confusion matrix summed over every image (as the Cityscapes and PASCAL VOC
benchmarks do) rather than a mean of per-image IoUs: a class that fills a few
pixels of one image would otherwise weigh as much as one that fills whole
images. Pixels whose truth is the ignore index (255, unlabeled) are left out.
A class that is in neither the truth nor the predictions of any scored pixel
has no IoU (NaN, reported as None): it is left out of the mean, since 0 would
punish a model for a class the test set does not show, and 1 would reward it.
Plain numpy, no TensorFlow, so any process (aggregator, report) can score.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from src.data.formats.masks import IGNORE_INDEX  # unlabeled pixels



def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64 pixel counts, rows = truth, columns = prediction;
    pixels whose truth is `ignore_index` are not counted."""
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in shape")
    scored = truth != ignore_index
    t, p = truth[scored].astype(np.int64), prediction[scored].astype(np.int64)
    for name, values in (("truth", t), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)]
            raise ValueError(f"{name} holds class {int(bad[0])}, outside 0..{num_classes - 1} "
                             f"(and not the ignore index {ignore_index})")
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """IoU per class from a confusion matrix: TP / (TP + FP + FN); NaN for a class in neither
    truth nor prediction."""
    matrix = np.asarray(matrix, np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / np.where(union > 0, union, 1.0), np.nan)


class SegmentationScore:
    """Accumulates one confusion matrix over images; reads off per-class IoU and mIoU."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        """Add one image (or a batch): class indices of the same shape."""
        self.matrix += confusion_matrix(truth, prediction, self.num_classes, self.ignore_index)

    def iou(self) -> np.ndarray:
        return class_iou(self.matrix)

    def miou(self) -> float:
        """Mean IoU over the classes that have one; NaN when no pixel was scored."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def report(self, class_names: Sequence[str]) -> dict:
        """{'miou', 'per_class_iou': {name: IoU or None}, 'pixel_accuracy', 'pixels'} for metrics.json
        (None where a value is undefined: JSON has no NaN)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        defined = lambda value: None if np.isnan(value) else float(value)  # noqa: E731
        return {"miou": defined(self.miou()),
                "per_class_iou": {name: defined(v) for name, v in zip(class_names, self.iou())},
                "pixel_accuracy": defined(self.pixel_accuracy()), "pixels": int(self.matrix.sum())}


def segmentation_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]], class_names: Sequence[str],
                        ignore_index: int = IGNORE_INDEX) -> dict:
    """``SegmentationScore.report`` over (truth, prediction) pairs, one per image."""
    score = SegmentationScore(len(class_names), ignore_index)
    for truth, prediction in pairs:
        score.update(truth, prediction)
    return score.report(class_names)
