"""One functional Keras model: backbone -> neck -> YOLO heads, plus the disaster head
and, when the config asks for one, the segmentation head.

Plain functional model with stock Keras layers only, so `model.save(...keras)`
reloads without custom objects in any process.
"""
from __future__ import annotations

import keras

from src.model.backbone import darknet
from src.model.cls_head import disaster_head
from src.model.config import TASKS, ModelConfig
from src.model.det_head import yolo_head
from src.model.neck import yolo_fpn
from src.model.seg_head import segmentation_head

_TASK_OUTPUTS = {task.name: task.outputs for task in TASKS}  # output names: the task table's
DETECTION_OUTPUTS = _TASK_OUTPUTS["boxes"]
(DISASTER_OUTPUT,) = _TASK_OUTPUTS["class"]
(SEGMENTATION_OUTPUT,) = _TASK_OUTPUTS["masks"]


def build_model(config: ModelConfig) -> keras.Model:
    """Outputs a dict: det_s8/det_s16/det_s32 raw heads, `disaster` probabilities and, with
    config.num_mask_classes, `segmentation` logits (built last: without it the model's
    layers and weight names are those of the two-task model)."""
    images = keras.Input((config.input_size, config.input_size, 3), name="images")
    c3, c4, c5 = darknet(images, config)
    p3, p4, p5 = yolo_fpn(c3, c4, c5, config)
    outputs = {
        name: yolo_head(feature, config, scale_name=name.split("_")[1])
        for name, feature in zip(DETECTION_OUTPUTS, (p3, p4, p5))
    }
    outputs[DISASTER_OUTPUT] = disaster_head(c4, config)
    if config.num_mask_classes:
        outputs[SEGMENTATION_OUTPUT] = segmentation_head(c3, c4, config)
    return keras.Model(images, outputs, name=f"yolov3_multitask_{config.variant}")
