"""Model variants, the task-group naming convention, and the decoding a saved model carries.

A variant is data (a `ModelConfig`), not code: the full YOLOv3 (Darknet-53,
416 px) and the small CPU variant differ only in width, depth and input size,
so both go through one builder.

How the heads' box centres decode (`centre_range`) is a property of the
trained weights, not of the graph: heads imported from Darknet's YOLOv3 need
its formula whatever the settings say. A `.keras` file therefore records it
in an archive entry of its own (`DECODE_ENTRY`, next to Keras's config.json
and weights, which Keras ignores), and whoever loads the file decodes with
the recorded value (`with_recorded_decode`).
"""
from __future__ import annotations

import json
import numbers
import zipfile
from dataclasses import dataclass, field, asdict, replace
from pathlib import Path
from typing import Sequence

# Order matters only for display; membership is what the federation uses.
TASK_GROUPS = ("backbone", "neck", "det_head", "cls_head", "seg_head")


@dataclass(frozen=True)
class Task:
    """One kind of label and the part of the model it trains: the single place that names a task.

    name: its vote and manifest-column name; label: the Record flag saying an image holds it;
    groups: the task groups below the backbone its loss reaches; outputs: the model outputs
    its loss reads. Task groups, sample counts, votes and the outputs a site computes all
    read this table, so a further task is an entry here plus its head, loss term and config.
    """

    name: str
    label: str
    groups: tuple
    outputs: tuple


TASKS = (
    Task("boxes", "has_boxes", ("neck", "det_head"), ("det_s8", "det_s16", "det_s32")),
    Task("class", "has_class", ("cls_head",), ("disaster",)),
    Task("masks", "has_mask", ("seg_head",), ("segmentation",)),
)

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

# Box centre = (r sigmoid(t) - (r - 1) / 2 + cell) * stride, for centre range r:
# YOLOv3 (Darknet's official weights) uses r = 1, a centre strictly inside its
# cell; YOLOv4's scale_x_y = 2 / YOLOv5 use r = 2, (-0.5, 1.5) cells, which
# reaches the cell edges and the neighbour cells `neighbour_cells` assigns.
CENTRE_RANGE_YOLOV3 = 1.0
CENTRE_RANGE_SCALED = 2.0
DECODE_ENTRY = "decode.json"  # inside a .keras archive: {"centre_range": r}


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
    centre_range: how the heads' centres decode (see CENTRE_RANGE_YOLOV3).
    num_mask_classes: classes of the segmentation head (`seg_head`); 0 builds no such head.
    stem_stride: 1 is Darknet's full-resolution stem; 2 starts at half resolution (as
    YOLOv5/v8 stems do), which the small variant's step time is dominated by otherwise.
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
    stem_stride: int = 1               # 2: the stem conv downsamples (stage 1 skips its own)
    neck_convs: int = 5                # alternating 1x1/3x3 convs before each head: 5 (YOLOv3), 3 or 1
    cls_head_blocks: int = 2
    cls_head_expansion: int = 2
    cls_head_dropout: float = 0.2
    centre_range: float = CENTRE_RANGE_SCALED
    num_mask_classes: int = 0          # 0: no segmentation head

    def __post_init__(self):
        for name in ("input_size", "num_victim_classes", "num_disaster_classes", "cls_head_blocks"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_mask_classes, numbers.Integral) or isinstance(self.num_mask_classes, bool) \
                or not 0 <= self.num_mask_classes < 255:
            raise ValueError(f"model.num_mask_classes must be an integer from 0 (no segmentation head) to 254, "
                             f"got {self.num_mask_classes!r}")
        for name in ("width", "cls_head_expansion", "centre_range"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name} must be a positive number, got {value!r}")
        if self.centre_range < CENTRE_RANGE_YOLOV3:
            raise ValueError(f"model.centre_range must be at least {CENTRE_RANGE_YOLOV3:g} (a centre "
                             f"must reach its whole cell), got {self.centre_range!r}")
        if self.neighbour_cells and self.centre_range < CENTRE_RANGE_SCALED:
            raise ValueError(f"model.neighbour_cells needs model.centre_range >= {CENTRE_RANGE_SCALED:g} "
                             f"(centres must reach the neighbour cells), got {self.centre_range:g}; "
                             "set model.neighbour_cells false")
        if self.neck_convs not in (1, 3, 5) or isinstance(self.neck_convs, bool):
            raise ValueError(f"model.neck_convs must be 1, 3 or 5, got {self.neck_convs!r}")
        if self.stem_stride not in (1, 2) or isinstance(self.stem_stride, bool):
            raise ValueError(f"model.stem_stride must be 1 or 2, got {self.stem_stride!r}")
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size}")
        try:
            depth = tuple(int(d) for d in self.depth)
            anchors = tuple(tuple(float(v) for v in a) for a in self.anchors)
        except (TypeError, ValueError):
            raise ValueError(f"model.depth must be 5 integers and model.anchors 9 (w, h) pairs of "
                             f"numbers, got {self.depth!r} and {self.anchors!r}") from None
        if len(depth) != 5:
            raise ValueError(f"depth needs 5 stage counts, got {list(depth)}")
        if len(anchors) != 9 or any(len(a) != 2 for a in anchors):
            raise ValueError(f"anchors need 9 (w, h) pairs (3 per stride), got {[list(a) for a in anchors]}")
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "anchors", anchors)
        object.__setattr__(self, "centre_range", float(self.centre_range))

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


