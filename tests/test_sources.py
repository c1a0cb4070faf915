"""Real data-set formats through one sources spec: read right, or rejected naming file and line/field."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from src.data.formats import (
    BAD_LABEL,
    MISSING,
    OUTSIDE,
    TOO_LARGE,
    UNREADABLE,
    UNSUPPORTED,
    DataError,
    check_image,
    load_yolo_dataset,
    read_coco,
)
from src.data.formats import images as images_module
from src.data.manifests import load_site, load_test_split, write_site
from src.data.sources import loading as source_loading
from src.data.sources import (
    SourceRecord,
    load_sources,
    read_spec,
    record_key,
    split_record_key,
)
from src.data.validate import main as validate_main
from tests.real_formats import (
    DISASTER_CLASSES,
    POSE_MAP,
    POSES,
    VICTIM_CLASSES,
    gradient16,
    write_aider_folders,
    write_c2a_coco,
    write_odd_image,
    write_sources_spec,
    write_tsv_source,
    write_yolo_source,
)

VICTIMS, DISASTERS = list(VICTIM_CLASSES), list(DISASTER_CLASSES)


def spec_of(*sources: dict, victim_map=None, disaster_map=None) -> dict:
    return {"class_map": {"victim": victim_map or dict(POSE_MAP), "disaster": disaster_map or {}},
            "sources": list(sources)}


def load(spec, base_dir, **kwargs):
    return load_sources(spec, VICTIMS, DISASTERS, base_dir=base_dir, **kwargs)


def load_error(spec, base_dir, **kwargs) -> str:
    with pytest.raises(DataError) as exc:
        load(spec, base_dir, **kwargs)
    return str(exc.value)


def write_image(path: Path, size=(64, 48), colour=(90, 140, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# --------------------------------------------------------------------------- good data, every format


@pytest.fixture(scope="module")
def combined(tmp_path_factory):
    """COCO boxes + class folders over the same 12 images, a TSV source, a YOLO source with pose names."""
    base = tmp_path_factory.mktemp("combined")
    c2a = write_c2a_coco(base / "c2a", 12, seed=0)
    crisis = write_tsv_source(base / "crisis", 6, seed=1, file_name="meta.csv", delimiter=",",
                              image_column="image_path", class_column="disaster_types",
                              class_names={"flooded_areas": "flood"})
    drone = write_yolo_source(base / "drone", 6, seed=2, names=POSES)
    spec = spec_of(
        {"name": "c2a", "root": "c2a", "boxes": {"format": "coco", "file": "annotations.json"},
         "classes": {"format": "folders"}},
        {"name": "crisis", "root": str(base / "crisis"),
         "classes": {"format": "csv", "file": "meta.csv", "image_column": "image_path",
                     "class_column": "disaster_types"}},
        {"name": "drone", "root": "drone", "boxes": {"format": "yolo", "names": list(POSES)}},
        disaster_map={"flood": "flooded_areas"})
    per_source, report = load(spec, base)
    return {"base": base, "truth": {"c2a": c2a, "crisis": crisis, "drone": drone},
            "records": per_source, "report": report}


def test_every_format_reads_its_labels(combined):
    per_source, truth = combined["records"], combined["truth"]
    assert combined["report"].clean and combined["report"].skipped == 0
    assert list(per_source) == ["c2a", "crisis", "drone"]
    for name, records in per_source.items():
        expected = truth[name].by_key()
        assert [r.key for r in records] == sorted(record_key(name, k) for k in expected)
        for r in records:
            source_name, relative = split_record_key(r.key)
            want = expected[relative]
            assert source_name == name and isinstance(r, SourceRecord)
            assert Path(r.image_path).is_absolute() and r.image_path.endswith(relative)
            assert r.has_class == (name != "drone")
            assert r.has_boxes == (name != "crisis")
            if r.has_class:
                assert DISASTERS[r.disaster_class] == want.disaster
            np.testing.assert_allclose(r.boxes, want.boxes.reshape(-1, 4), atol=0.02)
            np.testing.assert_array_equal(r.victim_classes, np.zeros(len(want.boxes)))  # poses -> person
            np.testing.assert_allclose(r.crowd_boxes, want.crowd.reshape(-1, 4), atol=0.02)


def test_coco_crowd_regions_and_images_without_annotations(combined):
    records = {split_record_key(r.key)[1]: r for r in combined["records"]["c2a"]}
    truth = combined["truth"]["c2a"]
    empty = records[truth.images[0].key]  # listed, no annotations: annotated, no victims
    assert empty.has_boxes and empty.boxes.shape == (0, 4)
    crowded = [r for r in records.values() if len(r.crowd_boxes)]
    assert len(crowded) == 1 and crowded[0].crowd_classes.tolist() == [0]
    cx = crowded[0].crowd_boxes[0]
    assert not any(np.allclose(b, cx) for b in crowded[0].boxes)  # never a training box


@pytest.mark.parametrize("images", ["images", "images/", "./images"])
def test_coco_file_names_relative_to_an_image_folder_the_c2a_layout(tmp_path, images):
    """C2A: annotations.json next to images/, file names relative to images/. Keys stay relative to
    the root (c2a/images/c2a_000.jpg), where the source's other label specs meet them."""
    truth = write_c2a_coco(tmp_path / "c2a", 6, seed=5, names_under_images=True)
    assert json.loads(truth.label_file.read_text())["images"][0]["file_name"] == "c2a_000.jpg"
    spec = spec_of({"name": "c2a", "root": "c2a",
                    "boxes": {"format": "coco", "file": "annotations.json", "images": images}})
    records, report = load(spec, tmp_path)
    assert report.clean
    expected = truth.by_key()
    assert [r.key for r in records["c2a"]] == [f"c2a/{key}" for key in sorted(expected)]
    for r in records["c2a"]:
        want = expected[split_record_key(r.key)[1]]
        np.testing.assert_allclose(r.boxes, want.boxes.reshape(-1, 4), atol=0.02)
        np.testing.assert_allclose(r.crowd_boxes, want.crowd.reshape(-1, 4), atol=0.02)
    only, _ = load(spec, tmp_path, only=["c2a/images/c2a_003.jpg"])  # as a site reads it
    assert [r.key for r in only["c2a"]] == ["c2a/images/c2a_003.jpg"] and only["c2a"][0].has_boxes


