"""YOLOv3 FPN neck: top-down path from stride 32 to stride 8."""
from __future__ import annotations

from keras import layers

from src.model.config import ModelConfig
from src.model.layers import conv_bn_act


def _conv_set(x, filters: int, name: str, convs: int = 5):
    """Alternating 1x1/3x3 convs before each head, starting and ending with a 1x1:
    YOLOv3's five, or the first three or one of them for a cheaper neck."""
    for i in range(convs):
        f, k = (filters, 1) if i % 2 == 0 else (filters * 2, 3)
        x = conv_bn_act(x, f, k, name=f"{name}_conv{i}")
    return x


def yolo_fpn(c3, c4, c5, config: ModelConfig, prefix: str = "neck"):
    """Returns (p3, p4, p5) features for the heads at strides 8/16/32."""
    p5 = _conv_set(c5, config.filters(512), name=f"{prefix}_p5", convs=config.neck_convs)
    x = conv_bn_act(p5, config.filters(256), 1, name=f"{prefix}_p5_lateral")
    x = layers.UpSampling2D(2, name=f"{prefix}_p5_up")(x)
    x = layers.Concatenate(name=f"{prefix}_p4_concat")([x, c4])
    p4 = _conv_set(x, config.filters(256), name=f"{prefix}_p4", convs=config.neck_convs)
    x = conv_bn_act(p4, config.filters(128), 1, name=f"{prefix}_p4_lateral")
    x = layers.UpSampling2D(2, name=f"{prefix}_p4_up")(x)
    x = layers.Concatenate(name=f"{prefix}_p3_concat")([x, c3])
    p3 = _conv_set(x, config.filters(128), name=f"{prefix}_p3", convs=config.neck_convs)
    return p3, p4, p5
