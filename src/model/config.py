"""Model variants and the task-group naming convention.

A variant is data (a `ModelConfig`), not code: the full YOLOv3 (Darknet-53,
416 px) and the small CPU variant differ only in width, depth and input size,
so both go through one builder.
"""
from __future__ import annotations

from dataclasses import dataclass, field, asdict, replace
from typing import Sequence

# Order matters only for display; membership is what the federation uses.
TASK_GROUPS = ("backbone", "neck", "det_head", "cls_head")

# Darknet-53: filters per stage at width 1.0 and residual blocks per stage.
DARKNET53_FILTERS = (64, 128, 256, 512, 1024)
DARKNET53_DEPTH = (1, 2, 8, 8, 4)

# YOLOv3's COCO anchors at 416 px (w, h), small -> large; 3 per stride 8/16/32.
YOLOV3_ANCHORS = (
    (10, 13), (16, 30), (33, 23),
    (30, 61), (62, 45), (59, 119),
    (116, 90), (156, 198), (373, 326),
)

STRIDES = (8, 16, 32)


def task_group_of(name: str) -> str:
    """Task group of a layer or weight name/path (`backbone_...`, `cls_head/...`).

    Raises for a name without a known group prefix, so an unnamed layer can
    never silently travel with the wrong group.
    """
    layer = name.split("/")[0]
    for group in TASK_GROUPS:
        if layer == group or layer.startswith(group + "_"):
            return group
    raise ValueError(f"name {name!r} carries no task-group prefix {TASK_GROUPS}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the model's shape.

    width scales every filter count; depth gives residual blocks per Darknet
    stage; anchors are (w, h) in input pixels, 3 per stride 8/16/32.
    """

    variant: str = "small"
    input_size: int = 256
    width: float = 0.25
    depth: Sequence[int] = (1, 1, 2, 2, 1)
    num_victim_classes: int = 1
    num_disaster_classes: int = 5
    anchors: Sequence[Sequence[float]] = field(default_factory=lambda: YOLOV3_ANCHORS)
    anchor_iou_threshold: float = 1.0  # 1.0 = best anchor only (YOLOv3)
    neighbour_cells: bool = False      # YOLOv5: also the 2 nearest neighbour cells
    cls_head_blocks: int = 2
    cls_head_expansion: int = 2
    cls_head_dropout: float = 0.2

    def __post_init__(self):
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size}")
        if len(self.depth) != 5:
            raise ValueError(f"depth needs 5 stage counts, got {list(self.depth)}")
        if len(self.anchors) != 9:
            raise ValueError(f"anchors need 9 (w, h) pairs (3 per stride), got {len(self.anchors)}")
        object.__setattr__(self, "depth", tuple(int(d) for d in self.depth))
        object.__setattr__(self, "anchors", tuple(tuple(float(v) for v in a) for a in self.anchors))

    def filters(self, base: int) -> int:
        """Width-scaled filter count, at least 8 and a multiple of 8."""
        return max(8, int(round(base * self.width / 8)) * 8)

    @property
    def grid_sizes(self) -> tuple[int, int, int]:
        return tuple(self.input_size // s for s in STRIDES)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depth"] = list(self.depth)
        d["anchors"] = [list(a) for a in self.anchors]
        return d

    def with_overrides(self, **kw) -> "ModelConfig":
        return replace(self, **kw)


def full_variant(**kw) -> ModelConfig:
    """YOLOv3 with Darknet-53 at 416 px and COCO anchors (~62 M parameters + head)."""
    base = dict(variant="full", input_size=416, width=1.0, depth=DARKNET53_DEPTH,
                anchors=YOLOV3_ANCHORS)
    base.update(kw)
    return ModelConfig(**base)


VARIANTS = {"full": full_variant, "small": lambda **kw: ModelConfig(**kw)}


def variant_config(name: str, **overrides) -> ModelConfig:
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[name](**overrides)
