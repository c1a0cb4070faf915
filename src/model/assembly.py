"""One functional Keras model: backbone -> neck -> YOLO heads, plus the disaster head.

Plain functional model with stock Keras layers only, so `model.save(...keras)`
reloads without custom objects in any process.
"""
from __future__ import annotations

import keras

from src.model.backbone import darknet
from src.model.cls_head import disaster_head
from src.model.config import ModelConfig
from src.model.det_head import yolo_head
from src.model.neck import yolo_fpn

DETECTION_OUTPUTS = ("det_s8", "det_s16", "det_s32")
DISASTER_OUTPUT = "disaster"


def build_model(config: ModelConfig) -> keras.Model:
    """Outputs a dict: det_s8/det_s16/det_s32 raw heads and `disaster` probabilities."""
    images = keras.Input((config.input_size, config.input_size, 3), name="images")
    c3, c4, c5 = darknet(images, config)
    p3, p4, p5 = yolo_fpn(c3, c4, c5, config)
    outputs = {
        name: yolo_head(feature, config, scale_name=name.split("_")[1])
        for name, feature in zip(DETECTION_OUTPUTS, (p3, p4, p5))
    }
    outputs[DISASTER_OUTPUT] = disaster_head(c4, config)
    return keras.Model(images, outputs, name=f"yolov3_multitask_{config.variant}")
