"""Disaster-scene head on the stride-16 backbone feature (26x26x512 at 416 px).

MobileNetV2-style inverted residual blocks keep it cheap next to the detector;
global pooling makes it resolution-free.
"""
from __future__ import annotations

from keras import layers

from src.model.config import ModelConfig
from src.model.layers import conv_bn_act, inverted_residual


def disaster_head(c4, config: ModelConfig, prefix: str = "cls_head"):
    """Softmax over disaster classes, shape (B, num_disaster_classes)."""
    filters = c4.shape[-1]
    x = c4
    for block in range(config.cls_head_blocks):
        strides = 2 if block == 0 else 1
        x = inverted_residual(x, filters, config.cls_head_expansion, strides=strides,
                              name=f"{prefix}_block{block}")
    x = conv_bn_act(x, filters * 2, 1, name=f"{prefix}_final", activation="relu6")
    x = layers.GlobalAveragePooling2D(name=f"{prefix}_pool")(x)
    x = layers.Dropout(config.cls_head_dropout, name=f"{prefix}_dropout")(x)
    return layers.Dense(config.num_disaster_classes, activation="softmax", name=f"{prefix}_probs")(x)