def test_coco_records_carry_the_jsons_image_ids(tmp_path):
    """evaluate ranks tied detections by COCO image id, as COCOeval does: each record of a COCO
    source carries its json id, whatever order the file names sort in."""
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / "coco" / name)
    ids = {"a.png": 30, "b.png": 10, "c.png": 20}
    (tmp_path / "coco" / "annotations.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": n, "width": 64, "height": 48} for n, i in ids.items()],
        "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    spec = spec_of({"name": "coco", "root": "coco", "boxes": {"format": "coco", "file": "annotations.json"}},
                   victim_map={"person": "person"})
    records, _ = load(spec, tmp_path)
    assert [(r.key, r.image_id) for r in records["coco"]] == [("coco/a.png", 30), ("coco/b.png", 10),
                                                               ("coco/c.png", 20)]


@pytest.mark.parametrize("images, fragment", [
    ("../elsewhere", "sources[0].boxes.images: image path '../elsewhere' must be relative"),
    ("/abs", "sources[0].boxes.images: image path '/abs' must be relative"),
    ("pictures", "sources[0].boxes.images: "),
    (3, "sources[0].boxes.images: must be a string"),
])
def test_coco_image_folder_errors_name_the_field(tmp_path, images, fragment):
    write_c2a_coco(tmp_path / "c2a", 2, seed=5, names_under_images=True)
    spec = spec_of({"name": "c2a", "root": "c2a",
                    "boxes": {"format": "coco", "file": "annotations.json", "images": images}})
    assert fragment in load_error(spec, tmp_path)


def test_keys_round_trip_and_manifest_helper(combined):
    assert record_key("c2a", "fire/img1.jpg") == "c2a/fire/img1.jpg"
    assert split_record_key("c2a/fire/img1.jpg") == ("c2a", "fire/img1.jpg")
    with pytest.raises(ValueError):
        split_record_key("no-source")
    r = combined["records"]["c2a"][0]
    assert split_record_key(r.key)[0] == "c2a"  # records carry their manifest key


def test_sources_spec_fixture_is_big_enough_for_a_federation(tmp_path):
    spec = write_sources_spec(tmp_path)
    per_source, report = load_sources(spec, VICTIMS, DISASTERS)
    records = [r for rs in per_source.values() for r in rs]
    assert report.clean and len(records) >= 60
    assert {DISASTERS[r.disaster_class] for r in records if r.has_class} == set(DISASTERS)
    assert sum(r.has_boxes for r in records) > len(records) / 2
    assert sum(len(r.boxes) for r in records) >= 60
    assert read_spec(spec, VICTIMS, DISASTERS).sources[0].root == (tmp_path / "c2a").resolve()


def test_boxes_and_classes_need_not_cover_the_same_images(tmp_path):
    truth = write_c2a_coco(tmp_path, 4, seed=3)
    data = json.loads((tmp_path / "annotations.json").read_text())
    moved = data["images"][1]["file_name"]
    (tmp_path / moved).rename(tmp_path / "top_level.jpg")  # not in any class folder
    data["images"][1]["file_name"] = "top_level.jpg"
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    write_image(tmp_path / "fire" / "no_boxes.jpg")  # in a class folder, not in the json
    spec = spec_of({"name": "s", "root": ".", "boxes": {"format": "coco", "file": "annotations.json"},
                    "classes": {"format": "folders"}})
    records = {split_record_key(r.key)[1]: r for r in load(spec, tmp_path)[0]["s"]}
    assert len(records) == len(truth.images) + 1
    assert records["top_level.jpg"].has_boxes and not records["top_level.jpg"].has_class
    assert records["top_level.jpg"].disaster_class == -1
    assert records["fire/no_boxes.jpg"].has_class and not records["fire/no_boxes.jpg"].has_boxes


def test_folders_only_source(tmp_path):
    truth = write_aider_folders(tmp_path / "aider", 5)
    records = load(spec_of({"name": "aider", "root": "aider", "classes": {"format": "folders"}}), tmp_path)[0]
    got = {split_record_key(r.key)[1]: DISASTERS[r.disaster_class] for r in records["aider"]}
    assert got == {i.key: i.disaster for i in truth.images}
    assert not any(r.has_boxes for r in records["aider"])


def test_yolo_ids_index_the_victim_classes_without_names(tmp_path):
    truth = write_yolo_source(tmp_path, 3, seed=4)
    records = load(spec_of({"name": "y", "root": ".", "boxes": {"format": "yolo"}}), tmp_path)[0]["y"]
    for r, want in zip(records, truth.images):
        np.testing.assert_allclose(r.boxes, want.boxes, atol=0.01)
        assert not r.has_class


