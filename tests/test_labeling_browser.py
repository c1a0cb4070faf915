"""The labeling page in a real browser (headless Debian chromium driven by playwright; `make
setup-browser` installs it) over the queue a tiny federation's site wrote in the code path its
collaborator runs (the task runner the plan names, human oracle, the global model's guesses):

- a labeler drags a corner of a model box, adds a box, picks the class with its shortcut and
  saves; the answer files hold exactly that, and the site's next round ingests it;
- a box drawn off the image is refused on the page with the reason, nothing written;
- at a mask-only site, a labeler paints water over the model's label map and erases a stroke;
  the PNG label map holds exactly that, and the site takes it;
- a queue of 100 images loads (list and first image; the times are printed, not asserted).
Screenshots of every step land in the test's tmp folder.
"""
import csv
import json
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from src.active_learning.oracles import HumanOracle
from src.data.formats import read_yolo_labels
from src.labeling.server import create_app, serve
from tests.test_al_site_rounds import SITE, STATE, pool_split, run_round, site_runner  # noqa: F401 (fixture)
from tests.test_al_pool import DISASTER, VICTIM
from tests.test_labeling_masks import MASKS, queued_masks  # noqa: F401 (fixture)
from tests.test_seg_active_learning import mask_site, segmenting_model  # noqa: F401 (fixtures)
from tests.tiny_federation import write_tiny_plan

pytestmark = pytest.mark.browser
SEED_IMAGES, BUDGET, SHOWN_BOXES = 4, 3, 3
VIEWPORT = {"width": 1366, "height": 768}  # a laptop screen


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "no chromium on the PATH: `make setup-browser` installs Debian's package"
    return path


@pytest.fixture(scope="module")
def site_round(pool_split, tmp_path_factory):  # noqa: F811
    """A site of a tiny federation after rounds 0 and 1 with a human oracle: round 1 queued
    BUDGET images with the received global model's detections. Returns (workspace, runner, tasks)."""

    workspace = tmp_path_factory.mktemp("label_site")
    write_tiny_plan(workspace, pool_split, rounds=3, sites=(SITE,), runner={"active_learning": {
        "strategy": "hybrid", "budget": BUDGET, "query_every": 1, "oracle": "human", "seed": 0}})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        runner, tasks = site_runner()
        assert runner.labeling.oracle.predictor is not None  # the site pre-annotates its queue
        for r in (0, 1):
            run_round(runner, tasks, r, runner.get_tensor_dict())
        yield workspace, runner, tasks


class Page:
    """The labeling server on a free loopback port and a headless chromium page on it."""

    def __init__(self, queue: Path, shots: Path, min_score: float):
        from playwright.sync_api import sync_playwright

        started = threading.Event()

        def ready(server):
            self.server, self.url = server, f"http://127.0.0.1:{server.server_port}/"
            started.set()
        app = create_app(HumanOracle(queue, VICTIM, DISASTER, mask_classes=MASKS), SITE, min_score=min_score)
        threading.Thread(target=serve, args=(app, "127.0.0.1", 0, ready), daemon=True).start()
        assert started.wait(10)
        self.shots, self.count = shots, 0
        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(executable_path=chromium(), headless=True)
        self.page = self.browser.new_page(viewport=VIEWPORT)

    def open(self):
        self.page.goto(self.url)
        self.page.wait_for_selector("#canvas[data-shown]")

    def shot(self, name: str) -> Path:
        self.count += 1
        path = self.shots / f"{self.count}_{name}.png"
        self.page.screenshot(path=path)
        return path

    def screen(self, x: float, y: float) -> tuple[float, float]:
        """The screen point of image pixel (x, y)."""
        return tuple(self.page.evaluate("""([x, y]) => {
            const svg = document.getElementById('canvas'); const p = svg.createSVGPoint(); p.x = x; p.y = y;
            const s = p.matrixTransform(svg.getScreenCTM()); return [s.x, s.y]; }""", [x, y]))

    def drag(self, start, end):
        self.page.mouse.move(*start)
        self.page.mouse.down()
        self.page.mouse.move(*end, steps=8)
        self.page.mouse.up()

    def close(self):
        self.browser.close()
        self.playwright.stop()
        self.server.shutdown()


