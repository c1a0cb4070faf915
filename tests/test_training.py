"""Training and evaluation, for real on small data: the model learns and is scored in image pixels."""
import copy
import json

import keras
import numpy as np
import pytest

from src.settings import load_config, parse_assignments
from src.data.pipeline import PipelineOptions, training_dataset
from src.evaluation import evaluate, score_predictions
from src.model import build_model
from src.central import run
from src.federated.checkpoint import load_keras_file
from src.training import TrainOptions, Trainer
from tests.file_faults import is_file_too_large, writes_fail_beyond


def test_detector_learns_bright_boxes_and_is_scored_in_original_pixels(tiny_default_assignment,
                                                                      bright_box_records):
    tiny_config = tiny_default_assignment
    keras.utils.set_random_seed(0)
    model = build_model(tiny_config)
    options = PipelineOptions(batch_size=8, color_jitter=0.0, scale_jitter=None, seed=0)
    dataset = training_dataset(bright_box_records, tiny_config, options)
    epochs = 80
    trainer = Trainer(model, tiny_config, TrainOptions(epochs=epochs, learning_rate=3e-3), steps_per_epoch=2)
    before = evaluate(model, bright_box_records, tiny_config)
    # all epochs in one pass over the repeated dataset: the same 160 steps and
    # schedule without starting a new input pipeline 80 times (~0.7 s each here)
    trainer.train_epoch(dataset.repeat(epochs), progress=False)
    after = evaluate(model, bright_box_records, tiny_config)
    # The records' boxes are in original-image pixels (48-80 px images, 64 px
    # model input): a high mAP means predictions were mapped back correctly.
    assert after["map50"] > 0.7 > before["map50"]
    assert after["accuracy"] >= 0.9


def test_score_predictions_of_perfect_predictions(tiny_config, bright_box_records):
    perfect = [{"boxes": r.boxes, "scores": np.ones(len(r.boxes)), "classes": r.victim_classes,
                "disaster_probs": np.eye(5)[r.disaster_class]} for r in bright_box_records]
    result = score_predictions(perfect, bright_box_records, tiny_config)
    assert result["map50"] == pytest.approx(1.0) and result["map50_95"] == pytest.approx(1.0)
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0
    assert np.trace(result["confusion_matrix"]) == len(bright_box_records)


def test_centralized_trainer_writes_metrics_and_a_reloadable_model(tmp_path):
    cfg = load_config(overrides=parse_assignments([
        f"data.root={tmp_path / 'data'}", "data.num_images=40", "training.epochs=1",
        "model.input_size=64", "model.width=0.125", "model.depth=[1,1,1,1,1]",
        "pipeline.batch_size=8", "data.test_fraction=0.25", "data.val_fraction=0.1"]))
    result = run(cfg, tmp_path / "out", backbone_init="scratch")
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("map50", "map50_95", "accuracy", "macro_f1"):
        assert 0.0 <= written["test"][key] <= 1.0
    assert written["epochs"] == 1 and written["seed"] == 0 and written["wall_s"] > 0
    assert written["images"] == {"train": 25, "val": 5, "test": 10}  # 8 per class: 2 test, 1 val
    reloaded = keras.models.load_model(tmp_path / "out" / "model.keras")
    x = np.zeros((1, 64, 64, 3), np.float32)
    assert reloaded(x)["disaster"].shape == (1, 5)
    assert result["test"] == written["test"]

    # A later run whose save fails partway (the disk refuses the rest of model.keras)
    # leaves this run's model.keras and metrics.json as they are, loadable.
    previous = (tmp_path / "out" / "model.keras").read_bytes()
    again = copy.deepcopy(cfg)
    again["seed"], again["training"]["epochs"] = 1, 0  # other weights, no training: just the save
    with writes_fail_beyond(len(previous) // 2), pytest.raises(OSError) as failed:
        run(again, tmp_path / "out", backbone_init="scratch")
    assert is_file_too_large(failed.value)
    assert (tmp_path / "out" / "model.keras").read_bytes() == previous, "overwritten in place: torn"
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == written
    kept = load_keras_file(tmp_path / "out" / "model.keras")
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(kept.weights, reloaded.weights))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "model.keras"]


@pytest.mark.slow
def test_pretrained_backbone_from_a_disjoint_slice_then_frozen_centralized_training(tmp_path):
    """make pretrain-backbone on its own synthetic slice, then train-central --backbone-mode frozen:
    the backbone stays the checkpoint bit for bit while the task parts train."""
    from src.model.config import task_group_of
    from src.central import pretrain

    tiny = ["model.input_size=64", "model.width=0.125", "model.depth=[1,1,1,1,1]", "pipeline.batch_size=8",
            "data.test_fraction=0.25", "data.val_fraction=0.1", "training.epochs=1"]
    cfg = load_config(overrides=parse_assignments(tiny + [
        f"data.root={tmp_path / 'sites'}", "data.num_images=40", f"pretrain.data_root={tmp_path / 'public'}",
        "pretrain.num_images=40", "pretrain.epochs=1", f"pretrain.checkpoint={tmp_path / 'backbone.npz'}"]))
    result = pretrain(cfg, tmp_path / "pretrain")
    checkpoint = np.load(result["checkpoint"])
    assert checkpoint.files and {task_group_of(n) for n in checkpoint.files} == {"backbone"}
    # the public slice has its own images (another generator seed), not the sites'
    run(cfg, tmp_path / "central", backbone_mode="frozen")
    public = sorted(p.read_bytes() for p in (tmp_path / "public" / "images").iterdir())[:5]
    sites = {p.read_bytes() for p in (tmp_path / "sites" / "images").iterdir()}
    assert not any(image in sites for image in public)

    model = keras.models.load_model(tmp_path / "central" / "model.keras")
    weights = {v.path: v.numpy() for v in model.weights}
    for name in checkpoint.files:
        np.testing.assert_array_equal(weights[name], checkpoint[name])
    written = json.loads((tmp_path / "central" / "metrics.json").read_text())
    assert written["backbone_mode"] == "frozen"
    assert written["backbone_checkpoint"] == str(tmp_path / "backbone.npz")