# --------------------------------------------------------------------------- the spec


def good_source(tmp_path) -> dict:
    write_aider_folders(tmp_path / "a", 2)
    return {"name": "a", "root": "a", "classes": {"format": "folders"}}


@pytest.mark.parametrize("change, fragment", [
    (lambda s: s["sources"].append(dict(s["sources"][0])), "sources[1].name: duplicate source name 'a'"),
    (lambda s: s["sources"][0]["classes"].update(fle="x"), "sources[0].classes: unknown field 'fle'"),
    (lambda s: s["sources"][0]["classes"].update(format="xml"), "sources[0].classes.format: 'xml' is not one of"),
    (lambda s: s["sources"][0].update(boxes={"format": "coco"}), "sources[0].boxes.file: missing"),
    (lambda s: s["sources"][0].update(root="nowhere"), "sources[0].root:"),
    (lambda s: s["sources"][0].update(name="a/b"), "sources[0].name: 'a/b' must be a plain name"),
    (lambda s: s["sources"][0].pop("classes"), "sources[0]: needs `boxes`, `classes` or both"),
    (lambda s: s.update(classes={"victim": ["human"]}), "classes.victim ['human'] differs from the model's"),
    (lambda s: s["class_map"]["disaster"].update(flood="flood_zone"),
     "class_map.disaster.flood: 'flood_zone' is not a disaster class"),
    (lambda s: s["sources"][0]["classes"].update(format="tsv", file="t.tsv", delimiter="ab"),
     "sources[0].classes.delimiter: must be one character"),
    (lambda s: s["sources"][0].update(boxes={"format": "yolo", "names": ["lying", "dog"]}),
     "sources[0].boxes.names[1]: 'dog' maps to no victim class"),
])
def test_spec_errors_name_the_field(tmp_path, change, fragment):
    spec = spec_of(good_source(tmp_path))
    change(spec)
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(spec))
    message = load_error(path, None)
    assert "sources.yaml" in message and fragment in message


def test_spec_file_not_yaml_or_missing(tmp_path):
    bad = tmp_path / "sources.yaml"
    bad.write_text("sources:\n  - name: a\n    root: [unclosed\n")
    message = load_error(bad, None)
    assert "sources.yaml: line 4: not valid YAML (" in message and "at line 3)" in message
    assert "\n" not in message
    assert "file not found" in load_error(tmp_path / "missing.yaml", None)
    with pytest.raises(ValueError, match="on_error"):
        load(spec_of(good_source(tmp_path)), tmp_path, on_error="ignore")


def test_class_lists_come_from_the_spec_when_not_given(tmp_path):
    spec = {"classes": {"victim": VICTIMS, "disaster": DISASTERS}, "sources": [good_source(tmp_path)]}
    per_source, _ = load_sources(spec, base_dir=tmp_path)
    assert len(per_source["a"]) == 2
    del spec["classes"]
    with pytest.raises(DataError, match="classes.victim missing"):
        load_sources(spec, base_dir=tmp_path)


# --------------------------------------------------------------------------- COCO problems


def coco_fixture(tmp_path, width=100, height=80):
    """Two images (a.jpg, b.jpg) and a valid json; tests break one thing."""
    write_image(tmp_path / "a.jpg", (width, height))
    write_image(tmp_path / "b.jpg", (width, height))
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": width, "height": height},
                       {"id": 2, "file_name": "b.jpg", "width": width, "height": height}],
            "categories": [{"id": 1, "name": "lying"}, {"id": 2, "name": "standing"}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 10], "iscrowd": 0},
                            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [50, 20, 10, 30], "iscrowd": 0}]}
    return data


COCO_SPEC = spec_of({"name": "c", "root": ".", "boxes": {"format": "coco", "file": "ann.json"}})


def write_json(tmp_path, data) -> None:
    (tmp_path / "ann.json").write_text(json.dumps(data))


@pytest.mark.parametrize("bbox, fragment", [
    ([10, 10, 20], "bbox must be 4 finite numbers"),
    ([10, "10", 20, 10], "bbox must be 4 finite numbers"),
    ([10, 10, 0, 10], "zero or negative width/height"),
    ([10, 10, 20, -5], "zero or negative width/height"),
    ([150, 10, 20, 10], "lies outside the 100x80 image"),
    ([-40, 10, 30, 10], "lies outside the 100x80 image"),
    ([100.03, 10, 0.05, 10], "has no area inside the 100x80 image"),
])
def test_bad_coco_box_names_file_and_annotation(tmp_path, bbox, fragment):
    data = coco_fixture(tmp_path)
    data["annotations"][1]["bbox"] = bbox
    write_json(tmp_path, data)
    message = load_error(COCO_SPEC, tmp_path)
    assert "ann.json: annotations[1] (id 11)" in message and fragment in message
    records, report = load(COCO_SPEC, tmp_path, on_error="skip")
    assert [r.key for r in records["c"]] == ["c/a.jpg"] and report.skipped == 1


def test_coco_overhang_is_clipped(tmp_path):
    data = coco_fixture(tmp_path)
    data["annotations"][1]["bbox"] = [90, 70, 20, 15.05]  # centre inside, edges beyond
    write_json(tmp_path, data)
    r = load(COCO_SPEC, tmp_path)[0]["c"][1]
    np.testing.assert_allclose(r.boxes, [[90, 70, 100, 80]])