def model_task_groups(config: ModelConfig) -> tuple[str, ...]:
    """The task groups of the model `config` builds: every group but seg_head when it has no
    segmentation head (num_mask_classes 0)."""
    return tuple(g for g in TASK_GROUPS if g != "seg_head" or config.num_mask_classes)


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
    unknown = sorted(set(overrides) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown settings {['model.' + k for k in unknown]}; "
                         f"known: {['model.' + k for k in sorted(ModelConfig.__dataclass_fields__)]}")
    return VARIANTS[name](**overrides)


# ----------------------------------------------------------------- decoding recorded in a .keras file

def record_decode(keras_path, config: ModelConfig) -> None:
    """Write `config`'s decoding into a saved `.keras` file (replacing a record it holds)."""
    path = Path(keras_path)
    record = json.dumps({"centre_range": config.centre_range})
    with zipfile.ZipFile(path) as archive:
        recorded = DECODE_ENTRY in archive.namelist()
    if not recorded:
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(DECODE_ENTRY, record)
        return
    tmp = path.with_name(f".{path.name}.decode-tmp")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp, "w") as archive:
        for info in source.infolist():
            if info.filename != DECODE_ENTRY:
                archive.writestr(info, source.read(info))
        archive.writestr(DECODE_ENTRY, record)
    tmp.replace(path)


def recorded_decode(keras_path) -> dict:
    """The decoding a `.keras` file records ({"centre_range": r}), {} when it records none."""
    with zipfile.ZipFile(keras_path) as archive:
        if DECODE_ENTRY not in archive.namelist():
            return {}
        try:
            record = json.loads(archive.read(DECODE_ENTRY))
            return {"centre_range": float(record["centre_range"])}
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{keras_path}: {DECODE_ENTRY} is not a decode record ({err})") from None


def with_recorded_decode(config: ModelConfig, model_path) -> ModelConfig:
    """`config` decoding the way the saved model at `model_path` records (a `.keras` file
    without a record, or an OpenFL state, decodes as `config` says).

    The result decodes, it does not train: neighbour_cells, a training rule, is off
    when the recorded centres cannot reach the neighbour cells."""
    if Path(model_path).suffix != ".keras":
        return config
    record = recorded_decode(model_path)
    if not record:
        return config
    centre_range = record["centre_range"]
    return replace(config, centre_range=centre_range,
                   neighbour_cells=config.neighbour_cells and centre_range >= CENTRE_RANGE_SCALED)
