"""Shared fixtures: quiet TF, a tiny model config, small labelled images on disk."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

from src.data.records import Record
from src.model.config import ModelConfig

TINY_ANCHORS = [[6, 10], [10, 18], [18, 12], [14, 30], [30, 20], [24, 44], [46, 30], [40, 60], [60, 60]]


@pytest.fixture(scope="session")
def tiny_config():
    """A 64 px, width-0.125 model: shapes and gradients, not accuracy."""
    return ModelConfig(variant="small", input_size=64, width=0.125, depth=(1, 1, 1, 1, 1),
                       anchors=TINY_ANCHORS, cls_head_blocks=1)


@pytest.fixture(scope="session")
def tiny_default_assignment(tiny_config):
    """The tiny model with the default config's multi-anchor + neighbour-cell assignment."""
    return tiny_config.with_overrides(anchor_iou_threshold=0.25, neighbour_cells=True)


def write_bright_box_images(folder, count, seed=0, size_range=(48, 80)):
    """Dark noisy images with one bright rectangle each; the rectangle is the labelled box."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        w, h = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        pixels = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        bw, bh = (int(v) for v in rng.integers(8, 20, 2))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        pixels[y0:y0 + bh, x0:x0 + bw] = 250
        path = folder / f"img{i:03d}.png"
        Image.fromarray(pixels).save(path)
        records.append(Record(str(path), np.array([[x0, y0, x0 + bw, y0 + bh]], np.float32),
                              np.array([0], np.int32), disaster_class=i % 5,
                              has_boxes=True, has_class=True))
    return records


@pytest.fixture(scope="session")
def bright_box_records(tmp_path_factory):
    return write_bright_box_images(tmp_path_factory.mktemp("bright"), 16)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "faults: reliability/security scenarios (`make test-faults`; not in `make test`'s time budget)")
    config.addinivalue_line(
        "markers", "slow: a test (or a module's shared setup) over ~half a minute (an end-to-end run over `fx`, a trained model, "
                   "a run of an experiment, an export to every runtime), run by `make test-faults` to keep "
                   "`make test` within ~15 min on this 2-core host")
    config.addinivalue_line(
        "markers", "deploy: the runbook docs/deployment.md played as separate hosts in network namespaces "
                   "(`make test-deploy`; needs root for `ip netns`)")
    config.addinivalue_line(
        "markers", "browser: the labeling page driven in headless Chromium (`make test-browser`; Debian's chromium, "
                   "installed by `make setup-browser`)")
