"""Darknet YOLOv3 weights: layout vs yolov3.cfg, bit-exact round trip, hand-built files,
size checks, the person-class column selection, partial and backbone-only files.

The full model (66 M parameters) is built once for the module, at 64 px (conv
weights do not depend on the input size). Files are written by the tests
themselves: nothing is downloaded.
"""
import hashlib
import math
import struct

import keras
import numpy as np
import pytest

from src.model import build_model
from src.model.config import ModelConfig, full_variant, task_group_of
from tools import darknet as dw
from tools.darknet import model_check, weights_file

# yolov3.weights as released: a 20-byte header (0.2.0, int64 seen) + 62,001,757 float32
# (the same count other readers hard-code, e.g. platypus' read_darknet_weights).
YOLOV3_FLOATS = 62_001_757
YOLOV3_BYTES = 248_007_048
DARKNET53_CONV74_BYTES = 162_482_580
YOLOV3_TINY_BYTES = 35_434_956
DETECTOR_GROUPS = ("backbone", "neck", "det_head")


def yolov3_cfg_convs(classes=80):
    """(filters, size, stride, in_channels, batch_normalize) of yolov3.cfg's 75 convs,
    written out from the cfg text independently of the module under test."""
    convs, ch = [], 3

    def conv(f, k, s=1, bn=True, cin=None):
        nonlocal ch
        convs.append((f, k, s, ch if cin is None else cin, bn))
        ch = f

    conv(32, 3)
    for f, n in zip((64, 128, 256, 512, 1024), (1, 2, 8, 8, 4)):
        conv(f, 3, 2)
        for _ in range(n):
            conv(f // 2, 1)
            conv(f, 3)
    out = 3 * (5 + classes)
    # stride 32 on layer 74 (1024 ch); routes -4 then [-1, 61] (512 ch), [-1, 36] (256 ch)
    for f, set_in in ((512, 1024), (256, 256 + 512), (128, 128 + 256)):
        if f != 512:
            conv(f, 1, cin=2 * f)            # lateral on the previous set's last 1x1 (2f ch)
        for i, (ff, k) in enumerate([(f, 1), (2 * f, 3), (f, 1), (2 * f, 3), (f, 1)]):
            conv(ff, k, cin=set_in if i == 0 else None)
        conv(2 * f, 3)
        conv(out, 1, bn=False)
    return convs


def conv_floats(c):
    f, k, _, cin, bn = c
    return f * (4 if bn else 1) + f * cin * k * k


# ------------------------------------------------------------------ helpers

def detector_weights(model, groups=DETECTOR_GROUPS):
    return [w for w in model.weights if task_group_of(w.path) in groups]


def randomize(model, seed, groups=("backbone", "neck", "det_head", "cls_head")):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if task_group_of(w.path) in groups:
            values = rng.standard_normal(tuple(w.shape), dtype=np.float32)
            if w.path.endswith("moving_variance"):
                values = np.abs(values) + 0.1
            w.assign(values)


def zero(model, groups=DETECTOR_GROUPS):
    for w in detector_weights(model, groups):
        w.assign(np.zeros(tuple(w.shape), np.float32))


def digests(model):
    return {w.path: hashlib.sha1(np.ascontiguousarray(w.numpy()).tobytes()).hexdigest()
            for w in model.weights}


def file_sha(path, limit=None):
    h, left = hashlib.sha1(), limit
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 24 if left is None else min(1 << 24, left))
            if not chunk:
                return h.hexdigest()
            h.update(chunk)
            if left is not None:
                left -= len(chunk)


def sparse_file(path, header, size):
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(size)
    return path


HEADER_020 = struct.pack("<3iq", 0, 2, 0, 0)


@pytest.fixture(scope="module")
def full_model():
    keras.utils.set_random_seed(0)
    model = build_model(full_variant(input_size=64))
    yield model
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def saved(full_model, tmp_path_factory):
    """Random weights everywhere, saved in Darknet layout; the digests of every weight."""
    randomize(full_model, seed=1)
    path = tmp_path_factory.mktemp("darknet") / "random.weights"
    summary = dw.save_darknet_weights(full_model, path, seen=987654321)
    return dict(path=path, summary=summary, digests=digests(full_model), sha=file_sha(path))


# ------------------------------------------------------------------ layout

