"""A site's labeled set and unlabeled pool: seed, hidden pool labels, the atomic state file, restarts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.active_learning.oracles import SimulatedOracle, ingest_answers, request_labels
from src.active_learning.pool import LabelPool
from src.settings import load_config
from src.data.manifests import load_site, read_manifest, write_site
from src.data.formats import DataError
from tests.tiny_federation import REPO, write_tiny_site_split

CFG = load_config()
VICTIM, DISASTER = CFG["classes"]["victim"], CFG["classes"]["disaster"]
SEED_COUNT = 3


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """(data root, train rows of the one site) of a small real synthetic split."""
    root = tmp_path_factory.mktemp("al_data")
    write_tiny_site_split(root, num_images=20, num_sites=1, labels=("both",), seed=4)
    rows = read_manifest(root / "splits" / "site1" / "manifest.tsv")
    return (root / "data").resolve(), [row for row in rows if row[1] == "train"]


def write_pool_site(folder: Path, tiny_data, drop: tuple = ()) -> Path:
    """A site whose first SEED_COUNT train images are labeled, the rest its pool (minus `drop`)."""
    data_root, rows = tiny_data
    rows = [(key, "train" if i < SEED_COUNT else "pool", int(boxes), int(cls))
            for i, (key, _, boxes, cls) in enumerate(rows) if key not in drop]
    write_site(folder, "site1", str(data_root), rows)
    return folder


@pytest.fixture
def site_folder(tmp_path, tiny_data):
    return write_pool_site(tmp_path / "site1", tiny_data)


def labels_of(records) -> list:
    return [(Path(r.image_path).name, r.boxes.tolist(), r.victim_classes.tolist(), r.disaster_class,
             r.has_boxes, r.has_class) for r in records]


def label_step(pool: LabelPool, keys, round_num=1) -> list[str]:
    oracle = SimulatedOracle(pool.held_back())
    request_labels(pool, oracle, keys, round_num, "random")
    return ingest_answers(pool, oracle, round_num)


def test_seed_is_the_train_rows_and_the_pool_hides_its_labels(site_folder, tmp_path):
    site = load_site(site_folder, VICTIM, DISASTER)
    pool = LabelPool.from_site(site_folder, tmp_path / "state" / "al_site1.json", VICTIM, DISASTER)
    assert labels_of(pool.labeled_records()) == labels_of(site.train)
    assert len(site.train) == SEED_COUNT and pool.tasks == ("boxes", "class")
    unlabeled = pool.unlabeled_records()
    assert sorted(unlabeled) == sorted(pool.held_back()) and len(unlabeled) == len(site.pool) > 3
    assert any(len(r.boxes) for r in site.pool) and all(r.has_class for r in site.pool)  # the truth is there
    for record in unlabeled.values():
        assert not record.has_boxes and not record.has_class and record.disaster_class == -1
        assert record.boxes.shape == (0, 4) and record.victim_classes.shape == (0,)
    counts = pool.counts()
    assert counts == {"labeled": SEED_COUNT, "seed": SEED_COUNT, "acquired": 0, "pool": len(site.pool),
                      "pending": 0, "labeled_boxes": SEED_COUNT, "labeled_class": SEED_COUNT}


def test_state_file_is_replaced_atomically_after_every_change(site_folder, tmp_path):
    state_path = tmp_path / "state" / "al_site1.json"
    pool = LabelPool.from_site(site_folder, state_path, VICTIM, DISASTER)
    state = json.loads(state_path.read_text())
    assert state == {"version": 1, "site": "site1", "seed": pool.labeled_keys, "acquired": {}, "pending": {},
                     "history": []}
    inode = state_path.stat().st_ino
    keys = list(pool.unlabeled_records())[:2]
    truth = pool.held_back()

    pool.mark_requested(keys, 2, "hybrid", "simulated")
    state = json.loads(state_path.read_text())
    assert state["pending"] == {k: {"round": 2, "strategy": "hybrid", "oracle": "simulated"} for k in keys}
    assert state_path.stat().st_ino != inode, "the state must be replaced by a rename, not rewritten in place"
    inode = state_path.stat().st_ino
    assert set(keys).isdisjoint(pool.unlabeled_records())  # waiting for an answer: not offered again

    oracle = SimulatedOracle(truth)
    oracle.request(pool.pending_records(), 2)
    assert pool.add_answers(oracle.collect(), 3) == keys
    state = json.loads(state_path.read_text())
    assert state_path.stat().st_ino != inode
    assert state["pending"] == {} and list(state["acquired"]) == keys
    entry = state["acquired"][keys[0]]
    assert entry["round"] == 3 and entry["requested_round"] == 2 and entry["strategy"] == "hybrid"
    assert entry["oracle"] == "simulated" and entry["tasks"] == ["boxes", "class"]
    assert entry["boxes"] == truth[keys[0]].boxes.tolist()
    assert entry["disaster_class"] == DISASTER[truth[keys[0]].disaster_class]
    assert entry["victim_classes"] == [VICTIM[c] for c in truth[keys[0]].victim_classes]
    assert [h["event"] for h in state["history"]] == ["requested", "labeled"]
    assert state["history"][1]["keys"] == keys
    assert not [p.name for p in state_path.parent.iterdir() if p.name != state_path.name], "partial file left"

    labeled = pool.labeled_records()
    assert len(labeled) == SEED_COUNT + 2 and labels_of(labeled[-2:]) == labels_of([truth[k] for k in keys])
    assert pool.counts()["acquired"] == 2 and pool.counts()["pool"] == len(truth) - 2
    assert pool.add_answers(oracle.collect(), 4) == []  # delivered twice: ignored, not relabeled
    with pytest.raises(ValueError, match="never requested"):
        pool.add_answers({list(pool.unlabeled_records())[0]: oracle.collect()[keys[0]]}, 4)


def test_restart_resumes_every_label_in_memory_and_in_a_fresh_process(site_folder, tmp_path):
    state_path = tmp_path / "al_site1.json"
    pool = LabelPool.from_site(site_folder, state_path, VICTIM, DISASTER)
    keys = list(pool.unlabeled_records())[1:4]
    assert label_step(pool, keys) == keys
    before, before_keys, before_counts = labels_of(pool.labeled_records()), pool.labeled_keys, pool.counts()
    del pool

    again = LabelPool.from_site(site_folder, state_path, VICTIM, DISASTER)
    assert labels_of(again.labeled_records()) == before and again.labeled_keys == before_keys
    assert again.counts() == before_counts and set(keys).isdisjoint(again.unlabeled_records())

    script = ("import json, sys; from pathlib import Path; from src.active_learning.pool import LabelPool\n"
              "p = LabelPool.from_site(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]))\n"
              "print(json.dumps([p.labeled_keys, [(Path(r.image_path).name, r.boxes.tolist(), "
              "r.victim_classes.tolist(), r.disaster_class, r.has_boxes, r.has_class) "
              "for r in p.labeled_records()]]))")
    done = run_pool_script(script, site_folder, state_path)
    assert done.returncode == 0, done.stderr
    fresh_keys, fresh_labels = json.loads(done.stdout)
    assert fresh_keys == before_keys and [tuple(x) for x in fresh_labels] == before


def run_pool_script(script: str, site_folder, state_path) -> subprocess.CompletedProcess:
    """script in a fresh Python process, argv: site folder, state file, victim and disaster classes."""
    return subprocess.run([sys.executable, "-c", script, str(site_folder), str(state_path), json.dumps(VICTIM),
                           json.dumps(DISASTER)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_pending_request_survives_a_restart(site_folder, tmp_path):
    state_path = tmp_path / "al_site1.json"
    pool = LabelPool.from_site(site_folder, state_path, VICTIM, DISASTER)
    keys = list(pool.unlabeled_records())[:2]
    pool.mark_requested(keys, 5, "emh", "human")
    again = LabelPool.from_site(site_folder, state_path, VICTIM, DISASTER)
    assert list(again.pending) == keys and again.pending[keys[0]]["round"] == 5
    assert sorted(again.pending_records()) == sorted(keys)
    assert all(not r.has_boxes and not r.has_class for r in again.pending_records().values())


def test_a_state_naming_an_image_the_site_no_longer_holds_is_a_clear_error(site_folder, tmp_path, tiny_data):
    state_path = tmp_path / "al_site1.json"
    pool = LabelPool.from_site(site_folder, state_path, VICTIM, DISASTER)
    gone = list(pool.unlabeled_records())[0]
    label_step(pool, [gone])
    shrunk = write_pool_site(tmp_path / "shrunk" / "site1", tiny_data, drop=(gone,))
    with pytest.raises(DataError) as err:
        LabelPool.from_site(shrunk, state_path, VICTIM, DISASTER)
    assert str(state_path) in str(err.value) and repr(gone) in str(err.value)
    assert "no longer in site site1's data" in str(err.value)


def test_a_broken_or_foreign_state_file_is_refused_by_name(site_folder, tmp_path):
    state_path = tmp_path / "al_site1.json"
    state_path.write_text('{"version": 1, "site": "site1", "acquired": {')
    with pytest.raises(DataError, match=f"{state_path}: line 1: not a valid state file"):
        LabelPool.from_site(site_folder, state_path, VICTIM, DISASTER)
    state_path.write_text(json.dumps({"version": 1, "site": "site2"}))
    with pytest.raises(DataError, match="state of site 'site2', not of 'site1'"):
        LabelPool.from_site(site_folder, state_path, VICTIM, DISASTER)
    pool = LabelPool.from_site(site_folder, tmp_path / "ok.json", VICTIM, DISASTER)
    key = list(pool.unlabeled_records())[0]
    label_step(pool, [key])
    state = json.loads((tmp_path / "ok.json").read_text())
    state["acquired"][key]["disaster_class"] = "volcano"
    (tmp_path / "ok.json").write_text(json.dumps(state))
    with pytest.raises(DataError, match=f"image '{key}': unknown class name.*volcano"):
        LabelPool.from_site(site_folder, tmp_path / "ok.json", VICTIM, DISASTER)
