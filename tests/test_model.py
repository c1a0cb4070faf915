"""Model family: shapes, task-group names, save/load, the full-size YOLOv3 forward pass."""
import numpy as np
import pytest
import keras

from src.model import build_model, task_group_of, TASK_GROUPS
from src.model.config import ModelConfig, full_variant, model_task_groups, variant_config


@pytest.mark.parametrize("mask_classes", [0, 4])
def test_every_weight_has_a_task_group_and_a_unique_path(tiny_config, mask_classes):
    config = tiny_config.with_overrides(num_mask_classes=mask_classes)
    model = build_model(config)
    paths = [w.path for w in model.weights]
    assert len(paths) == len(set(paths))
    groups = {task_group_of(p) for p in paths}
    assert groups == set(model_task_groups(config)) == set(TASK_GROUPS) - ({"seg_head"} if not mask_classes else set())
    for layer in model.layers[1:]:
        assert task_group_of(layer.name) in TASK_GROUPS


def test_names_are_identical_across_builds(tiny_config):
    first = [w.path for w in build_model(tiny_config).weights]
    keras.backend.clear_session()
    build_model(ModelConfig(input_size=32, width=0.125, depth=(1, 1, 1, 1, 1)))  # shifts auto-numbering
    second = [w.path for w in build_model(tiny_config).weights]
    assert first == second


def test_task_group_of_rejects_unprefixed_names():
    with pytest.raises(ValueError, match="no task-group prefix"):
        task_group_of("conv2d_3/kernel")
    assert task_group_of("cls_head_probs/kernel") == "cls_head"
    assert task_group_of("det_head_s8_out/bias") == "det_head"


def test_output_shapes(tiny_config):
    model = build_model(tiny_config)
    out = model(np.zeros((2, 64, 64, 3), np.float32))
    assert out["det_s8"].shape == (2, 8, 8, 3, 6)
    assert out["det_s16"].shape == (2, 4, 4, 3, 6)
    assert out["det_s32"].shape == (2, 2, 2, 3, 6)
    assert out["disaster"].shape == (2, 5)
    np.testing.assert_allclose(np.sum(out["disaster"], axis=1), 1.0, rtol=1e-5)


def test_save_and_reload_keras_file(tiny_config, tmp_path):
    model = build_model(tiny_config)
    x = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    a, b = model(x), reloaded(x)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(input_size=100)
    with pytest.raises(ValueError, match="unknown model variant"):
        variant_config("huge")


def test_full_darknet53_yolov3_builds_at_416_and_runs_forward():
    keras.backend.clear_session()
    config = full_variant()
    model = build_model(config)
    counts = {}
    for w in model.weights:
        counts[task_group_of(w.path)] = counts.get(task_group_of(w.path), 0) + int(np.prod(w.shape))
    detector = counts["backbone"] + counts["neck"] + counts["det_head"]
    # YOLOv3 with 80 classes has ~62 M parameters; with 1 class the heads shrink by ~1.2 M.
    assert 60e6 < detector < 63e6
    out = model(np.zeros((1, 416, 416, 3), np.float32))
    assert out["det_s8"].shape == (1, 52, 52, 3, 6)
    assert out["det_s32"].shape == (1, 13, 13, 3, 6)
    assert out["disaster"].shape == (1, 5)
    keras.backend.clear_session()
