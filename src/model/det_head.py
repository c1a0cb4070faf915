"""YOLO detection heads: per stride, 3x3 conv then a linear 1x1 to 3 anchors x (5 + C)."""
from __future__ import annotations

import math

import keras
from keras import layers

from src.model.config import ModelConfig
from src.model.layers import conv_bn_act

ANCHORS_PER_SCALE = 3
PRIOR_OBJECTNESS = 0.01


def yolo_head(feature, config: ModelConfig, scale_name: str, prefix: str = "det_head"):
    """Raw head output (B, S, S, 3, 5 + C): tx, ty, tw, th, objectness logit, class logits.

    The objectness bias starts at logit(0.01) so the first steps are not
    spent pushing thousands of empty cells down (RetinaNet's prior trick).
    """
    channels = feature.shape[-1]
    outputs_per_anchor = 5 + config.num_victim_classes
    x = conv_bn_act(feature, channels * 2, 3, name=f"{prefix}_{scale_name}_conv")
    bias = [0.0] * outputs_per_anchor
    bias[4] = math.log(PRIOR_OBJECTNESS / (1 - PRIOR_OBJECTNESS))
    x = layers.Conv2D(ANCHORS_PER_SCALE * outputs_per_anchor, 1,
                      bias_initializer=keras.initializers.Constant(bias * ANCHORS_PER_SCALE),
                      name=f"{prefix}_{scale_name}_out")(x)
    grid = feature.shape[1]
    return layers.Reshape((grid, grid, ANCHORS_PER_SCALE, outputs_per_anchor),
                          name=f"{prefix}_{scale_name}")(x)
