"""The labeling page's server over real HTTP on loopback: it lists a human queue (written with a
tiny real model's pre-annotations), serves its images, saves an answer into exactly the files
the site ingests, refuses a bad answer with the reason and writes nothing, and asks for the
token on every queue request when it has one."""
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from src.active_learning.oracles import HumanOracle, ingest_answers, request_labels
from src.active_learning.pool import LabelPool
from src.labeling.server import check_binding, create_app, encode_mask, serve
from tests.test_al_pool import DISASTER, VICTIM, tiny_data, write_pool_site  # noqa: F401 (fixture)
from tests.tiny_federation import REPO

QUEUED = 4


@pytest.fixture(scope="module")
def queued_site(tiny_data, tmp_path_factory, tiny_config):  # noqa: F811
    """A site's folder, pool state and round-1 human queue of QUEUED images, predictions from a tiny model."""
    import keras

    from src.evaluation import Predictor
    from src.model import build_model

    root = tmp_path_factory.mktemp("label_queue")
    pool = LabelPool.from_site(write_pool_site(root / "site1", tiny_data), root / "al_site1.json", VICTIM, DISASTER)
    keras.utils.set_random_seed(0)
    oracle = HumanOracle(root / "queue", VICTIM, DISASTER, pool.tasks,
                         predictor=Predictor(build_model(tiny_config), tiny_config))
    request_labels(pool, oracle, list(pool.unlabeled_records())[:QUEUED], 1, "random")
    return root


def fresh_copy(queued: Path, tmp_path: Path) -> tuple[Path, LabelPool]:
    """A copy of a queued site for one test: (its queue folder, its pool)."""
    shutil.copytree(queued, tmp_path / "site")
    root = tmp_path / "site"
    return root / "queue", LabelPool.from_site(root / "site1", root / "al_site1.json", VICTIM, DISASTER)


@pytest.fixture
def site(queued_site, tmp_path):
    return fresh_copy(queued_site, tmp_path)


