"""Readers on tiny hand-built data sets in tmp_path."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.formats import (
    BAD_LABEL,
    MISSING,
    OUTSIDE,
    TOO_LARGE,
    UNREADABLE,
    DataError,
    ErrorReport,
    check_image,
    image_size,
    inside_folder,
    load_yolo_dataset,
    parse_class_table,
    read_class_folders,
    read_class_table,
    read_yolo_labels,
)
from src.data.formats.yolo import MAX_LABEL_BYTES
from tests.real_formats import write_odd_image, write_png_bomb

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
        ("0 -0.5 0.5 0.2 0.2", "outside [0, 1]"),
        ("0 0.5 0.5 0 0.2", "must be positive"),
        ("0 0.5 0.5 0.2 nan", "non-finite"),
        ("0 0.5 0.5 inf 0.2", "non-finite"),
        ("0 0.5 0.5 0.2 0.2 0.7", "expected 5 fields"),
        ("7e9 0.5 0.5 0.2 0.2", "out of range"),
        ("\x00\x01\x02\x7f junk", "expected 5 fields"),  # control bytes are valid UTF-8
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, fragment):
    label = write(tmp_path / "bad_00007.txt", f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(DataError) as exc:
        read_yolo_labels(label, 100, 100, 1)
    msg = str(exc.value)
    assert "bad_00007.txt" in msg and "line 2" in msg and fragment in msg
    assert isinstance(exc.value, ValueError) and exc.value.reason == BAD_LABEL


def test_binary_label_file_names_the_line(tmp_path):
    label = tmp_path / "junk.txt"
    label.write_bytes(b"0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n\x89PNG\r\n\x1a\n\xff\xd8\x00")
    with pytest.raises(DataError, match=r"junk\.txt: line 3: not UTF-8 text \(byte b'\\x89'"):
        read_yolo_labels(label, 100, 100, 1)


def test_oversized_label_file_is_not_read(tmp_path):
    label = tmp_path / "huge.txt"
    with open(label, "wb") as f:  # sparse: no disk, and never read into memory
        f.truncate(MAX_LABEL_BYTES + 1)
    with pytest.raises(DataError, match=r"huge\.txt: 1,048,577 bytes, more than the 1,048,576 .* not read"):
        read_yolo_labels(label, 100, 100, 1)


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


def test_truncated_jpeg_found_without_decoding(dataset):
    img = dataset / "images" / "00000.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 200, 3), np.uint8)).save(img, quality=90)
    whole = img.read_bytes()
    img.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"00000\.jpg: truncated JPEG \(no end-of-image marker"):
        load_yolo_dataset(dataset, VICTIMS, DISASTERS)
    img.write_bytes(whole[:-2])  # only the end marker missing: TensorFlow refuses that too
    with pytest.raises(DataError, match="truncated JPEG"):
        check_image(img)
    img.write_bytes(whole + b"\x00" * 64)  # padding after the marker is fine
    assert check_image(img, full_decode=True) == (200, 100)


def test_corrupt_jpeg_data_needs_full_decode(dataset):
    img = write_odd_image(dataset / "images" / "00000.jpg", "corrupt_jpeg", (200, 100))
    assert check_image(img) == (200, 100)  # header, verify() and end marker pass
    with pytest.raises(DataError, match=r"00000\.jpg: corrupt image") as exc:
        check_image(img, full_decode=True)
    assert exc.value.reason == UNREADABLE


def test_skip_mode_skips_and_counts(dataset, caplog):
    (dataset / "images" / "00001.jpg").write_bytes(b"\x00garbage" * 50)
    with caplog.at_level(logging.WARNING):
        records, report = load_yolo_dataset(dataset, VICTIMS, DISASTERS, on_error="skip")
    assert report.skipped == 1 and len(report.messages) == 1
    assert "00001.jpg" in report.messages[0] and "00001.jpg" in report.summary()
    assert [r.image_path.split("/")[-1] for r in records] == ["00000.jpg", "00002.png"]
    assert "1 image(s) skipped, 1 problem(s) (1 unreadable image)" in caplog.text


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


# --------------------------------------------------------------------------- hostile files


def test_decompression_bomb_refused_from_its_header(tmp_path):
    bomb = write_png_bomb(tmp_path / "bomb.png", 10_000, 10_000)
    assert bomb.stat().st_size < 200_000  # complete and valid: 100 MP (300 MB as RGB) in ~100 KB
    for full_decode in (False, True):
        with pytest.raises(DataError) as exc:
            check_image(bomb, full_decode)
        assert str(exc.value).startswith(f"{bomb}: rejected as a possible decompression bomb, not decoded: "
                                         "the header declares 10000x10000 = 100,000,000 pixels, over the "
                                         "limit of 50,000,000 (src.data.formats.images.MAX_IMAGE_PIXELS)")
        assert exc.value.reason == TOO_LARGE


# VmHWM (peak resident memory of this process image), not ru_maxrss: Linux carries
# ru_maxrss over fork + exec, so a child of the pytest process would start at its peak.
RSS_PROBE = """
import sys
from src.data.formats import DataError, images

