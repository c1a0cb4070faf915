"""The inference CLI on a segmenting model: a translucent colour per mask class painted exactly
where the predicted mask says (background left clear), on images and on video frames, the class
map written beside each annotated image, and each image's share of pixels per class reported."""
import json

import numpy as np
import pytest
from PIL import Image

from src.deploy.postprocess import ModelMetadata, read_image
from src.deploy.predict import MASK_ALPHA, annotate, main, mask_overlay
from tests.test_seg_export import export_segmenting

META = ModelMetadata(64, [[10, 10]] * 9, ["person"], ["fire", "normal"],
                     mask_classes=["background", "water", "fire_smoke"],
                     mask_palette=[[0, 0, 0], [40, 110, 230], [240, 90, 20]])


def test_the_overlay_is_painted_where_the_mask_says_in_its_class_colour():
    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[20:30, 10:20] = 1   # water
    mask[18:28, 40:55] = 2   # fire_smoke
    result = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int),
              "disaster_probs": np.array([0.3, 0.7]), "mask": mask}
    drawn = annotate(image, result, META).astype(np.int64)
    for cls in (1, 2):
        expected = np.round((1 - MASK_ALPHA) * 100 + MASK_ALPHA * np.array(META.mask_palette[cls]))
        assert np.all(drawn[mask == cls] == expected), cls
    label_box = np.zeros(mask.shape, bool)
    label_box[:15] = True  # the disaster class in the corner
    assert np.all(drawn[(mask == 0) & ~label_box] == 100)  # background left clear
    np.testing.assert_array_equal(mask_overlay(image, np.zeros_like(mask), META), image)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_segmenting(tmp_path_factory.mktemp("seg_predict"), ("keras", "tflite-fp32"))


def test_predict_paints_images_and_video_frames_and_writes_the_masks(exported, tmp_path):
    import cv2

    model = exported["written"]["tflite-fp32"]["path"]
    meta = ModelMetadata.load(exported["root"] / "models")
    images = exported["images"][:3]
    video = tmp_path / "drone.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (128, 96))
    for path in images:
        writer.write(cv2.cvtColor(cv2.resize(read_image(path), (128, 96)), cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out"
    # score 1.0: no box is drawn, so every changed pixel outside the corner label is the overlay's
    assert main([str(p) for p in images] + [str(video), "--model", model, "--out", str(out), "--score", "1.0"]) == 0
    report = json.loads((out / "detections.json").read_text())
    painted_pixels = 0
    for path in images:
        original = read_image(path)
        mask = np.asarray(Image.open(out / path.with_suffix(".mask.png").name))
        assert mask.shape == original.shape[:2] and set(np.unique(mask)) <= {0, 1, 2, 3}
        annotated = np.asarray(Image.open(out / path.with_suffix(".png").name).convert("RGB"))
        outside_label = np.ones(mask.shape, bool)
        outside_label[:15] = False  # the disaster class in the corner
        np.testing.assert_array_equal(annotated[outside_label], mask_overlay(original, mask, meta)[outside_label])
        changed = np.any(annotated != original, axis=-1) & outside_label
        assert not np.any(changed & (mask == 0))  # only where the mask has a class but background
        painted_pixels += int(changed.sum())
        row = next(r for r in report["images"] if r["source"] == str(path))
        fractions = row["mask_fractions"]
        assert list(fractions) == meta.mask_classes and sum(fractions.values()) == pytest.approx(1, abs=1e-5)
        assert fractions["background"] == pytest.approx(np.mean(mask == 0), abs=1e-6)
    assert painted_pixels > 0
    frames = [r for r in report["images"] if r["frame"] is not None]
    assert [r["frame"] for r in frames] == [0, 1, 2] and all("mask_fractions" in r for r in frames)
    capture = cv2.VideoCapture(str(out / "drone.annotated.mp4"))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (96, 128, 3)
