"""Score a site's unlabeled pool with the current global model, batch by batch.

One forward pass per batch gives what every strategy needs: the disaster
head's probabilities (entropy, margin), the decoded detections' confidences
(detection uncertainty, src/active_learning/selection.py) and a backbone
embedding (global-average-pooled deepest backbone feature) for diversity.
Only these per-image numbers are kept (C + 1 + D floats per image), never the
images or the raw head outputs, so a pool of thousands fits easily; the
images stream through the core inference pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from src.active_learning.selection import detection_uncertainty
from src.data.pipeline import inference_dataset
from src.model.config import ModelConfig, task_group_of
from src.model.decode import detect


@dataclass
class PoolScores:
    """Per pool image, in the order of `keys` (images that could not be decoded are left out)."""

    keys: list
    disaster_probs: np.ndarray       # (N, C)
    detection_uncertainty: np.ndarray  # (N,)
    embeddings: np.ndarray           # (N, D)


def deepest_backbone_feature(model: keras.Model):
    """The output of the model's last backbone layer (functional models list layers in graph order)."""
    backbone = [layer for layer in model.layers if _group(layer.name) == "backbone"]
    if not backbone:
        raise ValueError(f"{model.name}: no backbone layer to take embeddings from")
    return backbone[-1].output


def _group(name: str) -> str | None:
    try:
        return task_group_of(name)
    except ValueError:
        return None


class PoolScorer:
    """A compiled forward + decode + pooled embedding for one model (weights shared, not copied)."""

    def __init__(self, model: keras.Model, config: ModelConfig, score_threshold: float = 0.01,
                 iou_threshold: float = 0.45, max_detections: int = 100):
        pooled = keras.layers.GlobalAveragePooling2D(name="al_embedding")(deepest_backbone_feature(model))
        scoring = keras.Model(model.inputs, {**model.output, "embedding": pooled})
        self.config = config

        def run(images):
            out = scoring(images, training=False)
            detections = detect({k: v for k, v in out.items() if k != "embedding"}, config,
                                score_threshold, iou_threshold, max_detections)
            return detections["scores"], detections["num_detections"], detections["disaster_probs"], out["embedding"]
        self._run = tf.function(run, reduce_retracing=True)

    def score(self, keyed_records: dict, batch_size: int = 16, progress: bool = True) -> PoolScores:
        keys = list(keyed_records)
        records = [keyed_records[k] for k in keys]
        kept, probs, det_u, embeddings = [], [], [], []
        ds = inference_dataset(records, self.config, batch_size)
        for batch in tqdm(ds, desc="score pool", unit="batch", disable=not progress, leave=False):
            scores, counts, disaster, embedding = (t.numpy() for t in self._run(batch["images"]))
            det_u.append(detection_uncertainty([s[:n] for s, n in zip(scores, counts)]))
            probs.append(disaster)
            embeddings.append(embedding)
            kept.extend(keys[i] for i in batch["index"].numpy())
        classes = self.config.num_disaster_classes
        return PoolScores(kept, np.concatenate(probs) if probs else np.zeros((0, classes)),
                          np.concatenate(det_u) if det_u else np.zeros(0),
                          np.concatenate(embeddings) if embeddings else np.zeros((0, 0)))
