"""Run the model over records and score it: mAP (COCO), accuracy, macro-F1, and mIoU when
the model segments.

Predictions are mapped back from the letterboxed model input to original
image pixels, so they compare with the records' boxes and masks as annotated.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from src import metrics
from src.data.formats.masks import mask_class_map, mask_in_image, read_mask
from src.data.pipeline import inference_dataset, inference_dataset_with_targets
from src.data.records import Record
from src.model.config import ModelConfig
from src.model.decode import detect
from src.model.det_head import ANCHORS_PER_SCALE
from src.model.loss import MultiTaskLoss
from src.segmentation_metrics import SegmentationScore

log = logging.getLogger(__name__)


def check_model_fits(model, config: ModelConfig, source: str = "the model") -> None:
    """Refuse a model whose input size or heads differ from what `config` describes (it was
    trained with other settings): found here, not as a shape error deep in a batch.
    source: how the message names the model (its file)."""
    found = {"input size": model.inputs[0].shape[1]}
    expected = {"input size": config.input_size}
    outputs = model.output if isinstance(model.output, dict) else {}
    for name, grid in zip(("det_s8", "det_s16", "det_s32"), config.grid_sizes):
        found[name] = tuple(outputs[name].shape[1:]) if name in outputs else None
        expected[name] = (grid, grid, ANCHORS_PER_SCALE, 5 + config.num_victim_classes)
    found["disaster classes"] = outputs["disaster"].shape[-1] if "disaster" in outputs else None
    expected["disaster classes"] = config.num_disaster_classes
    found["mask classes"] = outputs["segmentation"].shape[-1] if "segmentation" in outputs else None
    expected["mask classes"] = config.num_mask_classes or None
    differ = [f"{key} {found[key]} (settings: {expected[key]})" for key in expected if found[key] != expected[key]]
    if differ:
        raise ValueError(f"{source} does not fit the settings: {'; '.join(differ)}; pass the settings it "
                         "was trained with (--config, --set model.*, the class lists)")


def images_signature(model) -> list:
    """The input signature of a compiled pass over batches of `model`'s images, any batch size:
    traced once per process, not again for a short last batch or a new global model's weights."""
    spec = model.inputs[0]
    return [tf.TensorSpec((None, *spec.shape[1:]), spec.dtype)]


class Predictor:
    """A compiled forward + decode + NMS for one model (traced once: `images_signature`)."""

    def __init__(self, model, config: ModelConfig, score_threshold: float = 0.01,
                 iou_threshold: float = 0.45, max_detections: int = 100):
        check_model_fits(model, config)
        self.model = model
        self.config = config

        self._detect = lambda outputs: with_mask(detect(outputs, config, score_threshold, iou_threshold,
                                                        max_detections), outputs)
        self._run = tf.function(lambda images: self._detect(model(images, training=False)),
                                input_signature=images_signature(model))
        self._run_with_loss = None  # (loss, compiled forward + decode + loss), built on first use

    def tracing_count(self) -> int:
        """How many times the compiled prediction pass was traced (once, on first use)."""
        return self._run.experimental_get_tracing_count()

    def predict(self, records: list[Record], batch_size: int = 16, progress: bool = False):
        """Per record: dict boxes (K, 4) original px, scores, classes, disaster_probs.

        None for a record whose image could not be read or decoded (the
        pipeline drops it, see src.data.pipeline): logged with the file names
        and left out of the scores, rather than ending a validation round.
        """
        return self._predict(records, batch_size, progress)[0]

    def predict_with_loss(self, records: list[Record], loss: MultiTaskLoss, batch_size: int = 16,
                          progress: bool = False):
        """`predict`'s results and the mean of `loss` over the records (un-augmented: a
        smooth 'did it learn' signal), from the same forward pass: taken apart, the loss's
        pass cost more than the prediction's (9.7 s vs 7.3 s for 450 images at 256 px)."""
        if self._run_with_loss is None or self._run_with_loss[0] is not loss:
            def run(images, targets):
                outputs = self.model(images, training=False)
                return self._detect(outputs), loss(targets, outputs)["loss"]
            self._run_with_loss = (loss, tf.function(run, reduce_retracing=True))
        return self._predict(records, batch_size, progress, self._run_with_loss[1])

    def _predict(self, records, batch_size, progress, run_with_loss=None):
        """(results, mean loss or None): one loop over the records for both methods."""
        if not records:  # a site without validation images: nothing to run (an empty dataset has no dtype)
            return [], (None if run_with_loss is None else float("nan"))
        results = [None] * len(records)
        ds = (inference_dataset(records, self.config, batch_size) if run_with_loss is None
              else inference_dataset_with_targets(records, self.config, batch_size))
        total_loss, count = 0.0, 0
        for item in tqdm(ds, desc="predict", unit="batch", disable=not progress, leave=False):
            if run_with_loss is None:
                batch, out = item, self._run(item["images"])
            else:
                batch, targets = item
                out, batch_loss = run_with_loss(batch["images"], targets)
                total_loss += float(batch_loss) * int(batch["images"].shape[0])
                count += int(batch["images"].shape[0])
            out = {k: v.numpy() for k, v in out.items()}
            scale = batch["scale"].numpy()
            offset = batch["offset"].numpy()
            for i, index in enumerate(batch["index"].numpy()):
                k = int(out["num_detections"][i])
                boxes = (out["boxes"][i, :k] - np.tile(offset[i], 2)) / scale[i]
                results[index] = {"boxes": boxes.astype(np.float32),
                                  "scores": out["scores"][i, :k].astype(np.float32),
                                  "classes": out["classes"][i, :k].astype(np.int32),
                                  "disaster_probs": out["disaster_probs"][i]}
                if "mask" in out:
                    results[index]["mask"] = mask_in_image(out["mask"][i], batch["image_hw"][i].numpy(),
                                                           scale[i], offset[i])
        unreadable = [r.image_path for r, p in zip(records, results) if p is None]
        if unreadable:
            log.warning("%d of %d image(s) could not be read or decoded, left out of the scores: %s",
                        len(unreadable), len(records), unreadable[:10])
        return results, (total_loss / max(count, 1) if run_with_loss is not None else None)


