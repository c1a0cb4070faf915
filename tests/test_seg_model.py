"""The segmentation head: built only when the settings ask for it, in its own task group, and
a model without it is the two-task model weight for weight."""
import numpy as np
import pytest

from src.model import build_model
from src.model.config import task_group_of
from src.settings import load_config, model_config


def test_the_head_exists_only_when_asked_and_its_weights_are_seg_head(tiny_config):
    assert model_config(load_config()).num_mask_classes == 0
    assert model_config(load_config(overrides={"model.segmentation": True})).num_mask_classes == 4
    with pytest.raises(ValueError, match="classes.mask"):
        model_config(load_config(overrides={"model.segmentation": True, "classes.mask": []}))

    plain = build_model(tiny_config)
    segmenting = build_model(tiny_config.with_overrides(num_mask_classes=4))
    assert "segmentation" not in plain.output
    assert not [v.path for v in plain.weights if task_group_of(v.path) == "seg_head"]
    # the head adds layers, all named seg_head_*, and changes none of the others
    added = {layer.name for layer in segmenting.layers} - {layer.name for layer in plain.layers}
    assert added and all(name.startswith("seg_head_") for name in added)
    shared = [v.path for v in segmenting.weights if task_group_of(v.path) != "seg_head"]
    assert shared == [v.path for v in plain.weights]
    assert {task_group_of(v.path) for v in segmenting.weights} - {task_group_of(v.path) for v in plain.weights} \
        == {"seg_head"}
    logits = segmenting(np.zeros((2, 64, 64, 3), np.float32))["segmentation"]
    assert logits.shape == (2, 64, 64, 4)
