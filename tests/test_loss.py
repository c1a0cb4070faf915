"""Multi-task loss: masking by available labels, images without victims, and that it trains."""
import numpy as np
import pytest
import tensorflow as tf

from src.data.pipeline import PipelineOptions, training_dataset
from src.model import build_model, task_group_of
from src.model.loss import MultiTaskLoss
from src.training import TrainOptions, Trainer


def _batch(records, config):
    options = PipelineOptions(batch_size=len(records), flip=False, color_jitter=0, scale_jitter=None)
    return next(iter(training_dataset(records, config, options)))


def _grads_by_group(model, loss_fn, images, targets):
    with tf.GradientTape() as tape:
        losses = loss_fn(targets, model(images, training=True))
    grads = tape.gradient(losses["loss"], model.trainable_variables)
    norms = {}
    for v, g in zip(model.trainable_variables, grads):
        group = task_group_of(v.path)
        norms[group] = norms.get(group, 0.0) + (0.0 if g is None else float(tf.reduce_sum(tf.abs(g))))
    return losses, norms


def test_class_only_samples_give_zero_detection_gradient(tiny_config, bright_box_records):
    model = build_model(tiny_config)
    images, targets = _batch(bright_box_records[:4], tiny_config)
    targets = dict(targets, has_boxes=tf.zeros_like(targets["has_boxes"]))
    losses, norms = _grads_by_group(model, MultiTaskLoss(tiny_config), images, targets)
    assert float(losses["detection"]) == 0.0
    assert norms["det_head"] == 0.0 and norms["neck"] == 0.0
    assert norms["cls_head"] > 0.0 and norms["backbone"] > 0.0


def test_box_only_samples_give_zero_disaster_gradient(tiny_config, bright_box_records):
    model = build_model(tiny_config)
    images, targets = _batch(bright_box_records[:4], tiny_config)
    targets = dict(targets, has_class=tf.zeros_like(targets["has_class"]))
    losses, norms = _grads_by_group(model, MultiTaskLoss(tiny_config), images, targets)
    assert float(losses["disaster"]) == 0.0
    assert norms["cls_head"] == 0.0
    assert norms["det_head"] > 0.0


def test_image_without_victims_has_only_objectness_loss(tiny_config, bright_box_records):
    model = build_model(tiny_config)
    images, targets = _batch(bright_box_records[:2], tiny_config)
    empty = {k: (tf.zeros_like(v) if k.startswith("det_") else v) for k, v in targets.items()}
    empty["gt_boxes"] = tf.zeros_like(targets["gt_boxes"])
    losses = MultiTaskLoss(tiny_config)(empty, model(images, training=True))
    assert float(losses["box"]) == 0.0 and float(losses["victim_class"]) == 0.0
    assert np.isfinite(float(losses["objectness"])) and float(losses["objectness"]) > 0.0


def test_loss_drops_when_overfitting_a_small_batch(tiny_config, bright_box_records):
    model = build_model(tiny_config)
    images, targets = _batch(bright_box_records[:8], tiny_config)
    dataset = tf.data.Dataset.from_tensors((images, targets))
    trainer = Trainer(model, tiny_config, TrainOptions(epochs=60, learning_rate=3e-3, warmup_epochs=0),
                      steps_per_epoch=1)
    first = trainer.train_epoch(dataset, progress=False)
    for epoch in range(1, 60):
        last = trainer.train_epoch(dataset, epoch, progress=False)
    assert last["detection"] < 0.3 * first["detection"]
    assert last["disaster"] < 0.3 * first["disaster"]


def test_logit_adjustment_uses_the_prior_and_is_plain_cross_entropy_when_uniform(tiny_config):
    from src.model.loss import LossWeights

    probs = tf.constant([[0.2] * 5, [0.1, 0.6, 0.1, 0.1, 0.1]])
    outputs = {"disaster": probs}
    targets = {"disaster": tf.constant([0, 1]), "has_class": tf.constant([1.0, 1.0])}

    def disaster_loss(prior):
        return float(MultiTaskLoss(tiny_config, LossWeights(), prior).disaster_loss(targets, outputs))

    plain = disaster_loss(None)
    assert disaster_loss([1, 1, 1, 1, 1]) == pytest.approx(plain, rel=1e-5)
    # with the prior added, uniform scores already put 0.8 on the frequent class
    skewed = [0.8, 0.05, 0.05, 0.05, 0.05]
    single = {"disaster": tf.constant([0]), "has_class": tf.constant([1.0])}
    loss = MultiTaskLoss(tiny_config, LossWeights(), skewed)
    assert float(loss.disaster_loss(single, {"disaster": probs[:1]})) == pytest.approx(-np.log(0.8), rel=1e-4)
    with pytest.raises(ValueError, match="positive"):
        MultiTaskLoss(tiny_config, LossWeights(), [1, 0, 1, 1, 1])


def test_a_task_whose_outputs_are_absent_contributes_zero(tiny_config, bright_box_records):
    """A site computing only the disaster output (or only the detector) gets that task's
    loss unchanged and zero for the other."""
    model = build_model(tiny_config)
    images, targets = _batch(bright_box_records[:4], tiny_config)
    outputs = model(images, training=False)
    loss = MultiTaskLoss(tiny_config)
    full = loss(targets, outputs)
    disaster_only = loss(targets, {"disaster": outputs["disaster"]})
    detection_only = loss(targets, {k: v for k, v in outputs.items() if k != "disaster"})
    assert float(full["detection"]) > 0 and float(full["disaster"]) > 0
    assert float(disaster_only["detection"]) == 0.0
    assert float(disaster_only["disaster"]) == pytest.approx(float(full["disaster"]), rel=1e-6)
    assert float(detection_only["disaster"]) == 0.0
    assert float(detection_only["detection"]) == pytest.approx(float(full["detection"]), rel=1e-6)


def test_a_classification_only_trainer_runs_only_what_the_disaster_head_reads(tiny_config,
                                                                              bright_box_records):
    """Groups backbone + cls_head: the step runs images -> disaster head; neck, detection heads
    and the backbone's last stage (which only the detector reads) are neither run nor changed."""
    import keras

    model = build_model(tiny_config)
    images, targets = _batch(bright_box_records[:4], tiny_config)
    before = {v.path: v.numpy().copy() for v in model.weights}
    trainer = Trainer(model, tiny_config, TrainOptions(epochs=1), steps_per_epoch=2,
                      groups=("backbone", "cls_head"))
    to_disaster = {v.path for v in keras.Model(model.inputs, model.output["disaster"]).weights}
    assert trainer.reached == to_disaster and len(to_disaster) < len(model.weights)
    assert {v.path for v in trainer.variables} == {v.path for v in model.trainable_variables} & to_disaster
    result = trainer.train_epoch(tf.data.Dataset.from_tensors((images, targets)).repeat(2), progress=False)
    assert result["detection"] == 0.0 and result["disaster"] > 0.0
    changed = {v.path for v in model.weights if not np.array_equal(v.numpy(), before[v.path])}
    assert changed and changed <= to_disaster
    assert any(task_group_of(p) == "backbone" for p in changed)
