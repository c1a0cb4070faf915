"""Active learning at a site holding masks: the mask uncertainty, its place among the other
tasks' uncertainties, and a mask-only site's label step, which runs the backbone and the
segmentation head only, reveals the picked images' masks and keeps them across a restart."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from src.active_learning.oracles import HumanOracle, SimulatedOracle
from src.active_learning.pool import LabelPool
from src.active_learning.scoring import PoolScorer
from src.active_learning.selection import combined_task_uncertainty, mask_uncertainty, most_uncertain, task_weights
from src.active_learning.step import label_step
from src.data.manifests import read_manifest, write_site
from src.model import build_model
from src.settings import load_config, model_config
from tests.test_al_pool import DISASTER, SEED_COUNT, VICTIM
from tests.tiny_federation import TINY, write_tiny_site_split


def test_mask_uncertainty_is_the_mean_entropy_over_predicted_foreground_pixels():
    sky, p2, p3, barred = [0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.05, 0.15, 0.8], [0.3, 0.35, 0.35]
    probs = np.array([[[sky, p2], [p3, barred]],      # two foreground pixels, one more in the bars
                      [[sky] * 2, [sky] * 2],         # all background
                      [[sky] * 2, [sky, barred]]])    # foreground only in the bars
    valid = np.ones((3, 2, 2), bool)
    valid[:, 1, 1] = False

    def entropy(p):
        return -sum(v * math.log(v) for v in p) / math.log(3)
    expected = [(entropy(p2) + entropy(p3)) / 2, 0.0, 0.0]
    np.testing.assert_allclose(mask_uncertainty(probs, valid), expected, rtol=1e-12)
    assert expected[0] == pytest.approx((0.9372 + 0.5579) / 2, abs=1e-4)
    # without the bars the barred pixel counts; with class 2 as background, p3 is background, sky not
    np.testing.assert_allclose(mask_uncertainty(probs)[0], (entropy(p2) + entropy(p3) + entropy(barred)) / 3)
    np.testing.assert_allclose(mask_uncertainty(probs, valid, background=2)[0], (entropy(sky) + entropy(p2)) / 2)


def test_masks_join_the_other_tasks_by_weighted_percentile_rank():
    boxes, cls, masks = [0.1, 0.2, 0.3], [30, 20, 10], [0.0, 0.9, 0.5]  # ranks (0, .5, 1), (1, .5, 0), (0, 1, .5)
    np.testing.assert_allclose(combined_task_uncertainty({"masks": masks}, task_weights()), masks)
    np.testing.assert_allclose(combined_task_uncertainty({"boxes": boxes, "class": cls, "masks": masks},
                                                         task_weights()), [1 / 3, 2 / 3, 0.5])
    # detection_weight 0.25 and mask_weight 0.5: shares .25, .75, .5 normalised to 1/6, 1/2, 1/3
    np.testing.assert_allclose(combined_task_uncertainty({"boxes": boxes, "class": cls, "masks": masks},
                                                         task_weights(0.25, 0.5)),
                               [0.5, 0.5 / 6 + 0.25 + 1 / 3, 1 / 6 + 1 / 6])
    with pytest.raises(ValueError, match=r"mask_weight must be in \[0, 1\]"):
        task_weights(0.5, 1.5)


@pytest.fixture(scope="module")
def mask_site(tmp_path_factory):
    """A real synthetic site holding masks only: SEED_COUNT labeled train images, the rest its pool."""
    root = tmp_path_factory.mktemp("al_masks")
    write_tiny_site_split(root, num_images=20, num_sites=1, labels=("masks",), seed=4)
    rows = [row for row in read_manifest(root / "splits" / "site1" / "manifest.tsv", with_masks=True)
            if row[1] == "train"]
    folder = root / "site1"
    write_site(folder, "site1", str((root / "data").resolve()),
               [(key, "train" if i < SEED_COUNT else "pool", 0, 0, 1) for i, (key, *_) in enumerate(rows)])
    return folder


@pytest.fixture(scope="module")
def segmenting_model():
    cfg = load_config(overrides={**TINY, "model.segmentation": True})
    config = model_config(cfg)
    import keras
    keras.utils.set_random_seed(0)
    return build_model(config), config


def test_a_mask_only_site_scores_with_the_segmentation_head_and_labels_masks(mask_site, segmenting_model,
                                                                             tmp_path):
    model, config = segmenting_model
    state = tmp_path / "local_state" / "al_site1.json"
    pool = LabelPool.from_site(mask_site, state, VICTIM, DISASTER)
    assert pool.tasks == ("masks",)
    unlabeled = pool.unlabeled_records()
    assert all(not r.has_mask and r.mask_path is None for r in unlabeled.values())  # nothing to cheat with
    truth = pool.held_back()
    scorer = PoolScorer(model, config, tasks=pool.tasks)
    assert scorer.groups == ["backbone", "seg_head"]  # no neck, detector or disaster head
    assert PoolScorer(model, config).tasks == ("boxes", "class", "masks")
    scores = scorer.score(unlabeled, batch_size=4, progress=False)
    assert scores.disaster_probs is None and scores.detection_uncertainty is None
    assert scores.mask_uncertainty.shape == (len(unlabeled),)
    assert np.all((scores.mask_uncertainty >= 0) & (scores.mask_uncertainty <= 1))
    assert np.ptp(scores.mask_uncertainty) > 0  # the ranking below has something to rank
    expected = {scores.keys[i] for i in most_uncertain(scores.mask_uncertainty, 3)}

    metrics = label_step(pool, scorer, SimulatedOracle(truth), "entropy", budget=3, round_num=1,
                         candidate_factor=1, progress=False)
    acquired = set(unlabeled) - set(pool.unlabeled_records())
    assert acquired == expected  # the most uncertain masks, by the mask uncertainty
    assert metrics["selected"] == 3 and "class_histogram" not in metrics
    assert metrics["labeled"] == metrics["labeled_masks"] == SEED_COUNT + 3
    with pytest.raises(ValueError, match="emh needs the raw disaster margins"):
        label_step(pool, scorer, SimulatedOracle(truth), "emh", budget=1, round_num=2, progress=False)

    def acquired_masks(labeling_pool):
        return {r.image_path: Path(r.mask_path) for r in labeling_pool.labeled_records()[SEED_COUNT:]}
    kept = acquired_masks(pool)
    by_image = {r.image_path: r for r in truth.values()}
    assert len(kept) == 3
    for image, mask in kept.items():  # a copy beside the state file, byte for byte the oracle's mask
        assert mask.parent.is_relative_to(state.parent / "al_site1_masks")
        assert mask.read_bytes() == Path(by_image[image].mask_path).read_bytes()
    entries = json.loads(state.read_text())["acquired"]
    assert {e["mask"] for e in entries.values()} == {f"{key}.png" for key in acquired}
    assert all(e["tasks"] == ["masks"] for e in entries.values())
    restarted = LabelPool.from_site(mask_site, state, VICTIM, DISASTER)
    assert acquired_masks(restarted) == kept and all(r.has_mask for r in restarted.labeled_records())

    with pytest.raises(ValueError, match=r"asks for masks needs the mask classes \(classes.mask\)"):
        HumanOracle(tmp_path / "queue", VICTIM, DISASTER, tasks=pool.tasks)
