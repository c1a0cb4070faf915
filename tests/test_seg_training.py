"""The segmentation task in training and scoring: a mask-only site trains backbone + seg_head and
nothing else, the loss ignores images without masks, mIoU scores masks at their image's size, and
the centralized reference reports it."""
import json

import numpy as np
import pytest
import tensorflow as tf

from src.central import run
from src.evaluation import score_predictions
from src.model import build_model
from src.model.config import task_group_of
from src.model.loss import LossWeights, MultiTaskLoss
from src.settings import load_config, parse_assignments
from src.task_groups import group_sample_counts, model_groups
from src.training import TrainOptions, Trainer
from src.data.pipeline import PipelineOptions, training_dataset
from src.data.records import Record
from tests.test_seg_pipeline import write_square_images


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    return write_square_images(tmp_path_factory.mktemp("squares"), 8, seed=1)


def test_a_mask_only_trainer_leaves_the_other_heads_bit_identical(tiny_config, squares):
    config = tiny_config.with_overrides(num_mask_classes=4)
    model = build_model(config)
    mask_only = [Record(r.image_path, mask_path=r.mask_path, has_mask=True) for r in squares]
    groups = group_sample_counts(mask_only, groups=model_groups(model))
    assert groups == {"backbone": 8, "seg_head": 8}
    before = {v.path: v.numpy().copy() for v in model.weights}
    trainer = Trainer(model, config, TrainOptions(epochs=1, learning_rate=0.01, warmup_epochs=0),
                      steps_per_epoch=2, groups=list(groups))
    assert set(trainer.train_model.output) == {"segmentation"}
    losses = trainer.train_epoch(training_dataset(mask_only, config, PipelineOptions(batch_size=4)), progress=False)
    assert losses["segmentation"] > 0 and losses["detection"] == 0 and losses["disaster"] == 0
    changed = {task_group_of(v.path) for v in model.weights if not np.array_equal(v.numpy(), before[v.path])}
    assert changed == {"backbone", "seg_head"}
    untouched = [v for v in model.weights if task_group_of(v.path) in ("neck", "det_head", "cls_head")]
    assert untouched and all(np.array_equal(v.numpy(), before[v.path]) for v in untouched)
    # the last backbone stage feeds only the neck: a mask-only step never reaches it
    assert not trainer.reached & {v.path for v in model.weights if v.path.startswith("backbone_stage5")}


def test_the_segmentation_term_is_zero_without_masks_and_counts_in_the_total(tiny_config):
    config = tiny_config.with_overrides(num_mask_classes=4)
    rng = np.random.default_rng(0)
    model = build_model(config)
    outputs = model(rng.random((2, 64, 64, 3)).astype(np.float32))
    grids = {k: tf.zeros_like(outputs[k]) for k in ("det_s8", "det_s16", "det_s32")}
    targets = {**grids, "gt_boxes": tf.zeros((2, 1, 4)), "gt_classes": -tf.ones((2, 1), tf.int32),
               "has_boxes": tf.zeros(2), "disaster": tf.zeros(2, tf.int32), "has_class": tf.zeros(2),
               "segmentation": tf.constant(rng.integers(0, 4, (2, 64, 64)), tf.uint8)}
    loss = MultiTaskLoss(config, LossWeights(segmentation=2.0))
    without = loss({**targets, "has_mask": tf.zeros(2)}, outputs)
    assert float(without["segmentation"]) == 0.0 and float(without["loss"]) == 0.0
    with_masks = loss({**targets, "has_mask": tf.constant([0.0, 1.0])}, outputs)
    assert float(with_masks["segmentation"]) > 0
    assert float(with_masks["loss"]) == pytest.approx(2.0 * float(with_masks["segmentation"]))
    # a model (or a site's part of it) without the head: the term is there, and zero
    no_head = {k: v for k, v in outputs.items() if k != "segmentation"}
    assert float(loss({**targets, "has_mask": tf.ones(2)}, no_head)["segmentation"]) == 0.0


def test_miou_of_perfect_masks_is_one_over_the_records_with_masks(tiny_config, squares):
    from src.data.formats.masks import mask_class_map, read_mask
    config = tiny_config.with_overrides(num_mask_classes=4)
    lookup = mask_class_map([str(i) for i in range(4)])
    perfect = [{"boxes": r.boxes, "scores": np.ones(1), "classes": r.victim_classes,
                "disaster_probs": np.eye(5)[0], "mask": read_mask(r.mask_path, lookup)} for r in squares]
    wrong = dict(perfect[0], mask=np.full_like(perfect[0]["mask"], 3))
    unmasked = Record(squares[0].image_path, squares[0].boxes, squares[0].victim_classes, has_boxes=True)
    names = ["background", "water", "square", "rubble"]
    result = score_predictions(perfect + [wrong], squares + [unmasked], config, mask_class_names=names)
    assert result["segmentation_images"] == len(squares)
    assert result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0
    assert result["per_class_iou"] == {"background": 1.0, "water": None, "square": 1.0, "rubble": None}
    half = score_predictions([wrong], squares[:1], config)
    assert half["miou"] == 0.0 and set(half["per_class_iou"]) == {"0", "1", "2", "3"}
    assert "miou" not in score_predictions(perfect, squares, tiny_config)  # no head, no mIoU


def test_a_centralized_run_with_segmentation_writes_test_miou(tmp_path):
    cfg = load_config(overrides=parse_assignments([
        f"data.root={tmp_path / 'data'}", "data.num_images=20", "data.min_size=64", "data.max_size=96",
        "training.epochs=1", "model.input_size=64", "model.width=0.125", "model.depth=[1,1,1,1,1]",
        "model.segmentation=true", "pipeline.batch_size=8", "data.test_fraction=0.25", "data.val_fraction=0"]))
    result = run(cfg, tmp_path / "out", backbone_init="scratch")
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= written["test"]["miou"] <= 1.0
    assert set(written["test"]["per_class_iou"]) == {"background", "water", "fire_smoke", "rubble"}
    assert written["test"]["segmentation_images"] == written["images"]["test"] == 5
    assert written["labels"]["masks"] == written["images"]["train"]
    assert result["train_wall_s"] > 0 and result["history"][0]["train"]["segmentation"] > 0