def queue_rows(queue: Path) -> list[dict]:
    with open(queue / "1" / "queue.csv", newline="") as f:
        return list(csv.DictReader(f))


def shown_threshold(predictions: dict, key: str) -> tuple[float, int]:
    """A min score that shows at least the SHOWN_BOXES best model boxes of `key` (a tiny model scores
    low), and how many boxes it shows: scores are written to 4 decimals, so the next box can tie."""
    scores = predictions[key]["scores"]
    return scores[SHOWN_BOXES - 1], sum(s >= scores[SHOWN_BOXES - 1] for s in scores)


def test_a_labeler_corrects_the_models_boxes_and_class_and_the_next_round_ingests_it(site_round, tmp_path):
    workspace, runner, tasks = site_round
    queue = workspace / "al_queue" / SITE
    guesses = json.loads((queue / "1" / "predictions.json").read_text())["images"]
    # a tiny model after two rounds finds few boxes: the first queued image it gave SHOWN_BOXES
    rows = [r for r in queue_rows(queue) if len(guesses[r["key"]]["boxes"]) >= SHOWN_BOXES]
    assert rows, f"no queued image has {SHOWN_BOXES} model boxes: {guesses}"
    row, guess = rows[0], guesses[rows[0]["key"]]
    width, height = int(row["width"]), int(row["height"])
    min_score, shown = shown_threshold(guesses, row["key"])
    model_boxes = [list(b) for b in guess["boxes"][:shown]]
    page = Page(queue, tmp_path, min_score)
    try:
        page.open()
        page.shot("queue_loaded")
        p = page.page
        p.locator(f'#items li[title^="{row["key"]} "]').click()
        p.wait_for_selector(f'#canvas[data-shown="1/{row["key"]}"]')
        assert p.inner_text("#progress") == f"0 of {BUDGET} labeled"
        assert p.locator("#items li").count() == BUDGET
        assert p.locator("#boxes g.box").count() == shown
        assert p.locator("#disaster input:checked").get_attribute("value") == guess["disaster_class"]

        # drag the bottom-right corner of the best model box 40 px and 30 px on screen: out
        # where the image leaves room (the box grows), else in (it shrinks), so it stays on the image
        corner = p.locator('#boxes g.handles[data-index="0"] rect[data-corner="se"]').bounding_box()
        start = (corner["x"] + corner["width"] / 2, corner["y"] + corner["height"] / 2)
        scale = p.evaluate("() => document.getElementById('canvas').getScreenCTM().a")
        x0, y0, x1, y1 = model_boxes[0]
        dx = 40 if x1 + 40 / scale <= width else -40
        dy = 30 if y1 + 30 / scale <= height else -30
        model_boxes[0][2] += dx / scale
        model_boxes[0][3] += dy / scale
        assert model_boxes[0][2] > x0 + 1 and model_boxes[0][3] > y0 + 1, f"box {model_boxes[0]} too small to shrink"
        page.drag(start, (start[0] + dx, start[1] + dy))
        page.shot("corner_dragged")

        # add a box where no box is: drawn from a free point of the image
        free = next((x, y) for y in np.linspace(4, height - 24, 12) for x in np.linspace(4, width - 24, 12)
                    if not any(b[0] - 3 <= x <= b[2] + 3 and b[1] - 3 <= y <= b[3] + 3 for b in model_boxes))
        page.drag(page.screen(*free), page.screen(free[0] + 18, free[1] + 20))
        added = [free[0], free[1], free[0] + 18, free[1] + 20]
        assert p.locator("#boxes g.box").count() == shown + 1
        page.shot("box_added")

        # the class by its shortcut (3: flooded_areas), then save with Enter
        wanted = "flooded_areas" if guess["disaster_class"] != "flooded_areas" else "fire"
        p.keyboard.press(str(DISASTER.index(wanted) + 1))
        assert p.locator("#disaster input:checked").get_attribute("value") == wanted
        page.shot("class_changed")
        p.keyboard.press("Enter")
        p.wait_for_function("() => document.getElementById('message').textContent.startsWith('Saved')")
        assert p.inner_text("#progress") == f"1 of {BUDGET} labeled"
        page.shot("saved")
    finally:
        page.close()

    boxes, classes = read_yolo_labels(queue / "1" / "labels" / row["label_file"], width, height, len(VICTIM))
    np.testing.assert_allclose(boxes, np.clip(model_boxes + [added], 0, [width, height, width, height]), atol=1.0)
    assert classes.tolist() == [0] * (shown + 1)
    sheet = {r["image"]: r for r in csv.DictReader(open(queue / "1" / "classes.csv", newline=""))}
    assert (sheet[row["key"]]["disaster_class"], sheet[row["key"]]["done"]) == (wanted, "1")

    # the site's next round takes the answer: one more labeled image, with exactly these labels
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        uploaded = run_round(runner, tasks, 2, runner.get_tensor_dict())
        state = json.loads(STATE.read_text())
    assert uploaded["al_labeled"] == SEED_IMAGES + 1 == uploaded["samples_backbone"]
    assert list(state["acquired"]) == [row["key"]]
    record = {Path(r.image_path).name: r for r in runner.labeling.labeled_records()}[Path(row["image"]).name]
    np.testing.assert_allclose(record.boxes, boxes, atol=1e-3)
    assert record.disaster_class == DISASTER.index(wanted)


