"""Tests for the synthetic disaster-scene generator (src/data/synthetic/)."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from src.data import synthetic
from src.data.synthetic import SceneOptions, generate_dataset, render_scene, victims

OPTIONS = SceneOptions()
SAMPLE = range(60)


@pytest.fixture(scope="module")
def sample():
    """(image, boxes, classes, disaster) for the first 60 images of seed 0."""
    return [render_scene(0, index, OPTIONS) for index in SAMPLE]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same 12-image data set written with one worker and with two."""
    root = tmp_path_factory.mktemp("synthetic")
    one = generate_dataset(root / "one", num_images=12, seed=5, workers=1)
    two = generate_dataset(root / "two", num_images=12, seed=5, workers=2)
    return one, two


def _parse_labels(path: Path) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for line in path.read_text().splitlines():
        fields = line.split()
        assert len(fields) == 5, line
        assert all(len(value.split(".")[1]) == 6 for value in fields[1:]), line
        rows.append((int(fields[0]), *map(float, fields[1:])))
    return rows


def test_same_seed_and_index_give_identical_scene():
    first, second = render_scene(3, 7, OPTIONS), render_scene(3, 7, OPTIONS)
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(second[0]))
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[2], second[2])
    assert first[3] == second[3]


def test_different_seeds_or_indices_differ():
    base = np.asarray(render_scene(0, 4, OPTIONS)[0])
    for other in (render_scene(1, 4, OPTIONS)[0], render_scene(0, 5, OPTIONS)[0]):
        other = np.asarray(other)
        assert other.shape != base.shape or not np.array_equal(other, base)


def test_files_identical_for_any_worker_count(datasets):
    one, two = datasets
    assert (one / "classes.tsv").read_bytes() == (two / "classes.tsv").read_bytes()
    assert (one / "dataset.yaml").read_bytes() == (two / "dataset.yaml").read_bytes()
    for index in range(12):
        stem = f"{index:05d}"
        assert (one / "labels" / f"{stem}.txt").read_bytes() == (two / "labels" / f"{stem}.txt").read_bytes()
        np.testing.assert_array_equal(np.asarray(Image.open(one / "images" / f"{stem}.jpg")),
                                      np.asarray(Image.open(two / "images" / f"{stem}.jpg")))


