"""yolov3.cfg rebuilt section by section and mapped onto our layer names.

`yolov3_layout()` gives the 107 Darknet layers (with Darknet's indices) and,
for each, the layer of our `full` model computing the same tensor; the layer
counts and float counts of the file layouts derive from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from src.model.config import task_group_of

DARKNET_PARTS = ("backbone", "neck", "det_head")
ANCHORS_PER_SCALE = 3

# yolov3.cfg facts (kept here, not taken from our config, so the check is independent)
_DARKNET53_FILTERS = (64, 128, 256, 512, 1024)
_DARKNET53_BLOCKS = (1, 2, 8, 8, 4)
_YOLOV3_MASKS = ((6, 7, 8), (3, 4, 5), (0, 1, 2))      # stride 32, 16, 8


# --------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class DarknetLayer:
    """One section of a Darknet cfg and the layer of ours computing the same tensor.

    index: Darknet's layer index (what `[route] layers=` and `from=` refer to);
    inputs: absolute indices of the layers it reads (-1 = the network input);
    ours: name of our layer whose output equals this layer's output (None for a
    single-input route, which is only a pointer). For convolutional sections,
    `base` is our block name: weights in `{base}_conv` (+ `{base}_bn`, output
    `{base}_act`) or, for the linear output convs, in `{base}` itself.
    """

    index: int
    kind: str
    inputs: tuple
    out_channels: int
    ours: str | None
    base: str | None = None
    filters: int = 0
    size: int = 0
    stride: int = 1
    in_channels: int = 0
    batch_normalize: bool = False
    activation: str = "linear"
    mask: tuple = ()

    @property
    def is_output(self) -> bool:
        """The linear 1x1 conv feeding a [yolo] layer (3 x (5 + classes) filters)."""
        return self.kind == "convolutional" and not self.batch_normalize

    @property
    def conv_layer(self) -> str:
        return self.base if self.is_output else f"{self.base}_conv"

    @property
    def bn_layer(self) -> str | None:
        return f"{self.base}_bn" if self.batch_normalize else None

    @property
    def group(self) -> str | None:
        name = self.ours or self.base
        return task_group_of(name) if name else None

    @property
    def num_floats(self) -> int:
        per_filter = 4 if self.batch_normalize else 1
        return self.filters * per_filter + self.filters * self.in_channels * self.size * self.size


class _CfgBuilder:
    """Appends cfg sections with Darknet's index arithmetic (negative = relative)."""

    def __init__(self, channels: int = 3):
        self.layers: list[DarknetLayer] = []
        self.input_channels = channels

    def _abs(self, i: int) -> int:
        return i if i >= 0 else len(self.layers) + i

    def _channels(self, i: int) -> int:
        return self.input_channels if i < 0 else self.layers[i].out_channels

    def conv(self, base, filters, size, stride=1, bn=True, activation="leaky"):
        src = len(self.layers) - 1
        in_ch = self._channels(src)
        ours = base if not bn else (f"{base}_act" if activation == "leaky" else f"{base}_bn")
        self.layers.append(DarknetLayer(
            len(self.layers), "convolutional", (src,), filters, ours, base=base, filters=filters,
            size=size, stride=stride, in_channels=in_ch, batch_normalize=bn, activation=activation))

    def shortcut(self, frm: int, ours: str):
        a, b = self._abs(frm), len(self.layers) - 1
        self.layers.append(DarknetLayer(len(self.layers), "shortcut", (a, b),
                                        self._channels(b), ours))

    def upsample(self, ours: str):
        src = len(self.layers) - 1
        self.layers.append(DarknetLayer(len(self.layers), "upsample", (src,),
                                        self._channels(src), ours))

    def route(self, layers: Sequence[int], ours: str | None = None):
        srcs = tuple(self._abs(i) for i in layers)
        channels = sum(self._channels(i) for i in srcs)
        self.layers.append(DarknetLayer(len(self.layers), "route", srcs, channels, ours))

    def yolo(self, mask, ours: str):
        src = len(self.layers) - 1
        self.layers.append(DarknetLayer(len(self.layers), "yolo", (src,), self._channels(src),
                                        ours, mask=tuple(mask)))