def test_a_box_drawn_off_the_image_is_refused_on_the_page_and_nothing_is_written(site_round, tmp_path):
    workspace, _, _ = site_round
    queue = tmp_path / "queue"
    shutil.copytree(workspace / "al_queue" / SITE, queue)
    ingested = queue / "1" / "ingested.txt"
    taken = set(ingested.read_text().split()) if ingested.exists() else set()
    row = next(r for r in queue_rows(queue) if r["key"] not in taken)
    before = {p: p.read_bytes() for p in queue.rglob("*") if p.is_file()}
    width, height = int(row["width"]), int(row["height"])
    page = Page(queue, tmp_path, 1.0)  # no model boxes: the page shows the class guess only
    try:
        page.open()
        p = page.page
        p.locator(f'#items li[title^="{row["key"]} "]').click()
        p.wait_for_selector(f'#canvas[data-shown="1/{row["key"]}"]')
        labeled = p.inner_text("#progress")
        right = page.screen(width, height / 2)  # the image's right edge; the dark stage goes on beyond it
        page.drag((right[0] + 12, right[1]), (right[0] + 60, right[1] + 40))
        assert p.locator("#boxes g.box.outside").count() == 1
        p.keyboard.press("Enter")
        p.wait_for_function("() => document.getElementById('message').textContent.startsWith('Not saved')")
        message = p.inner_text("#message")
        assert p.inner_text("#progress") == labeled, "a refused answer counts for nothing"
        page.shot("refused")
    finally:
        page.close()
    assert "normalised coordinates" in message and "outside [0, 1]" in message
    assert f"labels/{row['label_file']}: line 1" in message, message
    assert {p: p.read_bytes() for p in queue.rglob("*") if p.is_file()} == before