@pytest.mark.parametrize("change, fragment, skipped", [
    (lambda d: d["annotations"][1].update(category_id=7), "annotations[1] (id 11): unknown category_id 7", 1),
    (lambda d: d["annotations"][1].update(iscrowd=2), "annotations[1] (id 11): iscrowd must be 0 or 1", 1),
    (lambda d: d["categories"][1].update(name="horse"),
     "annotations[1] (id 11): category 'horse' (id 2) maps to no victim class", 1),
    (lambda d: d["images"][1].update(file_name="./a.jpg"), "images[0] (id 1, 'a.jpg'): duplicate file_name", 1),
    (lambda d: d["images"][1].update(width=120), "images[1] (id 2, 'b.jpg'): width x height 120x80 disagrees", 1),
    (lambda d: d["images"][1].update(file_name="gone.jpg"), "images[1] (id 2, 'gone.jpg'): image file", 1),
    (lambda d: d["images"][1].update(file_name="../b.jpg"), "images[1] (id 2): image path '../b.jpg' must be", 0),
    (lambda d: d["annotations"][1].update(image_id=99), "annotations[1] (id 11): unknown image_id 99", 0),
])
def test_coco_problems_name_file_and_entry(tmp_path, change, fragment, skipped):
    data = coco_fixture(tmp_path)
    change(data)
    write_json(tmp_path, data)
    message = load_error(COCO_SPEC, tmp_path)
    assert "ann.json" in message and fragment in message
    _, report = load(COCO_SPEC, tmp_path, on_error="skip")
    assert report.skipped == skipped and any(fragment in m for m in report.messages)


def test_coco_unmapped_category_dropped_and_counted(tmp_path):
    data = coco_fixture(tmp_path)
    data["categories"][1]["name"] = "horse"
    data["annotations"][1]["bbox"] = "not even a box"  # a dropped annotation's box does not matter
    write_json(tmp_path, data)
    spec = spec_of({"name": "c", "root": ".",
                    "boxes": {"format": "coco", "file": "ann.json", "drop_unmapped": True}})
    records, report = load(spec, tmp_path)
    b = records["c"][1]
    assert b.has_boxes and len(b.boxes) == 0 and report.clean
    assert report.notes and "1 x 'horse'" in report.notes[0] and "horse" in report.summary()
    coco = read_coco(tmp_path / "ann.json", VICTIMS, POSE_MAP, drop_unmapped=True)
    assert coco.dropped == {"horse": 1}


def test_coco_not_json_names_the_line(tmp_path):
    coco_fixture(tmp_path)
    (tmp_path / "ann.json").write_text('{"images": [\n  {"id": 1,}\n]}')
    assert "ann.json: line 2: not valid JSON" in load_error(COCO_SPEC, tmp_path)
    write_json(tmp_path, {"images": []})
    assert "ann.json: field 'annotations' must be a list" in load_error(COCO_SPEC, tmp_path)


# --------------------------------------------------------------------------- YOLO, TSV, folder problems


YOLO_SPEC = spec_of({"name": "y", "root": ".", "boxes": {"format": "yolo"}})


def yolo_fixture(tmp_path):
    for stem in ("a", "b"):
        write_image(tmp_path / "images" / f"{stem}.jpg", (100, 80))
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")


@pytest.mark.parametrize("text, fragment", [
    ("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n", "line 2: class id 1 out of range [0, 1)"),
    ("0 1.5 0.5 0.2 0.2\n", "line 1: normalised coordinates"),
    ("0 0.5 0.5 0.0 0.2\n", "line 1: box width/height must be positive"),
    ("0 1.0009 0.5 0.0001 0.2\n", "line 1: box [100.08, 32.0, 100.09, 48.0] has no area inside the 100x80"),
])
def test_bad_yolo_line_names_file_and_line(tmp_path, text, fragment):
    yolo_fixture(tmp_path)
    (tmp_path / "labels" / "b.txt").write_text(text)
    message = load_error(YOLO_SPEC, tmp_path)
    assert "labels/b.txt" in message and fragment in message
    records, report = load(YOLO_SPEC, tmp_path, on_error="skip")
    assert [r.key for r in records["y"]] == ["y/images/a.jpg"] and report.skipped == 1


def test_yolo_empty_label_no_victims_missing_label_unannotated(tmp_path):
    yolo_fixture(tmp_path)
    (tmp_path / "labels" / "a.txt").write_text("")
    (tmp_path / "labels" / "b.txt").unlink()
    a, b = load(YOLO_SPEC, tmp_path)[0]["y"]
    assert a.has_boxes and a.boxes.shape == (0, 4)
    assert not b.has_boxes


def test_yolo_images_sharing_a_label_are_ambiguous(tmp_path):
    yolo_fixture(tmp_path)
    write_image(tmp_path / "images" / "a.png", (100, 80))
    message = load_error(YOLO_SPEC, tmp_path)
    assert "labels/a.txt: ambiguous" in message and "['a.jpg', 'a.png']" in message
    records, report = load(YOLO_SPEC, tmp_path, on_error="skip")
    assert [r.key for r in records["y"]] == ["y/images/b.jpg"] and report.skipped == 2
    with pytest.raises(DataError, match="ambiguous"):  # the built-in reader agrees
        load_yolo_dataset(tmp_path, VICTIMS, DISASTERS)