def test_layout_is_yolov3_cfg_and_matches_the_full_model(full_model):
    cfg = yolov3_cfg_convs()
    convs = dw.darknet_convs(dw.yolov3_layout())
    assert [(c.filters, c.size, c.stride, c.in_channels, c.batch_normalize) for c in convs] == cfg
    assert sum(conv_floats(c) for c in cfg) == YOLOV3_FLOATS == dw.layout_floats()
    assert dw.expected_file_bytes() == YOLOV3_BYTES
    assert dw.expected_file_bytes("darknet53.conv.74") == DARKNET53_CONV74_BYTES
    assert weights_file._tiny_file_bytes(20) == YOLOV3_TINY_BYTES
    groups = [c.group for c in convs]
    assert (groups.count("backbone"), groups.count("neck"), groups.count("det_head")) == (52, 17, 6)
    assert groups == ["backbone"] * 52 + ["neck"] * 5 + ["det_head"] * 2 + ["neck"] * 6 \
        + ["det_head"] * 2 + ["neck"] * 6 + ["det_head"] * 2

    assert dw.check_model_layout(full_model) == {"backbone": [], "neck": [], "det_head": []}
    # every conv kernel as yolov3.cfg implies; output convs 3 x (5 + 1) filters here
    for name, (f, k, _, cin, bn) in zip(dw.YOLOV3_CONV_LAYERS, cfg):
        layer = full_model.get_layer(name)
        assert tuple(layer.kernel.shape) == (k, k, cin, f if bn else 18), name
        assert layer.use_bias == (not bn)
    model_convs = {l.name for l in full_model.layers if isinstance(l, keras.layers.Conv2D)
                   and task_group_of(l.name) in DETECTOR_GROUPS}
    assert model_convs == set(dw.YOLOV3_CONV_LAYERS) and len(dw.YOLOV3_CONV_LAYERS) == 75
    # routes and output order as in the cfg
    by_kind = {l.index: l for l in dw.yolov3_layout()}
    assert by_kind[86].inputs == (85, 61) and by_kind[86].ours == "neck_p4_concat"
    assert by_kind[98].inputs == (97, 36) and by_kind[61].ours == "backbone_stage4_block7_add"
    assert [(l.ours, l.mask) for l in dw.yolov3_layout() if l.kind == "yolo"] == [
        ("det_head_s32", (6, 7, 8)), ("det_head_s16", (3, 4, 5)), ("det_head_s8", (0, 1, 2))]


def test_layout_check_catches_a_swapped_route(monkeypatch):
    """Concatenating [c4, upsampled] instead of [upsampled, c4] keeps every kernel shape
    but permutes the input channels of neck_p4_conv0: the check must see it."""
    import src.model.neck as neck

    class SwappedLayers:
        def __getattr__(self, name):
            return getattr(keras.layers, name)

        @staticmethod
        def Concatenate(**kw):
            layer = keras.layers.Concatenate(**kw)
            return lambda xs: layer(list(reversed(xs)))

    monkeypatch.setattr(neck, "layers", SwappedLayers())
    model = build_model(full_variant(input_size=64))
    problems = dw.check_model_layout(model)
    assert problems["backbone"] == [] and problems["det_head"] == []
    assert any(p.startswith("neck_p4_concat: inputs ['backbone_stage4_block7_add', 'neck_p5_up']")
               for p in problems["neck"])
    with pytest.raises(dw.DarknetLayoutError, match=r"parts=\('backbone', 'det_head'\)"):
        model_check._raise_on_problems(problems, model.name)
    del model


def test_small_variant_is_rejected_with_the_mismatches(saved):
    small = build_model(ModelConfig())
    for parts in (dw.DARKNET_PARTS, ("backbone",)):
        with pytest.raises(dw.DarknetLayoutError, match=r"does not match yolov3.cfg") as e:
            dw.load_darknet_weights(small, saved["path"], parts=parts)
        assert "backbone_stem_conv: kernel (3, 3, 3, 8), Darknet layer 0 needs (3, 3, 3, 32)" \
            in str(e.value)


# ------------------------------------------------------------------ round trips