def with_mask(decoded: dict, outputs: dict) -> dict:
    """The decoded detections plus, for a segmenting model, `mask`: each pixel's most likely
    class (B, size, size) uint8 at the letterboxed input."""
    if "segmentation" not in outputs:
        return decoded
    return {**decoded, "mask": tf.cast(tf.argmax(outputs["segmentation"], axis=-1), tf.uint8)}


def segmentation_result(pairs, num_classes: int, class_names) -> dict:
    """miou, per_class_iou (by class name), pixel_accuracy over (prediction, record) pairs, the truth
    read from each record's mask (values are class indices, checked when the records loaded)."""
    lookup = mask_class_map(class_names)
    score = SegmentationScore(num_classes)
    for prediction, record in pairs:
        truth = read_mask(record.mask_path, lookup)
        score.update(truth, prediction["mask"])
    report = score.report(class_names)
    return {"segmentation_images": len(pairs), "miou": report["miou"], "per_class_iou": report["per_class_iou"],
            "pixel_accuracy": report["pixel_accuracy"]}


def _class_names(names, count: int, what: str) -> list[str]:
    """The given names as strings, or "0", "1", ... when None."""
    if names is None:
        return [str(i) for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"{len(names)} {what} class names for {count} classes")
    return names


def score_predictions(predictions, records: list[Record], config: ModelConfig,
                      victim_class_names=None, disaster_class_names=None, image_ids=None,
                      mask_class_names=None) -> dict:
    """Detection metrics over records with boxes, classification over records with a class.

    Detection is COCOeval's bbox mAP (area "all", 100 detections per image and
    class) including each record's crowd regions, which are neither positives
    nor a source of false positives. Per victim class: ``per_class_ap50`` /
    ``per_class_ap50_95`` lists (NaN for a class without a real box) and
    ``detection_per_class`` keyed by class name (``victim_class_names``, else
    "0", "1", ...). Classification: accuracy, macro-F1 and the confusion
    matrix (rows truth, columns prediction; ``confusion_matrix_labels`` names
    them after ``disaster_class_names``, else "0", "1", ...). A prediction of
    None (the image could not be decoded) is left out of both and counted in
    ``unreadable_images``. ``image_ids`` (one per record, e.g. COCO image ids)
    rank tied detection scores across images as COCOeval does on those ids;
    without them the records' order ranks them. A segmenting model's masks score over the
    records with a mask: ``miou`` and ``per_class_iou`` (by ``mask_class_names``, else "0",
    "1", ...; None for a class neither truth nor prediction shows), from one confusion
    matrix over their pixels at the original image size (src/segmentation_metrics.py).
    """
    victim_names = _class_names(victim_class_names, config.num_victim_classes, "victim")
    disaster_names = _class_names(disaster_class_names, config.num_disaster_classes, "disaster")
    ids = [None] * len(records) if image_ids is None else list(image_ids)
    if len(ids) != len(records):
        raise ValueError(f"{len(ids)} image ids for {len(records)} records")
    det = [(p, r, i) for p, r, i in zip(predictions, records, ids) if r.has_boxes and p is not None]
    cls = [(p, r) for p, r in zip(predictions, records) if r.has_class and p is not None]
    result = {"images": len(records), "detection_images": len(det),
              "classification_images": len(cls)}
    unreadable = sum(p is None for p in predictions)
    if unreadable:  # see Predictor.predict
        result["unreadable_images"] = unreadable
    if det:
        ground_truth = [{"boxes": r.boxes, "classes": r.victim_classes,
                         "crowd_boxes": r.crowd_boxes, "crowd_classes": r.crowd_classes} for _, r, _ in det]
        m = metrics.detection_map([p for p, _, _ in det], ground_truth, config.num_victim_classes,
                                  max_detections=100,
                                  image_ids=None if image_ids is None else [i for _, _, i in det])
        ap50 = [float(x) for x in m["per_class_ap50"]]
        ap50_95 = [float(x) for x in m["per_class_ap"]]
        result.update(
            map50=float(m["map50"]), map50_95=float(m["map50_95"]),
            per_class_ap50=ap50, per_class_ap50_95=ap50_95,
            detection_per_class={
                name: {"ap50": ap50[c], "ap50_95": ap50_95[c], "gt_boxes": int(m["num_gt"][c]),
                       "crowd_regions": int(m["num_crowd"][c])}
                for c, name in enumerate(victim_names)})
    seg = [(p, r) for p, r in zip(predictions, records) if r.has_mask and p is not None and "mask" in p]
    if seg and config.num_mask_classes:
        mask_names = _class_names(mask_class_names, config.num_mask_classes, "mask")
        result.update(segmentation_result(seg, config.num_mask_classes, mask_names))
    if cls:
        y_true = np.array([r.disaster_class for _, r in cls])
        y_pred = np.array([int(np.argmax(p["disaster_probs"])) for p, _ in cls])
        result.update(
            accuracy=float(metrics.accuracy(y_true, y_pred)),
            macro_f1=float(metrics.macro_f1(y_true, y_pred, config.num_disaster_classes)),
            confusion_matrix=metrics.confusion_matrix(
                y_true, y_pred, config.num_disaster_classes).tolist(),
            confusion_matrix_labels=disaster_names)
    return result


