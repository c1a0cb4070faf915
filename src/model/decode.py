"""Raw YOLO head outputs -> boxes in input pixels, and the inference path with NMS."""
from __future__ import annotations

import tensorflow as tf

from src.model.config import CENTRE_RANGE_SCALED, STRIDES, ModelConfig
from src.model.det_head import ANCHORS_PER_SCALE

MAX_LOG_WH = 6.0


def decode_scale(raw, anchors, stride: int, centre_range: float = CENTRE_RANGE_SCALED):
    """One scale: raw (B, S, S, 3, 5 + C) -> boxes xyxy (B, S, S, 3, 4) in input px.

    Centre = (r sigmoid(t_xy) - (r - 1) / 2 + cell) * stride for the model's centre
    range r (2: YOLOv4/v5, reaching (-0.5, 1.5) cells; 1: YOLOv3), size =
    exp(t_wh) * anchor (t_wh clipped so an early wild output cannot overflow).
    """
    grid = tf.shape(raw)[1]
    gy, gx = tf.meshgrid(tf.range(grid), tf.range(grid), indexing="ij")
    cell = tf.cast(tf.stack([gx, gy], axis=-1)[:, :, None, :], tf.float32)
    centre = (centre_range * tf.sigmoid(raw[..., 0:2]) - (centre_range - 1) / 2 + cell) * stride
    size = tf.exp(tf.clip_by_value(raw[..., 2:4], -MAX_LOG_WH, MAX_LOG_WH)) * anchors
    return tf.concat([centre - size / 2, centre + size / 2], axis=-1)


def scale_anchors(config: ModelConfig):
    """The 3 anchors (3, 2) of each scale, small stride first."""
    anchors = tf.constant(config.anchors, tf.float32)
    return [anchors[i * ANCHORS_PER_SCALE:(i + 1) * ANCHORS_PER_SCALE] for i in range(len(STRIDES))]


def flatten_predictions(outputs: dict, config: ModelConfig):
    """All scales concatenated: boxes (B, N, 4) xyxy and scores (B, N, C) = objectness x class."""
    all_boxes, all_scores = [], []
    for name, anchors, stride in zip(("det_s8", "det_s16", "det_s32"), scale_anchors(config), STRIDES):
        raw = tf.cast(outputs[name], tf.float32)
        boxes = decode_scale(raw, anchors, stride, config.centre_range)
        scores = tf.sigmoid(raw[..., 4:5]) * tf.sigmoid(raw[..., 5:])
        batch = tf.shape(raw)[0]
        all_boxes.append(tf.reshape(boxes, [batch, -1, 4]))
        all_scores.append(tf.reshape(scores, [batch, -1, config.num_victim_classes]))
    return tf.concat(all_boxes, axis=1), tf.concat(all_scores, axis=1)


def detect(outputs: dict, config: ModelConfig, score_threshold: float = 0.01,
           iou_threshold: float = 0.45, max_detections: int = 100):
    """Decoded, NMS-filtered detections, dense with num_detections.

    The NMS is keras-cv's `NonMaxSuppression` semantics (class-agnostic greedy
    NMS on the best class score, scores strictly above the threshold, slots past
    num_detections set to -1), run per image by TensorFlow's greedy C++ kernel:
    keras-cv calls the batched, tiled `non_max_suppression_padded` (written for
    TPUs), which took 85 % of the evaluation time on this CPU (a trained model
    leaves thousands of boxes above 0.01).

    Returns dict: boxes (B, K, 4) xyxy input px, scores (B, K), classes (B, K),
    num_detections (B,), disaster_probs (B, D).
    """
    boxes, scores = flatten_predictions(outputs, config)
    confidence = tf.reduce_max(scores, axis=-1)
    classes = tf.argmax(scores, axis=-1, output_type=tf.int32)

    def one_image(args):
        image_boxes, image_confidence = args
        keep = tf.image.non_max_suppression(image_boxes, image_confidence, max_detections,
                                            iou_threshold=iou_threshold, score_threshold=score_threshold)
        count = tf.shape(keep)[0]
        return tf.pad(keep, [[0, max_detections - count]]), count

    keep, count = tf.map_fn(one_image, (boxes, confidence), fn_output_signature=(
        tf.TensorSpec([max_detections], tf.int32), tf.TensorSpec([], tf.int32)))
    valid = tf.sequence_mask(count, max_detections)
    return {
        "boxes": tf.where(valid[..., None], tf.gather(boxes, keep, batch_dims=1), -1.0),
        "scores": tf.where(valid, tf.gather(confidence, keep, batch_dims=1), -1.0),
        "classes": tf.where(valid, tf.gather(classes, keep, batch_dims=1), -1),
        "num_detections": count,
        "disaster_probs": outputs["disaster"],
    }
