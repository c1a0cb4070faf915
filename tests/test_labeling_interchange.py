"""A site's queue through Label Studio and CVAT and back: the exports carry the model's
pre-annotations in each tool's format, the tools' exports come back as answers the site
ingests, and a wrong answer is refused with the task and the reason, nothing written."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from src.active_learning.oracles import HumanOracle, ingest_answers
from src.cli.label import main
from src.data.formats import read_coco
from tests.test_al_pool import DISASTER, VICTIM, tiny_data  # noqa: F401 (fixture)
from tests.test_labeling_server import QUEUED, queue_rows, queued_site, site  # noqa: F401 (fixtures)


def cli(queue: Path, *args) -> int:
    return main([args[0], "--site", "site1", "--queue", str(queue), "--min-score", "0", *args[1:]])


def queue_files(queue: Path) -> dict:
    return {p: p.read_bytes() for p in (queue / "1").rglob("*") if p.is_file()}


def test_label_studio_round_trip(site, tmp_path, capsys):
    queue, pool = site
    rows = queue_rows(queue)
    predictions = json.loads((queue / "1" / "predictions.json").read_text())["images"]
    assert cli(queue, "export-labelstudio", "--out", str(tmp_path / "tasks.json")) == 0
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    config = (tmp_path / "label_studio_config.xml").read_text()
    assert '<RectangleLabels name="victims" toName="image">' in config and '<Choice value="fire"/>' in config
    assert [t["data"]["key"] for t in tasks] == [r["key"] for r in rows]
    for task, row in zip(tasks, rows):
        assert task["data"]["image"] == "/data/local-files/?d=" + row["image"].lstrip("/")
        result = task["predictions"][0]["result"]
        rects = [r for r in result if r["type"] == "rectanglelabels"]
        w, h = int(row["width"]), int(row["height"])
        back = [[r["value"]["x"] * w / 100, r["value"]["y"] * h / 100, (r["value"]["x"] + r["value"]["width"]) * w / 100,
                 (r["value"]["y"] + r["value"]["height"]) * h / 100] for r in rects]
        np.testing.assert_allclose(back, predictions[row["key"]]["boxes"], atol=1e-6)
        assert [r["value"]["choices"] for r in result if r["type"] == "choices"] == \
            [[predictions[row["key"]]["disaster_class"]]]

    # What Label Studio's JSON export gives back: task 0 the labeler kept one model box, moved,
    # and picked `fire`; task 1 no victims, `normal`; task 2 cancelled; task 3 untouched
    exported = json.loads(json.dumps(tasks))
    first = exported[0]["predictions"][0]["result"][0]
    first["value"].update(x=10.0, y=20.0, width=25.0, height=30.0)
    exported[0]["annotations"] = [{"id": 1, "was_cancelled": False, "updated_at": "2026-12-07T10:00:00Z",
                                   "result": [first, {"from_name": "disaster", "to_name": "image", "type": "choices",
                                                      "value": {"choices": ["fire"]}}]}]
    exported[1]["annotations"] = [{"id": 2, "was_cancelled": False, "result": [
        {"from_name": "disaster", "to_name": "image", "type": "choices", "value": {"choices": ["normal"]}}]}]
    exported[2]["annotations"] = [{"id": 3, "was_cancelled": True, "result": []}]
    for n, task in enumerate(exported):
        task["id"] = 100 + n
    (tmp_path / "export.json").write_text(json.dumps(exported))
    assert cli(queue, "import-labelstudio", str(tmp_path / "export.json")) == 0
    assert "saved 2 answer(s), 2 task(s) not annotated, 0 refused" in capsys.readouterr().out

    oracle = HumanOracle(queue, VICTIM, DISASTER, pool.tasks)
    assert sorted(ingest_answers(pool, oracle, 2)) == sorted([rows[0]["key"], rows[1]["key"]])
    labeled = {r.image_path: r for r in pool.labeled_records()}
    w, h = int(rows[0]["width"]), int(rows[0]["height"])
    first_record = labeled[rows[0]["image"]]
    np.testing.assert_allclose(first_record.boxes, [[0.1 * w, 0.2 * h, 0.35 * w, 0.5 * h]], atol=1e-3)
    assert first_record.disaster_class == DISASTER.index("fire")
    second = labeled[rows[1]["image"]]
    assert second.boxes.shape == (0, 4) and second.has_boxes and second.disaster_class == DISASTER.index("normal")


def test_a_wrong_label_studio_answer_is_refused_with_its_task_and_nothing_is_written(site, tmp_path, capsys):
    queue, _ = site
    rows = queue_rows(queue)
    box = {"from_name": "victims", "to_name": "image", "type": "rectanglelabels",
           "value": {"x": 90.0, "y": 10.0, "width": 40.0, "height": 20.0, "rectanglelabels": ["person"]}}
    choice = {"from_name": "disaster", "to_name": "image", "type": "choices", "value": {"choices": ["volcano"]}}
    exported = [{"id": 7, "data": {"key": rows[0]["key"], "round": 1}, "annotations": [{"result": [box]}]},
                {"id": 8, "data": {"key": rows[1]["key"], "round": 1}, "annotations": [{"result": [choice]}]},
                {"id": 9, "data": {"key": "images/elsewhere.jpg", "round": 1}, "annotations": [{"result": []}]}]
    (tmp_path / "export.json").write_text(json.dumps(exported))
    before = queue_files(queue)
    assert cli(queue, "import-labelstudio", str(tmp_path / "export.json")) == 2
    out = capsys.readouterr()
    assert "saved 0 answer(s), 0 task(s) not annotated, 3 refused" in out.out
    assert "task 0 (id 7)" in out.out and "normalised coordinates" in out.out
    assert "unknown class 'volcano'" in out.out
    assert "task 2 (id 9): data.key 'images/elsewhere.jpg'" in out.out
    assert "error: 3 answer(s) refused" in out.err
    assert queue_files(queue) == before


def test_cvat_coco_round_trip(site, tmp_path, capsys):
    queue, pool = site
    rows = queue_rows(queue)
    predictions = json.loads((queue / "1" / "predictions.json").read_text())["images"]
    assert cli(queue, "export-coco", "--out", str(tmp_path / "coco.json"), "--copy-images", str(tmp_path / "task")) == 0
    coco = read_coco(tmp_path / "coco.json", VICTIM)
    assert sorted(coco.images) == sorted(r["key"] for r in rows) and not coco.bad_images
    for row in rows:
        assert (tmp_path / "task" / row["key"]).read_bytes() == Path(row["image"]).read_bytes()
        np.testing.assert_allclose(coco.images[row["key"]].boxes, predictions[row["key"]]["boxes"], atol=1e-4)

    # CVAT's COCO export: file names as uploaded (no folder), its own ids; image 0 edited to one
    # box, image 1 without boxes (no victims), images 2 and 3 not in this export
    data = json.loads((tmp_path / "coco.json").read_text())
    keep = {img["id"]: img for img in data["images"][:2]}
    for img in keep.values():
        img["file_name"] = Path(img["file_name"]).name
    data["images"] = list(keep.values())
    data["annotations"] = [{"id": 1, "image_id": data["images"][0]["id"], "category_id": 1, "iscrowd": 0,
                            "bbox": [4, 6, 20, 24], "area": 480, "attributes": {"occluded": False}}]
    (tmp_path / "cvat.json").write_text(json.dumps(data))
    # COCO carries no disaster class: image 0's is on the sheet, image 1's is missing
    with open(queue / "1" / "classes.csv", newline="") as f:
        sheet = list(csv.DictReader(f))
    sheet[0]["disaster_class"] = "traffic_incident"
    with open(queue / "1" / "classes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "disaster_class", "done"])
        writer.writeheader()
        writer.writerows(sheet)
    assert cli(queue, "import-coco", str(tmp_path / "cvat.json")) == 2
    out = capsys.readouterr().out
    assert "saved 1 answer(s)" in out and "1 refused" in out
    assert f"{rows[1]['key']} needs a disaster class, which COCO does not carry" in out

    oracle = HumanOracle(queue, VICTIM, DISASTER, pool.tasks)
    assert ingest_answers(pool, oracle, 2) == [rows[0]["key"]]
    record = {r.image_path: r for r in pool.labeled_records()}[rows[0]["image"]]
    np.testing.assert_allclose(record.boxes, [[4, 6, 24, 30]], atol=1e-3)
    assert record.disaster_class == DISASTER.index("traffic_incident")


def test_a_cvat_export_of_other_images_or_sizes_is_refused(site, tmp_path, capsys):
    queue, _ = site
    rows = queue_rows(queue)
    data = {"images": [{"id": 1, "file_name": rows[0]["key"], "width": int(rows[0]["width"]) + 1,
                        "height": int(rows[0]["height"])},
                       {"id": 2, "file_name": "images/other.jpg", "width": 10, "height": 10}],
            "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "cvat.json").write_text(json.dumps(data))
    before = queue_files(queue)
    assert cli(queue, "import-coco", str(tmp_path / "cvat.json")) == 2
    out = capsys.readouterr().out
    assert "disagrees with the image file" in out and "images/other.jpg is no waiting image" in out
    assert queue_files(queue) == before