def test_yolo_label_without_image_is_a_missing_image(tmp_path):
    yolo_fixture(tmp_path)
    (tmp_path / "labels" / "c.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert "labels/c.txt: no image" in load_error(YOLO_SPEC, tmp_path)
    records, report = load(YOLO_SPEC, tmp_path, on_error="skip")
    assert len(records["y"]) == 2 and report.skipped == 1


def test_yolo_names_unmapped_dropped_and_counted(tmp_path):
    truth = write_yolo_source(tmp_path, 6, seed=5, names=POSES)
    renamed = ["lying", "dog", "cat", "bending", "kneeling"]  # sitting -> dog, standing -> cat
    spec = spec_of({"name": "y", "root": ".", "boxes": {"format": "yolo", "drop_unmapped": True,
                                                         "names": renamed}})
    records, report = load(spec, tmp_path)
    poses = [p for image in truth.images for p in image.poses]
    assert sum(len(r.boxes) for r in records["y"]) == sum(p not in ("sitting", "standing") for p in poses)
    assert report.clean and poses.count("sitting") and poses.count("standing")
    assert f"{poses.count('standing')} x 'cat', {poses.count('sitting')} x 'dog'" in report.notes[0]


TSV_SPEC = spec_of({"name": "t", "root": ".", "classes": {"format": "tsv", "file": "labels.tsv",
                                                         "class_column": "label"}},
                   disaster_map={"flood": "flooded_areas"})


def tsv_fixture(tmp_path, rows: str):
    write_image(tmp_path / "images" / "a.jpg")
    write_image(tmp_path / "images" / "b.jpg")
    (tmp_path / "labels.tsv").write_text("image\tlabel\n" + rows)


@pytest.mark.parametrize("rows, fragment, skipped", [
    ("images/a.jpg\tfire\nimages/b.jpg\ttornado\n", "labels.tsv: line 3: unknown class 'tornado'", 1),
    ("images/a.jpg\tfire\nimages/c.jpg\tfire\n", "labels.tsv: line 3: image file", 1),
    ("images/a.jpg\tfire\nimages/b.jpg\n", "labels.tsv: line 3: expected 2 fields, got 1", 0),
    ("images/a.jpg\tfire\n/abs/b.jpg\tfire\n", "labels.tsv: line 3: image path '/abs/b.jpg' must be relative", 0),
    ("images/a.jpg\tfire\nimages/a.jpg\tnormal\n", "labels.tsv: line 3: images/a.jpg listed again", 1),
])
def test_bad_table_row_names_file_and_line(tmp_path, rows, fragment, skipped):
    tsv_fixture(tmp_path, rows)
    assert fragment in load_error(TSV_SPEC, tmp_path)
    _, report = load(TSV_SPEC, tmp_path, on_error="skip")
    assert report.skipped == skipped and fragment in report.messages[0]


def test_table_class_map_and_drop_unmapped(tmp_path):
    tsv_fixture(tmp_path, "images/a.jpg\tflood\nimages/b.jpg\ttornado\n")
    spec = json.loads(json.dumps(TSV_SPEC))
    spec["sources"][0]["classes"]["drop_unmapped"] = True
    records, report = load(spec, tmp_path)
    assert [(r.key, DISASTERS[r.disaster_class]) for r in records["t"]] == [("t/images/a.jpg", "flooded_areas")]
    assert report.clean and "1 x 'tornado'" in report.notes[0]


def test_unknown_class_folder_is_an_error_or_dropped(tmp_path):
    write_aider_folders(tmp_path, 3)
    write_image(tmp_path / "tornado" / "t1.jpg")
    write_image(tmp_path / "tornado" / "t2.jpg")
    (tmp_path / "annotations").mkdir()  # no images: not a class folder, not an error
    spec = spec_of({"name": "a", "root": ".", "classes": {"format": "folders"}})
    assert "tornado: folder 'tornado' (2 images) names no disaster class" in load_error(spec, tmp_path)
    records, report = load(spec, tmp_path, on_error="skip")
    assert len(records["a"]) == 3 and report.skipped == 2
    spec["sources"][0]["classes"]["drop_unmapped"] = True
    records, report = load(spec, tmp_path)
    assert len(records["a"]) == 3 and report.clean and "2 x 'folder tornado'" in report.notes[0]


# --------------------------------------------------------------------------- image files


@pytest.mark.parametrize("kind", ["grey", "rgba", "palette", "png16", "png16_rgb"])
def test_unusual_pngs_are_read(tmp_path, kind):
    path = write_odd_image(tmp_path / "images" / "x.png", kind)
    assert check_image(path, full_decode=True) == (64, 48)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    r = load(YOLO_SPEC, tmp_path)[0]["y"][0]
    np.testing.assert_allclose(r.boxes, [[16, 12, 48, 36]])


def test_pipeline_decodes_unusual_pngs_to_rgb_in_unit_range(tmp_path):
    from src.data.pipeline import load_image

    for kind in ("grey", "rgba", "palette", "png16", "png16_rgb"):
        pixels = load_image(str(write_odd_image(tmp_path / f"{kind}.png", kind))).numpy()
        assert pixels.shape == (48, 64, 3) and pixels.dtype == np.float32, kind
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0, kind
    ramp = gradient16((64, 48)) / 65535.0  # 16 bits scaled, not saturated or truncated to the low byte
    grey16 = load_image(str(tmp_path / "png16.png")).numpy()
    np.testing.assert_allclose(grey16[..., 0], ramp, atol=1 / 255)
    rgb16 = load_image(str(tmp_path / "png16_rgb.png")).numpy()
    np.testing.assert_allclose(rgb16[..., 2], 1 - ramp, atol=1 / 255)


@pytest.mark.parametrize("kind, fragment, reason", [
    ("exif_rotated", "EXIF orientation 6", UNSUPPORTED),
    ("not_an_image", "not a readable image", UNREADABLE),
    ("truncated_jpeg", "truncated JPEG (no end-of-image marker", UNREADABLE),
    ("truncated_png", "corrupt image", UNREADABLE),
    ("tiff", "TIFF images cannot be decoded by the pipeline", UNSUPPORTED),
    ("palette_bmp", "BMP with mode P", UNSUPPORTED),
    ("bomb", "possible decompression bomb, not decoded: the header declares 10000x10000", TOO_LARGE),
    ("bomb_header", "possible decompression bomb, not decoded: Image size (900000000 pixels)", TOO_LARGE),
])
def test_bad_image_files_rejected_naming_the_file(tmp_path, kind, fragment, reason):
    write_image(tmp_path / "fire" / "good.jpg")
    write_odd_image(tmp_path / "fire" / "bad_one.jpg", kind)
    spec = spec_of({"name": "a", "root": ".", "classes": {"format": "folders"}})
    message = load_error(spec, tmp_path)
    assert "fire/bad_one.jpg" in message and fragment in message
    records, report = load(spec, tmp_path, on_error="skip")
    assert [r.key for r in records["a"]] == ["a/fire/good.jpg"] and report.skipped == 1
    assert report.reasons == {reason: 1}


def test_exif_message_tells_how_to_fix(tmp_path):
    path = write_odd_image(tmp_path / "r.jpg", "exif_rotated")
    with pytest.raises(DataError, match=r"bake the rotation in .*exif_transpose"):
        check_image(path)


def test_pixel_limit_is_ours_and_can_be_raised(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", (64, 48))  # 3072 pixels
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 3071)
    with pytest.raises(DataError, match="big.png: .* declares 64x48 = 3,072 pixels, over the limit of 3,071"):
        check_image(path)
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 3072)
    assert check_image(path) == (64, 48)
    bomb = write_odd_image(tmp_path / "bomb.png", "bomb")  # 100 MP: PIL warns, only our limit decides
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 100_000_000)
    assert check_image(bomb) == (10_000, 10_000)


