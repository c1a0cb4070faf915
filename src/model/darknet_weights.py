"""Official Darknet YOLOv3 weights <-> our `full` model (and our weights in Darknet layout).

    python -m src.model.darknet_weights --weights data/pretrained/yolov3.weights \
        --out workspace/runs/pretrained/yolov3_coco.keras [--parts backbone neck det_head]

Nothing is downloaded: get `yolov3.weights` (248,007,048 bytes) from the
official Darknet release (https://pjreddie.com/darknet/yolo/, file
https://pjreddie.com/media/files/yolov3.weights) and put it at
`data/pretrained/yolov3.weights` (git-ignored) or pass `--weights PATH`.

Darknet file format (checked against pjreddie/darknet `src/parser.c`
`load_weights_upto`/`load_convolutional_weights` and keras-yolo3 `convert.py`)
------------------------------------------------------------------------------
* header: int32 major, minor, revision; then `seen` as int64 when
  major*10 + minor >= 2 (and major, minor < 1000), else int32. yolov3.weights
  is 0.2.0, a 20-byte header. Everything is little-endian.
* then, per [convolutional] section in cfg order (no other yolov3 layer has
  weights): `filters` float32 biases (= the batch-norm beta when the conv has
  batch_normalize=1); if batch_normalize: `filters` scales (gamma), rolling
  means, rolling variances; then the kernel, filters*in*size*size float32 in
  (out, in, kh, kw) order. Keras kernels are (kh, kw, in, out): transpose
  (2, 3, 1, 0) on load, (3, 2, 0, 1) on save.
* nothing else: the file must end exactly after the last conv. The official
  file holds 62,001,757 floats after its 20-byte header.

Layer correspondence (yolov3.cfg, 107 layers, 75 convolutional)
--------------------------------------------------------------
`yolov3_layout()` rebuilds yolov3.cfg section by section (layer indices as
Darknet counts them, so `[route] layers = -1, 61` resolves to the same layer)
and names, for every section, the layer of our model that computes the same
tensor; `YOLOV3_CONV_LAYERS` is the resulting ordered list of our 75 Conv2D
names. `check_model_layout` verifies it on the built model: every kernel
shape, bias/batch-norm presence, LeakyReLU(0.1)/linear activation, Darknet's
top-left padding of stride-2 convs, and the input of every conv, shortcut,
upsample and route (including the channel order of both concatenations), and
that the checked task groups hold no conv Darknet does not have.

* backbone (52 convs = Darknet-53 without its classifier, cfg layers 0-74):
  `backbone_stem`, then per stage s=1..5 `backbone_stage{s}_down` (3x3/2) and
  blocks `backbone_stage{s}_block{b}_reduce` (1x1) / `_expand` (3x3) with the
  shortcut as `_add`; the routes 36 and 61 are `backbone_stage3_block7_add`
  and `backbone_stage4_block7_add`.
* per scale (stride 32, 16, 8 = cfg yolo layers 82, 94, 106, anchor masks
  6,7,8 / 3,4,5 / 0,1,2 = our det_s32 / det_s16 / det_s8 anchors):
  neck `neck_p{5,4,3}_conv0..4` (the five 1x1/3x3 convs; 15 in all), the 3x3
  conv before the output `det_head_s{32,16,8}_conv` (3), the linear 1x1
  output conv with bias `det_head_s{32,16,8}_out` (3), and between scales the
  route -4 + 1x1 conv `neck_p{5,4}_lateral` (2), upsample `neck_p{5,4}_up`
  and route `neck_p{4,3}_concat` = [upsampled, backbone stage 4/3].
  Neck: 17 convs, det_head: 6 convs.
* the output convs have 255 = 3 x (5 + 80) filters in the file and
  3 x (5 + C) here. Darknet orders their channels anchor-major,
  [tx, ty, tw, th, objectness, 80 class logits] per anchor, exactly as our
  Reshape to (S, S, 3, 5 + C) reads them; loading takes per anchor the 5 box
  and objectness channels and the class channels named by `class_map`
  (COCO class 0 = person -> our victim class 0).
* `cls_head` (the disaster-scene head) has no Darknet counterpart; it keeps
  its initialisation.

Apart from the output convs' class count, the detector's weight layout and
graph are those of yolov3.cfg (checked above). Departures that do not change
the layout but do change numbers:
* batch norm: Darknet computes (x - mean) / (sqrt(var) + 1e-6), Keras
  (x - mean) / sqrt(var + epsilon) with our epsilon 1e-3. By default the
  file's values are stored unchanged (bit-exact round trip); with
  `match_darknet_bn_epsilon=True` gamma is rescaled by
  sqrt(var + eps) / (sqrt(var) + 1e-6) so inference matches Darknet's formula
  exactly (and `save_darknet_weights` with the same flag undoes it).
* decoding (src/model/decode.py, not a weight): our centres are
  (2 sigmoid(t) - 0.5 + cell) * stride (YOLOv4/v5), Darknet YOLOv3's
  (sigmoid(t) + cell) * stride. COCO box outputs loaded here therefore decode
  with centres pushed away from the cell middle by up to half a cell until the
  model is fine-tuned; sizes (exp(t) * anchor), objectness and class
  sigmoids match. The summary carries this as a note while it holds.

Files accepted (identified by their exact size)
-----------------------------------------------
* `yolov3.weights` (75 convs): any of `parts` ("backbone", "neck", "det_head").
* a Darknet-53 backbone-only file in the layout of `darknet53.conv.74` (the
  52 backbone convs, what `darknet partial ... 74` writes; size computed, not
  checked against a real copy): parts=("backbone",) only.
* anything else is rejected with expected vs actual bytes. yolov3-tiny.weights
  is recognised and refused: yolov3-tiny (13 convs: 3x3 convs with max-pool
  downsampling, no residuals, 2 output scales at strides 32/16 with 6 anchors)
  matches no variant here. Our `small` variant is a width-0.25, depth-1-1-2-2-1
  Darknet-53 at 256 px (stem 8 filters, strided convs, residuals, 3 scales):
  neither its conv count nor a single kernel shape of its backbone matches
  yolov3-tiny (stem 16 filters) or yolov3, so there is no tiny/small support
  and loading into the small model raises a layout error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import keras
import numpy as np

from src.model.config import task_group_of

# --------------------------------------------------------------------------- constants

COCO_CLASSES = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "sofa", "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # Darknet's data/coco.names, in the order of the 80 class outputs

DARKNET_PARTS = ("backbone", "neck", "det_head")
DEFAULT_CLASS_MAP = MappingProxyType({"person": 0})
ANCHORS_PER_SCALE = 3
DARKNET_BN_EPSILON = 1e-6          # added to sqrt(var) in Darknet's normalize_cpu
LEAKY_SLOPE = 0.1
# Save: class columns the model does not have get a zero kernel and this bias,
# so Darknet never reports them (logit of 1e-4). 0.0 gives all-zero columns.
DEFAULT_UNMAPPED_CLASS_LOGIT = math.log(1e-4 / (1 - 1e-4))

OFFICIAL_SOURCE = ("the official Darknet release of YOLOv3: https://pjreddie.com/darknet/yolo/ "
                   "(file https://pjreddie.com/media/files/yolov3.weights, 248,007,048 bytes)")
DEFAULT_WEIGHTS_PATH = Path("data/pretrained/yolov3.weights")

# yolov3.cfg facts (kept here, not taken from our config, so the check is independent)
_DARKNET53_FILTERS = (64, 128, 256, 512, 1024)
_DARKNET53_BLOCKS = (1, 2, 8, 8, 4)
_YOLOV3_MASKS = ((6, 7, 8), (3, 4, 5), (0, 1, 2))      # stride 32, 16, 8
_INPUT = "images"                                       # our model's input layer


class DarknetLayoutError(ValueError):
    """The model (or a requested part of it) does not match the Darknet layout."""


class DarknetFileError(ValueError):
    """The file is not a Darknet weights file of a layout this module reads."""


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

# yolov3-tiny.cfg's convs as (in, filters, size, batch_normalize): only to recognise its file.
_YOLOV3_TINY_CONVS = (
    (3, 16, 3, True), (16, 32, 3, True), (32, 64, 3, True), (64, 128, 3, True),
    (128, 256, 3, True), (256, 512, 3, True), (512, 1024, 3, True), (1024, 256, 1, True),
    (256, 512, 3, True), (512, 255, 1, False), (256, 128, 1, True), (384, 256, 3, True),
    (256, 255, 1, False),
)


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


def expected_file_bytes(layout_name: str = "yolov3", num_classes: int = 80,
                        header_bytes: int = 20) -> int:
    """Exact size of a file of this layout (yolov3.weights: 248,007,048)."""
    return header_bytes + 4 * layout_floats(layout_name, num_classes)


def _tiny_file_bytes(header_bytes: int) -> int:
    floats = sum(f * (4 if bn else 1) + f * c * k * k for c, f, k, bn in _YOLOV3_TINY_CONVS)
    return header_bytes + 4 * floats


# --------------------------------------------------------------------------- file header

def read_header(f) -> tuple[dict, int]:
    """Darknet header -> ({major, minor, revision, seen}, header bytes)."""
    raw = f.read(12)
    if len(raw) < 12:
        raise DarknetFileError("file ends inside the 12-byte version header")
    major, minor, revision = struct.unpack("<3i", raw)
    if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000:
        raw, fmt = f.read(8), "<q"
    else:
        raw, fmt = f.read(4), "<i"
    if len(raw) < struct.calcsize(fmt):
        raise DarknetFileError("file ends inside the `seen` header field")
    (seen,) = struct.unpack(fmt, raw)
    return dict(major=major, minor=minor, revision=revision, seen=seen), 12 + len(raw)


def _missing_file_message(path: Path) -> str:
    return (f"Darknet weights file not found: {path}. Nothing is downloaded here: get "
            f"yolov3.weights from {OFFICIAL_SOURCE} and put it at {path} (conventionally "
            f"{DEFAULT_WEIGHTS_PATH}, git-ignored), or pass its path with --weights.")


def inspect_darknet_file(path, num_file_classes: int = 80) -> dict:
    """Header and layout of a weights file, identified by its exact size (no model needed).

    Raises FileNotFoundError (saying where the official file comes from) or
    DarknetFileError naming the file and expected vs actual bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(_missing_file_message(path))
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            header, header_bytes = read_header(f)
        except DarknetFileError as e:
            raise DarknetFileError(
                f"{path}: {size} bytes is not a Darknet weights file ({e}); expected exactly "
                f"{expected_file_bytes('yolov3', num_file_classes)} bytes for yolov3.weights"
            ) from None
    expected = {name: expected_file_bytes(name, num_file_classes, header_bytes)
                for name in ("yolov3", "darknet53.conv.74")}
    for name, nbytes in expected.items():
        if size == nbytes:
            return dict(file=str(path), file_bytes=size, header=header,
                        header_bytes=header_bytes, layout=name,
                        floats=layout_floats(name, num_file_classes))
    if size == _tiny_file_bytes(header_bytes):
        raise DarknetFileError(
            f"{path}: {size} bytes is the size of yolov3-tiny.weights. yolov3-tiny (13 convs, "
            f"max-pool downsampling, 2 scales) matches no variant of this model (the `small` "
            f"variant is a scaled Darknet-53, not yolov3-tiny); use yolov3.weights with the "
            f"`full` variant")
    header_text = f"{header_bytes}-byte header (version {header['major']}.{header['minor']})"
    raise DarknetFileError(
        f"{path}: size mismatch: expected exactly {expected['yolov3']} bytes for the YOLOv3 layout "
        f"({header_text} + {layout_floats('yolov3', num_file_classes)} float32, 75 convs, "
        f"{num_file_classes} classes) or {expected['darknet53.conv.74']} bytes for a Darknet-53 "
        f"backbone file (darknet53.conv.74, 52 convs), actual {size} bytes "
        f"({size - expected['yolov3']:+d} vs YOLOv3). The file is truncated or oversized, or "
        f"belongs to another network (yolov3-spp, yolov4, a cfg with classes != "
        f"{num_file_classes}).")