def peak_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

images.MAX_IMAGE_PIXELS = int(sys.argv[2])
before = peak_mb()
try:
    images.check_image(sys.argv[1], full_decode=True)
    outcome = "decoded"
except DataError as err:
    outcome = err.reason
print(outcome, peak_mb() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc")
def test_decompression_bomb_refused_in_bounded_memory(tmp_path):
    """Peak memory of a fresh process around check_image(full_decode=True) on a 64 MP PNG.

    What this proves: refused, the peak grows by a few MB at most; with the limit
    raised, the same call decodes it and the peak grows by >= 60 MB (8-bit grey), so
    the probe does see a decode. The pipeline would need 15 bytes a pixel (~1 GB).
    """
    bomb = write_png_bomb(tmp_path / "bomb.png", 8000, 8000)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def probe(limit: int) -> tuple[str, float]:
        done = subprocess.run([sys.executable, "-c", RSS_PROBE, str(bomb), str(limit)],
                              capture_output=True, text=True, env=env, timeout=120, check=True)
        outcome, grown_mb = done.stdout.rsplit(maxsplit=1)
        return outcome, float(grown_mb)

    refused, refused_mb = probe(50_000_000)
    decoded, decoded_mb = probe(100_000_000)
    assert refused == TOO_LARGE and refused_mb < 16, refused_mb
    assert decoded == "decoded" and decoded_mb > 60, decoded_mb


def test_hostile_images_refused_naming_the_file_and_counted_by_reason(dataset):
    images = dataset / "images"
    write_odd_image(images / "cut.jpg", "truncated_jpeg", (128, 96))
    write_odd_image(images / "cut2.png", "truncated_png", (128, 96))
    write_odd_image(images / "text.jpg", "not_an_image")
    write_odd_image(images / "bomb.png", "bomb")
    write_odd_image(images / "huge.png", "bomb_header")
    expected = {"cut.jpg": "truncated JPEG", "cut2.png": "corrupt image", "text.jpg": "not a readable image",
                "bomb.png": "10000x10000 = 100,000,000 pixels", "huge.png": "possible decompression bomb"}
    for name, fragment in expected.items():
        with pytest.raises(DataError) as exc:
            load_yolo_dataset(dataset, VICTIMS, DISASTERS, only={f"images/{name}"})
        assert f"images/{name}: " in str(exc.value) and fragment in str(exc.value)
    records, report = load_yolo_dataset(dataset, VICTIMS, DISASTERS, on_error="skip")
    assert len(records) == 3 and report.skipped == 5
    assert report.reasons == {UNREADABLE: 3, TOO_LARGE: 2}
    assert "5 image(s) skipped, 5 problem(s) (3 unreadable image, 2 image too large)" in report.summary()


def outside_file(tmp_path, name: str, content: bytes) -> Path:
    path = tmp_path / "elsewhere" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def test_symlinks_leaving_the_data_folder_are_refused_unread(dataset, tmp_path):
    secret = outside_file(tmp_path, "secret.jpg", (dataset / "images" / "00000.jpg").read_bytes())
    (dataset / "images" / "leak.jpg").symlink_to(secret)
    passwd = outside_file(tmp_path, "passwd", b"root:x:0:0:root:/root:/bin/bash\n")
    (dataset / "labels" / "00002.txt").symlink_to(passwd)
    with pytest.raises(DataError) as exc:
        load_yolo_dataset(dataset, VICTIMS, DISASTERS)
    assert str(exc.value).startswith(f"{dataset / 'labels' / '00002.txt'}: label file resolves to {passwd}, "
                                     f"outside the data folder {dataset}; refused, not read")
    assert exc.value.reason == OUTSIDE
    records, report = load_yolo_dataset(dataset, VICTIMS, DISASTERS, on_error="skip")
    assert [Path(r.image_path).name for r in records] == ["00000.jpg", "00001.jpg"]
    assert report.reasons == {OUTSIDE: 2} and "leak.jpg: image resolves to" in report.summary()
    assert "root:x" not in report.summary()  # the file was never read


def test_symlinks_inside_the_folder_and_a_linked_root_are_fine(dataset, tmp_path):
    (dataset / "images" / "alias.jpg").symlink_to(dataset / "images" / "00000.jpg")
    linked_root = tmp_path / "linked"
    linked_root.symlink_to(dataset)  # like a workspace's data -> repository data link
    records, report = load_yolo_dataset(linked_root, VICTIMS, DISASTERS)
    assert len(records) == 4 and report.clean


def test_non_regular_files_are_refused_without_opening(tmp_path):
    fifo = tmp_path / "images" / "pipe.jpg"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # opening it for reading would block forever
    with pytest.raises(DataError, match="pipe.jpg: image is not a regular file; refused") as exc:
        inside_folder(fifo, tmp_path, "image")
    assert exc.value.reason == UNREADABLE


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "images/../../x.jpg", "C:/data/x.jpg"])
def test_table_paths_leaving_the_data_folder_are_refused(tmp_path, path):
    tsv = write(tmp_path / "t.tsv", f"image\tdisaster_class\nimages/a.jpg\tfire\n{path}\tfire\n")
    table = parse_class_table(tsv, DISASTERS)
    assert table.classes == {"images/a.jpg": 1} and len(table.errors) == 1
    key, err = table.errors[0]
    assert key is None and err.reason == OUTSIDE
    assert f"t.tsv: line 3: image path {path!r} must be relative to the data root" in str(err)


def test_table_row_the_csv_module_rejects_is_one_bad_row(tmp_path):
    tsv = write(tmp_path / "t.tsv", "image\tdisaster_class\nimages/a.jpg\tfire\n"
                f"images/b.jpg\t{'x' * 200_000}\nimages/c.jpg\tnormal\n")
    table = parse_class_table(tsv, DISASTERS)
    assert table.classes == {"images/a.jpg": 1, "images/c.jpg": 4}
    assert len(table.errors) == 1 and "t.tsv: line 3: not a '\\t'-delimited row" in str(table.errors[0][1])


def test_listed_images_that_are_not_there_are_counted(dataset):
    only = {"images/00000.jpg": "m.tsv: line 2", "images/gone.jpg": "m.tsv: line 3"}
    with pytest.raises(DataError, match=r"m\.tsv: line 3: image images/gone\.jpg not found in") as exc:
        load_yolo_dataset(dataset, VICTIMS, DISASTERS, only=only)
    assert exc.value.reason == MISSING
    records, report = load_yolo_dataset(dataset, VICTIMS, DISASTERS, on_error="skip", only=only)
    assert len(records) == 1 and report.skipped == 1 and report.reasons == {MISSING: 1}