class Server:
    """create_app served on a free loopback port in a thread, for real HTTP requests."""

    def __init__(self, queue: Path, token=None, min_score=0.0, mask_classes=()):
        self.app = create_app(HumanOracle(queue, VICTIM, DISASTER, mask_classes=mask_classes), "site1", token=token,
                              min_score=min_score)
        started = threading.Event()

        def ready(server):
            self.server, self.url = server, f"http://127.0.0.1:{server.server_port}"
            started.set()
        self.thread = threading.Thread(target=serve, args=(self.app, "127.0.0.1", 0, ready), daemon=True)
        self.thread.start()
        assert started.wait(10), "the server did not start"

    def request(self, path: str, body=None, headers=None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={
            **({"Content-Type": "application/json"} if data else {}), **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, path: str, body=None, headers=None) -> tuple[int, dict]:
        status, content = self.request(path, body, headers)
        return status, json.loads(content)

    def stop(self):
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def server(site):
    running = Server(site[0])
    yield running
    running.stop()


def queue_rows(queue: Path) -> list[dict]:
    with open(queue / "1" / "queue.csv", newline="") as f:
        return list(csv.DictReader(f))


def item_path(row: dict) -> str:
    return f"/api/item?round=1&key={urllib.request.quote(row['key'])}"


def test_the_page_lists_the_queue_with_the_models_guesses_and_serves_its_images(site, server):
    queue, _ = site
    rows = queue_rows(queue)
    status, listing = server.json("/api/queue")
    assert status == 200 and (listing["labeled"], listing["total"]) == (0, QUEUED)
    assert [i["key"] for i in listing["items"]] == [r["key"] for r in rows]
    assert all(i["status"] == "waiting" and i["wants_boxes"] and i["wants_class"] for i in listing["items"])
    assert listing["disaster_classes"] == DISASTER and listing["victim_classes"] == VICTIM

    predictions = json.loads((queue / "1" / "predictions.json").read_text())["images"]
    assert sorted(predictions) == sorted(r["key"] for r in rows)
    for row in rows:
        status, shown = server.json(item_path(row))
        guess = predictions[row["key"]]
        assert status == 200 and shown["source"] == "model"
        assert shown["disaster_class"] == guess["disaster_class"] == max(guess["disaster_probs"],
                                                                         key=guess["disaster_probs"].get)
        assert [b[:4] for b in shown["boxes"]] == guess["boxes"] and len(guess["boxes"]) > 0
        assert all(0 <= b[0] <= b[2] <= int(row["width"]) and 0 <= b[1] <= b[3] <= int(row["height"])
                   for b in guess["boxes"])
        status, image = server.request(f"/api/image?round=1&key={urllib.request.quote(row['key'])}")
        assert status == 200 and image == Path(row["image"]).read_bytes()
    status, page = server.request("/")
    assert status == 200 and b"static/label.js" in page
    assert server.request("/static/label.js")[0] == 200
    status, missing = server.json("/api/item?round=1&key=images/not_queued.jpg")
    assert status == 404 and "no queued image" in missing["error"]


def test_a_saved_answer_is_written_as_the_site_reads_it_and_ingested_at_its_next_round(site, server):
    queue, pool = site
    row = queue_rows(queue)[1]
    width, height = int(row["width"]), int(row["height"])
    boxes = [[10, 12, 30, 40, "person"], [width - 20, height - 10, width - 2, height - 1, "person"]]
    status, saved = server.json("/api/answer", {"round": 1, "key": row["key"], "boxes": boxes,
                                                "disaster_class": "flooded_areas"})
    assert status == 200 and (saved["labeled"], saved["total"]) == (1, QUEUED)
    lines = (queue / "1" / "labels" / row["label_file"]).read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("0 ") for line in lines)
    sheet = {r["image"]: r for r in csv.DictReader(open(queue / "1" / "classes.csv", newline=""))}
    assert (sheet[row["key"]]["disaster_class"], sheet[row["key"]]["done"]) == ("flooded_areas", "1")
    assert all(r["done"] == "" for k, r in sheet.items() if k != row["key"])
    status, shown = server.json(item_path(row))
    assert shown["source"] == "answer" and shown["disaster_class"] == "flooded_areas"
    np.testing.assert_allclose([b[:4] for b in shown["boxes"]], [b[:4] for b in boxes], atol=1e-3)

    # the site's next round: its own HumanOracle over the same folder takes the answer
    oracle = HumanOracle(queue, VICTIM, DISASTER, pool.tasks)
    assert ingest_answers(pool, oracle, 2) == [row["key"]] and oracle.problems.clean
    labeled = {r.image_path: r for r in pool.labeled_records()}[str(Path(row["image"]))]
    np.testing.assert_allclose(labeled.boxes, [b[:4] for b in boxes], atol=1e-3)
    assert labeled.disaster_class == DISASTER.index("flooded_areas")
    status, listing = server.json("/api/queue")
    assert [i["status"] for i in listing["items"] if i["key"] == row["key"]] == ["taken"]
    status, again = server.json("/api/answer", {"round": 1, "key": row["key"], "boxes": [], "disaster_class": "fire"})
    assert status == 422 and "taken by the site already" in again["error"]


@pytest.mark.parametrize("boxes, disaster, reason", [
    ([[10, 10, 9000, 40, "person"]], "fire", r"line 1: normalised coordinates .* outside \[0, 1\]"),
    ([[10, 10, 10, 40, "person"]], "fire", "line 1: box width/height must be positive"),
    ([[10, 10, 20, 40, "dog"]], "fire", "box 1: unknown victim class 'dog'"),
    ([], "volcano", "classes.csv: line 3: unknown class 'volcano'"),
    ([], "", "classes.csv: line 3: images/.* is marked done but its disaster_class is empty"),
])
def test_a_bad_answer_is_refused_with_the_reason_and_nothing_is_written(site, server, boxes, disaster, reason):
    import re

    queue, _ = site
    row = queue_rows(queue)[1]
    before = {p: p.read_bytes() for p in (queue / "1").rglob("*") if p.is_file()}
    status, refused = server.json("/api/answer", {"round": 1, "key": row["key"], "boxes": boxes,
                                                  "disaster_class": disaster})
    assert status == 422 and re.search(reason, refused["error"]), refused
    assert ".partial" not in refused["error"], "the reason names the files the answer goes to"
    after = {p: p.read_bytes() for p in (queue / "1").rglob("*") if p.is_file()}
    assert after == before
    assert server.json("/api/queue")[1]["labeled"] == 0