# --------------------------------------------------------------------------- model checks

def _producer(tensor):
    """The layer that produced a KerasTensor, looking through ZeroPadding2D."""
    op = tensor._keras_history.operation
    while isinstance(op, keras.layers.ZeroPadding2D):
        op = op.input._keras_history.operation
    return op


def _input_names(layer) -> list:
    inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    return [_producer(t).name for t in inputs]


def _get(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _victim_classes(model, layout) -> int | None:
    """C from the first output conv's filters 3 x (5 + C), None if absent/inconsistent."""
    for l in layout:
        if l.kind == "convolutional" and l.is_output:
            conv = _get(model, l.conv_layer)
            if conv is None or not isinstance(conv, keras.layers.Conv2D):
                return None
            per_anchor, rest = divmod(conv.filters, ANCHORS_PER_SCALE)
            return per_anchor - 5 if rest == 0 and per_anchor > 5 else None
    return None


def _check_conv(model, l: DarknetLayer, ours_of, victim_classes) -> list:
    problems = []
    conv = _get(model, l.conv_layer)
    if conv is None:
        return [f"{l.conv_layer}: missing (Darknet layer {l.index}: conv {l.filters} "
                f"{l.size}x{l.size}/{l.stride})"]
    if not isinstance(conv, keras.layers.Conv2D):
        return [f"{l.conv_layer}: is {type(conv).__name__}, Darknet layer {l.index} is a Conv2D"]
    filters = (ANCHORS_PER_SCALE * (5 + victim_classes) if l.is_output and victim_classes
               else l.filters)
    want = (l.size, l.size, l.in_channels, filters)
    got = tuple(conv.kernel.shape)
    if got != want:
        problems.append(f"{l.conv_layer}: kernel {got}, Darknet layer {l.index} needs {want}"
                        + (" (3 x (5 + C) filters)" if l.is_output else ""))
    if tuple(conv.strides) != (l.stride, l.stride) or tuple(conv.dilation_rate) != (1, 1) \
            or conv.groups != 1:
        problems.append(f"{l.conv_layer}: strides {conv.strides}, dilation "
                        f"{conv.dilation_rate}, groups {conv.groups}; Darknet: stride {l.stride}")
    if conv.use_bias == l.batch_normalize:
        problems.append(f"{l.conv_layer}: use_bias={conv.use_bias}, Darknet layer {l.index} "
                        f"{'has batch norm (no bias)' if l.batch_normalize else 'has a bias'}")
    if getattr(conv.activation, "__name__", "") != "linear":
        problems.append(f"{l.conv_layer}: activation {conv.activation}, expected linear")
    # padding: Darknet pads size//2; stride 2 only the top/left row is used
    if l.stride == 2:
        pad = conv.input._keras_history.operation
        if not (isinstance(pad, keras.layers.ZeroPadding2D) and conv.padding == "valid"
                and tuple(map(tuple, pad.padding)) == ((1, 0), (1, 0))):
            problems.append(f"{l.conv_layer}: stride 2 needs ZeroPadding2D(((1, 0), (1, 0))) "
                            f"+ 'valid' (Darknet's effective padding)")
    elif l.size > 1 and conv.padding != "same":
        problems.append(f"{l.conv_layer}: padding {conv.padding!r}, Darknet pads {l.size // 2}")
    expected_input = ours_of(l.inputs[0])
    if _input_names(conv) != [expected_input]:
        problems.append(f"{l.conv_layer}: input {_input_names(conv)}, Darknet layer {l.index} "
                        f"reads {expected_input}")
    last = conv.name
    if l.batch_normalize:
        bn = _get(model, l.bn_layer)
        if not isinstance(bn, keras.layers.BatchNormalization) or not (bn.center and bn.scale) \
                or _input_names(bn) != [last]:
            problems.append(f"{l.bn_layer}: expected BatchNormalization(center, scale) on {last}")
        last = l.bn_layer
    if l.activation == "leaky":
        act = _get(model, f"{l.base}_act")
        if not isinstance(act, keras.layers.LeakyReLU) or \
                not math.isclose(float(act.negative_slope), LEAKY_SLOPE, rel_tol=1e-6) \
                or _input_names(act) != [last]:
            problems.append(f"{l.base}_act: expected LeakyReLU({LEAKY_SLOPE}) on {last}")
    return problems


def _check_other(model, l: DarknetLayer, ours_of) -> list:
    layer = _get(model, l.ours)
    want_inputs = [ours_of(i) for i in l.inputs]
    kinds = {"shortcut": keras.layers.Add, "upsample": keras.layers.UpSampling2D,
             "route": keras.layers.Concatenate, "yolo": keras.layers.Reshape}
    if layer is None or not isinstance(layer, kinds[l.kind]):
        return [f"{l.ours}: expected {kinds[l.kind].__name__} for Darknet {l.kind} "
                f"layer {l.index}"]
    got = _input_names(layer)
    if l.kind == "shortcut":
        got, want_inputs = sorted(got), sorted(want_inputs)
    if got != want_inputs:
        return [f"{l.ours}: inputs {got}, Darknet {l.kind} layer {l.index} reads {want_inputs}"
                + (" (order matters: it sets the channel order)" if l.kind == "route" else "")]
    if l.kind == "upsample" and (tuple(layer.size) != (2, 2) or layer.interpolation != "nearest"):
        return [f"{l.ours}: expected nearest 2x upsampling like Darknet"]
    return []


def check_model_layout(model, parts: Sequence[str] = DARKNET_PARTS,
                       layout: Sequence[DarknetLayer] | None = None) -> dict:
    """Problems per part (empty lists = the part matches yolov3.cfg). See module docstring."""
    parts = _normalize_parts(parts)
    layout = layout or yolov3_layout()
    by_index = {l.index: l for l in layout}

    def ours_of(i):
        if i < 0:
            return _INPUT
        l = by_index[i]
        return l.ours if l.ours is not None else ours_of(l.inputs[0])

    victim_classes = _victim_classes(model, layout)
    problems = {p: [] for p in parts}
    for l in layout:
        group = l.group
        if group not in parts:
            continue
        if l.kind == "convolutional":
            problems[group] += _check_conv(model, l, ours_of, victim_classes)
        elif l.ours is not None:
            problems[group] += _check_other(model, l, ours_of)
    if "det_head" in parts and victim_classes is None:
        problems["det_head"].append("output convs: filters are not 3 x (5 + C) with C >= 1")
    mapped = {l.conv_layer for l in layout if l.kind == "convolutional"}
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                              keras.layers.Dense)) and layer.name not in mapped:
            try:
                group = task_group_of(layer.name)
            except ValueError:
                continue
            if group in problems:
                problems[group].append(f"{layer.name}: weight layer with no Darknet counterpart")
    return problems


