"""File classes -> our victim classes, and the output convs' channel selection/expansion."""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from tools.darknet.layout import ANCHORS_PER_SCALE

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

DEFAULT_CLASS_MAP = MappingProxyType({"person": 0})
# Save: class columns the model does not have get a zero kernel and this bias,
# so Darknet never reports them (logit of 1e-4). 0.0 gives all-zero columns.
DEFAULT_UNMAPPED_CLASS_LOGIT = math.log(1e-4 / (1 - 1e-4))


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
