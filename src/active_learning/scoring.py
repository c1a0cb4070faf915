"""Score a site's unlabeled pool with the current global model, batch by batch.

One forward pass per batch gives what the site's strategy needs, over the tasks
the site trains only (`SCORED_OUTPUTS`): the disaster head's probabilities (entropy,
margin), the decoded detections' confidences (detection uncertainty,
src/active_learning/selection.py) when the site trains the detector, the segmentation
head's per-pixel probabilities reduced to one mask uncertainty per image when it
trains masks, and a backbone embedding (global-average-pooled deepest backbone
feature) for diversity. A classification-only site thus never runs the neck, the
detection heads, the box decode or NMS, a mask-only site runs the backbone and the
segmentation head only, and the embeddings of already labeled images (`hybrid`) come
from the backbone alone.
Only these per-image numbers are kept (at most C + 2 + D floats per image), never the
images or the raw head outputs, so a pool of thousands fits easily; the
images stream through the core inference pipeline.

The compiled passes are built once per scorer, for any batch size, and read the model's
variables: each is traced once per process, not again for a new global model (weights
assigned in place) or a pool that shrank.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from src.active_learning.pool import TASKS
from src.active_learning.selection import detection_uncertainty, mask_uncertainty
from src.data.pipeline import inference_dataset
from src.evaluation import images_signature
from src.model.assembly import DETECTION_OUTPUTS, DISASTER_OUTPUT, SEGMENTATION_OUTPUT
from src.model.config import ModelConfig, task_group_of
from src.model.decode import detect

# The model outputs each task's scoring pass reads. "boxes" reads the disaster head too: a
# detector site's label step reports the disaster classes predicted for its picks, and `emh`
# bands its pool by their margins.
SCORED_OUTPUTS = {"boxes": DETECTION_OUTPUTS + (DISASTER_OUTPUT,), "class": (DISASTER_OUTPUT,),
                  "masks": (SEGMENTATION_OUTPUT,)}


@dataclass
class PoolScores:
    """Per pool image, in the order of `keys` (images that could not be decoded are left out).
    disaster_probs is None when the scorer does not run the disaster head (a mask-only site);
    task_uncertainty holds the model-side uncertainty of "boxes" and "masks" where scored."""

    keys: list
    disaster_probs: np.ndarray | None  # (N, C)
    embeddings: np.ndarray             # (N, D)
    task_uncertainty: dict = field(default_factory=dict)  # {task: (N,)}

    @property
    def detection_uncertainty(self) -> np.ndarray | None:
        return self.task_uncertainty.get("boxes")

    @property
    def mask_uncertainty(self) -> np.ndarray | None:
        return self.task_uncertainty.get("masks")


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


def image_region(batch: dict, size: int) -> np.ndarray:
    """(B, size, size) True on the pixels of a letterboxed batch that show its images, False in the bars."""
    scale, offset, image_hw = (batch[k].numpy() for k in ("scale", "offset", "image_hw"))
    inner_hw = np.round(image_hw * scale[:, None]).astype(np.int64)
    start = np.round(offset[:, ::-1]).astype(np.int64)  # (y, x)
    pixels = np.arange(size)
    rows = (pixels[None] >= start[:, :1]) & (pixels[None] < start[:, :1] + inner_hw[:, :1])
    cols = (pixels[None] >= start[:, 1:]) & (pixels[None] < start[:, 1:] + inner_hw[:, 1:])
    return rows[:, :, None] & cols[:, None, :]


def model_tasks(model: keras.Model) -> tuple[str, ...]:
    """The tasks whose every scored output `model` has (no "masks" without a segmentation head)."""
    return tuple(t for t in TASKS if all(name in model.output for name in SCORED_OUTPUTS[t]))


class PoolScorer:
    """Compiled forward passes over the outputs `tasks` need (weights shared, not copied).

    tasks: the labels the site trains ("boxes", "class", "masks"; default: every task the
    model has the heads of), each reading its SCORED_OUTPUTS: "boxes" adds the detection
    heads, decode and NMS, "masks" the segmentation head. The embedding is always computed
    (diversity reads it). background_class: the mask class that is no disaster region.
    `groups`: the task groups whose layers a scoring pass runs."""

    def __init__(self, model: keras.Model, config: ModelConfig, tasks=None, score_threshold: float = 0.01,
                 iou_threshold: float = 0.45, max_detections: int = 100, background_class: int = 0):
        available = model_tasks(model)
        tasks = available if tasks is None else tuple(tasks)
        unknown = sorted(set(tasks) - set(available))
        if unknown:
            raise ValueError(f"PoolScorer tasks {unknown}: the model scores {list(available)} (of {list(TASKS)})")
        self.model, self.config = model, config
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.background_class = int(background_class)
        embedding = keras.layers.GlobalAveragePooling2D(name="al_embedding")(deepest_backbone_feature(model))
        heads = {name: model.output[name] for task in self.tasks for name in SCORED_OUTPUTS[task]}
        scoring = keras.Model(model.inputs, {**heads, "embedding": embedding})  # only the layers these need
        self.groups = sorted({g for g in (_group(layer.name) for layer in scoring.layers) if g})
        embedding_only = keras.Model(model.inputs, embedding)

        def run(images):
            out = scoring(images, training=False)
            result = {"embedding": out["embedding"]}
            if DISASTER_OUTPUT in out:
                result["disaster_probs"] = out[DISASTER_OUTPUT]
            if "boxes" in self.tasks:
                detections = detect(out, config, score_threshold, iou_threshold, max_detections)
                result.update(scores=detections["scores"], num_detections=detections["num_detections"])
            if "masks" in self.tasks:
                result["mask_probs"] = tf.nn.softmax(out[SEGMENTATION_OUTPUT], axis=-1)
            return result
        signature = images_signature(model)
        self._run = tf.function(run, input_signature=signature)
        self._embed = tf.function(lambda images: embedding_only(images, training=False), input_signature=signature)

    def _batch_uncertainty(self, out: dict, batch: dict) -> dict:
        """{task: (B,)} model-side uncertainty of one batch's "boxes" and "masks"."""
        result = {}
        if "scores" in out:
            result["boxes"] = detection_uncertainty([s[:n] for s, n in zip(out["scores"], out["num_detections"])])
        if "mask_probs" in out:
            result["masks"] = mask_uncertainty(out["mask_probs"], image_region(batch, self.config.input_size),
                                               self.background_class)
        return result

    def score(self, keyed_records: dict, batch_size: int = 16, progress: bool = True) -> PoolScores:
        keys = list(keyed_records)
        records = [keyed_records[k] for k in keys]
        kept, probs, embeddings = [], [], []
        uncertainty = {t: [] for t in self.tasks if t != "class"}
        ds = inference_dataset(records, self.config, batch_size)
        for batch in tqdm(ds, desc="score pool", unit="batch", disable=not progress, leave=False):
            out = {k: t.numpy() for k, t in self._run(batch["images"]).items()}
            for task, values in self._batch_uncertainty(out, batch).items():
                uncertainty[task].append(values)
            if "disaster_probs" in out:
                probs.append(out["disaster_probs"])
            embeddings.append(out["embedding"])
            kept.extend(keys[i] for i in batch["index"].numpy())
        disaster_probs = None
        if any(DISASTER_OUTPUT in SCORED_OUTPUTS[t] for t in self.tasks):
            disaster_probs = np.concatenate(probs) if probs else np.zeros((0, self.config.num_disaster_classes))
        return PoolScores(kept, disaster_probs, np.concatenate(embeddings) if embeddings else np.zeros((0, 0)),
                          {t: np.concatenate(v) if v else np.zeros(0) for t, v in uncertainty.items()})

    def embed(self, records: list, batch_size: int = 16, progress: bool = True) -> np.ndarray:
        """(N, D) embeddings of the decodable `records`, through the backbone only."""
        out = [self._embed(batch["images"]).numpy()
               for batch in tqdm(inference_dataset(records, self.config, batch_size), desc="embed",
                                 unit="batch", disable=not progress, leave=False)]
        return np.concatenate(out) if out else np.zeros((0, 0))

    def tracing_count(self) -> int:
        """How many times the compiled passes were traced (at most once each)."""
        return sum(f.experimental_get_tracing_count() for f in (self._run, self._embed))