def _raise_on_problems(problems: dict, model_name: str):
    bad = {p: v for p, v in problems.items() if v}
    if not bad:
        return
    lines = []
    for part, items in bad.items():
        lines.append(f"  {part}: {len(items)} mismatch(es)")
        lines += [f"    - {item}" for item in items[:8]]
        if len(items) > 8:
            lines.append(f"    ... and {len(items) - 8} more")
    ok = [p for p in problems if not problems[p]]
    hint = (f" The matching parts can be loaded alone: parts={tuple(ok)}." if ok else
            " Build the `full` variant (src.model.config.full_variant()): only it is YOLOv3.")
    raise DarknetLayoutError(f"model {model_name!r} does not match yolov3.cfg in "
                             f"{sorted(bad)}:\n" + "\n".join(lines) + "\n" + hint)


def _normalize_parts(parts) -> tuple:
    if isinstance(parts, str):
        parts = (parts,)
    parts = tuple(dict.fromkeys(parts))
    unknown = [p for p in parts if p not in DARKNET_PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {DARKNET_PARTS} (the cls_head has "
                         f"no Darknet counterpart), got {list(parts)}")
    return tuple(p for p in DARKNET_PARTS if p in parts)


# --------------------------------------------------------------------------- output convs

def resolve_class_map(class_map: Mapping, file_classes: Sequence[str] = COCO_CLASSES,
                      num_victim_classes: int | None = None) -> dict:
    """{file class (name or index): our class index} -> {file index: our index}, validated."""
    resolved = {}
    for key, ours in dict(class_map).items():
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not 0 <= key < len(file_classes):
                raise ValueError(f"class_map: file class index {key} outside "
                                 f"0..{len(file_classes) - 1}")
            k = int(key)
        elif key in file_classes:
            k = list(file_classes).index(key)
        else:
            raise ValueError(f"class_map: {key!r} is not a class of the file "
                             f"({len(file_classes)} classes, e.g. {list(file_classes[:3])})")
        if not isinstance(ours, (int, np.integer)) or isinstance(ours, bool) or ours < 0 or (
                num_victim_classes is not None and ours >= num_victim_classes):
            raise ValueError(f"class_map: {key!r} -> {ours!r}: our victim class index must be an "
                             f"int in 0..{(num_victim_classes or 1) - 1}")
        if int(ours) in resolved.values():
            raise ValueError(f"class_map: two file classes map onto our class {ours}")
        resolved[k] = int(ours)
    return resolved


def output_channel_pairs(mapping: Mapping[int, int], num_file_classes: int,
                         num_victim_classes: int) -> list:
    """(our channel, file channel) pairs of an output conv, anchor-major.

    Per anchor a: box/objectness entries e < 5 map a*(5+C)+e <- a*(5+K)+e, our
    class j <- file class k (mapping k -> j) maps a*(5+C)+5+j <- a*(5+K)+5+k.
    """
    ours_n, file_n = 5 + num_victim_classes, 5 + num_file_classes
    pairs = []
    for a in range(ANCHORS_PER_SCALE):
        pairs += [(a * ours_n + e, a * file_n + e) for e in range(5)]
        pairs += [(a * ours_n + 5 + j, a * file_n + 5 + k) for k, j in sorted(mapping.items())]
    return pairs


def select_output_channels(file_bias, file_kernel, mapping: Mapping[int, int],
                           num_file_classes: int, base_bias, base_kernel):
    """An output conv from the file onto ours.

    file_bias (3(5+K),), file_kernel (3(5+K), in, 1, 1) in Darknet order;
    base_bias (3(5+C),), base_kernel (1, 1, in, 3(5+C)) Keras: our current
    values, kept for victim classes no file class maps to. Returns (bias, kernel).
    """
    bias, kernel = np.array(base_bias, np.float32), np.array(base_kernel, np.float32)
    num_victim = bias.shape[0] // ANCHORS_PER_SCALE - 5
    pairs = output_channel_pairs(mapping, num_file_classes, num_victim)
    ours_idx = np.array([o for o, _ in pairs])
    file_idx = np.array([f for _, f in pairs])
    bias[ours_idx] = file_bias[file_idx]
    kernel[..., ours_idx] = np.transpose(np.asarray(file_kernel)[file_idx], (2, 3, 1, 0))
    return bias, kernel


def expand_output_channels(bias, kernel, mapping: Mapping[int, int], num_file_classes: int,
                           unmapped_class_logit: float = DEFAULT_UNMAPPED_CLASS_LOGIT):
    """Inverse of `select_output_channels`: ours -> Darknet (3(5+K),), (3(5+K), in, 1, 1).

    File class columns no class of ours maps to get a zero kernel and
    `unmapped_class_logit` as bias.
    """
    num_victim = bias.shape[0] // ANCHORS_PER_SCALE - 5
    file_n = 5 + num_file_classes
    in_ch = kernel.shape[2]
    out_bias = np.zeros(ANCHORS_PER_SCALE * file_n, np.float32)
    for a in range(ANCHORS_PER_SCALE):
        out_bias[a * file_n + 5:(a + 1) * file_n] = unmapped_class_logit
    out_kernel = np.zeros((ANCHORS_PER_SCALE * file_n, in_ch, 1, 1), np.float32)
    for o, f in output_channel_pairs(mapping, num_file_classes, num_victim):
        out_bias[f] = bias[o]
        out_kernel[f] = np.transpose(kernel[..., o], (2, 0, 1))   # (1, 1, in) -> (in, 1, 1)
    return out_bias, out_kernel


# --------------------------------------------------------------------------- batch norm

def darknet_gamma_to_keras(gamma, variance, keras_epsilon):
    """Gamma that makes Keras' BN (sqrt(var + eps)) equal Darknet's (sqrt(var) + 1e-6)."""
    var = np.maximum(np.asarray(variance, np.float64), 0.0)
    return (np.asarray(gamma, np.float64) * np.sqrt(var + keras_epsilon)
            / (np.sqrt(var) + DARKNET_BN_EPSILON)).astype(np.float32)


def keras_gamma_to_darknet(gamma, variance, keras_epsilon):
    var = np.maximum(np.asarray(variance, np.float64), 0.0)
    return (np.asarray(gamma, np.float64) * (np.sqrt(var) + DARKNET_BN_EPSILON)
            / np.sqrt(var + keras_epsilon)).astype(np.float32)


# --------------------------------------------------------------------------- load / save

def _as_f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_float32(model, convs, parts):
    for l in convs:
        if l.group in parts:
            conv = model.get_layer(l.conv_layer)
            if conv.kernel.dtype != "float32":
                raise DarknetLayoutError(f"{l.conv_layer}: variables are {conv.kernel.dtype}; "
                                         f"Darknet weights are float32")


def _notes(model_epsilons: set, compensated: bool) -> list:
    notes = []
    from src.model import decode
    if getattr(decode, "CENTRE_RANGE", 1.0) != 1.0:
        notes.append(f"decode.py centres are ({decode.CENTRE_RANGE:g} sigmoid(t) - "
                     f"{(decode.CENTRE_RANGE - 1) / 2:g} + cell) * stride, Darknet YOLOv3's "
                     f"(sigmoid(t) + cell) * stride: loaded COCO box outputs decode off-centre "
                     f"until fine-tuned")
    if not compensated and model_epsilons:
        notes.append(f"batch norm: Keras epsilon {sorted(model_epsilons)} inside the sqrt vs "
                     f"Darknet's sqrt(var) + 1e-6 (match_darknet_bn_epsilon=True compensates)")
    return notes


def load_darknet_weights(model, path, parts: Sequence[str] = DARKNET_PARTS,
                         class_map: Mapping = DEFAULT_CLASS_MAP, *,
                         file_classes: Sequence[str] = COCO_CLASSES,
                         match_darknet_bn_epsilon: bool = False) -> dict:
    """Assign a Darknet YOLOv3 file's weights to `model` (the `full` variant).

    parts: which of our task groups to load ("backbone", "neck", "det_head");
      the others keep their values. A backbone-only file allows only
      ("backbone",). cls_head is never in a Darknet file.
    class_map: file class (COCO name or index) -> our victim class index; the
      output convs take per anchor the 5 box/objectness channels plus these
      class channels. Victim classes nothing maps to keep their values.
    file_classes: the file's class names (COCO's 80 for yolov3.weights).
    match_darknet_bn_epsilon: rescale gamma so inference matches Darknet's
      batch norm exactly instead of storing the file's gamma unchanged.

    Checks, before assigning anything: the file exists, its size is exactly
    that of a known layout, the model matches yolov3.cfg in the requested parts.
    Returns a summary dict (header, layout, parts loaded/skipped, layers,
    parameters, class map, notes).
    """
    parts = _normalize_parts(parts)
    info = inspect_darknet_file(path, len(file_classes))
    if info["layout"] == "darknet53.conv.74" and parts != ("backbone",):
        raise DarknetFileError(f"{info['file']} holds only the Darknet-53 backbone (52 convs, "
                               f"{info['file_bytes']} bytes); load it with parts=('backbone',), "
                               f"not {parts}")
    layout = yolov3_layout(len(file_classes))
    _raise_on_problems(check_model_layout(model, parts, layout), model.name)
    convs = _file_convs(info["layout"], len(file_classes))
    _check_float32(model, convs, parts)
    victim_classes = _victim_classes(model, layout) if "det_head" in parts else None
    mapping = resolve_class_map(class_map, file_classes, victim_classes)

    body = np.memmap(info["file"], dtype="<f4", mode="r", offset=info["header_bytes"],
                     shape=(info["floats"],))
    offset = loaded_params = 0
    loaded, epsilons = [], set()
    try:
        for l in convs:
            n = l.num_floats
            if l.group not in parts:
                offset += n
                continue
            block = body[offset:offset + n]
            offset += n
            f = l.filters
            bias = block[:f]
            kernel = block[(4 if l.batch_normalize else 1) * f:].reshape(
                f, l.in_channels, l.size, l.size)
            conv = model.get_layer(l.conv_layer)
            if l.is_output:
                new_bias, new_kernel = select_output_channels(
                    bias, kernel, mapping, len(file_classes), conv.bias.numpy(),
                    conv.kernel.numpy())
                conv.kernel.assign(new_kernel)
                conv.bias.assign(new_bias)
                loaded_params += len(output_channel_pairs(
                    mapping, len(file_classes), victim_classes)) * (l.in_channels + 1)
            else:
                conv.kernel.assign(_as_f32(np.transpose(kernel, (2, 3, 1, 0))))
                bn = model.get_layer(l.bn_layer)
                gamma, mean, var = block[f:2 * f], block[2 * f:3 * f], block[3 * f:4 * f]
                if match_darknet_bn_epsilon:
                    gamma = darknet_gamma_to_keras(gamma, var, bn.epsilon)
                bn.gamma.assign(_as_f32(gamma))
                bn.beta.assign(_as_f32(bias))
                bn.moving_mean.assign(_as_f32(mean))
                bn.moving_variance.assign(_as_f32(var))
                epsilons.add(float(bn.epsilon))
                loaded_params += kernel.size + 4 * f
            loaded.append(l.conv_layer)
    finally:
        del body
    assert offset == info["floats"]
    skipped = [p for p in DARKNET_PARTS if p not in parts]
    unmapped = ([j for j in range(victim_classes) if j not in mapping.values()]
                if victim_classes else [])
    return dict(
        file=info["file"], file_bytes=info["file_bytes"], header=info["header"],
        layout=info["layout"], parts_loaded=list(parts), parts_skipped=skipped,
        not_in_darknet=["cls_head"], conv_layers_loaded=len(loaded),
        bn_layers_loaded=sum(1 for l in convs if l.group in parts and l.batch_normalize),
        layers_loaded=loaded, parameters_loaded=int(loaded_params),
        file_floats=info["floats"],
        class_map={file_classes[k]: j for k, j in mapping.items()} if "det_head" in parts else {},
        victim_classes_without_source=unmapped,
        bn_epsilon_compensated=bool(match_darknet_bn_epsilon),
        notes=_notes(epsilons, match_darknet_bn_epsilon),
    )


def save_darknet_weights(model, path, parts: Sequence[str] = DARKNET_PARTS,
                         class_map: Mapping = DEFAULT_CLASS_MAP, *,
                         file_classes: Sequence[str] = COCO_CLASSES, seen: int = 0,
                         unmapped_class_logit: float = DEFAULT_UNMAPPED_CLASS_LOGIT,
                         match_darknet_bn_epsilon: bool = False) -> dict:
    """Write the model's weights as a Darknet file (header 0.2.0, int64 `seen`).

    parts: all of DARKNET_PARTS -> a yolov3.cfg file (75 convs, 80 classes) that
      Darknet/OpenCV read with yolov3.cfg; ("backbone",) -> a Darknet-53
      backbone file (darknet53.conv.74 layout). Darknet reads sequentially, so
      no other subset is a valid file.
    class_map: as for loading (file class -> our class); per anchor the output
      convs get 85 channels: box/objectness and mapped classes from ours, the
      other class columns a zero kernel and `unmapped_class_logit` bias
      (default logit(1e-4) so Darknet never reports them; 0.0 = all zeros).
    Round trip: load_darknet_weights(save_darknet_weights(m)) restores every
    weight of the saved parts bit-exactly (mapped victim classes only).
    """
    parts = _normalize_parts(parts)
    if parts == DARKNET_PARTS:
        layout_name = "yolov3"
    elif parts == ("backbone",):
        layout_name = "darknet53.conv.74"
    else:
        raise ValueError(f"a Darknet file is a prefix of yolov3.cfg: save parts={DARKNET_PARTS} "
                         f"(yolov3.weights) or ('backbone',) (darknet53.conv.74), not {parts}")
    layout = yolov3_layout(len(file_classes))
    _raise_on_problems(check_model_layout(model, parts, layout), model.name)
    convs = _file_convs(layout_name, len(file_classes))
    _check_float32(model, convs, parts)
    victim_classes = _victim_classes(model, layout) if "det_head" in parts else None
    mapping = resolve_class_map(class_map, file_classes, victim_classes)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "wb") as f:
        f.write(struct.pack("<3iq", 0, 2, 0, int(seen)))
        for l in convs:
            conv = model.get_layer(l.conv_layer)
            if l.is_output:
                bias, kernel = expand_output_channels(conv.bias.numpy(), conv.kernel.numpy(),
                                                      mapping, len(file_classes),
                                                      unmapped_class_logit)
                arrays = [bias, kernel]
            else:
                bn = model.get_layer(l.bn_layer)
                gamma, var = bn.gamma.numpy(), bn.moving_variance.numpy()
                if match_darknet_bn_epsilon:
                    gamma = keras_gamma_to_darknet(gamma, var, bn.epsilon)
                arrays = [bn.beta.numpy(), gamma, bn.moving_mean.numpy(), var,
                          np.transpose(conv.kernel.numpy(), (3, 2, 0, 1))]
            for a in arrays:
                data = np.ascontiguousarray(a, dtype="<f4")
                f.write(data.tobytes())
                written += data.size
    if written != layout_floats(layout_name, len(file_classes)):   # layout/shape bug guard
        tmp.unlink()
        raise AssertionError(f"wrote {written} floats, layout needs "
                             f"{layout_floats(layout_name, len(file_classes))}")
    os.replace(tmp, path)
    return dict(file=str(path), file_bytes=path.stat().st_size, layout=layout_name,
                parts_saved=list(parts), conv_layers_saved=len(convs), file_floats=written,
                class_map={file_classes[k]: j for k, j in mapping.items()},
                unmapped_class_logit=float(unmapped_class_logit),
                bn_epsilon_compensated=bool(match_darknet_bn_epsilon))


