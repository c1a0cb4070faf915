"""Training-time choices a short budget depends on: the retargetable schedule, the weights'
moving average, the deadline, the objectness target and the half-resolution stem."""
import math
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from src.data.pipeline import PipelineOptions, training_dataset
from src.model import build_model, task_group_of
from src.model.config import ModelConfig, STRIDES
from src.model.decode import decode_scale, scale_anchors
from src.model.loss import LossWeights, MultiTaskLoss, matched_iou
from src.training import TrainOptions, Trainer, WarmupCosine


def _batch(records, config):
    options = PipelineOptions(batch_size=len(records), flip=False, color_jitter=0, scale_jitter=None)
    return next(iter(training_dataset(records, config, options)))


def test_schedule_warms_up_decays_to_its_floor_and_can_be_retargeted():
    schedule = WarmupCosine(peak=1.0, total_steps=110, warmup_steps=10)
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == pytest.approx(0.01)
    assert lr(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.02 + 0.98 * 0.5)
    assert lr(110) == pytest.approx(0.02) and lr(500) == pytest.approx(0.02)
    schedule.retarget(210)  # a wall-time budget learns it has room for 100 more steps
    assert lr(110) == pytest.approx(0.02 + 0.98 * 0.5) and lr(210) == pytest.approx(0.02)


def test_the_moving_average_is_what_is_evaluated_and_kept_and_a_frozen_group_stays_bit_identical(
        tiny_config, bright_box_records):
    keras.utils.set_random_seed(0)
    model = build_model(tiny_config)
    images, targets = _batch(bright_box_records[:4], tiny_config)
    decay = 0.5
    trainer = Trainer(model, tiny_config, TrainOptions(epochs=3, ema_decay=decay, ema_ramp_steps=1e-6),
                      steps_per_epoch=1, groups=("backbone", "det_head", "neck"))
    kernel = next(v for v in trainer.variables if task_group_of(v.path) == "det_head")
    frozen_before = {v.path: v.numpy().copy() for v in model.weights if task_group_of(v.path) == "cls_head"}
    expected = kernel.numpy().copy()
    for _ in range(3):
        trainer.train_epoch(tf.data.Dataset.from_tensors((images, targets)), progress=False)
        expected = decay * expected + (1 - decay) * kernel.numpy()
    raw = kernel.numpy().copy()
    assert not np.allclose(raw, expected)
    with trainer.averaged_weights():
        np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(kernel.numpy(), raw)  # training goes on from the raw weights
    trainer.finish()
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-5, atol=1e-7)
    for v in model.weights:
        if v.path in frozen_before:
            np.testing.assert_array_equal(v.numpy(), frozen_before[v.path])


def test_a_deadline_ends_the_epoch_after_the_batch_in_flight(tiny_config, bright_box_records):
    model = build_model(tiny_config)
    images, targets = _batch(bright_box_records[:4], tiny_config)
    trainer = Trainer(model, tiny_config, TrainOptions(epochs=1), steps_per_epoch=5)
    result = trainer.train_epoch(tf.data.Dataset.from_tensors((images, targets)).repeat(5), progress=False,
                                 deadline=time.perf_counter())
    assert result["images"] == 4 and int(trainer.optimizer.iterations.numpy()) == 1


def test_an_iou_objectness_target_is_met_where_the_score_equals_the_boxs_overlap(tiny_config,
                                                                                 bright_box_records):
    model = build_model(tiny_config)
    images, targets = _batch(bright_box_records[:2], tiny_config)
    raw = model(images, training=False)
    key, anchors, stride = "det_s8", scale_anchors(tiny_config)[0], STRIDES[0]
    positive = targets[key][..., 4] > 0
    assert bool(tf.reduce_any(positive))
    overlap = matched_iou(decode_scale(raw[key], anchors, stride, tiny_config.centre_range), targets[key][..., :4])

    def objectness_loss(r, score):
        outputs = dict(raw)
        logit = tf.where(positive, tf.math.log(score / (1 - score)), raw[key][..., 4])
        outputs[key] = tf.concat([raw[key][..., :4], logit[..., None], raw[key][..., 5:]], axis=-1)
        return float(MultiTaskLoss(tiny_config, LossWeights(objectness_iou=r))(targets, outputs)["objectness"])

    at_overlap = tf.clip_by_value(overlap, 1e-4, 1 - 1e-4)
    at_one = tf.fill(tf.shape(overlap), 1 - 1e-4)
    assert objectness_loss(1.0, at_overlap) < objectness_loss(1.0, at_one)
    assert objectness_loss(0.0, at_overlap) > objectness_loss(0.0, at_one)


def test_a_stride_two_stem_runs_nothing_at_full_resolution_and_keeps_the_heads(tiny_config):
    fast = tiny_config.with_overrides(stem_stride=2)
    model = build_model(fast)
    full_resolution = [layer.name for layer in model.layers[1:]
                       if len(layer.output.shape) == 4 and layer.output.shape[1] == fast.input_size]
    assert full_resolution == []
    reference = build_model(tiny_config)
    assert {k: v.shape for k, v in model.output.items()} == {k: v.shape for k, v in reference.output.items()}
    with pytest.raises(ValueError, match="stem_stride"):
        ModelConfig(stem_stride=4)
