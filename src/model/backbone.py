"""Darknet-53 backbone (width/depth scalable) returning stride 8/16/32 features."""
from __future__ import annotations

from src.model.config import DARKNET53_FILTERS, ModelConfig
from src.model.layers import conv_bn_act, darknet_residual


def darknet(images, config: ModelConfig, prefix: str = "backbone"):
    """Darknet-53 at width/depth of `config`; returns (c3, c4, c5).

    c3/c4/c5 are the outputs of the stages at strides 8/16/32 (256/512/1024
    channels at width 1.0). At full depth and width this is YOLOv3's backbone.
    With `config.stem_stride` 2 the stem itself downsamples to stage 1's width and
    stage 1 has no down conv: no layer runs at the input's full resolution.
    """
    fast_stem = config.stem_stride == 2
    x = conv_bn_act(images, config.filters(DARKNET53_FILTERS[0] if fast_stem else 32), 3,
                    strides=config.stem_stride, name=f"{prefix}_stem")
    features = []
    for stage, (base_filters, blocks) in enumerate(zip(DARKNET53_FILTERS, config.depth), start=1):
        filters = config.filters(base_filters)
        if not (fast_stem and stage == 1):
            x = conv_bn_act(x, filters, 3, strides=2, name=f"{prefix}_stage{stage}_down")
        for block in range(blocks):
            x = darknet_residual(x, filters, name=f"{prefix}_stage{stage}_block{block}")
        features.append(x)
    return features[2], features[3], features[4]