# --------------------------------------------------------------------------- CLI

def _class_map_from_args(pairs, victim_names) -> dict:
    """--class-map COCO=OURS pairs (OURS a victim name or index); default: same names."""
    if not pairs:
        return {name: i for i, name in enumerate(victim_names) if name in COCO_CLASSES}
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--class-map expects coco_class=our_class, got {pair!r}")
        coco, ours = (s.strip() for s in pair.split("=", 1))
        key = int(coco) if coco.isdigit() else coco
        if ours.isdigit():
            out[key] = int(ours)
        elif ours in victim_names:
            out[key] = list(victim_names).index(ours)
        else:
            raise SystemExit(f"--class-map: {ours!r} is not a victim class {list(victim_names)}")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m src.model.darknet_weights",
        description="Load Darknet yolov3.weights into the full variant and save it as .keras")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS_PATH),
                        help=f"Darknet weights file (default {DEFAULT_WEIGHTS_PATH})")
    parser.add_argument("--out", required=True, help="output .keras model")
    parser.add_argument("--parts", nargs="+", default=list(DARKNET_PARTS), choices=DARKNET_PARTS)
    parser.add_argument("--config", default=None, help="YAML config (default configs/default.yaml)"
                        "; only its class lists are used")
    parser.add_argument("--input-size", type=int, default=416)
    parser.add_argument("--class-map", nargs="*", default=None, metavar="COCO=OURS",
                        help="e.g. person=person; default: victim classes named like COCO ones")
    parser.add_argument("--match-darknet-bn-epsilon", action="store_true")
    args = parser.parse_args(argv)
    if not args.out.endswith(".keras"):
        parser.error("--out must end in .keras")

    from src.config import load_config
    from src.model import build_model
    from src.model.config import full_variant

    info = inspect_darknet_file(args.weights)         # fail fast, before building the model
    cfg = load_config(args.config)
    victims = list(cfg["classes"]["victim"])
    class_map = _class_map_from_args(args.class_map, victims)
    model = build_model(full_variant(input_size=args.input_size,
                                     num_victim_classes=len(victims),
                                     num_disaster_classes=len(cfg["classes"]["disaster"])))
    summary = load_darknet_weights(model, info["file"], parts=args.parts, class_map=class_map,
                                   match_darknet_bn_epsilon=args.match_darknet_bn_epsilon)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    summary["model_parameters"] = int(model.count_params())
    summary["out"] = str(out)
    brief = {k: v for k, v in summary.items() if k != "layers_loaded"}
    print(json.dumps(brief, indent=2))
    print(f"loaded {summary['conv_layers_loaded']} conv layers ({summary['bn_layers_loaded']} with "
          f"batch norm), {summary['parameters_loaded']:,} parameters from {summary['file']}; "
          f"skipped parts: {summary['parts_skipped'] + summary['not_in_darknet']}; "
          f"saved {out}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, DarknetFileError, DarknetLayoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