def plot_confusion_matrix(matrix, class_names, path, title: str | None = None):
    """Save a confusion matrix (rows truth, columns prediction) as a PNG.

    Cells show the counts and each row's percentage; colours are row-normalised
    (recall per true class), so a rare class reads as clearly as a common one.
    Uses matplotlib's Agg canvas directly: no pyplot, no global backend switch.
    Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, np.int64)
    names = [str(n) for n in class_names]
    n = len(names)
    if counts.shape != (n, n):
        raise ValueError(f"matrix of shape {counts.shape} for {n} class names")
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)

    side = min(max(4.5, 0.9 * n + 2.5), 24.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of the true class")
    font = max(7, min(11, 100 // max(n, 1)))
    for i in range(n):
        for j in range(n):
            text = f"{counts[i, j]}\n{100 * share[i, j]:.0f}%" if totals[i, 0] else "0"
            ax.text(j, i, text, ha="center", va="center", fontsize=font,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=font + 1)
    ax.set_yticks(range(n), [f"{name} ({totals[i, 0]})" for i, name in enumerate(names)], fontsize=font + 1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    total = int(counts.sum())
    correct = int(np.trace(counts))
    ax.set_title(title or f"confusion matrix: {correct}/{total} correct"
                 + (f" ({100 * correct / total:.1f}%)" if total else ""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.1)
    return path


def evaluate(model, records: list[Record], config: ModelConfig, batch_size: int = 16,
             progress: bool = False) -> dict:
    predictions = Predictor(model, config).predict(records, batch_size, progress)
    return score_predictions(predictions, records, config)
