"""Mask PNGs (src/data/formats/masks.py): index, palette and colour masks through a class map, and
bad masks refused with the file named, alone and inside a YOLO-layout data set."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from src.data.formats import (BAD_LABEL, IGNORE_INDEX, MISSING, UNREADABLE, UNSUPPORTED, DataError,
                              load_yolo_dataset, mask_class_map, read_mask)

CLASSES = ("background", "water", "fire_smoke", "rubble")
DISASTER = ("collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal")
VALUES = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [255, 255, 0, 1]], np.uint8)  # 4 wide, 3 high


def save(path, pixels, mode=None, palette=None, fmt="PNG"):
    image = Image.fromarray(np.asarray(pixels))
    if mode is not None:
        image = image.convert(mode)
    if palette is not None:
        image.putpalette(palette)
    image.save(path, fmt)
    return path


def test_index_png_values_are_our_classes_and_255_is_unlabeled(tmp_path):
    mask = read_mask(save(tmp_path / "m.png", VALUES), mask_class_map(CLASSES), image_size=(4, 3))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, VALUES)


def test_palette_png_is_read_by_index_not_by_colour(tmp_path):
    """A palette only colours the indices for viewers: index 1 painted red is still class 1."""
    palette = [255, 0, 0] * 256
    path = save(tmp_path / "m.png", VALUES, palette=palette)
    with Image.open(path) as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(read_mask(path, mask_class_map(CLASSES)), VALUES)


def test_class_map_maps_file_values_to_our_classes(tmp_path):
    """FloodNet-style values (0 background, 5 flooded, 7 debris, 9 another class) through a class map;
    unmapped values are errors, or unlabeled with unmapped: ignore."""
    values = np.array([[0, 5, 7, 9]], np.uint8)
    path = save(tmp_path / "floodnet.png", values)
    mapping = {0: "background", 5: "water", "7": "rubble"}
    with pytest.raises(DataError, match=r"floodnet.png: values \[9\] \(1 pixels, the first at x=3, y=0\)"):
        read_mask(path, mask_class_map(CLASSES, mapping))
    ignored = read_mask(path, mask_class_map(CLASSES, mapping, unmapped="ignore"))
    np.testing.assert_array_equal(ignored, [[0, 1, 3, IGNORE_INDEX]])
    both = read_mask(path, mask_class_map(CLASSES, {**mapping, 9: "fire_smoke"}))
    np.testing.assert_array_equal(both, [[0, 1, 3, 2]])


def test_colour_masks_map_colours_to_classes(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (0, 0, 255)
    rgb[1, 2] = (255, 128, 0)
    path = save(tmp_path / "colour.png", rgb)
    lookup = mask_class_map(CLASSES, {"#000000": "background", "#0000ff": "water", "#FF8000": "fire_smoke"})
    np.testing.assert_array_equal(read_mask(path, lookup), [[0, 1, 0], [0, 0, 2]])
    with pytest.raises(DataError, match=r"colour.png: mode RGB is not an index mask"):
        read_mask(path, mask_class_map(CLASSES))


def test_class_map_errors_name_the_entry():
    with pytest.raises(DataError, match=r"class_map.mask.5: 'lava' is not a mask class"):
        mask_class_map(CLASSES, {5: "lava"})
    with pytest.raises(DataError, match="mixes mask values and colours"):
        mask_class_map(CLASSES, {5: "water", "#0000ff": "water"})
    with pytest.raises(DataError, match="'blue' is neither a mask value"):
        mask_class_map(CLASSES, {"blue": "water"})


@pytest.mark.parametrize("case, reason, message", [
    ("size", BAD_LABEL, r"bad.png: mask is 5x3 but its image img.jpg is 4x3"),
    ("unknown", BAD_LABEL, r"bad.png: values \[4, 17\] \(6 pixels, the first at x=0, y=0\) name no mask class "
                           r"\(known: 0..3 = \['background', 'water', 'fire_smoke', 'rubble'\], 255 = unlabeled\)"),
    ("unreadable", UNREADABLE, r"bad.png: not a readable mask"),
    ("truncated", UNREADABLE, r"bad.png: corrupt mask"),
    ("jpeg", UNSUPPORTED, r"bad.png: a JPEG mask; masks must be lossless"),
    ("missing", MISSING, r"bad.png: mask file not found"),
])
def test_bad_masks_are_refused_naming_the_file(tmp_path, case, reason, message):
    path = tmp_path / "bad.png"
    if case == "size":
        save(path, np.zeros((3, 5), np.uint8))
    elif case == "unknown":
        save(path, np.array([[4, 0, 17, 1]] * 3, np.uint8))
    elif case == "unreadable":
        path.write_bytes(b"not a png at all")
    elif case == "truncated":
        save(path, np.random.default_rng(0).integers(0, 4, (64, 64), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:200])
    elif case == "jpeg":
        save(path, np.zeros((3, 4), np.uint8), fmt="JPEG")
    with pytest.raises(DataError, match=message) as raised:
        read_mask(path, mask_class_map(CLASSES), image_size=(64, 64) if case == "truncated" else (4, 3),
                  image="img.jpg")
    assert raised.value.reason == reason


def yolo_folder(root, masks: dict):
    """A YOLO-layout folder of 4x3 images a, b, c with the given masks/<stem>.png contents (bytes or pixels)."""
    for folder in ("images", "labels", "masks"):
        (root / folder).mkdir(parents=True)
    for stem in "abc":
        Image.new("RGB", (4, 3), (90, 90, 90)).save(root / "images" / f"{stem}.jpg")
        (root / "labels" / f"{stem}.txt").write_text("")
    for stem, content in masks.items():
        path = root / "masks" / f"{stem}.png"
        path.write_bytes(content) if isinstance(content, bytes) else save(path, content)
    return root


def test_a_yolo_data_set_reads_masks_and_skips_bad_ones_by_name(tmp_path):
    """b's mask is the wrong size: on_error raise names it; skip leaves b out and counts it;
    c has no mask: never annotated (has_mask False), not an error."""
    root = yolo_folder(tmp_path / "data", {"a": VALUES, "b": np.zeros((4, 4), np.uint8)})
    with pytest.raises(DataError, match=r"masks/b.png: mask is 4x4 but its image .*images/b.jpg is 4x3"):
        load_yolo_dataset(root, ["person"], DISASTER, mask_classes=CLASSES)
    records, report = load_yolo_dataset(root, ["person"], DISASTER, on_error="skip", mask_classes=CLASSES)
    assert [(r.image_path.rsplit("/", 1)[1], r.has_mask) for r in records] == [("a.jpg", True), ("c.jpg", False)]
    assert records[0].mask_path == str(root / "masks" / "a.png") and records[1].mask_path is None
    assert report.skipped == 1 and "masks/b.png" in report.messages[0]


def test_masks_without_a_class_list_or_with_another_one_are_refused(tmp_path):
    root = yolo_folder(tmp_path / "data", {"a": VALUES})
    with pytest.raises(DataError, match=r"data/masks: holds masks but no class list"):
        load_yolo_dataset(root, ["person"], DISASTER)
    (root / "dataset.yaml").write_text("mask_classes: [background, water, fire_smoke, rubble]\n")
    records, _ = load_yolo_dataset(root, ["person"], DISASTER)  # the folder's own list
    assert records[0].has_mask
    with pytest.raises(DataError, match=r"dataset.yaml: mask_classes \[.*\] differ from the model's classes.mask"):
        load_yolo_dataset(root, ["person"], DISASTER, mask_classes=("background", "rubble", "water", "fire_smoke"))


def test_validate_counts_masks_and_names_a_bad_one(tmp_path, capsys):
    from src.data.validate import main as validate_main

    root = yolo_folder(tmp_path / "data", {"a": VALUES, "b": np.full((3, 4), 9, np.uint8)})
    (root / "dataset.yaml").write_text("mask_classes: [background, water, fire_smoke, rubble]\n")
    assert validate_main([str(root)]) == 1
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    assert header.split("  ")[-2:] == ["with masks", "class histogram"]
    assert row.split()[:7] == ["data", "3", "3", "0", "0", "0", "1"]  # a's mask is good, b's is not, c has none
    assert "masks/b.png: values [9] (12 pixels, the first at x=0, y=0) name no mask class" in out
