"""Segmentation head: a light decoder on the backbone's stride-8 and stride-16 features.

It reads the backbone, not the detector's neck, as the disaster head does: a site
that holds only masks then trains backbone stages 1-4 and this head, and never
runs, trains or sends the neck, the detection heads or the last backbone stage.
The stride-16 feature brings context (a flood reads as a flood only around its
edges), the stride-8 one the detail; logits come at stride 8 and are upsampled
bilinearly to the input size, where the loss and the metric compare them pixel by
pixel with the letterboxed mask.
"""
from __future__ import annotations

from keras import layers

from src.model.config import ModelConfig
from src.model.layers import conv_bn_act

DECODER_BASE_FILTERS = 128  # at width 1.0; width-scaled like every other layer


def segmentation_head(c3, c4, config: ModelConfig, prefix: str = "seg_head"):
    """Per-pixel class logits (B, input_size, input_size, num_mask_classes), before any softmax."""
    filters = config.filters(DECODER_BASE_FILTERS)
    context = conv_bn_act(c4, filters, 1, name=f"{prefix}_c4_lateral")
    context = layers.UpSampling2D(2, interpolation="bilinear", name=f"{prefix}_c4_up")(context)
    detail = conv_bn_act(c3, filters, 1, name=f"{prefix}_c3_lateral")
    x = layers.Concatenate(name=f"{prefix}_fuse")([detail, context])
    x = conv_bn_act(x, filters, 3, name=f"{prefix}_conv0")
    x = conv_bn_act(x, filters, 3, name=f"{prefix}_conv1")
    x = layers.Conv2D(config.num_mask_classes, 1, name=f"{prefix}_logits_s8")(x)
    stride = config.input_size // x.shape[1]
    return layers.UpSampling2D(stride, interpolation="bilinear", name=f"{prefix}_logits")(x)
