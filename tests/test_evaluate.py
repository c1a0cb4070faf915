"""The evaluate command on a saved model: a sources.yaml of real formats, and a split folder."""
import json
from dataclasses import replace

import keras

from src.settings import load_config, model_config, parse_assignments
from src.cli.evaluate import main
from src.model import build_model
from src.model.config import CENTRE_RANGE_YOLOV3, record_decode
from tests.conftest import TINY_ANCHORS
from tests.real_formats import write_sources_spec

TINY = ["model.input_size=64", "model.width=0.125", "model.depth=[1, 1, 1, 1, 1]",
        f"model.anchors={TINY_ANCHORS}", "model.cls_head_blocks=1"]


def test_evaluate_writes_coco_metrics_and_a_confusion_matrix(tmp_path):
    spec = write_sources_spec(tmp_path / "data", coco_images=20, tsv_images=5)
    keras.utils.set_random_seed(0)
    model_path = tmp_path / "model.keras"
    build_model(model_config(load_config(overrides=parse_assignments(TINY)))).save(model_path)
    args = ["--model", str(model_path), "--sources", str(spec), "--out", str(tmp_path / "eval")]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 25 and metrics["detection_images"] == 20
    assert metrics["classification_images"] == 25 and len(metrics["confusion_matrix"]) == 5
    assert set(metrics["detection_per_class"]) == {"person"}
    assert metrics["detection_per_class"]["person"]["crowd_regions"] == 1
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0
    assert metrics["centre_range"] == 2.0  # nothing recorded: the settings' decoding


def test_evaluate_decodes_as_the_model_file_records(tmp_path):
    """A model whose file records YOLOv3 centres (as the Darknet converter writes it) is
    decoded with them, whatever the settings say."""
    spec = write_sources_spec(tmp_path / "data", coco_images=4, tsv_images=2)
    settings = load_config(overrides=parse_assignments(TINY))
    model_path = tmp_path / "model.keras"
    build_model(model_config(settings)).save(model_path)
    record_decode(model_path, replace(model_config(settings), centre_range=CENTRE_RANGE_YOLOV3,
                                      neighbour_cells=False))
    args = ["--model", str(model_path), "--sources", str(spec), "--out", str(tmp_path / "eval")]
    assert main(args + [a for item in TINY for a in ("--set", item)]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["centre_range"] == CENTRE_RANGE_YOLOV3


def test_evaluate_names_a_missing_model(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "none.keras"), "--out", str(tmp_path)]) == 2
    assert "none.keras: no such model file" in capsys.readouterr().err
