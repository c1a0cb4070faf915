"""A mask-only site's human label queue and the labeling page's API for masks, over real HTTP on
loopback: the queue holds an unlabeled label map per image and the segmenting global model's
guess; a painted mask is saved as the PNG label map the site reads, the site's next round takes
it; a mask of the wrong size, with unknown values, or labeling no pixel is refused with the
reason, and nothing is written."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from src.active_learning.oracles import HumanOracle, ingest_answers, request_labels
from src.active_learning.pool import LabelPool
from src.data.formats.masks import IGNORE_INDEX, mask_class_map, read_mask
from src.evaluation import Predictor
from src.labeling.server import encode_mask
from src.settings import load_config
from tests.test_al_pool import DISASTER, VICTIM
from tests.test_labeling_server import Server, fresh_copy, item_path, queue_rows
from tests.test_seg_active_learning import mask_site, segmenting_model  # noqa: F401 (fixtures)

MASKS = load_config()["classes"]["mask"]
QUEUED = 3


@pytest.fixture(scope="module")
def queued_masks(mask_site, segmenting_model, tmp_path_factory):  # noqa: F811
    """A mask-only site with a round-1 human queue of QUEUED images and the model's label maps."""
    model, config = segmenting_model
    root = tmp_path_factory.mktemp("mask_queue")
    shutil.copytree(mask_site, root / "site1")
    pool = LabelPool.from_site(root / "site1", root / "al_site1.json", VICTIM, DISASTER)
    oracle = HumanOracle(root / "queue", VICTIM, DISASTER, pool.tasks, predictor=Predictor(model, config),
                         mask_classes=MASKS)
    request_labels(pool, oracle, list(pool.unlabeled_records())[:QUEUED], 1, "random")
    return root


@pytest.fixture
def site(queued_masks, tmp_path):
    return fresh_copy(queued_masks, tmp_path)


@pytest.fixture
def server(site):
    running = Server(site[0], mask_classes=MASKS)
    yield running
    running.stop()


