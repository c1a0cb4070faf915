"""The segmentation loss (src/model/seg_loss.py): unlabeled pixels and images without a mask give
no loss and no gradient; each image with a mask weighs the same."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from src.model.seg_loss import segmentation_loss

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(2, 3, 4, 4)).astype(np.float32)  # 2 images, 3x4 pixels, 4 classes
LABELS = np.array([[[0, 1, 2, 3], [255, 255, 1, 1], [0, 0, 255, 2]],
                   [[3, 3, 3, 3], [2, 2, 255, 0], [1, 1, 1, 1]]], np.int32)


def loss_and_gradient(labels, has_mask, dice_weight=0.0):
    logits = tf.Variable(LOGITS)
    with tf.GradientTape() as tape:
        losses = segmentation_loss(tf.constant(labels), logits, tf.constant(has_mask, tf.float32), dice_weight)
    return {k: float(v) for k, v in losses.items()}, tape.gradient(losses["segmentation"], logits).numpy()


def reference_cross_entropy(image: int) -> float:
    """Mean cross-entropy over one image's labeled pixels, in numpy."""
    logits, labels = LOGITS[image].reshape(-1, 4), LABELS[image].reshape(-1)
    keep = labels != 255
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-log_softmax[keep, labels[keep]].mean())


@pytest.mark.parametrize("dice_weight", [0.0, 0.5])
def test_ignored_pixels_and_images_without_a_mask_get_no_gradient(dice_weight):
    losses, gradient = loss_and_gradient(LABELS, [1.0, 0.0], dice_weight)
    ignored = LABELS[0] == 255
    assert np.all(gradient[0][ignored] == 0) and np.all(gradient[1] == 0)
    assert np.all(np.abs(gradient[0][~ignored]).sum(-1) > 0)  # every labeled pixel is learned from
    assert losses["seg_ce"] == pytest.approx(reference_cross_entropy(0), rel=1e-5)
    # what an ignored pixel is labeled with changes nothing
    relabeled = LABELS.copy()
    relabeled[1] = RNG.integers(0, 4, relabeled[1].shape)
    assert loss_and_gradient(relabeled, [1.0, 0.0], dice_weight)[0] == pytest.approx(losses)


def test_each_image_with_a_mask_weighs_the_same_and_dice_adds_on_top():
    losses, _ = loss_and_gradient(LABELS, [1.0, 1.0])
    assert losses["seg_ce"] == pytest.approx((reference_cross_entropy(0) + reference_cross_entropy(1)) / 2, rel=1e-5)
    assert losses["seg_dice"] == 0.0 and losses["segmentation"] == losses["seg_ce"]
    with_dice, _ = loss_and_gradient(LABELS, [1.0, 1.0], dice_weight=0.5)
    assert 0 < with_dice["seg_dice"] < 1
    assert with_dice["segmentation"] == pytest.approx(with_dice["seg_ce"] + 0.5 * with_dice["seg_dice"])
    nothing, gradient = loss_and_gradient(np.full_like(LABELS, 255), [1.0, 1.0], dice_weight=0.5)
    assert nothing["segmentation"] == 0.0 and not gradient.any()