def test_written_files_have_real_formats(datasets):
    out = datasets[0]
    disaster, victim = synthetic.default_class_names()
    rows = (out / "classes.tsv").read_text().splitlines()
    assert rows[0] == "image\tdisaster_class"
    assert [row.split("\t")[0] for row in rows[1:]] == [f"images/{i:05d}.jpg" for i in range(12)]
    assert all(row.split("\t")[1] in disaster for row in rows[1:])
    manifest = yaml.safe_load((out / "dataset.yaml").read_text())
    assert manifest["options"] == {"seed": 5, "num_images": 12, "min_size": 192, "max_size": 256,
                                   "difficulty": 0.5, "max_victims": 6, "burst_size": 1, "class_weights": None}
    assert manifest["disaster_classes"] == list(disaster) and manifest["victim_classes"] == list(victim)
    for index in range(12):
        image = Image.open(out / "images" / f"{index:05d}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB"
        assert all(192 <= side <= 256 for side in image.size)
        for victim_class, cx, cy, w, h in _parse_labels(out / "labels" / f"{index:05d}.txt"):
            assert 0 <= victim_class < len(victim)
            assert all(0 < value <= 1 for value in (cx, cy, w, h))
            assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
            assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6


def test_labels_round_trip_to_rendered_boxes(datasets):
    out = datasets[0]
    for index in range(12):
        image, boxes, classes, _ = render_scene(5, index, OPTIONS)
        width, height = image.size
        parsed = _parse_labels(out / "labels" / f"{index:05d}.txt")
        assert len(parsed) == len(boxes)
        for (victim_class, cx, cy, w, h), box, expected_class in zip(parsed, boxes, classes):
            assert victim_class == expected_class
            decoded = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
            np.testing.assert_allclose(decoded, box, atol=1e-3)


def test_existing_identical_dataset_is_not_regenerated(datasets, caplog):
    out = datasets[0]
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    with caplog.at_level(logging.INFO, logger="src.data.synthetic"):
        generate_dataset(out, num_images=12, seed=5, workers=1)
    assert "not regenerating" in caplog.text
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def test_sample_covers_classes_sizes_and_empty_images(sample):
    disasters = {scene[3] for scene in sample}
    assert disasters == set(range(len(OPTIONS.disaster_classes)))
    victim_counts = [len(scene[1]) for scene in sample]
    assert 0.03 <= np.mean([count == 0 for count in victim_counts]) <= 0.35
    boxes = np.concatenate([scene[1] for scene in sample])
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    assert sides.min() >= victims.MIN_BOX_PX
    assert sides.max() <= 62  # figure length is at most 60 px (+ rounding of thick lines)
    longest = sides.max(axis=1)
    assert np.mean(longest >= 8) > 0.9  # small figures only shrink below 8 px when occluded
    assert longest.min() < 14 and longest.max() > 40  # the size range is actually used
    for image, scene_boxes, _, _ in sample:
        width, height = image.size
        assert np.all(scene_boxes[:, :2] >= 0)
        assert np.all(scene_boxes[:, 2] <= width) and np.all(scene_boxes[:, 3] <= height)


@pytest.mark.parametrize("options", [OPTIONS, replace(OPTIONS, burst_size=3)], ids=["scenes", "bursts"])
def test_boxes_are_tight_around_drawn_figures(options):
    """Each box holds figure pixels and touches them on all four edges, also in a
    burst frame (a crop of the scene scaled back to full size).

    Rendering with max_victims=0 leaves background, distractors, crop and camera
    noise identical (separate random streams), so the difference image shows
    where figures (and their occluders) were drawn.
    """
    no_victims = replace(options, max_victims=0)
    checked = 0
    for index in range(30):
        image, boxes, _, _ = render_scene(0, index, options)
        empty, no_boxes, _, _ = render_scene(0, index, no_victims)
        assert len(no_boxes) == 0
        changed = np.any(np.asarray(image) != np.asarray(empty), axis=2)
        for x1, y1, x2, y2 in boxes.astype(int):
            region = changed[y1:y2, x1:x2]
            assert region.mean() > 0.15
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
            checked += 1
    assert checked > 30


def test_visible_box_shrinks_under_occlusion_and_drops_hidden_figures():
    rng = np.random.default_rng(0)
    figure = victims._transform(victims._person_primitives(rng, 40.0, pose="standing"), 0, 50, 50)
    box = victims._extent(figure)
    owner = Image.new("L", (100, 100), 0)
    victims._draw_primitives(ImageDraw.Draw(owner), figure, fill=1)
    full = victims._visible_box(np.asarray(owner), figure, box, 1)
    assert full is not None and abs((full[3] - full[1]) - 40) <= 2

    covered = owner.copy()
    ImageDraw.Draw(covered).rectangle([0, 58, 99, 99], fill=0)  # legs under water
    partial = victims._visible_box(np.asarray(covered), figure, box, 1)
    assert partial is not None
    assert partial[1] == full[1] and partial[3] == 58 and partial[3] < full[3]

    ImageDraw.Draw(covered).rectangle([0, 40, 99, 99], fill=0)  # only the head is left
    assert victims._visible_box(np.asarray(covered), figure, box, 1) is None


def test_figure_clipped_by_the_image_border_gets_clipped_box():
    rng = np.random.default_rng(1)
    figure = victims._transform(victims._person_primitives(rng, 40.0, pose="standing"), 0, 50, 8)
    owner = Image.new("L", (100, 100), 0)
    victims._draw_primitives(ImageDraw.Draw(owner), figure, fill=1)
    visible = victims._visible_box(np.asarray(owner), figure, victims._extent(figure), 1)
    assert visible is not None and visible[1] == 0.0


def test_unknown_class_names_are_rejected():
    with pytest.raises(ValueError, match="unknown disaster class 'volcano'"):
        SceneOptions(disaster_classes=("fire", "volcano"))
    with pytest.raises(ValueError, match="unknown victim class"):
        SceneOptions(victim_classes=("dog",))
    with pytest.raises(ValueError):
        SceneOptions(difficulty=1.5)


def test_class_subset_and_order_follow_the_given_names():
    options = SceneOptions(disaster_classes=("normal", "fire"))
    classes = {render_scene(0, index, options)[3] for index in range(6)}
    assert classes == {0, 1}


def test_a_burst_is_one_scene_in_near_duplicate_frames():
    bursts = replace(OPTIONS, burst_size=4)
    frames = [render_scene(2, index, bursts) for index in range(8)]
    assert len({frame[3] for frame in frames[:4]}) == 1 and len({frame[3] for frame in frames[4:]}) == 1
    assert len({frame[0].size for frame in frames[:4]}) == 1
    pixels = [np.asarray(frame[0].convert("L").resize((64, 64)), np.float32) for frame in frames]
    correlation = [np.corrcoef(pixels[0].ravel(), other.ravel())[0, 1] for other in pixels]
    assert not np.array_equal(pixels[0], pixels[1])  # each frame its own crop and exposure
    assert min(correlation[1:4]) > 0.3 and max(correlation[4:]) < 0.2  # 0.32-0.54 vs -0.21-(-0.06) here
    scene_victims = len(render_scene(2, 0, replace(bursts, burst_size=1))[1])  # image 0 = scene 0 uncropped
    assert all(len(frame[1]) <= scene_victims for frame in frames[:4])
    assert max(len(frame[1]) for frame in frames[:4]) > 0


def test_class_weights_set_how_often_each_class_occurs():
    weighted = replace(OPTIONS, class_weights={"normal": 8, "fire": 0})
    names = weighted.disaster_classes
    assert weighted.class_weights == tuple(8.0 if n == "normal" else 0.0 if n == "fire" else 1.0 for n in names)
    drawn = np.array([synthetic.disaster_class_of(0, scene, len(names), weighted.class_weights)
                      for scene in range(600)])
    assert 0.67 < np.mean(drawn == names.index("normal")) < 0.79  # 8 / 11 = 0.727 +- 3 sd (0.762 here)
    assert not np.any(drawn == names.index("fire"))
    with pytest.raises(ValueError, match="unknown disaster classes \\['volcano'\\]"):
        replace(OPTIONS, class_weights={"volcano": 2})
    with pytest.raises(ValueError, match="2 weights for 5 disaster classes"):
        replace(OPTIONS, class_weights=[1, 2])
    with pytest.raises(ValueError, match="positive sum"):
        replace(OPTIONS, class_weights=[0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="burst_size"):
        replace(OPTIONS, burst_size=0)


def test_a_burst_set_is_written_and_split_scene_by_scene(tmp_path):
    """Written bursts round-trip like single scenes, and the splitters keep each burst in
    one split and at one site (a near-duplicate across train and test would flatter scores)."""
    from src.settings import load_config, parse_assignments
    from src.data.splits import build_site_splits

    out = generate_dataset(tmp_path / "bursts", num_images=160, seed=3, workers=1, burst_size=4,
                           class_weights={"normal": 3})
    manifest = yaml.safe_load((out / "dataset.yaml").read_text())
    assert manifest["options"]["burst_size"] == 4 and manifest["options"]["class_weights"] == [1, 1, 1, 1, 3]
    names = [f"images/{i:05d}.jpg" for i in range(160)]
    assert synthetic.scene_groups(out, names) == [i // 4 for i in range(160)]
    assert synthetic.scene_groups(tmp_path, names) is None  # not a generated set
    for index in (5, 6):
        image, boxes, _, _ = render_scene(3, index, replace(OPTIONS, burst_size=4, class_weights={"normal": 3}))
        assert len(_parse_labels(out / "labels" / f"{index:05d}.txt")) == len(boxes)

    cfg = load_config(overrides=parse_assignments([f"data.root={out}", "data.num_images=160", "data.test_fraction=0.25",
                                 "data.val_fraction=0.25"]))
    build_site_splits(cfg, tmp_path / "split", 2, 5.0, 0, ["both"], seed_fraction=0.5)
    place = {}
    for site in ("site1", "site2"):
        for row in (tmp_path / "split" / site / "manifest.tsv").read_text().splitlines()[1:]:
            image, split = row.split("\t")[:2]
            place.setdefault(int(Path(image).stem) // 4, set()).add((site, "val" if split == "val" else "train"))
    for row in (tmp_path / "split" / "test.tsv").read_text().splitlines()[1:]:
        place.setdefault(int(Path(row).stem) // 4, set()).add(("test", "test"))
    assert len(place) == 40 and all(len(where) == 1 for where in place.values())
    assert sum(("test", "test") in where for where in place.values()) >= 8