def test_round_trip_is_bit_exact(full_model, saved, tmp_path):
    path = saved["path"]
    assert path.stat().st_size == YOLOV3_BYTES
    with open(path, "rb") as f:
        assert struct.unpack("<3iq", f.read(20)) == (0, 2, 0, 987654321)
    zero(full_model)
    summary = dw.load_darknet_weights(full_model, path)
    assert digests(full_model) == saved["digests"]      # every weight, cls_head untouched
    covered = sum(int(np.prod(w.shape)) for w in detector_weights(full_model))
    assert summary["parameters_loaded"] == covered
    assert (summary["conv_layers_loaded"], summary["bn_layers_loaded"]) == (75, 72)
    assert summary["parts_skipped"] == [] and summary["not_in_darknet"] == ["cls_head"]
    assert summary["header"]["seen"] == 987654321 and summary["layout"] == "yolov3"
    assert summary["class_map"] == {"person": 0} and summary["victim_classes_without_source"] == []
    # writing again reproduces the file byte for byte
    again = tmp_path / "again.weights"
    dw.save_darknet_weights(full_model, again, seen=987654321)
    assert file_sha(again) == saved["sha"]
    again.unlink()


def test_partial_load_touches_only_the_requested_parts(full_model, saved):
    zero(full_model)
    summary = dw.load_darknet_weights(full_model, saved["path"], parts=("backbone",))
    now = digests(full_model)
    for w in full_model.weights:
        group = task_group_of(w.path)
        if group in ("backbone", "cls_head"):
            assert now[w.path] == saved["digests"][w.path], w.path
        else:
            assert not np.any(w.numpy()), w.path
    assert summary["parts_skipped"] == ["neck", "det_head"]
    assert summary["conv_layers_loaded"] == 52 and summary["class_map"] == {}


def test_backbone_only_file_is_the_darknet53_conv74_prefix(full_model, saved, tmp_path):
    dw.load_darknet_weights(full_model, saved["path"])
    path = tmp_path / "darknet53.conv.74"
    summary = dw.save_darknet_weights(full_model, path, parts=("backbone",), seen=987654321)
    assert path.stat().st_size == DARKNET53_CONV74_BYTES == summary["file_bytes"]
    assert file_sha(path) == file_sha(saved["path"], limit=DARKNET53_CONV74_BYTES)
    zero(full_model, ("backbone",))
    assert dw.load_darknet_weights(full_model, path, parts="backbone")["layout"] == \
        "darknet53.conv.74"
    assert digests(full_model) == saved["digests"]
    with pytest.raises(dw.DarknetFileError, match=r"holds only the Darknet-53 backbone"):
        dw.load_darknet_weights(full_model, path)
    with pytest.raises(ValueError, match=r"prefix of yolov3.cfg"):
        dw.save_darknet_weights(full_model, tmp_path / "x.weights", parts=("backbone", "neck"))


# ------------------------------------------------------------------ hand-built file

def test_hand_built_file_lands_where_darknet_puts_it(full_model, tmp_path):
    """Header 0.2.0, seen=123456789; float i of the body = i mod 2**24 (exact in float32),
    so every value names its own file position."""
    cfg = yolov3_cfg_convs()
    path = tmp_path / "positions.weights"
    with open(path, "wb") as f:
        f.write(struct.pack("<3iq", 0, 2, 0, 123456789))
        for start in range(0, YOLOV3_FLOATS, 1 << 22):
            stop = min(start + (1 << 22), YOLOV3_FLOATS)
            f.write((np.arange(start, stop) % (1 << 24)).astype("<f4").tobytes())
    summary = dw.load_darknet_weights(full_model, path)
    assert summary["header"] == dict(major=0, minor=2, revision=0, seen=123456789)

    def at(i):
        return np.float32(i % (1 << 24))

    offsets = np.cumsum([0] + [conv_floats(c) for c in cfg])
    # a few elements by hand: stem conv (layer 0), BN then kernel (out, in, kh, kw)
    stem, bn = full_model.get_layer("backbone_stem_conv"), full_model.get_layer("backbone_stem_bn")
    assert bn.beta.numpy()[5] == at(5) and bn.gamma.numpy()[5] == at(32 + 5)
    assert bn.moving_mean.numpy()[5] == at(64 + 5) and bn.moving_variance.numpy()[5] == at(96 + 5)
    # keras kernel[kh=1, kw=2, in=0, out=5] = darknet[out=5, in=0, kh=1, kw=2]
    assert stem.kernel.numpy()[1, 2, 0, 5] == at(128 + ((5 * 3 + 0) * 3 + 1) * 3 + 2)
    # neck_p4_conv0 reads the 768-channel concat [upsampled 256, stage-4 512]: in index 300
    c = dw.YOLOV3_CONV_LAYERS.index("neck_p4_conv0_conv")
    f, _, _, cin, _ = cfg[c]
    assert cin == 768
    assert full_model.get_layer("neck_p4_conv0_conv").kernel.numpy()[0, 0, 300, 7] == \
        at(offsets[c] + 4 * f + 7 * cin + 300)

    # every conv, completely
    for c, (name, (f, k, _, cin, bn)) in enumerate(zip(dw.YOLOV3_CONV_LAYERS, cfg)):
        off = offsets[c]
        kernel_pos = off + (4 if bn else 1) * f + np.arange(f * cin * k * k)
        kernel = at(kernel_pos).reshape(f, cin, k, k).transpose(2, 3, 1, 0)
        conv = full_model.get_layer(name)
        if bn:
            np.testing.assert_array_equal(conv.kernel.numpy(), kernel, err_msg=name)
            bn_layer = full_model.get_layer(name[:-len("_conv")] + "_bn")
            for i, w in enumerate((bn_layer.beta, bn_layer.gamma, bn_layer.moving_mean,
                                   bn_layer.moving_variance)):
                np.testing.assert_array_equal(w.numpy(), at(off + i * f + np.arange(f)))
        else:   # output conv: per anchor channels 0-4 (box, objectness) and 5 (COCO person)
            assert f == 255
            file_channels = [a * 85 + e for a in range(3) for e in range(6)]
            np.testing.assert_array_equal(conv.bias.numpy(), at(off + np.array(file_channels)))
            np.testing.assert_array_equal(conv.kernel.numpy(), kernel[..., file_channels])
    path.unlink()


