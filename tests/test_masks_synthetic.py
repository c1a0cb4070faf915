"""The synthetic generator's masks: painted from the image's own shapes, so images and boxes stay
byte-identical to the generator without masks, and the label maps say what the pixels show."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import yaml
from PIL import Image

from src.data.formats import load_yolo_dataset, read_mask, yolo_mask_lookup
from src.data.synthetic import SceneOptions, generate_dataset, render_labelled_scene, render_scene
from src.data.synthetic.regions import FIRE_SMOKE, RUBBLE, WATER

DISASTER = ("collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal")
BURSTS = {"difficulty": 1.0, "burst_size": 3, "class_weights": {"fire": 3}}
# sha256 (first 16 hex digits) of pixels + boxes + classes, rendered by the generator as it was before it
# painted masks: every disaster class (seed 0, images 0-4) and cropped burst frames at difficulty 1.
# A deliberate change to what the generator draws changes these; painting masks must not.
PINNED = [
    (0, 0, {}, 3, "b9f5eb58637d1fd8"),
    (0, 1, {}, 4, "569ae81c64f47f5c"),
    (0, 2, {}, 1, "3662aab05c98ef07"),
    (0, 3, {}, 0, "cc88e03485b54f47"),
    (0, 4, {}, 2, "8dcf6c1fa01899d0"),
    (3, 0, BURSTS, 4, "773700a085b81c22"),
    (3, 4, BURSTS, 1, "cacd97b8c802cb62"),
    (3, 7, BURSTS, 1, "f0f2bd0dd4ff78c2"),
]


def fingerprint(image: Image.Image, boxes: np.ndarray, classes: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(image).tobytes() + boxes.tobytes() + classes.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("seed, index, options, disaster, pinned", PINNED)
def test_images_and_boxes_are_those_of_the_generator_before_masks(seed, index, options, disaster, pinned):
    image, boxes, classes, drawn_class, regions = render_labelled_scene(seed, index, SceneOptions(**options))
    assert (drawn_class, fingerprint(image, boxes, classes)) == (disaster, pinned)
    assert regions.size == image.size
    assert render_scene(seed, index, SceneOptions(**options))[3] == disaster


def test_each_scene_labels_the_regions_it_paints():
    """Floods are mostly water, fires show fire or smoke, collapsed buildings rubble, and a normal
    scene (no pond at difficulty 0) holds none of them."""
    shares = {}
    for index in range(10):  # two of each class
        _, _, _, disaster, regions = render_labelled_scene(0, index, SceneOptions(difficulty=0.0))
        pixels = np.asarray(regions)
        counts = np.bincount(pixels.ravel(), minlength=4) / pixels.size
        shares.setdefault(DISASTER[disaster], []).append(counts)
    assert all(share[WATER] > 0.4 for share in shares["flooded_areas"])
    assert all(share[FIRE_SMOKE] > 0.02 for share in shares["fire"])
    assert all(share[RUBBLE] > 0.05 for share in shares["collapsed_building"])
    assert all(share[1:].sum() == 0 for share in shares["normal"])


def test_written_masks_index_the_configured_classes(tmp_path):
    """Same seed, another class order (and a class the generator never paints): each pixel keeps its
    region, under that region's new index; dataset.yaml records the list, the reader reads it back."""
    default = generate_dataset(tmp_path / "default", num_images=6, seed=2, workers=1)
    classes = ["rubble", "debris_cloud", "background", "fire_smoke", "water"]
    reordered = generate_dataset(tmp_path / "reordered", num_images=6, seed=2, workers=1, mask_classes=classes)
    assert yaml.safe_load((reordered / "dataset.yaml").read_text())["mask_classes"] == classes
    default_lookup, lookup = yolo_mask_lookup(default), yolo_mask_lookup(reordered)
    new_index = np.array([2, 4, 3, 0], np.uint8)  # background, water, fire_smoke, rubble -> their places above
    for stem in (f"{i:05d}" for i in range(6)):
        with Image.open(reordered / "masks" / f"{stem}.png") as im:
            assert im.mode == "P"  # an index image with a palette for viewers
        assert (reordered / "images" / f"{stem}.jpg").read_bytes() == (default / "images" / f"{stem}.jpg").read_bytes()
        before = read_mask(default / "masks" / f"{stem}.png", default_lookup)
        np.testing.assert_array_equal(read_mask(reordered / "masks" / f"{stem}.png", lookup), new_index[before])
    records, _ = load_yolo_dataset(reordered, ["person"], DISASTER, mask_classes=classes)
    assert [r.has_mask for r in records] == [True] * 6
    assert records[0].mask_path == str(reordered / "masks" / "00000.png")


def test_mask_classes_must_name_background():
    with pytest.raises(ValueError, match="must include 'background'"):
        SceneOptions(mask_classes=("water", "fire_smoke"))
