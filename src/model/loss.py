"""Multi-task loss: YOLOv3 detection loss + disaster cross-entropy (+ segmentation), masked per sample.

Detection, per image (YOLOv3 sums over cells, per image):
  box:  (1 - CIoU) from keras-cv, weighted by (2 - w*h/area) so small boxes count more;
  objectness: BCE, positives where a target sits; negatives whose predicted
    box overlaps any ground truth by more than `ignore_iou` are ignored;
  class: BCE over victim classes at positives.
Each image's detection term is multiplied by `has_boxes`, its disaster term by
`has_class`, so a sample contributes zero gradient to a task it has no labels
for (sites hold partial labels). Each task is averaged over the samples that
have its label. With a segmentation head, `seg_loss.segmentation_loss` adds its
term, masked by `has_mask` and by the ignore index. The terms are computed task by task
over `TASKS` (each task's `<name>_terms` method, its terms in TASK_TERMS, each weighted by
the LossWeights field of its name); a task whose outputs are absent (a site that computes
only the part of the model its labels train) contributes zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras_cv
import numpy as np
import tensorflow as tf

from src.model.config import STRIDES, TASKS, ModelConfig
from src.model.decode import decode_scale, scale_anchors
from src.model.seg_loss import segmentation_loss

DETECTION_KEYS = ("det_s8", "det_s16", "det_s32")
# each task's loss terms, by LossWeights field (the weight of the term of that name)
TASK_TERMS = {"boxes": ("box", "objectness", "victim_class"), "class": ("disaster",), "masks": ("segmentation",)}
UNIT_BOX = tf.constant([0.0, 0.0, 1.0, 1.0])


@dataclass(frozen=True)
class LossWeights:
    box: float = 1.0
    objectness: float = 1.0
    victim_class: float = 1.0
    disaster: float = 1.0
    ignore_iou: float = 0.5
    # Objectness target at a positive: 1 - r + r * IoU(predicted box, its truth) (YOLOv5's
    # `gr`). r > 0 ranks well-placed boxes above loose ones, which mAP@0.5:0.95 rewards.
    objectness_iou: float = 0.0
    segmentation: float = 1.0
    # Soft Dice next to the pixel cross-entropy (seg_loss.py): counters small regions against
    # background; off by default, which keeps the segmentation term plain cross-entropy.
    seg_dice: float = 0.0


def matched_iou(a, b):
    """IoU of (..., 4) with (..., 4) xyxy, box by box -> (...)."""
    wh = tf.maximum(tf.minimum(a[..., 2:], b[..., 2:]) - tf.maximum(a[..., :2], b[..., :2]), 0.0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / tf.maximum(area_a + area_b - inter, 1e-9)


def pairwise_iou(a, b):
    """IoU of (B, N, 4) with (B, M, 4) xyxy -> (B, N, M)."""
    return matched_iou(a[:, :, None, :], b[:, None, :, :])


class MultiTaskLoss:
    """Callable: (targets dict, model outputs dict) -> dict of scalar losses."""

    def __init__(self, config: ModelConfig, weights: LossWeights = LossWeights(), disaster_prior=None):
        """disaster_prior: this trainer's class frequencies (D,), for logit adjustment.

        With a prior pi, the disaster loss is the cross-entropy of
        softmax(log p + log pi): the head then learns scores that do not carry
        the local class mix, and inference (plain p) assumes a uniform mix. A
        site that holds almost no `normal` images otherwise teaches the
        shared head that `normal` is rare (label-skew drift under FedAvg;
        Menon et al. 2021 logit adjustment, FedLC 2022). None: plain cross-entropy.
        """
        self.config = config
        self.weights = weights
        self.log_prior = None
        if disaster_prior is not None:
            prior = np.asarray(disaster_prior, np.float64)
            if prior.shape != (config.num_disaster_classes,) or np.any(prior <= 0):
                raise ValueError(f"disaster_prior must be {config.num_disaster_classes} positive "
                                 f"frequencies, got {disaster_prior}")
            self.log_prior = tf.constant(np.log(prior / prior.sum()), tf.float32)
        self.anchors = scale_anchors(config)
        self.ciou = keras_cv.losses.CIoULoss(bounding_box_format="xyxy", reduction="none")
        self.image_area = float(config.input_size ** 2)

    def detection_per_image(self, targets: dict, outputs: dict):
        """Per-image (box, objectness, class) loss sums, each (B,)."""
        gt_boxes = tf.cast(targets["gt_boxes"], tf.float32)
        box_sum = obj_sum = cls_sum = 0.0
        for key, anchors, stride in zip(DETECTION_KEYS, self.anchors, STRIDES):
            raw = tf.cast(outputs[key], tf.float32)
            target = tf.cast(targets[key], tf.float32)
            batch = tf.shape(raw)[0]
            positive = target[..., 4]
            pred_boxes = decode_scale(raw, anchors, stride, self.config.centre_range)

            flat_pred = tf.reshape(pred_boxes, [batch, -1, 4])
            flat_true = tf.reshape(target[..., :4], [batch, -1, 4])
            flat_pos = tf.reshape(positive, [batch, -1])
            # Empty slots get a harmless unit box: CIoU of zero-size boxes has
            # unstable gradients, and 0 * NaN is still NaN.
            is_pos = flat_pos[..., None] > 0
            safe_true = tf.where(is_pos, flat_true, UNIT_BOX)
            safe_pred = tf.where(is_pos, flat_pred, UNIT_BOX)
            ciou_loss = self.ciou(safe_true, safe_pred)  # (B, N)
            true_wh = flat_true[..., 2:] - flat_true[..., :2]
            size_weight = 2.0 - true_wh[..., 0] * true_wh[..., 1] / self.image_area
            box_sum += tf.reduce_sum(flat_pos * size_weight * ciou_loss, axis=1)

            best_iou = tf.reduce_max(pairwise_iou(flat_pred, gt_boxes), axis=-1)
            ignore = tf.cast(best_iou > self.weights.ignore_iou, tf.float32)
            negative = (1.0 - flat_pos) * (1.0 - ignore)
            obj_target = flat_pos
            if self.weights.objectness_iou:
                r = self.weights.objectness_iou
                fit = tf.stop_gradient(tf.maximum(matched_iou(safe_pred, safe_true), 0.0))
                obj_target = flat_pos * (1.0 - r + r * fit)
            obj_bce = tf.nn.sigmoid_cross_entropy_with_logits(
                labels=obj_target, logits=tf.reshape(raw[..., 4], [batch, -1]))
            obj_sum += tf.reduce_sum((flat_pos + negative) * obj_bce, axis=1)

            cls_bce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(
                labels=target[..., 5:], logits=raw[..., 5:]), axis=-1)
            cls_sum += tf.reduce_sum(tf.reshape(positive * cls_bce, [batch, -1]), axis=1)
        return box_sum, obj_sum, cls_sum

    def disaster_loss(self, targets: dict, outputs: dict):
        """Mean cross-entropy over the images that have a disaster class (logit-adjusted with a prior)."""
        has_class = tf.cast(targets["has_class"], tf.float32)
        probs = tf.cast(outputs["disaster"], tf.float32)
        labels = tf.maximum(tf.cast(targets["disaster"], tf.int32), 0)
        if self.log_prior is not None:
            adjusted = tf.nn.log_softmax(tf.math.log(tf.maximum(probs, 1e-7)) + self.log_prior)
            ce = -tf.gather(adjusted, labels, batch_dims=1)
        else:
            ce = -tf.math.log(tf.clip_by_value(tf.gather(probs, labels, batch_dims=1), 1e-7, 1.0))
        return tf.reduce_sum(has_class * ce) / tf.maximum(tf.reduce_sum(has_class), 1.0)

    def boxes_terms(self, targets: dict, outputs: dict) -> dict:
        """Box, objectness and victim-class terms, each averaged over the images with boxes."""
        has_boxes = tf.cast(targets["has_boxes"], tf.float32)
        det_images = tf.maximum(tf.reduce_sum(has_boxes), 1.0)
        per_image = self.detection_per_image(targets, outputs)
        return {name: tf.reduce_sum(has_boxes * value) / det_images
                for name, value in zip(TASK_TERMS["boxes"], per_image)}

    def class_terms(self, targets: dict, outputs: dict) -> dict:
        return {"disaster": self.disaster_loss(targets, outputs)}

    def masks_terms(self, targets: dict, outputs: dict) -> dict:
        return segmentation_loss(targets["segmentation"], outputs["segmentation"], targets["has_mask"],
                                 self.weights.seg_dice)

    def __call__(self, targets: dict, outputs: dict) -> dict:
        zero = tf.constant(0.0)
        terms = {}
        for task in TASKS:
            present = all(k in outputs for k in task.outputs)
            computed = getattr(self, f"{task.name}_terms")(targets, outputs) if present else {}
            terms.update({name: computed.get(name, zero) for name in TASK_TERMS[task.name]})
        weighted = {name: getattr(self.weights, name) * value for name, value in terms.items()}
        detection = sum(weighted[name] for name in TASK_TERMS["boxes"])
        total = detection
        for name, value in weighted.items():
            if name not in TASK_TERMS["boxes"]:
                total = total + value
        return {"loss": total, "detection": detection, **terms}
