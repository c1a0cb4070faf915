"""Score a site's unlabeled pool with the current global model, batch by batch.

One forward pass per batch gives what the site's strategy needs, over the tasks
the site trains only: the disaster head's probabilities (entropy, margin), the
decoded detections' confidences (detection uncertainty, src/active_learning/selection.py)
when the site trains the detector, and a backbone embedding (global-average-pooled
deepest backbone feature) for diversity. A classification-only site thus never runs
the neck, the detection heads, the box decode or NMS, and the embeddings of already
labeled images (`hybrid`) come from the backbone alone.
Only these per-image numbers are kept (C + 1 + D floats per image), never the
images or the raw head outputs, so a pool of thousands fits easily; the
images stream through the core inference pipeline.

The compiled passes are built once per scorer, for any batch size, and read the model's
variables: each is traced once per process, not again for a new global model (weights
assigned in place) or a pool that shrank.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from src.active_learning.pool import TASKS
from src.active_learning.selection import detection_uncertainty
from src.data.pipeline import inference_dataset
from src.evaluation import images_signature
from src.model.assembly import DETECTION_OUTPUTS, DISASTER_OUTPUT
from src.model.config import ModelConfig, task_group_of
from src.model.decode import detect


@dataclass
class PoolScores:
    """Per pool image, in the order of `keys` (images that could not be decoded are left out).
    detection_uncertainty is None when the scorer does not score boxes (a class-only site)."""

    keys: list
    disaster_probs: np.ndarray       # (N, C)
    detection_uncertainty: np.ndarray | None  # (N,)
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
    """Compiled forward passes over the outputs `tasks` need (weights shared, not copied).

    tasks: the labels the site trains ("boxes", "class"): "boxes" adds the detection
    heads, decode and NMS; the disaster probabilities and the embedding are always
    computed (the chosen batch's predicted-class histogram and diversity read them).
    `groups`: the task groups whose layers a scoring pass runs."""

    def __init__(self, model: keras.Model, config: ModelConfig, tasks=TASKS, score_threshold: float = 0.01,
                 iou_threshold: float = 0.45, max_detections: int = 100):
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"PoolScorer tasks {unknown}: known {list(TASKS)}")
        self.model, self.config = model, config
        self.tasks = tuple(t for t in TASKS if t in tasks)
        embedding = keras.layers.GlobalAveragePooling2D(name="al_embedding")(deepest_backbone_feature(model))
        heads = {"disaster": model.output[DISASTER_OUTPUT], "embedding": embedding}
        if "boxes" in self.tasks:
            heads.update({name: model.output[name] for name in DETECTION_OUTPUTS})
        scoring = keras.Model(model.inputs, heads)  # only the layers these outputs depend on
        self.groups = sorted({g for g in (_group(layer.name) for layer in scoring.layers) if g})
        embedding_only = keras.Model(model.inputs, embedding)
        boxes = "boxes" in self.tasks

        def run(images):
            out = scoring(images, training=False)
            if not boxes:
                return {"disaster_probs": out["disaster"], "embedding": out["embedding"]}
            detections = detect(out, config, score_threshold, iou_threshold, max_detections)
            return {"disaster_probs": out["disaster"], "embedding": out["embedding"],
                    "scores": detections["scores"], "num_detections": detections["num_detections"]}
        signature = images_signature(model)
        self._run = tf.function(run, input_signature=signature)
        self._embed = tf.function(lambda images: embedding_only(images, training=False), input_signature=signature)

    def score(self, keyed_records: dict, batch_size: int = 16, progress: bool = True) -> PoolScores:
        keys = list(keyed_records)
        records = [keyed_records[k] for k in keys]
        kept, probs, det_u, embeddings = [], [], [], []
        ds = inference_dataset(records, self.config, batch_size)
        for batch in tqdm(ds, desc="score pool", unit="batch", disable=not progress, leave=False):
            out = {k: t.numpy() for k, t in self._run(batch["images"]).items()}
            if "scores" in out:
                det_u.append(detection_uncertainty([s[:n] for s, n in zip(out["scores"], out["num_detections"])]))
            probs.append(out["disaster_probs"])
            embeddings.append(out["embedding"])
            kept.extend(keys[i] for i in batch["index"].numpy())
        classes = self.config.num_disaster_classes
        uncertainty = None
        if "boxes" in self.tasks:
            uncertainty = np.concatenate(det_u) if det_u else np.zeros(0)
        return PoolScores(kept, np.concatenate(probs) if probs else np.zeros((0, classes)), uncertainty,
                          np.concatenate(embeddings) if embeddings else np.zeros((0, 0)))

    def embed(self, records: list, batch_size: int = 16, progress: bool = True) -> np.ndarray:
        """(N, D) embeddings of the decodable `records`, through the backbone only."""
        out = [self._embed(batch["images"]).numpy()
               for batch in tqdm(inference_dataset(records, self.config, batch_size), desc="embed",
                                 unit="batch", disable=not progress, leave=False)]
        return np.concatenate(out) if out else np.zeros((0, 0))

    def tracing_count(self) -> int:
        """How many times the compiled passes were traced (at most once each)."""
        return sum(f.experimental_get_tracing_count() for f in (self._run, self._embed))