def test_a_labeler_paints_and_erases_a_mask_and_the_site_takes_it(queued_masks, tmp_path):  # noqa: F811
    from src.active_learning.oracles import ingest_answers
    from src.active_learning.pool import LabelPool
    from src.data.formats.masks import IGNORE_INDEX, mask_class_map, read_mask

    shutil.copytree(queued_masks, tmp_path / "site")
    queue, lookup = tmp_path / "site" / "queue", mask_class_map(MASKS)
    row = queue_rows(queue)[0]
    width, height = int(row["width"]), int(row["height"])
    stem = Path(row["label_file"]).stem
    guess = read_mask(queue / "1" / "predicted_masks" / f"{stem}.png", lookup, (width, height))
    water, wet = MASKS.index("water"), ((10, 20), (width - 10, 20))        # a stroke across the top
    dry = ((10, height - 20), (width // 2, height - 20))                    # erased near the bottom
    page = Page(queue, tmp_path, 1.0)
    try:
        page.open()
        p = page.page
        p.locator(f'#items li[title^="{row["key"]} "]').click()
        p.wait_for_selector(f'#canvas[data-shown="1/{row["key"]}"]')
        assert p.is_visible("#mask-fieldset") and not p.is_visible("#mode-fieldset")
        assert p.locator("#boxes g.box").count() == 0  # a mask-only site draws no boxes
        assert p.get_attribute("#canvas", "data-mask-painted") == str(width * height)  # the model's guess
        radius = int(p.input_value("#brush"))
        page.shot("mask_from_the_model")
        p.keyboard.press(str(water + 1))  # mask classes by their number: this image asks for no class
        assert p.locator("#mask-classes input:checked").get_attribute("value") == str(water)
        page.drag(page.screen(*wet[0]), page.screen(*wet[1]))
        p.keyboard.press("e")
        page.drag(page.screen(*dry[0]), page.screen(*dry[1]))
        page.shot("mask_painted")
        p.keyboard.press("Enter")
        p.wait_for_function("() => document.getElementById('message').textContent.startsWith('Saved')")
        assert p.inner_text("#progress") == f"1 of {len(queue_rows(queue))} labeled"
    finally:
        page.close()

    saved = read_mask(queue / "1" / "masks" / f"{stem}.png", lookup, (width, height))
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres

    def near(stroke, within):
        (x0, y0), (x1, y1) = stroke
        t = np.clip(((xs - x0) * (x1 - x0) + (ys - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
        return np.hypot(xs - (x0 + t * (x1 - x0)), ys - (y0 + t * (y1 - y0))) <= within
    assert (saved[near(wet, radius - 1.5)] == water).all()
    assert (saved[near(dry, radius - 1.5)] == IGNORE_INDEX).all()
    untouched = ~near(wet, radius + 1.5) & ~near(dry, radius + 1.5)
    assert np.array_equal(saved[untouched], guess[untouched]) and untouched.mean() > 0.3

    pool = LabelPool.from_site(tmp_path / "site" / "site1", tmp_path / "site" / "al_site1.json", VICTIM, DISASTER)
    oracle = HumanOracle(queue, VICTIM, DISASTER, pool.tasks, mask_classes=MASKS)
    assert ingest_answers(pool, oracle, 2) == [row["key"]] and oracle.problems.clean
    record = {r.image_path: r for r in pool.labeled_records()}[str(Path(row["image"]))]
    assert record.has_mask and np.array_equal(read_mask(record.mask_path, lookup), saved)


def test_a_queue_of_100_images_loads(tiny_config, tmp_path):
    """Time to the list and to the first image shown, median of 5 loads (printed, and written to
    load_times.json in the test's folder): `make test-browser` or `pytest -m browser -k 100 -s`."""
    from src.active_learning.pool import LabelPool
    from src.active_learning.oracles import request_labels
    from src.evaluation import Predictor
    from src.model import build_model
    from tests.test_al_pool import write_pool_site
    from tests.tiny_federation import write_tiny_site_split
    from src.data.manifests import read_manifest

    write_tiny_site_split(tmp_path, num_images=160, num_sites=1, labels=("both",), seed=5, test_fraction=0.1,
                          val_fraction=0.1)
    rows = [r for r in read_manifest(tmp_path / "splits" / "site1" / "manifest.tsv") if r[1] == "train"]
    pool = LabelPool.from_site(write_pool_site(tmp_path / "site1", ((tmp_path / "data").resolve(), rows)),
                               tmp_path / "al.json", VICTIM, DISASTER)
    oracle = HumanOracle(tmp_path / "queue", VICTIM, DISASTER, pool.tasks,
                         predictor=Predictor(build_model(tiny_config), tiny_config))
    request_labels(pool, oracle, list(pool.unlabeled_records())[:100], 1, "random")
    page = Page(tmp_path / "queue", tmp_path, 0.0)
    loads = []
    try:
        for _ in range(5):
            started = time.perf_counter()
            page.open()
            wall = (time.perf_counter() - started) * 1000
            assert page.page.locator("#items li").count() == 100
            timing = page.page.evaluate("() => window.labelTimings")
            loads.append({"list_ms": timing["list"], "first_image_ms": timing["firstImage"], "wall_ms": wall})
        page.shot("100_images")
    finally:
        page.close()
    median = {k: statistics.median(load[k] for load in loads) for k in loads[0]}
    (tmp_path / "load_times.json").write_text(json.dumps({"loads": loads, "median": median}, indent=1))
    print(f"\nqueue of 100 images: list shown {median['list_ms']:.0f} ms, first image shown "
          f"{median['first_image_ms']:.0f} ms after navigation start (median of 5; {tmp_path / 'load_times.json'})")
