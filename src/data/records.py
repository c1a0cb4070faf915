"""The one record type every reader produces and the input pipeline consumes.

A record says which labels exist, because sites may hold any subset of
boxes, a disaster class and a segmentation mask; losses are masked by these flags.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Record:
    """One image and whatever labels it has.

    boxes: (N, 4) float32, absolute pixels in the original image, xyxy.
    victim_classes: (N,) int32 indices into the victim class list.
    disaster_class: index into the disaster class list, -1 when unknown.
    has_boxes: the box list is a real annotation (an empty list then means
      "no victims"); False means the image was never box-annotated.
    has_class: disaster_class is a real annotation.
    crowd_boxes, crowd_classes: (M, 4) xyxy regions annotated as a crowd (COCO
      iscrowd=1) and their victim classes: not training targets; evaluation
      ignores detections matched to them, as COCOeval does.
    mask_path: the image's segmentation label map (a PNG of mask class
      indices, 255 unlabeled, checked by ``formats.masks``), None without one.
    has_mask: mask_path is a real annotation the site holds.
    """

    image_path: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    victim_classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    disaster_class: int = -1
    has_boxes: bool = False
    has_class: bool = False
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    crowd_classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    mask_path: str | None = None
    has_mask: bool = False

    def __post_init__(self):
        boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        classes = np.asarray(self.victim_classes, np.int32).reshape(-1)
        if len(boxes) != len(classes):
            raise ValueError(
                f"{self.image_path}: {len(boxes)} boxes but {len(classes)} victim classes"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "victim_classes", classes)
        crowd = np.asarray(self.crowd_boxes, np.float32).reshape(-1, 4)
        crowd_classes = np.asarray(self.crowd_classes, np.int32).reshape(-1)
        if len(crowd) != len(crowd_classes):
            raise ValueError(f"{self.image_path}: {len(crowd)} crowd boxes but {len(crowd_classes)} classes")
        object.__setattr__(self, "crowd_boxes", crowd)
        object.__setattr__(self, "crowd_classes", crowd_classes)
        if self.has_class and self.disaster_class < 0:
            raise ValueError(f"{self.image_path}: has_class set but disaster_class is {self.disaster_class}")
        if self.has_mask and not self.mask_path:
            raise ValueError(f"{self.image_path}: has_mask set but no mask_path")
