"""Segmentation loss: per-pixel cross-entropy (+ optional soft Dice) with an ignore index, masked per sample.

Pixels labelled ``IGNORE_INDEX`` (255: unlabeled, e.g. where an annotator drew
nothing) give no loss and no gradient; so does every pixel of an image without
a mask (``has_mask`` 0: the site holds no mask of it), the way ``loss.py`` masks
the detection and disaster terms by ``has_boxes`` and ``has_class``. Each image
with a mask weighs the same: its mean over its labeled pixels, then the mean
over such images (a large flood does not outweigh a small fire).

Dice (optional, ``dice_weight`` > 0) is the soft Dice of each class over an
image's labeled pixels, averaged over classes; it counters the imbalance of
small regions against background that cross-entropy alone learns slowly.
Logits in, as the head emits them before its softmax.
"""
from __future__ import annotations

import tensorflow as tf

from src.data.formats.masks import IGNORE_INDEX  # unlabeled pixels

DICE_SMOOTH = 1.0  # keeps a class absent from truth and prediction at Dice 1, not 0 / 0


def _per_image_mean(values, weights):
    """(B,) weighted mean over each image's pixels; 0 for an image with no weight."""
    return tf.reduce_sum(values * weights, axis=[1, 2]) / tf.maximum(tf.reduce_sum(weights, axis=[1, 2]), 1.0)


def segmentation_loss(labels, logits, has_mask, dice_weight: float = 0.0,
                      ignore_index: int = IGNORE_INDEX) -> dict:
    """{'seg_ce', 'seg_dice', 'segmentation'} scalars for a batch.

    labels: (B, H, W) int class indices, ignore_index where unlabeled;
    logits: (B, H, W, C) float; has_mask: (B,) 0/1. 'segmentation' is
    seg_ce + dice_weight * seg_dice; seg_dice is 0 when dice_weight is 0.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    num_classes = tf.shape(logits)[-1]
    labeled = tf.cast(tf.not_equal(labels, ignore_index), tf.float32)
    labeled *= tf.reshape(tf.cast(has_mask, tf.float32), [-1, 1, 1])
    safe_labels = tf.where(labels == ignore_index, tf.zeros_like(labels), labels)  # any class; weighted by 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    scored = tf.cast(tf.reduce_sum(labeled, axis=[1, 2]) > 0, tf.float32)  # images with a labeled pixel
    images = tf.maximum(tf.reduce_sum(scored), 1.0)
    seg_ce = tf.reduce_sum(_per_image_mean(ce, labeled)) / images
    seg_dice = tf.constant(0.0)
    if dice_weight:
        probs = tf.nn.softmax(logits) * labeled[..., None]
        truth = tf.one_hot(safe_labels, num_classes) * labeled[..., None]
        overlap = tf.reduce_sum(probs * truth, axis=[1, 2])
        sizes = tf.reduce_sum(probs, axis=[1, 2]) + tf.reduce_sum(truth, axis=[1, 2])
        dice = (2.0 * overlap + DICE_SMOOTH) / (sizes + DICE_SMOOTH)  # (B, C)
        seg_dice = tf.reduce_sum(scored * (1.0 - tf.reduce_mean(dice, axis=-1))) / images
    return {"seg_ce": seg_ce, "seg_dice": seg_dice, "segmentation": seg_ce + dice_weight * seg_dice}
