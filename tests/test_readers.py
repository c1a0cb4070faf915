"""Readers on tiny hand-built data sets in tmp_path."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from src.data.readers import (
    DataError,
    ErrorReport,
    image_size,
    load_yolo_dataset,
    read_class_folders,
    read_class_table,
    read_yolo_labels,
)

VICTIMS = ["person"]
DISASTERS = ["collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal"]


def write_image(path, size=(64, 48), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path, format=fmt)
    return path


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def dataset(tmp_path):
    """Three images: 00000 with two boxes, 00001 empty labels, 00002 no label file."""
    root = tmp_path / "ds"
    write_image(root / "images" / "00000.jpg", (200, 100))
    write_image(root / "images" / "00001.jpg", (64, 48))
    write_image(root / "images" / "00002.png", (32, 32))
    write(root / "labels" / "00000.txt", "0 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.2 0.2\n")
    write(root / "labels" / "00001.txt", "")
    write(root / "classes.tsv",
          "image\tdisaster_class\nimages/00000.jpg\tfire\nimages/00001.jpg\tnormal\n")
    return root


# --------------------------------------------------------------------------- YOLO labels


def test_yolo_round_trip_to_absolute_xyxy(tmp_path):
    # 200x100 image; box centre (100, 50), size 40x40 -> [80, 30, 120, 70].
    label = write(tmp_path / "a.txt", "0 0.5 0.5 0.2 0.4\n  \n0 0.1 0.2 0.2 0.2\n")
    boxes, classes = read_yolo_labels(label, 200, 100, 1)
    assert boxes.dtype == np.float32 and classes.dtype == np.int32
    np.testing.assert_allclose(boxes, [[80, 30, 120, 70], [0, 10, 40, 30]], atol=1e-4)
    np.testing.assert_array_equal(classes, [0, 0])
    # and back to normalised cx cy w h
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 / 200
    h = (boxes[:, 3] - boxes[:, 1]) / 100
    np.testing.assert_allclose(cx, [0.5, 0.1], atol=1e-6)
    np.testing.assert_allclose(h, [0.4, 0.2], atol=1e-6)


def test_empty_label_file_gives_no_boxes(tmp_path):
    boxes, classes = read_yolo_labels(write(tmp_path / "e.txt", ""), 10, 10, 1)
    assert boxes.shape == (0, 4) and classes.shape == (0,)


def test_edge_overhang_is_clipped_but_tiny_rounding_tolerated(tmp_path):
    label = write(tmp_path / "c.txt", "0 0.95 0.5 0.2 1.0000001\n")
    boxes, _ = read_yolo_labels(label, 100, 100, 1)
    np.testing.assert_allclose(boxes, [[85, 0, 100, 100]], atol=1e-4)


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("0 0.5 0.5 0.2", "expected 5 fields"),
        ("0 0.5 abc 0.2 0.2", "non-numeric"),
        ("1 0.5 0.5 0.2 0.2", "class id 1 out of range"),
        ("-1 0.5 0.5 0.2 0.2", "out of range"),
        ("0.5 0.5 0.5 0.2 0.2", "not an integer"),
        ("0 1.5 0.5 0.2 0.2", "outside [0, 1]"),
        ("0 0.5 0.5 0 0.2", "must be positive"),
        ("0 0.5 0.5 0.2 nan", "non-finite"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, fragment):
    label = write(tmp_path / "bad_00007.txt", f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(DataError) as exc:
        read_yolo_labels(label, 100, 100, 1)
    msg = str(exc.value)
    assert "bad_00007.txt" in msg and "line 2" in msg and fragment in msg
    assert isinstance(exc.value, ValueError)


# --------------------------------------------------------------------------- images


def test_image_size_reads_header(tmp_path):
    assert image_size(write_image(tmp_path / "x.png", (33, 21))) == (33, 21)


def test_corrupt_image_names_file(tmp_path):
    bad = tmp_path / "garbage_42.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(DataError, match="garbage_42.jpg"):
        image_size(bad)
    with pytest.raises(DataError, match="missing.jpg"):
        image_size(tmp_path / "missing.jpg")


# --------------------------------------------------------------------------- class table / folders


def test_class_table_reads_names(dataset):
    table = read_class_table(dataset / "classes.tsv", DISASTERS)
    assert table == {"images/00000.jpg": 1, "images/00001.jpg": 4}


def test_class_table_unknown_class_names_file_and_line(tmp_path):
    tsv = write(tmp_path / "labels_x.tsv",
                "image\tdisaster_class\nimages/a.jpg\tfire\nimages/b.jpg\ttornado\n")
    with pytest.raises(DataError) as exc:
        read_class_table(tsv, DISASTERS)
    msg = str(exc.value)
    assert "labels_x.tsv" in msg and "line 3" in msg and "tornado" in msg


def test_class_table_missing_column(tmp_path):
    tsv = write(tmp_path / "t.tsv", "path\tdisaster_class\nimages/a.jpg\tfire\n")
    with pytest.raises(DataError, match=r"t\.tsv: line 1: missing column 'image'"):
        read_class_table(tsv, DISASTERS)


def test_class_table_custom_columns_and_delimiter(tmp_path):
    csv_path = write(tmp_path / "t.csv", "file,label\n./imgs/a.jpg,normal\n")
    assert read_class_table(csv_path, DISASTERS, "file", "label", ",") == {"imgs/a.jpg": 4}


def test_class_folders(tmp_path, caplog):
    write_image(tmp_path / "fire" / "f1.jpg")
    write_image(tmp_path / "fire" / "f2.png")
    write_image(tmp_path / "normal" / "n1.JPG", fmt="JPEG")
    write(tmp_path / "fire" / "notes.txt", "not an image")
    write_image(tmp_path / "tornado" / "t1.jpg")
    with caplog.at_level(logging.WARNING):
        out = read_class_folders(tmp_path, DISASTERS)
    assert {p.split("/")[-1]: c for p, c in out.items()} == {"f1.jpg": 1, "f2.png": 1, "n1.JPG": 4}
    assert "tornado" in caplog.text
    with pytest.raises(DataError):
        read_class_folders(tmp_path / "fire", DISASTERS)


# --------------------------------------------------------------------------- whole data set


def test_load_yolo_dataset(dataset):
    records, report = load_yolo_dataset(dataset, VICTIMS, DISASTERS)
    assert report.skipped == 0 and report.summary() == "no data problems"
    assert [r.image_path.split("/")[-1] for r in records] == ["00000.jpg", "00001.jpg", "00002.png"]
    r0, r1, r2 = records
    np.testing.assert_allclose(r0.boxes, [[80, 30, 120, 70], [0, 10, 40, 30]], atol=1e-4)
    assert r0.has_boxes and r0.has_class and r0.disaster_class == 1
    # empty label file: annotated, no victims
    assert r1.has_boxes and r1.boxes.shape == (0, 4) and r1.disaster_class == 4
    # missing label file and no table row: nothing known
    assert not r2.has_boxes and not r2.has_class and r2.disaster_class == -1


def test_load_without_class_table(dataset):
    (dataset / "classes.tsv").unlink()
    records, _ = load_yolo_dataset(dataset, VICTIMS, DISASTERS)
    assert not any(r.has_class for r in records)


def test_corrupt_image_raises_with_file_name(dataset):
    (dataset / "images" / "00001.jpg").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DataError, match="00001.jpg"):
        load_yolo_dataset(dataset, VICTIMS, DISASTERS)


def test_truncated_jpeg_needs_full_decode(dataset):
    img = dataset / "images" / "00000.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 200, 3), np.uint8)).save(img, quality=90)
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    records, _ = load_yolo_dataset(dataset, VICTIMS, DISASTERS)  # header check passes
    assert len(records) == 3
    with pytest.raises(DataError, match="00000.jpg.*truncated"):
        load_yolo_dataset(dataset, VICTIMS, DISASTERS, full_decode=True)


def test_skip_mode_skips_and_counts(dataset, caplog):
    (dataset / "images" / "00001.jpg").write_bytes(b"\x00garbage" * 50)
    with caplog.at_level(logging.WARNING):
        records, report = load_yolo_dataset(dataset, VICTIMS, DISASTERS, on_error="skip")
    assert report.skipped == 1 and len(report.messages) == 1
    assert "00001.jpg" in report.messages[0] and "00001.jpg" in report.summary()
    assert [r.image_path.split("/")[-1] for r in records] == ["00000.jpg", "00002.png"]
    assert "1 image(s) skipped" in caplog.text


def test_bad_label_line_raise_and_skip(dataset):
    write(dataset / "labels" / "00002.txt", "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError) as exc:
        load_yolo_dataset(dataset, VICTIMS, DISASTERS)
    assert "00002.txt" in str(exc.value) and "line 2" in str(exc.value)
    records, report = load_yolo_dataset(dataset, VICTIMS, DISASTERS, on_error="skip")
    assert len(records) == 2 and report.skipped == 1


def test_bad_class_table_row_skips_that_image(dataset):
    write(dataset / "classes.tsv",
          "image\tdisaster_class\nimages/00000.jpg\tfire\nimages/00001.jpg\tblizzard\n")
    with pytest.raises(DataError, match=r"classes\.tsv: line 3"):
        load_yolo_dataset(dataset, VICTIMS, DISASTERS)
    records, report = load_yolo_dataset(dataset, VICTIMS, DISASTERS, on_error="skip")
    assert [r.image_path.split("/")[-1] for r in records] == ["00000.jpg", "00002.png"]
    assert report.skipped == 1 and "blizzard" in report.messages[0]


def test_bad_class_table_row_without_image_is_reported_not_counted(dataset):
    write(dataset / "classes.tsv",
          "image\tdisaster_class\nimages/00000.jpg\tfire\nimages/99999.jpg\tblizzard\n")
    records, report = load_yolo_dataset(dataset, VICTIMS, DISASTERS, on_error="skip")
    assert len(records) == 3 and report.skipped == 0
    assert len(report.messages) == 1 and "line 3" in report.messages[0]


def test_bad_on_error_value(dataset):
    with pytest.raises(ValueError, match="on_error"):
        load_yolo_dataset(dataset, VICTIMS, DISASTERS, on_error="ignore")


def test_error_report_summary_truncates():
    report = ErrorReport()
    for i in range(12):
        report.add(f"problem {i}")
    text = report.summary(max_messages=3)
    assert text.startswith("12 image(s) skipped") and "... and 9 more" in text