@lru_cache(maxsize=None)
def yolov3_layout(num_classes: int = 80) -> tuple:
    """yolov3.cfg as DarknetLayer sections (107 layers), mapped onto our layer names."""
    b = _CfgBuilder()
    b.conv("backbone_stem", 32, 3)
    stage_out = {}
    for s, (filters, blocks) in enumerate(zip(_DARKNET53_FILTERS, _DARKNET53_BLOCKS), start=1):
        b.conv(f"backbone_stage{s}_down", filters, 3, stride=2)
        for k in range(blocks):
            name = f"backbone_stage{s}_block{k}"
            b.conv(f"{name}_reduce", filters // 2, 1)
            b.conv(f"{name}_expand", filters, 3)
            b.shortcut(-3, f"{name}_add")
        stage_out[s] = len(b.layers) - 1
    assert (stage_out[3], stage_out[4], stage_out[5]) == (36, 61, 74), stage_out
    heads = (("p5", "s32", 512, None), ("p4", "s16", 256, stage_out[4]),
             ("p3", "s8", 128, stage_out[3]))
    previous = None
    for (level, scale, filters, lateral_source), mask in zip(heads, _YOLOV3_MASKS):
        if previous is not None:
            b.route([-4])                                        # back to the set's last conv
            b.conv(f"neck_{previous}_lateral", filters, 1)
            b.upsample(f"neck_{previous}_up")
            b.route([-1, lateral_source], ours=f"neck_{level}_concat")
        for i, (f, k) in enumerate([(filters, 1), (filters * 2, 3), (filters, 1),
                                    (filters * 2, 3), (filters, 1)]):
            b.conv(f"neck_{level}_conv{i}", f, k)
        b.conv(f"det_head_{scale}_conv", filters * 2, 3)
        b.conv(f"det_head_{scale}_out", ANCHORS_PER_SCALE * (5 + num_classes), 1, bn=False,
               activation="linear")
        b.yolo(mask, f"det_head_{scale}")
        previous = level
    layers = tuple(b.layers)
    assert len(layers) == 107 and [l.index for l in layers if l.kind == "yolo"] == [82, 94, 106]
    return layers


def darknet_convs(layout: Sequence[DarknetLayer]) -> list:
    return [l for l in layout if l.kind == "convolutional"]


# Our 75 Conv2D layers in the order their weights appear in yolov3.weights.
YOLOV3_CONV_LAYERS = tuple(l.conv_layer for l in darknet_convs(yolov3_layout()))
BACKBONE_CONVS = sum(1 for l in darknet_convs(yolov3_layout()) if l.group == "backbone")  # 52


def _file_convs(layout_name: str, num_classes: int = 80) -> list:
    convs = darknet_convs(yolov3_layout(num_classes))
    if layout_name == "yolov3":
        return convs
    if layout_name == "darknet53.conv.74":
        return convs[:BACKBONE_CONVS]
    raise ValueError(f"unknown Darknet layout {layout_name!r}")


def layout_floats(layout_name: str = "yolov3", num_classes: int = 80) -> int:
    """float32 values after the header in a file of this layout."""
    return sum(c.num_floats for c in _file_convs(layout_name, num_classes))


def _normalize_parts(parts) -> tuple:
    if isinstance(parts, str):
        parts = (parts,)
    parts = tuple(dict.fromkeys(parts))
    unknown = [p for p in parts if p not in DARKNET_PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {DARKNET_PARTS} (the cls_head has "
                         f"no Darknet counterpart), got {list(parts)}")
    return tuple(p for p in DARKNET_PARTS if p in parts)
