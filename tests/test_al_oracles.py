"""Oracles: the simulated one reveals exactly the held-back labels; the human one round-trips
through a queue folder (queue.csv, YOLO stubs, classes.csv) without ever blocking."""
import csv
import re
import time
from pathlib import Path

import numpy as np
import pytest

from src.active_learning.oracles import HumanOracle, SimulatedOracle, ingest_answers, request_labels
from src.active_learning.pool import LabelPool
from src.data.manifests import load_site
from tests.test_al_pool import DISASTER, SEED_COUNT, VICTIM, site_folder, tiny_data  # noqa: F401 (fixtures)


@pytest.fixture
def pool(site_folder, tmp_path):  # noqa: F811
    return LabelPool.from_site(site_folder, tmp_path / "state" / "al_site1.json", VICTIM, DISASTER)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mark(sheet: Path, answers: dict) -> None:
    """The annotator's edit of classes.csv: {key: (disaster_class, done)}."""
    rows = read_csv(sheet)
    for row in rows:
        if row["image"] in answers:
            row["disaster_class"], row["done"] = answers[row["image"]]
    with open(sheet, "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "disaster_class", "done"])
        writer.writeheader()
        writer.writerows(rows)


def test_simulated_oracle_reveals_exactly_the_held_back_labels(site_folder, pool):  # noqa: F811
    truth = {Path(r.image_path).name: r for r in load_site(site_folder, VICTIM, DISASTER).pool}
    keys = list(pool.unlabeled_records())[:3]
    oracle = SimulatedOracle(pool.held_back())
    request_labels(pool, oracle, keys, 1, "random")
    answers = oracle.collect()
    assert sorted(answers) == sorted(keys)
    for key, answer in answers.items():
        original = truth[Path(key).name]
        np.testing.assert_array_equal(answer.boxes, original.boxes)
        np.testing.assert_array_equal(answer.victim_classes, original.victim_classes)
        assert (answer.disaster_class, answer.has_boxes, answer.has_class) == \
            (original.disaster_class, original.has_boxes, original.has_class)
    assert ingest_answers(pool, oracle, 1) == keys and oracle.collect() == {}
    for record in pool.labeled_records()[SEED_COUNT:]:
        original = truth[Path(record.image_path).name]
        np.testing.assert_array_equal(record.boxes, original.boxes)
        assert record.disaster_class == original.disaster_class and record.has_boxes and record.has_class
    with pytest.raises(ValueError, match="no held-back labels"):
        oracle.request({"images/99999.jpg": None}, 2)


def test_human_round_trip_queue_answers_a_malformed_one_and_its_fix(pool, tmp_path):
    queue_dir = tmp_path / "workspace" / "al_queue"
    oracle = HumanOracle(queue_dir, VICTIM, DISASTER, pool.tasks)
    keys = list(pool.unlabeled_records())[:3]
    request_labels(pool, oracle, keys, 2, "hybrid")

    folder = queue_dir / "2"
    queue = read_csv(folder / "queue.csv")
    assert [row["key"] for row in queue] == keys
    assert all(Path(row["image"]).is_absolute() and Path(row["image"]).is_file() for row in queue)
    assert all(row["boxes"] == "1" and row["class"] == "1" for row in queue)
    stubs = {row["key"]: folder / "labels" / row["label_file"] for row in queue}
    assert all(stub.is_file() and stub.read_text() == "" for stub in stubs.values())
    assert (folder / "labels" / "classes.txt").read_text() == "person\n"
    assert read_csv(folder / "classes.csv") == [{"image": k, "disaster_class": "", "done": ""} for k in keys]

    started = time.monotonic()
    assert oracle.collect() == {} and ingest_answers(pool, oracle, 2) == []  # nothing answered yet
    assert time.monotonic() - started < 1.0 and oracle.problems.clean

    a, b, c = keys
    stubs[a].write_text("0 0.5 0.5 0.25 0.5\n")  # one victim; b stays empty: "no victims"
    stubs[c].write_text("0 0.5 0.5 0.1 0.1\n0 0.5 abc 0.1 0.1\n")
    mark(folder / "classes.csv", {a: ("fire", "1"), b: ("normal", "x"), c: ("flooded_areas", "yes")})
    answers = oracle.collect()
    assert sorted(answers) == sorted([a, b])
    width, height = (int(v) for v in (queue[0]["width"], queue[0]["height"]))
    np.testing.assert_allclose(answers[a].boxes, [[0.375 * width, 0.25 * height, 0.625 * width, 0.75 * height]],
                               rtol=1e-6)
    assert answers[a].victim_classes.tolist() == [0] and answers[a].disaster_class == DISASTER.index("fire")
    assert answers[b].boxes.shape == (0, 4) and answers[b].has_boxes
    assert answers[b].disaster_class == DISASTER.index("normal") and answers[b].has_class
    assert len(oracle.problems.messages) == 1
    assert f"{stubs[c]}: line 2: non-numeric field" in oracle.problems.messages[0]

    assert ingest_answers(pool, oracle, 3) == [a, b]
    assert pool.counts()["acquired"] == 2 and list(pool.pending) == [c]
    assert (folder / "ingested.txt").read_text().split() == sorted([a, b])
    assert oracle.collect() == {}, "taken answers are not delivered twice"
    assert "line 2" in oracle.problems.messages[0]  # still in the queue, still reported

    stubs[c].write_text("0 0.5 0.5 0.1 0.1\n")
    assert ingest_answers(pool, oracle, 4) == [c] and oracle.problems.clean
    assert pool.pending == {} and pool.acquisition(c)["round"] == 4
    assert pool.acquisition(c)["requested_round"] == 2 and pool.acquisition(c)["oracle"] == "human"
    labeled = {Path(r.image_path).name: r for r in pool.labeled_records()}
    assert labeled[Path(a).name].disaster_class == DISASTER.index("fire")
    np.testing.assert_allclose(labeled[Path(a).name].boxes, answers[a].boxes)
    assert oracle.collect() == {}


@pytest.mark.parametrize("label, disaster, expected", [
    ("1 0.5 0.5 0.2 0.2", "fire", r"line 1: class id 1 out of range \[0, 1\)"),
    ("0 1.4 0.5 0.2 0.2", "fire", "line 1: normalised coordinates"),
    ("0 0.5 0.5 0.2", "fire", "line 1: expected 5 fields"),
    ("", "volcano", "classes.csv: line 2: unknown class 'volcano'"),
    ("", "", "classes.csv: line 2: images/.* is marked done but its disaster_class is empty"),
])
def test_human_answers_are_checked_like_the_readers_check_data(pool, tmp_path, label, disaster, expected):
    oracle = HumanOracle(tmp_path / "queue", VICTIM, DISASTER, pool.tasks)
    key = list(pool.unlabeled_records())[0]
    request_labels(pool, oracle, [key], 1, "random")
    row = read_csv(tmp_path / "queue" / "1" / "queue.csv")[0]
    (tmp_path / "queue" / "1" / "labels" / row["label_file"]).write_text(label + "\n")
    mark(tmp_path / "queue" / "1" / "classes.csv", {key: (disaster, "1")})
    assert oracle.collect() == {}
    assert len(oracle.problems.messages) == 1
    assert re.search(expected, oracle.problems.messages[0]), oracle.problems.messages


def test_a_boxes_only_site_is_asked_for_boxes_only_and_requests_are_idempotent(pool, tmp_path):
    oracle = HumanOracle(tmp_path / "queue", VICTIM, DISASTER, tasks=("boxes",))
    assert oracle.collect() == {}  # no queue folder yet
    records = dict(list(pool.unlabeled_records().items())[:2])
    oracle.request(records, 7)
    folder = tmp_path / "queue" / "7"
    rows = read_csv(folder / "queue.csv")
    assert all(row["boxes"] == "1" and row["class"] == "0" for row in rows)
    stub = folder / "labels" / rows[0]["label_file"]
    stub.write_text("0 0.5 0.5 0.5 0.5\n")
    oracle.request(records, 7)  # a restarted collaborator asking again: the annotator's work is kept
    assert stub.read_text() == "0 0.5 0.5 0.5 0.5\n"
    oracle.request(dict(list(records.items())[1:]), 7)  # ... for those not answered yet: kept too
    assert stub.read_text() == "0 0.5 0.5 0.5 0.5\n" and read_csv(folder / "queue.csv") == rows
    other = dict(list(pool.unlabeled_records().items())[2:3])
    with pytest.raises(ValueError, match="already queued other images"):
        oracle.request({**records, **other}, 7)
    mark(folder / "classes.csv", {rows[0]["key"]: ("", "1")})
    answers = oracle.collect()
    assert list(answers) == [rows[0]["key"]] and answers[rows[0]["key"]].tasks == ("boxes",)
    assert answers[rows[0]["key"]].disaster_class == -1 and oracle.problems.clean