def test_a_mask_is_refused_where_the_queue_asks_for_none(site, server):
    queue, _ = site
    row = queue_rows(queue)[1]
    before = {p: p.read_bytes() for p in (queue / "1").rglob("*") if p.is_file()}
    mask = np.zeros((int(row["height"]), int(row["width"])), np.uint8)
    status, refused = server.json("/api/answer", {"round": 1, "key": row["key"], "boxes": [], "disaster_class": "fire",
                                                  "mask": encode_mask(mask)})
    assert status == 422 and "this site does not label masks; no mask is asked for" in refused["error"], refused
    assert {p: p.read_bytes() for p in (queue / "1").rglob("*") if p.is_file()} == before


def test_with_a_token_every_queue_request_must_carry_it(site):
    queue, _ = site
    running = Server(queue, token="s3cret-token")
    try:
        assert running.request("/api/queue")[0] == 403
        assert running.request("/api/queue", headers={"X-Label-Token": "wrong"})[0] == 403
        assert running.request("/api/queue", headers={"X-Label-Token": "s3cret-token"})[0] == 200
        key = urllib.request.quote(queue_rows(queue)[0]["key"])
        assert running.request(f"/api/image?round=1&key={key}")[0] == 403
        assert running.request(f"/api/image?round=1&key={key}&token=s3cret-token")[0] == 200
        status, _ = running.json("/api/answer", {"round": 1, "key": queue_rows(queue)[0]["key"], "boxes": [],
                                                 "disaster_class": "fire"})
        assert status == 403 and (queue / "1" / "classes.csv").read_text().count(",1\n") == 0
        assert running.request("/")[0] == 200, "the page's own code is public; the queue is not"
    finally:
        running.stop()
    with pytest.raises(ValueError, match="give it a token"):
        check_binding("0.0.0.0", None)


def test_exposed_beyond_loopback_the_command_generates_a_token_and_prints_it(site):
    queue, _ = site
    proc = subprocess.Popen([sys.executable, "-m", "src.cli.label", "serve", "--site", "site1", "--queue", str(queue),
                             "--host", "0.0.0.0", "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        assert "?token=" in line, line
        url = line.split()[-1]
        token = url.split("?token=")[1]
        assert len(token) >= 20
        base = url.split("/?token=")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/api/queue", timeout=10)
        assert refused.value.code == 403
        with urllib.request.urlopen(f"{base}/api/queue?token={token}", timeout=10) as response:
            assert json.loads(response.read())["total"] == QUEUED
    finally:
        proc.kill()
        proc.wait(10)


def test_the_command_finds_the_sites_queue_and_classes_in_its_workspace_plan(tmp_path):
    from argparse import Namespace

    from src.cli.label import site_oracle
    from tests.tiny_federation import write_tiny_plan

    write_tiny_plan(tmp_path, tmp_path / "sites", rounds=1, sites=("site1",), runner={"active_learning": {
        "oracle": "human", "budget": 1, "queue": "labels/{site}"}})
    args = Namespace(workspace=str(tmp_path), site="site1", queue=None, config=None, set=None)
    with pytest.raises(ValueError, match="labels/site1: no label queue of site site1 here"):
        site_oracle(args)
    (tmp_path / "labels" / "site1").mkdir(parents=True)
    oracle = site_oracle(args)
    assert oracle.queue_dir == tmp_path / "labels" / "site1"
    assert (oracle.victim_classes, oracle.disaster_classes) == (VICTIM, DISASTER)
