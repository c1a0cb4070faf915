"""The multi-task training loop, framework-free (no OpenFL): one loop for the
centralized trainer and the federated task runner.

A custom step (GradientTape) rather than `model.fit`, because the loss needs
targets the Keras compile API cannot route (ground-truth boxes for the ignore
mask, per-sample label masks), and because the federation will need to train
only some task groups.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from src.model.config import ModelConfig, task_group_of
from src.model.loss import LossWeights, MultiTaskLoss
from src.task_groups import model_for_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 10
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    clip_norm: float = 10.0
    loss_weights: LossWeights = field(default_factory=LossWeights)
    logit_adjustment: bool = False  # disaster loss adjusted by the trainer's class prior (see MultiTaskLoss)
    # Exponential moving average of the weights (0 = off): evaluated and saved instead of the
    # last step's weights, which a short schedule leaves noisy. The decay ramps up as
    # ema_decay * (1 - exp(-updates / ema_ramp_steps)), so early weights are soon forgotten.
    ema_decay: float = 0.0
    ema_ramp_steps: float = 200.0


def train_options(cfg: dict) -> TrainOptions:
    """TrainOptions from the settings' `training` section."""
    t = dict(cfg["training"])
    t["loss_weights"] = LossWeights(**t.get("loss_weights", {}))
    return TrainOptions(**t)


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 1 % of the peak, then cosine decay to 2 % of it at `total_steps`.

    The total is a variable, so a run with a wall-time budget rather than an epoch count
    can retarget the decay once it knows its step rate (`retarget`)."""

    FLOOR = 0.02

    def __init__(self, peak: float, total_steps: int, warmup_steps: int):
        self.peak = float(peak)
        self.warmup_steps = float(warmup_steps)
        self.total_steps = tf.Variable(float(max(1, total_steps)), trainable=False, name="lr_total_steps")

    def retarget(self, total_steps: float) -> None:
        self.total_steps.assign(float(max(total_steps, self.warmup_steps + 1)))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.maximum(self.warmup_steps, 1.0)
        rising = self.peak * (0.01 + 0.99 * step / warmup)
        progress = tf.clip_by_value((step - self.warmup_steps)
                                    / tf.maximum(self.total_steps - self.warmup_steps, 1.0), 0.0, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
        decaying = self.peak * (self.FLOOR + (1.0 - self.FLOOR) * cosine)
        return tf.where(step < self.warmup_steps, rising, decaying)

    def get_config(self):
        return {"peak": self.peak, "total_steps": float(self.total_steps.numpy()),
                "warmup_steps": self.warmup_steps}


def learning_rate_schedule(options: TrainOptions, steps_per_epoch: int) -> WarmupCosine:
    """Warmup for `warmup_epochs`, then cosine decay to the end of `epochs`."""
    total = max(1, options.epochs * steps_per_epoch)
    return WarmupCosine(options.learning_rate, total, min(total - 1, int(options.warmup_epochs * steps_per_epoch)))


def make_optimizer(options: TrainOptions, schedule: WarmupCosine) -> keras.optimizers.Optimizer:
    """AdamW (Keras 3; replaces tfa.optimizers.AdamW) on `schedule`."""
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=options.weight_decay,
                                  global_clipnorm=options.clip_norm)


def class_prior(records, num_classes: int, smoothing: float = 1.0) -> np.ndarray:
    """Disaster-class frequencies of the labeled records (add-`smoothing` counts, so none is 0)."""
    counts = np.full(num_classes, smoothing, np.float64)
    for r in records:
        if r.has_class:
            counts[r.disaster_class] += 1
    return counts / counts.sum()


def train_only_groups(model: keras.Model, groups) -> list:
    """Freeze every layer outside `groups`; return the variables left to train (all when None).

    A frozen layer gets no gradient and no optimizer slot (so no weight-decay
    drift), and its batch norm runs in inference mode (Keras 3 skips the
    moving-statistics update of a non-trainable BatchNormalization), so a
    group a site cannot train is bit-identical after its training.
    """
    groups = None if groups is None else set(groups)
    for layer in model.layers:
        if layer.weights:
            layer.trainable = groups is None or task_group_of(layer.name) in groups
    return list(model.trainable_variables)


class Trainer:
    """Owns the loss, the optimizer and a compiled train step for one model."""

    def __init__(self, model: keras.Model, config: ModelConfig, options: TrainOptions,
                 steps_per_epoch: int, groups=None, disaster_prior=None):
        """groups: the task groups to train (the rest frozen, see `train_only_groups`); all when None.
        Only the outputs whose losses reach `groups` are computed (`outputs_for_groups`):
        a classification-only site runs backbone up to the disaster head, not the
        detector. `reached` names every weight that step touches.
        disaster_prior: class frequencies of the training data, used when
        options.logit_adjustment is on (see `class_prior`)."""
        self.model = model
        self.config = config
        self.options = options
        prior = disaster_prior if options.logit_adjustment else None
        self.loss = MultiTaskLoss(config, options.loss_weights, prior)
        self.schedule = learning_rate_schedule(options, steps_per_epoch)
        self.optimizer = make_optimizer(options, self.schedule)
        self.train_model = model_for_groups(model, groups)
        self.reached = frozenset(v.path for v in self.train_model.weights)
        self.variables = [v for v in train_only_groups(model, groups) if v.path in self.reached]
        self.optimizer.build(self.variables)
        self.ema = WeightAverage(model, self.variables, options) if options.ema_decay else None
        self._step = tf.function(self._train_step, reduce_retracing=True)

    def _train_step(self, images, targets):
        with tf.GradientTape() as tape:
            outputs = self.train_model(images, training=True)
            losses = self.loss(targets, outputs)
        grads = tape.gradient(losses["loss"], self.variables)
        # A rare non-finite gradient must not poison the weights: skip that
        # step (counted in the epoch summary) instead of training on NaN.
        finite = tf.math.is_finite(tf.linalg.global_norm(grads))
        def apply():
            self.optimizer.apply_gradients(zip(grads, self.variables))
            if self.ema is not None:
                self.ema.update()
            return tf.constant(True)

        tf.cond(finite, apply, lambda: tf.constant(False))
        losses = dict(losses)
        losses["skipped_steps"] = 1.0 - tf.cast(finite, tf.float32)
        return losses

    def averaged_weights(self):
        """Context: the model holds the moving-average weights (when `ema_decay` is on)."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def finish(self) -> None:
        """End of training: the model keeps the moving-average weights (when `ema_decay` is on)."""
        if self.ema is not None:
            self.ema.copy_to_model()

    def train_epoch(self, dataset, epoch: int = 0, progress: bool = True, deadline: float | None = None) -> dict:
        """One pass over `dataset`, or until time.perf_counter() reaches `deadline`;
        returns mean losses and images/s."""
        totals, batches, images_seen = {}, 0, 0
        start = time.perf_counter()
        bar = tqdm(dataset, desc=f"epoch {epoch + 1}/{self.options.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for images, targets in bar:
            if deadline is not None and batches and time.perf_counter() >= deadline:
                break
            losses = self._step(images, targets)
            batches += 1
            images_seen += int(images.shape[0])
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{totals['loss'] / batches:.3f}")
        wall = time.perf_counter() - start
        if not batches:
            raise ValueError("train_epoch: the dataset yielded no batches")
        result = {k: v / batches for k, v in totals.items()}
        result["skipped_steps"] = int(round(totals["skipped_steps"]))
        if result["skipped_steps"]:
            log.warning("epoch %d: skipped %d steps with non-finite gradients",
                        epoch + 1, result["skipped_steps"])
        if not all(math.isfinite(v) for v in result.values()):
            raise FloatingPointError(f"non-finite training loss in epoch {epoch + 1}: {result}")
        result.update(images=images_seen, wall_s=wall, images_per_s=images_seen / wall)
        return result


class WeightAverage:
    """An exponential moving average of the trained variables and of their layers'
    batch-norm statistics (Polyak averaging, as YOLOv5's ModelEMA): the averaged model
    is evaluated and kept, the raw one keeps training."""

    def __init__(self, model: keras.Model, variables, options: TrainOptions):
        trained = {v.path for v in variables}
        statistics = [w for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
                      and any(v.path in trained for v in layer.trainable_weights)
                      for w in layer.non_trainable_weights]
        self.sources = list(variables) + statistics
        self.averages = [tf.Variable(v.value, trainable=False) for v in self.sources]
        self.decay = float(options.ema_decay)
        self.ramp = float(options.ema_ramp_steps)
        self.updates = tf.Variable(0.0, trainable=False)

    def update(self):
        """One step (inside the compiled train step)."""
        self.updates.assign_add(1.0)
        decay = self.decay * (1.0 - tf.exp(-self.updates / self.ramp))
        for average, source in zip(self.averages, self.sources):
            average.assign(decay * average + (1.0 - decay) * tf.cast(source.value, average.dtype))

    @contextlib.contextmanager
    def swapped_in(self):
        raw = [v.numpy() for v in self.sources]
        self.copy_to_model()
        try:
            yield
        finally:
            for source, value in zip(self.sources, raw):
                source.assign(value)

    def copy_to_model(self):
        for source, average in zip(self.sources, self.averages):
            source.assign(average.numpy())
