"""YOLOv3 label encoder: ground-truth boxes -> per-scale target tensors.

Each box goes to the one anchor (of 9) whose shape matches it best (IoU of
widths/heights), at the grid cell holding its centre on that anchor's
stride. Vectorised over batch and boxes so it runs inside tf.data.
"""
from __future__ import annotations

import tensorflow as tf

from src.model.config import STRIDES, ModelConfig
from src.model.det_head import ANCHORS_PER_SCALE


def anchor_shape_iou(wh, anchors):
    """IoU of (..., 2) box sizes with (A, 2) anchors, both centred: (..., A)."""
    wh = wh[..., None, :]
    inter = tf.reduce_prod(tf.minimum(wh, anchors), axis=-1)
    union = tf.reduce_prod(wh, axis=-1) + tf.reduce_prod(anchors, axis=-1) - inter
    return inter / tf.maximum(union, 1e-9)


def encode_targets(boxes, classes, config: ModelConfig):
    """Batch encode.

    boxes: (B, M, 4) xyxy in input pixels; classes: (B, M) int, -1 = padding.
    Returns a tuple of 3 tensors (B, S, S, 3, 5 + C) for strides 8/16/32 with
    [x1, y1, x2, y2, objectness, one-hot victim class].
    """
    boxes = tf.cast(boxes, tf.float32)
    classes = tf.cast(classes, tf.int32)
    anchors = tf.constant(config.anchors, tf.float32)
    wh = boxes[..., 2:4] - boxes[..., 0:2]
    valid = (classes >= 0) & (wh[..., 0] > 0) & (wh[..., 1] > 0)
    best_anchor = tf.argmax(anchor_shape_iou(wh, anchors), axis=-1, output_type=tf.int32)
    centre = (boxes[..., 0:2] + boxes[..., 2:4]) / 2
    batch_index = tf.broadcast_to(tf.range(tf.shape(boxes)[0])[:, None], tf.shape(classes))
    num_classes = config.num_victim_classes
    values = tf.concat([boxes, tf.ones_like(boxes[..., :1]),
                        tf.one_hot(tf.maximum(classes, 0), num_classes)], axis=-1)
    targets = []
    for scale, (stride, grid) in enumerate(zip(STRIDES, config.grid_sizes)):
        on_scale = valid & (best_anchor // ANCHORS_PER_SCALE == scale)
        cell = tf.clip_by_value(tf.cast(tf.floor(centre / stride), tf.int32), 0, grid - 1)
        index = tf.stack([batch_index, cell[..., 1], cell[..., 0],
                          best_anchor % ANCHORS_PER_SCALE], axis=-1)
        shape = tf.stack([tf.shape(boxes)[0], grid, grid, ANCHORS_PER_SCALE, 5 + num_classes])
        # Two boxes on one (cell, anchor) slot: one of them wins, never a sum.
        targets.append(tf.tensor_scatter_nd_update(
            tf.zeros(shape), tf.boolean_mask(index, on_scale), tf.boolean_mask(values, on_scale)))
    return tuple(targets)
