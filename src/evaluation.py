"""Run the model over records and score it: mAP (COCO), accuracy, macro-F1.

Predictions are mapped back from the letterboxed model input to original
image pixels, so they compare with the records' boxes as annotated.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from src import metrics
from src.data.pipeline import inference_dataset, validation_dataset
from src.data.records import Record
from src.model.config import ModelConfig
from src.model.decode import detect
from src.model.loss import LossWeights, MultiTaskLoss


class Predictor:
    """A compiled forward + decode + NMS for one model."""

    def __init__(self, model, config: ModelConfig, score_threshold: float = 0.01,
                 iou_threshold: float = 0.45, max_detections: int = 100):
        self.model = model
        self.config = config

        def run(images):
            return detect(model(images, training=False), config, score_threshold,
                          iou_threshold, max_detections)
        self._run = tf.function(run, reduce_retracing=True)

    def predict(self, records: list[Record], batch_size: int = 16, progress: bool = False):
        """Per record: dict boxes (K, 4) original px, scores, classes, disaster_probs."""
        results = []
        ds = inference_dataset(records, self.config, batch_size)
        for batch in tqdm(ds, desc="predict", unit="batch", disable=not progress, leave=False):
            out = {k: v.numpy() for k, v in self._run(batch["images"]).items()}
            scale = batch["scale"].numpy()
            offset = batch["offset"].numpy()
            for i in range(len(scale)):
                k = int(out["num_detections"][i])
                boxes = (out["boxes"][i, :k] - np.tile(offset[i], 2)) / scale[i]
                results.append({"boxes": boxes.astype(np.float32),
                                "scores": out["scores"][i, :k].astype(np.float32),
                                "classes": out["classes"][i, :k].astype(np.int32),
                                "disaster_probs": out["disaster_probs"][i]})
        return results


def score_predictions(predictions, records: list[Record], config: ModelConfig) -> dict:
    """Detection metrics over records with boxes, classification over records with a class."""
    det = [(p, r) for p, r in zip(predictions, records) if r.has_boxes]
    cls = [(p, r) for p, r in zip(predictions, records) if r.has_class]
    result = {"images": len(records), "detection_images": len(det),
              "classification_images": len(cls)}
    if det:
        m = metrics.detection_map([p for p, _ in det], [(r.boxes, r.victim_classes) for _, r in det],
                                  config.num_victim_classes, max_detections=100)
        result.update(map50=float(m["map50"]), map50_95=float(m["map50_95"]),
                      per_class_ap50=[float(x) for x in m["per_class_ap50"]])
    if cls:
        y_true = np.array([r.disaster_class for _, r in cls])
        y_pred = np.array([int(np.argmax(p["disaster_probs"])) for p, _ in cls])
        result.update(
            accuracy=float(metrics.accuracy(y_true, y_pred)),
            macro_f1=float(metrics.macro_f1(y_true, y_pred, config.num_disaster_classes)),
            confusion_matrix=metrics.confusion_matrix(
                y_true, y_pred, config.num_disaster_classes).tolist())
    return result


def evaluate(model, records: list[Record], config: ModelConfig, batch_size: int = 16,
             progress: bool = False) -> dict:
    predictions = Predictor(model, config).predict(records, batch_size, progress)
    return score_predictions(predictions, records, config)


def mean_loss(model, records: list[Record], config: ModelConfig, loss_weights=None,
              batch_size: int = 16) -> float:
    """Multi-task loss on un-augmented records (a smooth 'did it learn' signal)."""
    loss = MultiTaskLoss(config, loss_weights or LossWeights())
    total, count = 0.0, 0
    for images, targets in validation_dataset(records, config, batch_size):
        n = int(images.shape[0])
        total += float(loss(targets, model(images, training=False))["loss"]) * n
        count += n
    return total / max(count, 1)