def painted(row: dict) -> np.ndarray:
    """A labeler's mask: water in the top-left quarter, rubble in a band at the bottom, the rest background."""
    width, height = int(row["width"]), int(row["height"])
    mask = np.full((height, width), MASKS.index("background"), np.uint8)
    mask[: height // 2, : width // 2] = MASKS.index("water")
    mask[-5:, :] = MASKS.index("rubble")
    return mask


def test_the_queue_asks_for_masks_and_the_page_starts_from_the_models(site, server):
    queue, _ = site
    rows = queue_rows(queue)
    assert len(rows) == QUEUED and all((r["boxes"], r["class"], r["masks"]) == ("0", "0", "1") for r in rows)
    lookup = mask_class_map(MASKS)
    status, listing = server.json("/api/queue")
    assert status == 200 and listing["mask_classes"] == MASKS and listing["unlabeled"] == IGNORE_INDEX
    assert len(listing["mask_palette"]) == len(MASKS)
    assert all(i["wants_mask"] and not i["wants_boxes"] and not i["wants_class"] for i in listing["items"])
    for row in rows:
        size = (int(row["width"]), int(row["height"]))
        stem = Path(row["label_file"]).stem
        blank = read_mask(queue / "1" / "masks" / f"{stem}.png", lookup, size)
        assert (blank == IGNORE_INDEX).all()  # nothing painted yet: nothing the site could take
        guess = read_mask(queue / "1" / "predicted_masks" / f"{stem}.png", lookup, size)
        assert guess.shape == size[::-1] and guess.max() < len(MASKS)
        status, shown = server.json(item_path(row))
        assert status == 200 and shown["mask_source"] == "model" and shown["mask"] == encode_mask(guess)


def test_a_painted_mask_is_saved_as_the_sites_label_map_and_taken_at_its_next_round(site, server):
    queue, pool = site
    row = queue_rows(queue)[1]
    mask = painted(row)
    status, saved = server.json("/api/answer", {"round": 1, "key": row["key"], "mask": encode_mask(mask)})
    assert status == 200 and (saved["labeled"], saved["total"]) == (1, QUEUED)
    written = queue / "1" / "masks" / f"{Path(row['label_file']).stem}.png"
    assert np.array_equal(read_mask(written, mask_class_map(MASKS)), mask)
    status, shown = server.json(item_path(row))
    assert shown["mask_source"] == "answer" and shown["mask"] == encode_mask(mask)

    oracle = HumanOracle(queue, VICTIM, DISASTER, pool.tasks, mask_classes=MASKS)
    assert ingest_answers(pool, oracle, 2) == [row["key"]] and oracle.problems.clean
    labeled = {r.image_path: r for r in pool.labeled_records()}[str(Path(row["image"]))]
    assert labeled.has_mask and not labeled.has_boxes and not labeled.has_class
    assert np.array_equal(read_mask(labeled.mask_path, mask_class_map(MASKS)), mask)
    assert Path(labeled.mask_path).is_relative_to(pool.mask_dir)  # the pool's own copy, beside its state


@pytest.mark.parametrize("change, reason", [
    (lambda m: m[:-1], r"the page's mask for .*: \d+ values; expected base64 of \d+x\d+"),
    (lambda m: np.where(m == 1, 7, m).astype(np.uint8), r"masks/.*\.png: values \[7\] \(\d+ pixels, the first at "
                                                        r"x=0, y=0\) name no mask class"),
    (lambda m: np.full_like(m, IGNORE_INDEX), r"marked done but its mask labels no pixel"),
    (None, "the queue asks for a mask and the answer has none"),
])
def test_a_bad_mask_is_refused_with_the_reason_and_nothing_is_written(site, server, change, reason):
    import re

    queue, _ = site
    row = queue_rows(queue)[0]
    before = {p: p.read_bytes() for p in (queue / "1").rglob("*") if p.is_file()}
    body = {"round": 1, "key": row["key"]}
    if change is not None:
        mask = change(painted(row))
        body["mask"] = encode_mask(mask)
    status, refused = server.json("/api/answer", body)
    assert status == 422 and re.search(reason, refused["error"]), refused
    assert ".partial" not in refused["error"], "the reason names the files the answer goes to"
    assert {p: p.read_bytes() for p in (queue / "1").rglob("*") if p.is_file()} == before
    assert server.json("/api/queue")[1]["labeled"] == 0


def test_a_mask_edited_by_hand_into_a_bad_one_stays_in_the_queue_with_the_reason(site):
    from PIL import Image

    queue, pool = site
    row = queue_rows(queue)[2]
    mask = queue / "1" / "masks" / f"{Path(row['label_file']).stem}.png"
    Image.new("L", (5, 5), 1).save(mask)  # another size than its image
    (queue / "1" / "classes.csv").write_text(
        "image,disaster_class,done\n" + "".join(f"{r['key']},,{int(r['key'] == row['key'])}\n" for r in queue_rows(queue)))
    oracle = HumanOracle(queue, VICTIM, DISASTER, pool.tasks, mask_classes=MASKS)
    assert ingest_answers(pool, oracle, 2) == []
    assert f"{mask}: mask is 5x5 but its image" in oracle.problems.summary()


def test_a_mask_only_sites_collaborator_queues_masks_with_the_models_guesses(tmp_path):
    """The code path the collaborator runs (the plan's task runner, human oracle, segmentation
    head on): its first query round writes a queue asking for masks, with the received model's."""
    import yaml

    from src.data.manifests import read_manifest, write_site
    from tests.test_al_site_rounds import SITE, run_round, site_runner
    from tests.tiny_federation import write_tiny_plan, write_tiny_site_split

    write_tiny_site_split(tmp_path, num_images=40, num_sites=1, labels=("masks",), seed=8, test_fraction=0.1,
                          val_fraction=0.1)
    folder = tmp_path / "splits" / SITE
    rows = read_manifest(folder / "manifest.tsv", with_masks=True)
    seed = [row[0] for row in rows if row[1] == "train"][:4]
    write_site(folder, SITE, yaml.safe_load((folder / "site.yaml").read_text())["data_root"],
               [(k, "pool" if s == "train" and k not in seed else s, *map(int, flags)) for k, s, *flags in rows])
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    write_tiny_plan(workspace, folder.parent, rounds=2, sites=(SITE,), overrides={"model.segmentation": True},
                    runner={"active_learning": {"strategy": "hybrid", "budget": 2, "query_every": 1,
                                                "oracle": "human", "seed": 0}})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        runner, tasks = site_runner()
        assert runner.labeling.pool.tasks == ("masks",) and runner.labeling.oracle.mask_classes == MASKS
        for r in (0, 1):
            run_round(runner, tasks, r, runner.get_tensor_dict())
    queue = workspace / "al_queue" / SITE
    rows = queue_rows(queue)
    assert len(rows) == 2 and all((r["boxes"], r["class"], r["masks"]) == ("0", "0", "1") for r in rows)
    for row in rows:
        stem, size = Path(row["label_file"]).stem, (int(row["width"]), int(row["height"]))
        assert (read_mask(queue / "1" / "masks" / f"{stem}.png", mask_class_map(MASKS), size) == IGNORE_INDEX).all()
        assert read_mask(queue / "1" / "predicted_masks" / f"{stem}.png", mask_class_map(MASKS), size).shape == size[::-1]
