"""Building blocks shared by backbone, neck and heads.

Each block takes an explicit `name` prefix; sub-layers append a suffix, so
names are stable across processes (no Keras auto-numbering).
"""
from __future__ import annotations

import keras
from keras import layers


def conv_bn_act(x, filters: int, kernel_size: int, name: str, strides: int = 1,
                activation: str = "leaky"):
    """Darknet conv: conv (no bias) -> batch norm -> LeakyReLU(0.1).

    Downsampling uses top-left zero padding + 'valid' like Darknet, so weight
    layouts match the reference (matters for loading Darknet weights later).
    """
    if strides == 2:
        x = layers.ZeroPadding2D(((1, 0), (1, 0)), name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                      kernel_initializer=keras.initializers.HeNormal(), name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.97, epsilon=1e-3, name=f"{name}_bn")(x)
    if activation == "leaky":
        x = layers.LeakyReLU(negative_slope=0.1, name=f"{name}_act")(x)
    elif activation == "relu6":
        x = layers.ReLU(max_value=6.0, name=f"{name}_act")(x)
    elif activation is not None:
        raise ValueError(f"unknown activation {activation!r}")
    return x


def darknet_residual(x, filters: int, name: str):
    """Darknet residual: 1x1 (filters/2) -> 3x3 (filters) -> add."""
    shortcut = x
    x = conv_bn_act(x, filters // 2, 1, name=f"{name}_reduce")
    x = conv_bn_act(x, filters, 3, name=f"{name}_expand")
    return layers.Add(name=f"{name}_add")([shortcut, x])


def inverted_residual(x, filters: int, expansion: int, name: str, strides: int = 1):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear project (+ skip)."""
    in_channels = x.shape[-1]
    y = conv_bn_act(x, in_channels * expansion, 1, name=f"{name}_expand", activation="relu6")
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                               name=f"{name}_dw_conv")(y)
    y = layers.BatchNormalization(momentum=0.97, epsilon=1e-3, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(max_value=6.0, name=f"{name}_dw_act")(y)
    y = conv_bn_act(y, filters, 1, name=f"{name}_project", activation=None)
    if strides == 1 and in_channels == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y