def test_non_utf8_file_names_are_reported_not_fatal(tmp_path):
    yolo_fixture(tmp_path)
    bad = os.path.join(os.fsencode(tmp_path), b"images", b"caf\xe9.jpg")
    with open(bad, "wb") as f:
        f.write((tmp_path / "images" / "a.jpg").read_bytes())
    message = load_error(YOLO_SPEC, tmp_path)
    assert r"caf\xe9.jpg" in message and "not valid UTF-8" in message
    records, report = load(YOLO_SPEC, tmp_path, on_error="skip")
    assert len(records["y"]) == 2 and report.skipped == 1
    report.summary().encode("utf-8")  # printable and loggable
    os.makedirs(os.path.join(os.fsencode(tmp_path), b"fire"))
    with open(os.path.join(os.fsencode(tmp_path), b"fire", b"\xff.jpg"), "wb") as f:
        f.write((tmp_path / "images" / "a.jpg").read_bytes())
    folders = spec_of({"name": "a", "root": ".", "classes": {"format": "folders"}},
                      disaster_map={"images": "normal"})
    records, report = load(folders, tmp_path, on_error="skip")
    assert len(records["a"]) == 2 and report.skipped == 2 and r"\xff.jpg" in report.summary()
    records, report = load_yolo_dataset(tmp_path, VICTIMS, DISASTERS, on_error="skip")
    assert len(records) == 2 and report.skipped == 1


# --------------------------------------------------------------------------- only=, skip mode


def test_only_opens_just_the_listed_images(combined, monkeypatch):
    base = combined["base"]
    spec = spec_of(
        {"name": "c2a", "root": "c2a", "boxes": {"format": "coco", "file": "annotations.json"},
         "classes": {"format": "folders"}},
        {"name": "broken", "root": "c2a", "boxes": {"format": "coco", "file": "no_such.json"}})
    wanted = {r.key for r in combined["records"]["c2a"][2:5]}
    opened = []
    monkeypatch.setattr(source_loading, "check_image",
                        lambda path, full=False: opened.append(path) or check_image(path, full))
    per_source, report = load(spec, base, only=wanted)
    assert {r.key for r in per_source["c2a"]} == wanted and per_source["broken"] == []
    assert sorted(Path(p).resolve() for p in opened) == sorted((base / k).resolve() for k in wanted)
    assert report.clean


def test_only_keys_naming_no_image_are_counted(combined):
    wanted = {combined["records"]["c2a"][0].key: "m.tsv: line 2", "c2a/not/there.jpg": "m.tsv: line 3",
              "nosuch/a.jpg": "m.tsv: line 4"}
    spec = spec_of({"name": "c2a", "root": "c2a", "boxes": {"format": "coco", "file": "annotations.json"}})
    message = load_error(spec, combined["base"], only=wanted)
    assert message == ("m.tsv: line 4: image nosuch/a.jpg not found: no source 'nosuch' in the spec "
                       "(sources: ['c2a'])")
    per_source, report = load(spec, combined["base"], only=wanted, on_error="skip")
    assert len(per_source["c2a"]) == 1 and report.skipped == 2 and report.reasons == {MISSING: 2}
    assert "m.tsv: line 3: image c2a/not/there.jpg not found: source 'c2a'" in report.summary()


