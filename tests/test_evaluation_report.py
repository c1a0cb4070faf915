"""score_predictions passes crowd regions through and reports per class; the confusion-matrix plot."""
from __future__ import annotations

import math

import numpy as np
import pytest

from src.data.records import Record
from src.evaluation import plot_confusion_matrix, score_predictions
from src.model.config import ModelConfig

CONFIG = ModelConfig(num_victim_classes=2, num_disaster_classes=3)
GT_BOX = [0.0, 0.0, 100.0, 100.0]
CROWD = [500.0, 0.0, 700.0, 200.0]


def prediction(boxes, scores, classes, disaster=0):
    probs = np.full(CONFIG.num_disaster_classes, 0.1, np.float32)
    probs[disaster] = 0.8
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "classes": np.asarray(classes, np.int32), "disaster_probs": probs}


def scene(with_crowd: bool):
    """Image 0: one class-0 box and a class-0 crowd region holding the
    top-scoring detection; image 1: class 1, a duplicate below its TP;
    image 2: classification only. Disaster classes true 0, 1, 2 / predicted 0, 2, 2."""
    crowd = dict(crowd_boxes=[CROWD], crowd_classes=[0]) if with_crowd else {}
    records = [
        Record("a.jpg", [GT_BOX], [0], disaster_class=0, has_boxes=True, has_class=True, **crowd),
        Record("b.jpg", [[10, 10, 60, 80]], [1], disaster_class=1, has_boxes=True, has_class=True),
        Record("c.jpg", disaster_class=2, has_class=True),
    ]
    predictions = [
        prediction([[520, 20, 600, 120], GT_BOX], [0.95, 0.9], [0, 0], disaster=0),
        prediction([[10, 10, 60, 80], [12, 10, 60, 80]], [0.9, 0.8], [1, 1], disaster=2),
        prediction(np.zeros((0, 4)), [], [], disaster=2),
    ]
    return predictions, records


def test_crowd_regions_of_records_reach_the_metric():
    # with the crowd the 0.95 detection is ignored: class 0 AP 1; without it
    # it is an FP above the TP: AP 0.5.
    with_crowd = score_predictions(*scene(True), CONFIG)
    without = score_predictions(*scene(False), CONFIG)
    assert with_crowd["per_class_ap50"] == pytest.approx([1.0, 1.0])
    assert without["per_class_ap50"] == pytest.approx([0.5, 1.0])
    assert with_crowd["map50"] == pytest.approx(1.0) and without["map50"] == pytest.approx(0.75)
    assert with_crowd["detection_per_class"]["0"]["crowd_regions"] == 1
    assert with_crowd["detection_images"] == 2 and with_crowd["classification_images"] == 3


def test_per_class_report_with_names():
    predictions, records = scene(True)
    # class "rescuer" gets no ground truth at all here -> NaN, left out of the mean
    records[1] = Record("b.jpg", [[10, 10, 60, 80]], [0], disaster_class=1, has_boxes=True, has_class=True)
    predictions[1]["classes"][:] = 0
    out = score_predictions(predictions, records, CONFIG, victim_class_names=["victim", "rescuer"],
                            disaster_class_names=("flood", "fire", "collapse"))
    per = out["detection_per_class"]
    assert list(per) == ["victim", "rescuer"]
    assert per["victim"]["ap50"] == pytest.approx(1.0) and per["victim"]["gt_boxes"] == 2
    assert math.isnan(per["rescuer"]["ap50"]) and math.isnan(per["rescuer"]["ap50_95"])
    assert math.isnan(out["per_class_ap50_95"][1]) and out["map50_95"] == pytest.approx(out["per_class_ap50_95"][0])
    assert out["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert out["confusion_matrix_labels"] == ["flood", "fire", "collapse"]
    assert out["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="victim class names"):
        score_predictions(predictions, records, CONFIG, victim_class_names=["victim"])


def test_plot_confusion_matrix_writes_png(tmp_path):
    names = ["flood", "fire", "earthquake collapse", "landslide", "no disaster"]
    matrix = np.array([[12, 1, 0, 0, 2], [0, 9, 1, 0, 0], [3, 0, 20, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 40]])
    path = plot_confusion_matrix(matrix, names, tmp_path / "sub" / "cm.png")
    data = path.read_bytes()
    assert path == tmp_path / "sub" / "cm.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError):
        plot_confusion_matrix(matrix, names[:3], tmp_path / "bad.png")


def test_simulate_curves_add_the_labeled_images_panel_only_with_active_learning(tmp_path):
    from PIL import Image

    from workspace.simulate.final_report import plot_curves

    def rounds(with_labels: bool):
        out = []
        for r in range(3):
            sites = {s: {"map50": 0.1 * r, "accuracy": 0.3 + 0.1 * r, "loss": 5.0 - r}
                     for s in ("site1", "site2")}
            if with_labels:
                for i, s in enumerate(sites):
                    sites[s]["al_labeled"] = 10 * (r + 1) + i
            out.append({"round": r, "score": 0.2 + 0.1 * r, "sites": sites})
        return out

    plain = plot_curves(rounds(False), tmp_path / "plain.png")
    with_al = plot_curves(rounds(True), tmp_path / "al.png")
    assert list(plain) == ["score", "mAP@0.5", "accuracy", "train loss"]
    assert list(with_al) == list(plain) + ["labeled images (all sites)"]
    assert with_al["labeled images (all sites)"] == [21, 41, 61]
    assert with_al["mAP@0.5"] == pytest.approx([0.0, 0.1, 0.2])
    assert Image.open(tmp_path / "al.png").size[0] > Image.open(tmp_path / "plain.png").size[0]
