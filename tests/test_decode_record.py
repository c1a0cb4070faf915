"""The heads' centre decoding as a model setting and as a record inside a `.keras` archive
(no TensorFlow: the record is a zip entry, the setting a ModelConfig field)."""
import json
import zipfile
from dataclasses import replace

import pytest

from src.model.config import (
    CENTRE_RANGE_SCALED, CENTRE_RANGE_YOLOV3, DECODE_ENTRY, ModelConfig, record_decode, recorded_decode,
    with_recorded_decode)


def keras_like_archive(path):
    """A zip laid out like a .keras file (what Keras writes is not read here)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", '{"class_name": "Functional"}')
        archive.writestr("model.weights.h5", b"\x89HDF weights")
    return path


def test_centre_range_is_checked_against_the_neighbour_cells_it_must_reach():
    assert ModelConfig().centre_range == CENTRE_RANGE_SCALED == 2.0
    assert ModelConfig(centre_range=1, neighbour_cells=False).centre_range == CENTRE_RANGE_YOLOV3
    with pytest.raises(ValueError, match=r"model.neighbour_cells needs model.centre_range >= 2"):
        ModelConfig(centre_range=1.0, neighbour_cells=True)
    with pytest.raises(ValueError, match=r"model.centre_range must be at least 1"):
        ModelConfig(centre_range=0.5)
    with pytest.raises(ValueError, match=r"model.centre_range must be a positive number, got 'yolov3'"):
        ModelConfig(centre_range="yolov3")


def test_a_record_is_written_read_and_replaced_inside_the_archive(tmp_path):
    path = keras_like_archive(tmp_path / "model.keras")
    assert recorded_decode(path) == {}
    yolov3 = ModelConfig(centre_range=CENTRE_RANGE_YOLOV3)
    record_decode(path, yolov3)
    assert recorded_decode(path) == {"centre_range": 1.0}
    record_decode(path, ModelConfig())                     # recorded again: replaced, not added
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert sorted(names) == sorted(["config.json", "model.weights.h5", DECODE_ENTRY])
        assert archive.read("model.weights.h5") == b"\x89HDF weights"
    assert recorded_decode(path) == {"centre_range": 2.0}
    assert not list(tmp_path.glob(".*tmp*"))


def test_the_file_decides_how_a_model_decodes_else_the_settings(tmp_path):
    settings = ModelConfig(neighbour_cells=True)
    plain = keras_like_archive(tmp_path / "plain.keras")
    assert with_recorded_decode(settings, plain) == settings
    assert with_recorded_decode(settings, tmp_path / "best.pbuf") == settings  # an OpenFL state: settings
    darknet = keras_like_archive(tmp_path / "darknet.keras")
    record_decode(darknet, ModelConfig(centre_range=CENTRE_RANGE_YOLOV3))
    decoding = with_recorded_decode(settings, darknet)
    assert decoding == replace(settings, centre_range=1.0, neighbour_cells=False)


def test_a_damaged_record_names_the_file(tmp_path):
    path = keras_like_archive(tmp_path / "model.keras")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(DECODE_ENTRY, json.dumps({"centre": 1}))
    with pytest.raises(ValueError, match=r"model.keras: decode.json is not a decode record"):
        recorded_decode(path)
