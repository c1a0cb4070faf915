"""Load a Darknet file into the model and save the model as a Darknet file."""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from src.model.config import CENTRE_RANGE_YOLOV3
from tools.darknet.class_map import (
    COCO_CLASSES, DEFAULT_CLASS_MAP, DEFAULT_UNMAPPED_CLASS_LOGIT, expand_output_channels,
    output_channel_pairs, resolve_class_map, select_output_channels)
from tools.darknet.layout import (
    DARKNET_PARTS, _file_convs, _normalize_parts, layout_floats, yolov3_layout)
from tools.darknet.model_check import (
    DarknetLayoutError, _raise_on_problems, _victim_classes, check_model_layout)
from tools.darknet.weights_file import DarknetFileError, inspect_darknet_file

DARKNET_BN_EPSILON = 1e-6          # added to sqrt(var) in Darknet's normalize_cpu


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


def _notes(model_epsilons: set, compensated: bool, heads_loaded: bool) -> list:
    notes = []
    if heads_loaded:
        notes.append(f"det_head: Darknet YOLOv3 centres, (sigmoid(t) + cell) * stride: decode with "
                     f"centre_range {CENTRE_RANGE_YOLOV3:g} (`python -m tools.darknet` records it "
                     f"in the .keras file)")
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
    parameters, class map, notes, and `centre_range`: how the loaded heads'
    centres decode, YOLOv3's formula, or None when det_head is not among the parts).
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
        centre_range=CENTRE_RANGE_YOLOV3 if "det_head" in parts else None,
        notes=_notes(epsilons, match_darknet_bn_epsilon, "det_head" in parts),
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
