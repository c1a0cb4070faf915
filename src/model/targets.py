"""YOLOv3 label encoder: ground-truth boxes -> per-scale target tensors.

Each box goes to the anchor (of 9) whose shape matches it best (IoU of
widths/heights), plus optionally every anchor above a shape-IoU threshold,
at the grid cell holding its centre on that anchor's stride. Vectorised over batch and boxes so it runs inside tf.data.
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

    With `config.neighbour_cells`, a box is also positive in the two
    neighbouring cells nearest its centre (YOLOv5): three times the positives.
    A box is positive for its best-matching anchor and, when
    `config.anchor_iou_threshold` < 1, for every other anchor whose shape IoU
    exceeds it (YOLOv4's multi-anchor assignment: more positives per box, so
    a small detector learns in fewer epochs).
    """
    boxes = tf.cast(boxes, tf.float32)
    classes = tf.cast(classes, tf.int32)
    anchors = tf.constant(config.anchors, tf.float32)
    wh = boxes[..., 2:4] - boxes[..., 0:2]
    valid = (classes >= 0) & (wh[..., 0] > 0) & (wh[..., 1] > 0)
    shape_iou = anchor_shape_iou(wh, anchors)  # (B, M, 9)
    best = tf.one_hot(tf.argmax(shape_iou, axis=-1), len(config.anchors), on_value=True,
                      off_value=False, dtype=tf.bool)
    assigned = (best | (shape_iou > config.anchor_iou_threshold)) & valid[..., None]
    centre = (boxes[..., 0:2] + boxes[..., 2:4]) / 2
    batch_index = tf.broadcast_to(tf.range(tf.shape(boxes)[0])[:, None], tf.shape(classes))
    num_classes = config.num_victim_classes
    values = tf.concat([boxes, tf.ones_like(boxes[..., :1]),
                        tf.one_hot(tf.maximum(classes, 0), num_classes)], axis=-1)
    targets = []
    for scale, (stride, grid) in enumerate(zip(STRIDES, config.grid_sizes)):
        position = centre / stride
        cell = tf.clip_by_value(tf.cast(tf.floor(position), tf.int32), 0, grid - 1)
        indices, updates = [], []
        for offset, inside in _cells_for(position, cell, grid, config.neighbour_cells):
            for slot in range(ANCHORS_PER_SCALE):
                on_anchor = assigned[..., scale * ANCHORS_PER_SCALE + slot] & inside
                index = tf.stack([batch_index, cell[..., 1] + offset[..., 1],
                                  cell[..., 0] + offset[..., 0],
                                  tf.fill(tf.shape(classes), slot)], axis=-1)
                indices.append(tf.boolean_mask(index, on_anchor))
                updates.append(tf.boolean_mask(values, on_anchor))
        shape = tf.stack([tf.shape(boxes)[0], grid, grid, ANCHORS_PER_SCALE, 5 + num_classes])
        # Two boxes on one (cell, anchor) slot: one of them wins, never a sum.
        targets.append(tf.tensor_scatter_nd_update(
            tf.zeros(shape), tf.concat(indices, 0), tf.concat(updates, 0)))
    return tuple(targets)


def _cells_for(position, cell, grid: int, neighbours: bool):
    """The centre cell, plus (YOLOv5) the horizontal and vertical neighbour
    cells nearest to the centre, which the decoder can reach since a centre
    may sit in (-0.5, 1.5) cells of its own. Yields (offset (.., 2), inside mask)."""
    zero = tf.zeros_like(cell)
    yield zero, tf.ones_like(cell[..., 0], tf.bool)
    if not neighbours:
        return
    frac = position - tf.cast(cell, tf.float32)
    for axis in (0, 1):
        step = tf.where(frac[..., axis] < 0.5, -1, 1)
        offset = tf.stack([step if axis == 0 else zero[..., 0],
                           step if axis == 1 else zero[..., 0]], axis=-1)
        target = cell[..., axis] + step
        yield offset, (target >= 0) & (target < grid)
