"""Official Darknet YOLOv3 weights <-> our `full` model (and our weights in Darknet layout).

    python -m tools.darknet --weights data/pretrained/yolov3.weights \
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
* decoding (not a weight): the model's default centres are
  (2 sigmoid(t) - 0.5 + cell) * stride (YOLOv4/v5), Darknet YOLOv3's
  (sigmoid(t) + cell) * stride. Loaded heads keep YOLOv3's: the summary's
  `centre_range` is 1 when det_head is loaded, and the command line builds
  the model with it and records it in the `.keras` file
  (src.model.config.record_decode), so evaluation, export and every runtime
  decode the boxes where Darknet puts them. Sizes (exp(t) * anchor),
  objectness and class sigmoids are the same in both.

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
from tools.darknet.class_map import (
    COCO_CLASSES, DEFAULT_CLASS_MAP, DEFAULT_UNMAPPED_CLASS_LOGIT, expand_output_channels,
    output_channel_pairs, resolve_class_map, select_output_channels)
from tools.darknet.cli import main
from tools.darknet.convert import (
    DARKNET_BN_EPSILON, darknet_gamma_to_keras, keras_gamma_to_darknet, load_darknet_weights,
    save_darknet_weights)
from tools.darknet.layout import (
    ANCHORS_PER_SCALE, BACKBONE_CONVS, DARKNET_PARTS, YOLOV3_CONV_LAYERS, DarknetLayer,
    darknet_convs, layout_floats, yolov3_layout)
from tools.darknet.model_check import LEAKY_SLOPE, DarknetLayoutError, check_model_layout
from tools.darknet.weights_file import (
    DEFAULT_WEIGHTS_PATH, OFFICIAL_SOURCE, DarknetFileError, expected_file_bytes,
    inspect_darknet_file, read_header)

__all__ = [
    "ANCHORS_PER_SCALE", "BACKBONE_CONVS", "COCO_CLASSES", "DARKNET_BN_EPSILON", "DARKNET_PARTS",
    "DEFAULT_CLASS_MAP", "DEFAULT_UNMAPPED_CLASS_LOGIT", "DEFAULT_WEIGHTS_PATH", "LEAKY_SLOPE",
    "OFFICIAL_SOURCE", "YOLOV3_CONV_LAYERS", "DarknetFileError", "DarknetLayer",
    "DarknetLayoutError", "check_model_layout", "darknet_convs", "darknet_gamma_to_keras",
    "expand_output_channels", "expected_file_bytes", "inspect_darknet_file",
    "keras_gamma_to_darknet", "layout_floats", "load_darknet_weights", "main",
    "output_channel_pairs", "read_header", "resolve_class_map", "save_darknet_weights",
    "select_output_channels", "yolov3_layout",
]
