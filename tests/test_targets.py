"""Label encoder and decoder: what goes in as boxes comes back out as boxes."""
import numpy as np
import tensorflow as tf

from src.model.decode import decode_scale, detect, scale_anchors
from src.model.config import STRIDES
from src.model.targets import encode_targets


def _raw_from_targets(target, anchors, stride, num_classes):
    """Invert the decoder: head logits that decode exactly to the encoded boxes."""
    t = target.numpy()
    grid = t.shape[1]
    raw = np.full(t.shape, -12.0, np.float32)  # objectness and classes ~0 elsewhere
    raw[..., 2:4] = 0.0
    gy, gx = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    cell = np.stack([gx, gy], -1)[:, :, None, :]
    centre = (t[..., 0:2] + t[..., 2:4]) / 2
    size = np.maximum(t[..., 2:4] - t[..., 0:2], 1e-3)
    frac = np.clip((centre / stride - cell + 0.5) / 2, 1e-4, 1 - 1e-4)
    pos = t[..., 4] > 0
    raw[..., 0:2] = np.where(pos[..., None], np.log(frac / (1 - frac)), 0.0)
    raw[..., 2:4] = np.where(pos[..., None], np.log(size / anchors.numpy()), 0.0)
    raw[..., 4] = np.where(pos, 12.0, -12.0)
    raw[..., 5:] = np.where(pos[..., None], t[..., 5:] * 24 - 12, -12.0)
    return tf.constant(raw)


def test_encode_then_decode_recovers_boxes_and_classes(tiny_config):
    boxes = np.array([[[4, 4, 12, 18], [30, 30, 58, 62], [40, 2, 52, 12]],
                      [[10, 20, 30, 30], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    classes = np.array([[0, 0, 0], [0, -1, -1]], np.int32)
    targets = encode_targets(boxes, classes, tiny_config)
    assert sum(float(tf.reduce_sum(t[..., 4])) for t in targets) == 4.0
    raw = {name: _raw_from_targets(t, a, s, 1) for name, t, a, s in
           zip(("det_s8", "det_s16", "det_s32"), targets, scale_anchors(tiny_config), STRIDES)}
    raw["disaster"] = tf.zeros((2, 5))
    out = detect(raw, tiny_config, score_threshold=0.5)
    for b, n in enumerate([3, 1]):
        assert int(out["num_detections"][b]) == n
        got = out["boxes"][b, :n].numpy()
        want = boxes[b, :n]
        order_got = np.lexsort(got.T[::-1])
        order_want = np.lexsort(want.T[::-1])
        np.testing.assert_allclose(got[order_got], want[order_want], atol=1e-2)
        assert np.all(out["classes"][b, :n].numpy() == 0)


def test_boxes_go_to_the_scale_of_their_best_anchor(tiny_config):
    small = np.array([[[10, 10, 16, 20]]], np.float32)  # 6x10 = anchor 0 (stride 8)
    large = np.array([[[2, 2, 62, 62]]], np.float32)    # 60x60 = anchor 8 (stride 32)
    s8, _, s32 = encode_targets(small, np.zeros((1, 1), np.int32), tiny_config)
    assert float(tf.reduce_sum(s8[..., 4])) == 1.0
    assert float(s8[0, 1, 1, 0, 4]) == 1.0  # centre (13, 15) -> cell (1, 1), anchor 0
    _, _, s32 = encode_targets(large, np.zeros((1, 1), np.int32), tiny_config)
    assert float(s32[0, 1, 1, 2, 4]) == 1.0  # centre (32, 32) -> cell (1, 1), anchor 2 of scale 3


def test_image_without_victims_encodes_to_all_zero(tiny_config):
    targets = encode_targets(np.zeros((1, 4, 4), np.float32), -np.ones((1, 4), np.int32), tiny_config)
    for t in targets:
        assert float(tf.reduce_sum(tf.abs(t))) == 0.0


def test_neighbour_cells_triple_the_positives(tiny_config):
    config = tiny_config.with_overrides(neighbour_cells=True)
    boxes = np.array([[[17, 19, 23, 29]]], np.float32)  # centre (20, 24): cell (2, 3) at stride 8
    s8, _, _ = encode_targets(boxes, np.zeros((1, 1), np.int32), config)
    positive = np.argwhere(s8[0, ..., 4].numpy() > 0)[:, :2].tolist()
    # centre sits at frac (0.5, 0.0) of its cell -> right and upper neighbours
    assert sorted(positive) == [[2, 2], [3, 2], [3, 3]]


def test_decode_scale_puts_zero_logits_at_cell_centres():
    raw = tf.zeros((1, 2, 2, 1, 6))
    boxes = decode_scale(raw, tf.constant([[8.0, 4.0]]), stride=16).numpy()
    np.testing.assert_allclose(boxes[0, 1, 0, 0], [8 - 4, 24 - 2, 8 + 4, 24 + 2])