def test_skip_mode_counts_everything_in_the_report(tmp_path):
    write_c2a_coco(tmp_path / "c", 6, seed=6)
    data = json.loads((tmp_path / "c" / "annotations.json").read_text())
    data["annotations"].append({"id": 999, "image_id": 4242, "category_id": 1, "bbox": [1, 1, 2, 2]})
    (tmp_path / "c" / "annotations.json").write_text(json.dumps(data))
    first = tmp_path / "c" / data["images"][1]["file_name"]
    first.write_bytes(b"garbage")
    write_odd_image(tmp_path / "c" / data["images"][2]["file_name"], "exif_rotated")
    spec = spec_of({"name": "c", "root": "c", "boxes": {"format": "coco", "file": "annotations.json"},
                    "classes": {"format": "folders"}})
    records, report = load(spec, tmp_path, on_error="skip")
    assert len(records["c"]) == 4 and report.skipped == 2 and len(report.messages) == 3
    assert "2 image(s) skipped, 3 problem(s)" in report.summary() and "unknown image_id 4242" in report.summary()


# --------------------------------------------------------------------------- the validate CLI


def test_validate_clean_spec_prints_the_table(tmp_path, capsys):
    spec = write_sources_spec(tmp_path, coco_images=10, tsv_images=5)
    assert validate_main([str(spec)]) == 0
    out = capsys.readouterr().out
    header, rule, c2a, crisis, total = out.splitlines()[:5]
    for column in ("images", "with boxes", "boxes", "crowd regions", "with class", "class histogram"):
        assert column in header
    assert c2a.split()[:3] == ["c2a", "10", "10"] and "fire:2" in c2a
    assert crisis.split()[:3] == ["crisis", "5", "0"] and total.split()[1] == "15"
    assert "no data problems" in out


def test_validate_exit_codes(tmp_path, capsys):
    spec = write_sources_spec(tmp_path, coco_images=5, tsv_images=5)
    (tmp_path / "crisis" / "images" / "crisis_002.jpg").unlink()
    assert validate_main([str(spec)]) == 1
    out = capsys.readouterr().out
    assert "1 image(s) skipped" in out and "labels.tsv: line 4: image file" in out
    assert validate_main([str(spec), "--on-error", "raise"]) == 2
    assert "labels.tsv: line 4" in capsys.readouterr().err
    assert validate_main([str(tmp_path / "nothing.yaml")]) == 2
    assert "nothing.yaml: file not found" in capsys.readouterr().err


