"""Checks that a built model matches yolov3.cfg: shapes, activations, padding, graph."""
from __future__ import annotations

import math
from typing import Sequence

import keras

from src.model.config import task_group_of
from tools.darknet.layout import (
    ANCHORS_PER_SCALE, DARKNET_PARTS, DarknetLayer, _normalize_parts, yolov3_layout)

LEAKY_SLOPE = 0.1
_INPUT = "images"                                       # our model's input layer


class DarknetLayoutError(ValueError):
    """The model (or a requested part of it) does not match the Darknet layout."""


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