# ------------------------------------------------------------------ file checks

def test_wrong_sizes_are_rejected_naming_expected_and_actual(full_model, tmp_path):
    for name, size in (("truncated", YOLOV3_BYTES - 4), ("oversized", YOLOV3_BYTES + 4),
                       ("half", YOLOV3_BYTES // 2)):
        path = sparse_file(tmp_path / f"{name}.weights", HEADER_020, size)
        with pytest.raises(dw.DarknetFileError) as e:
            dw.load_darknet_weights(full_model, path)
        message = str(e.value)
        assert str(path) in message and f"expected exactly {YOLOV3_BYTES} bytes" in message
        assert f"actual {size} bytes" in message
    tiny = sparse_file(tmp_path / "yolov3-tiny.weights", HEADER_020, YOLOV3_TINY_BYTES)
    with pytest.raises(dw.DarknetFileError, match="yolov3-tiny"):
        dw.load_darknet_weights(full_model, tiny)
    stub = tmp_path / "stub.weights"
    stub.write_bytes(b"\x00" * 7)
    with pytest.raises(dw.DarknetFileError, match=r"stub.weights: 7 bytes is not a Darknet"):
        dw.load_darknet_weights(full_model, stub)
    # an old header (0.1: int32 seen, 16 bytes) moves the expected size by 4 bytes
    old = sparse_file(tmp_path / "old.weights", struct.pack("<4i", 0, 1, 0, 5), YOLOV3_BYTES - 4)
    info = dw.inspect_darknet_file(old)
    assert (info["header_bytes"], info["layout"], info["header"]["seen"]) == (16, "yolov3", 5)


def test_missing_file_says_where_to_get_it(full_model, tmp_path, capsys):
    path = tmp_path / "nowhere" / "yolov3.weights"
    with pytest.raises(FileNotFoundError, match=r"pjreddie.com/media/files/yolov3.weights") as e:
        dw.load_darknet_weights(full_model, path)
    assert str(path) in str(e.value) and "Nothing is downloaded" in str(e.value)
    # the CLI fails before building a model, with one error line
    assert dw.main(["--weights", str(path), "--out", str(tmp_path / "m.keras")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and str(path) in err[-1] and "pjreddie.com" in err[-1]
    assert not (tmp_path / "m.keras").exists()


# ------------------------------------------------------------------ decoded boxes

def known_head_biases(scale: int, anchor: int) -> np.ndarray:
    """The 85 output channels' biases of one anchor of the output conv `scale` (file order:
    0 = stride 32, 1 = 16, 2 = 8): tx, ty, tw, th, objectness, then 80 COCO class logits."""
    values = np.zeros(85, np.float32)
    values[:6] = [1.5 - 0.5 * anchor, -2.0 + 0.5 * scale, 0.4, -0.3 + 0.1 * anchor, 3.0, 2.0]
    return values


def yolov3_boxes_by_hand(input_size: int) -> np.ndarray:
    """Every prediction of a model whose output convs emit exactly their biases, decoded with
    YOLOv3's formulas: centre (sigmoid(t) + cell) * stride, size exp(t) * anchor. Order as
    the decoder flattens: scales 8, 16, 32, then row, column, anchor."""
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    anchors = np.array(full_variant().anchors).reshape(3, 3, 2)
    boxes = []
    for ours, stride in enumerate((8, 16, 32)):
        file_scale = 2 - ours
        grid = input_size // stride
        for gy in range(grid):
            for gx in range(grid):
                for a in range(3):
                    tx, ty, tw, th = known_head_biases(file_scale, a)[:4]
                    cx, cy = (sigmoid(tx) + gx) * stride, (sigmoid(ty) + gy) * stride
                    w, h = np.exp(tw) * anchors[ours, a, 0], np.exp(th) * anchors[ours, a, 1]
                    boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(boxes)


def test_converted_official_heads_decode_where_darknet_puts_the_boxes(tmp_path):
    """A yolov3.weights-layout file, all zeros but the output convs' biases: every feature is
    0, so every cell and anchor predicts its bias and the boxes are known by hand. The
    converter records YOLOv3's centre decoding in the .keras file; the Keras decode path and
    an export (its deploy.json and the numpy post-processing every runtime uses) read it."""
    from dataclasses import replace

    from src.deploy.export import export
    from src.deploy.postprocess import ModelMetadata, decode
    from src.federated.checkpoint import load_trained_model
    from src.model.config import YOLOV3_ANCHORS, recorded_decode, with_recorded_decode
    from src.model.decode import flatten_predictions
    from src.settings import load_config, model_config

    cfg = yolov3_cfg_convs()
    offsets = np.cumsum([0] + [conv_floats(c) for c in cfg])
    outputs = [i for i, c in enumerate(cfg) if not c[4]]        # linear output convs, stride 32, 16, 8
    assert len(outputs) == 3
    path = sparse_file(tmp_path / "known.weights", HEADER_020, YOLOV3_BYTES)
    with open(path, "r+b") as f:
        for scale, conv in enumerate(outputs):                  # biases come first in a conv block
            f.seek(len(HEADER_020) + 4 * int(offsets[conv]))
            f.write(np.concatenate([known_head_biases(scale, a) for a in range(3)]).astype("<f4").tobytes())

    keras_path = tmp_path / "yolov3_coco.keras"
    assert dw.main(["--weights", str(path), "--out", str(keras_path), "--input-size", "64"]) == 0
    assert recorded_decode(keras_path) == {"centre_range": 1.0}

    settings = load_config(overrides={
        "model.variant": "full", "model.input_size": 64, "model.width": 1.0, "model.depth": [1, 2, 8, 8, 4],
        "model.anchors": [list(a) for a in YOLOV3_ANCHORS]})   # neighbour_cells stays on, as by default
    model = load_trained_model(keras_path, settings)
    mcfg = with_recorded_decode(model_config(settings), keras_path)   # what evaluate and export decode with
    assert mcfg.centre_range == 1.0
    raw = model(np.zeros((1, 64, 64, 3), np.float32), training=False)
    want = yolov3_boxes_by_hand(64)
    boxes, scores = flatten_predictions(raw, mcfg)
    np.testing.assert_allclose(boxes.numpy()[0], want, atol=1e-3)
    np.testing.assert_allclose(scores.numpy()[0], 1 / (1 + np.exp(-3.0)) / (1 + np.exp(-2.0)), rtol=1e-5)
    # the YOLOv4/v5 formula moves each centre by sigmoid(t) - 0.5 cells: here 0.12 to 0.38
    scaled, _ = flatten_predictions(raw, replace(mcfg, centre_range=2.0))
    assert np.abs(scaled.numpy()[0] - want).max() > 0.15 * 8

    written = export(keras_path, settings, tmp_path / "export", ["keras"])
    meta = ModelMetadata.load(tmp_path / "export")
    assert meta.centre_range == 1.0 and recorded_decode(written["keras"]["path"]) == {"centre_range": 1.0}
    numpy_boxes, _ = decode({k: v.numpy() for k, v in raw.items()}, meta)
    np.testing.assert_allclose(numpy_boxes[0], want, atol=1e-3)


# ------------------------------------------------------------------ class columns

def test_person_mapping_selects_box_objectness_and_person_columns():
    """Hand-built output conv block: bias[c] = c, kernel[c, i] = 1000 c + i."""
    channels, in_ch = 3 * 85, 2
    bias = np.arange(channels, dtype=np.float32)
    kernel = (1000 * np.arange(channels)[:, None] + np.arange(in_ch)[None, :]).astype(np.float32)
    kernel = kernel.reshape(channels, in_ch, 1, 1)

    def select(class_map, victims, base=0.0):
        mapping = dw.resolve_class_map(class_map, dw.COCO_CLASSES, victims)
        outputs = 3 * (5 + victims)
        return dw.select_output_channels(bias, kernel, mapping, 80,
                                         np.full(outputs, base, np.float32),
                                         np.full((1, 1, in_ch, outputs), base, np.float32))

    b, k = select({"person": 0}, 1)
    want = [0, 1, 2, 3, 4, 5, 85, 86, 87, 88, 89, 90, 170, 171, 172, 173, 174, 175]
    np.testing.assert_array_equal(b, want)
    np.testing.assert_array_equal(k[0, 0],
                                  1000 * np.array(want)[None, :] + np.arange(in_ch)[:, None])
    b, _ = select({"car": 0}, 1)                       # COCO class 2 -> column 5 + 2
    np.testing.assert_array_equal(b[[5, 11, 17]], [7, 92, 177])
    b, _ = select({"person": 1, 2: 0}, 2)              # by name and by index
    np.testing.assert_array_equal(b[:7], [0, 1, 2, 3, 4, 7, 5])
    b, k = select({"car": 1}, 2, base=-1.0)            # victim class 0 has no source: kept
    np.testing.assert_array_equal(b[[5, 12, 19]], [-1, -1, -1])
    np.testing.assert_array_equal(b[[6, 13, 20]], [7, 92, 177])

    # inverse: 85 channels per anchor, unmapped classes zero kernel + the given bias
    mapping = dw.resolve_class_map({"person": 0}, dw.COCO_CLASSES, 1)
    b, k = select({"person": 0}, 1)
    fb, fk = dw.expand_output_channels(b, k, mapping, 80, unmapped_class_logit=0.0)
    mapped = want
    np.testing.assert_array_equal(fb[mapped], bias[mapped])
    np.testing.assert_array_equal(fk[mapped], kernel[mapped])
    others = np.setdiff1d(np.arange(channels), mapped)
    assert not fb[others].any() and not fk[others].any()
    fb, _ = dw.expand_output_channels(b, k, mapping, 80)
    assert math.isclose(fb[6], dw.DEFAULT_UNMAPPED_CLASS_LOGIT, rel_tol=1e-6)

    for bad, victims, match in (({"zombie": 0}, 1, "not a class of the file"),
                                ({80: 0}, 1, "outside 0..79"),
                                ({"person": 1}, 1, r"int in 0..0"),
                                ({"person": 0, "car": 0}, 1, "two file classes")):
        with pytest.raises(ValueError, match=match):
            dw.resolve_class_map(bad, dw.COCO_CLASSES, victims)


def test_bn_epsilon_compensation_reproduces_darknet_batch_norm():
    rng = np.random.default_rng(0)
    n = 64
    gamma, beta = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    mean = rng.normal(size=n).astype(np.float32)
    var = np.exp(rng.uniform(np.log(1e-5), np.log(10.0), size=n)).astype(np.float32)
    x = rng.normal(size=(8, n)).astype(np.float32)
    darknet = gamma * (x - mean) / (np.sqrt(var) + dw.DARKNET_BN_EPSILON) + beta
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    bn.build((None, n))
    for g, want_close in ((gamma, False), (dw.darknet_gamma_to_keras(gamma, var, 1e-3), True)):
        bn.set_weights([g, beta, mean, var])
        ours = bn(x, training=False).numpy()
        assert np.allclose(ours, darknet, rtol=1e-4, atol=1e-4) == want_close
    back = dw.keras_gamma_to_darknet(dw.darknet_gamma_to_keras(gamma, var, 1e-3), var, 1e-3)
    np.testing.assert_allclose(back, gamma, rtol=1e-6)