def test_validate_plain_yolo_folder_as_a_module(tmp_path):
    root = tmp_path / "synthetic"
    yolo_fixture(root)
    (root / "classes.tsv").write_text("image\tdisaster_class\nimages/a.jpg\tfire\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "src.data.validate", str(root), "--full-decode"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    row = done.stdout.splitlines()[2].split()
    assert row[:7] == ["synthetic", "2", "2", "2", "0", "1", "fire:1"]


# --------------------------------------------------------------------------- paths leaving the data folder


def elsewhere(tmp_path) -> Path:
    """A folder outside every data root of a test, with an image and a 'secret' in it."""
    folder = tmp_path.parent / f"{tmp_path.name}_elsewhere"
    write_image(folder / "secret.jpg")
    (folder / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    return folder


@pytest.mark.parametrize("file_name", ["../../etc/passwd", "/etc/passwd", "a/../../b.jpg"])
def test_coco_file_names_leaving_the_root_are_refused(tmp_path, file_name):
    data = coco_fixture(tmp_path)
    data["images"][1]["file_name"] = file_name
    write_json(tmp_path, data)
    message = load_error(COCO_SPEC, tmp_path)
    assert f"ann.json: images[1] (id 2): image path {file_name!r} must be relative to the data root" in message
    records, report = load(COCO_SPEC, tmp_path, on_error="skip")
    assert [r.key for r in records["c"]] == ["c/a.jpg"] and report.reasons == {OUTSIDE: 1}


def test_listed_and_found_symlinks_leaving_the_root_are_refused(tmp_path):
    outside = elsewhere(tmp_path)
    data = coco_fixture(tmp_path)
    (tmp_path / "b.jpg").unlink()
    (tmp_path / "b.jpg").symlink_to(outside / "secret.jpg")  # listed by the json
    write_json(tmp_path, data)
    message = load_error(COCO_SPEC, tmp_path)
    assert f"b.jpg: image resolves to {outside / 'secret.jpg'}, outside the data folder" in message
    records, report = load(COCO_SPEC, tmp_path, on_error="skip")
    assert [r.key for r in records["c"]] == ["c/a.jpg"] and report.skipped == 1 and report.reasons == {OUTSIDE: 1}

    (tmp_path / "fire").symlink_to(outside, target_is_directory=True)  # a class folder linked out
    write_image(tmp_path / "normal" / "n.jpg")
    folders = spec_of({"name": "f", "root": ".", "classes": {"format": "folders"}})
    records, report = load(folders, tmp_path, on_error="skip")
    assert [r.key for r in records["f"]] == ["f/normal/n.jpg"] and report.reasons == {OUTSIDE: 1}


def test_yolo_label_symlink_leaving_the_root_is_not_read(tmp_path):
    outside = elsewhere(tmp_path)
    yolo_fixture(tmp_path)
    (tmp_path / "labels" / "b.txt").unlink()
    (tmp_path / "labels" / "b.txt").symlink_to(outside / "passwd")
    message = load_error(YOLO_SPEC, tmp_path)
    assert "labels/b.txt: label file resolves to" in message and "root:x" not in message
    records, report = load(YOLO_SPEC, tmp_path, on_error="skip")
    assert [r.key for r in records["y"]] == ["y/images/a.jpg"] and report.reasons == {OUTSIDE: 1}


# --------------------------------------------------------------------------- a site with bad files


BAD_FILES = {  # image -> the reason it is refused
    "images/cut.jpg": UNREADABLE, "images/text.jpg": UNREADABLE, "images/bomb.png": TOO_LARGE,
    "images/junk.jpg": BAD_LABEL, "images/leak.jpg": OUTSIDE, "images/gone.jpg": MISSING,
}


@pytest.fixture
def hostile_site(tmp_path):
    """A site over a YOLO data root: 3 good images, and one bad file of every kind in its manifest."""
    root = tmp_path / "data"
    yolo_fixture(root)
    write_image(root / "images" / "c.jpg", (100, 80))
    write_odd_image(root / "images" / "cut.jpg", "truncated_jpeg")
    write_odd_image(root / "images" / "text.jpg", "not_an_image")
    write_odd_image(root / "images" / "bomb.png", "bomb")
    write_image(root / "images" / "junk.jpg", (100, 80))
    (root / "labels" / "junk.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\n\x00\x9f\x92\x96 binary junk\n")
    (root / "images" / "leak.jpg").symlink_to(elsewhere(tmp_path) / "secret.jpg")
    good = [(f"images/{s}.jpg", "train", 1, 1) for s in "abc"]
    bad = [(image, "val" if i % 2 else "train", 1, 1) for i, image in enumerate(BAD_FILES)]
    write_site(tmp_path / "site1", "site1", "../data", good + bad)
    return tmp_path / "site1"


def test_a_site_with_bad_files_starts_under_skip_and_says_why(hostile_site, caplog):
    with caplog.at_level(logging.WARNING):
        site = load_site(hostile_site, VICTIMS, DISASTERS, on_error="skip")
    assert [Path(r.image_path).name for r in site.train + site.val] == ["a.jpg", "b.jpg", "c.jpg"]
    assert site.problems.skipped == 6
    assert site.problems.reasons == Counter(BAD_FILES.values())
    assert (f"site site1: 6 of 9 image(s) of {hostile_site / 'manifest.tsv'} skipped (2 unreadable image, "
            "1 missing file, 1 image too large, 1 bad label, 1 outside the data folder)") in caplog.text
    for name in ("cut.jpg", "text.jpg", "bomb.png", "labels/junk.txt: line 2", "leak.jpg", "gone.jpg"):
        assert name in caplog.text  # the reader's warning names every file


def test_a_site_with_bad_files_does_not_start_under_raise(hostile_site):
    with pytest.raises(DataError) as exc:
        load_site(hostile_site, VICTIMS, DISASTERS)
    line = 4 + len(BAD_FILES)  # gone.jpg, the last row after the header and 3 good rows
    assert str(exc.value).startswith(f"{hostile_site / 'manifest.tsv'}: line {line}: image images/gone.jpg "
                                     "not found in")


def test_the_collaborators_data_loader_follows_on_error(hostile_site, caplog):
    from src.federated.data_loader import SiteDataLoader

    with caplog.at_level(logging.WARNING):
        loader = SiteDataLoader(str(hostile_site), on_error="skip")
    assert loader.get_train_data_size() + loader.get_valid_data_size() == 3
    assert "site site1: 6 of 9 image(s)" in caplog.text
    with pytest.raises(DataError, match="images/gone.jpg not found"):
        SiteDataLoader(str(hostile_site), on_error="raise")


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "images/../../../x.jpg"])
def test_manifest_entries_leaving_the_data_folder_stop_the_site_in_both_modes(hostile_site, entry):
    write_site(hostile_site, "site1", "../data", [("images/a.jpg", "train", 1, 1), (entry, "train", 1, 1)])
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError) as exc:
            load_site(hostile_site, VICTIMS, DISASTERS, on_error=on_error)
        assert str(exc.value).startswith(f"{hostile_site / 'manifest.tsv'}: line 3: image path {entry!r} "
                                         "must be relative to the data root, without '..'; refused, not read")
        assert exc.value.reason == OUTSIDE
    (hostile_site / "test.tsv").write_text(f"image\nimages/a.jpg\n{entry}\n")
    with pytest.raises(DataError, match=r"test\.tsv: line 3: image path .* must be relative"):
        load_test_split(hostile_site, VICTIMS, DISASTERS, default_data_root=hostile_site.parent / "data",
                        on_error="skip")


def test_manifest_of_binary_junk_names_the_line(hostile_site):
    manifest = hostile_site / "manifest.tsv"
    manifest.write_bytes(manifest.read_bytes() + b"images/\xff\xfe.jpg\ttrain\t1\t1\n")
    with pytest.raises(DataError, match=r"manifest\.tsv: line 11: not UTF-8 text"):
        load_site(hostile_site, VICTIMS, DISASTERS, on_error="skip")
