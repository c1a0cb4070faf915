"""One label step end to end: a real (tiny) model scores a real pool, a strategy picks,
the oracle answers, the pool grows and says so in the metrics for the aggregator."""
import numpy as np
import pytest

from src.active_learning.oracles import HumanOracle, SimulatedOracle
from src.active_learning.pool import LabelPool
from src.active_learning.scoring import PoolScorer
from src.active_learning.step import label_step
from src.data.manifests import write_site
from src.settings import load_config, model_config
from src.model import build_model
from tests.test_al_pool import DISASTER, SEED_COUNT, VICTIM, tiny_data, write_pool_site  # noqa: F401 (fixture)
from tests.tiny_federation import TINY


@pytest.fixture(scope="module")
def scorer():
    cfg = load_config(overrides=TINY)
    config = model_config(cfg)
    return PoolScorer(build_model(config), config)


def test_scores_cover_the_pool_with_probabilities_uncertainties_and_embeddings(scorer, tiny_data, tmp_path):
    pool = LabelPool.from_site(write_pool_site(tmp_path / "site1", tiny_data), tmp_path / "al.json",
                               VICTIM, DISASTER)
    unlabeled = pool.unlabeled_records()
    scores = scorer.score(unlabeled, batch_size=4, progress=False)
    assert scores.keys == list(unlabeled)
    assert scores.disaster_probs.shape == (len(unlabeled), len(DISASTER))
    np.testing.assert_allclose(scores.disaster_probs.sum(axis=1), 1.0, rtol=1e-4)
    assert np.all((scores.detection_uncertainty >= 0) & (scores.detection_uncertainty <= 1))
    assert scores.embeddings.shape[0] == len(unlabeled) and scores.embeddings.shape[1] > 8
    assert np.ptp(scores.embeddings, axis=0).max() > 0  # different images, different embeddings


def test_a_class_only_scorer_runs_no_detector_and_scores_as_the_full_model_does(scorer, tiny_data, tmp_path):
    """A classification-only site's pass runs the backbone and the disaster head only (no
    neck, detection heads, decode or NMS), with the same probabilities and embeddings as
    the full pass; the labeled images' embeddings come from the backbone alone, equal too."""
    data_root, rows = tiny_data
    class_rows = [(key, "train" if i < SEED_COUNT else "pool", 0, 1) for i, (key, *_) in enumerate(rows)]
    write_site(tmp_path / "site1", "site1", str(data_root), class_rows)
    pool = LabelPool.from_site(tmp_path / "site1", tmp_path / "al.json", VICTIM, DISASTER)
    assert pool.tasks == ("class",)
    class_only = PoolScorer(scorer.model, scorer.config, tasks=pool.tasks)
    assert class_only.groups == ["backbone", "cls_head"]
    assert scorer.groups == ["backbone", "cls_head", "det_head", "neck"]
    unlabeled = pool.unlabeled_records()
    full, lean = (s.score(unlabeled, batch_size=4, progress=False) for s in (scorer, class_only))
    assert lean.keys == full.keys and lean.detection_uncertainty is None
    np.testing.assert_allclose(lean.disaster_probs, full.disaster_probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(lean.embeddings, full.embeddings, rtol=1e-4, atol=1e-6)
    embedded = class_only.embed(list(unlabeled.values()), batch_size=4, progress=False)
    np.testing.assert_allclose(embedded, full.embeddings, rtol=1e-4, atol=1e-6)
    metrics = label_step(pool, class_only, SimulatedOracle(pool.held_back()), "hybrid", budget=3, round_num=1,
                         progress=False)
    assert metrics["selected"] == 3
    both = LabelPool.from_site(write_pool_site(tmp_path / "both", tiny_data), tmp_path / "both.json",
                               VICTIM, DISASTER)
    with pytest.raises(ValueError, match=r"trains \['boxes', 'class'\] but its pool scorer scores \['class'\]"):
        label_step(both, class_only, SimulatedOracle(both.held_back()), "hybrid", budget=3, round_num=1,
                   progress=False)


@pytest.mark.parametrize("strategy", ["hybrid", "random", "emh"])
def test_a_label_step_labels_budget_images_and_reports_it(scorer, tiny_data, tmp_path, strategy):
    site = write_pool_site(tmp_path / "site1", tiny_data)
    pool = LabelPool.from_site(site, tmp_path / "al.json", VICTIM, DISASTER)
    before = pool.counts()
    truth = pool.held_back()
    metrics = label_step(pool, scorer, SimulatedOracle(truth), strategy, budget=3, round_num=2,
                         progress=False)
    assert metrics["labeled"] == before["labeled"] + 3 and metrics["pool"] == before["pool"] - 3
    assert metrics["selected"] == 3 and 0 <= metrics["mean_uncertainty"] <= 1
    assert sum(metrics["class_histogram"]) == 3 and len(metrics["class_histogram"]) == len(DISASTER)
    acquired = [k for k in truth if k not in pool.unlabeled_records()]
    assert len(acquired) == 3
    labeled_paths = {r.image_path: r for r in pool.labeled_records()}
    for key in acquired:  # training now sees the true labels of exactly these images
        assert labeled_paths[truth[key].image_path].disaster_class == truth[key].disaster_class
    again = LabelPool.from_site(site, tmp_path / "al.json", VICTIM, DISASTER)
    assert again.counts() == pool.counts()  # persisted


def test_hybrid_candidate_factor_one_is_pure_uncertainty_sampling(scorer, tiny_data, tmp_path):
    """candidate_factor (a plan setting) reaches the selection: at 1, diversity has
    nothing to choose from and hybrid labels exactly the images `entropy` labels."""
    acquired = {}
    for strategy in ("hybrid", "entropy"):
        pool = LabelPool.from_site(write_pool_site(tmp_path / strategy, tiny_data), tmp_path / f"{strategy}.json",
                                   VICTIM, DISASTER)
        unlabeled = set(pool.unlabeled_records())
        label_step(pool, scorer, SimulatedOracle(pool.held_back()), strategy, budget=3, round_num=1,
                   candidate_factor=1, progress=False)
        acquired[strategy] = unlabeled - set(pool.unlabeled_records())
    assert len(acquired["hybrid"]) == 3 and acquired["hybrid"] == acquired["entropy"]


def test_pool_sample_scores_a_seeded_random_subset_and_picks_from_it(scorer, tiny_data, tmp_path):
    """pool_sample (a plan setting) bounds what a step scores: that many unlabeled images,
    drawn afresh per round from the seed, and the picks come from them; `hybrid` embeds
    at most that many labeled images too."""
    scored, embedded = [], []

    class CountingScorer:
        tasks = scorer.tasks

        def score(self, keyed_records, *args):
            scored.append(set(keyed_records))
            return scorer.score(keyed_records, *args)

        def embed(self, records, *args):
            embedded.append({r.image_path for r in records})
            return scorer.embed(records, *args)

    for name, round_num, sample in (("a", 1, 5), ("b", 1, 5), ("c", 2, 5), ("d", 1, 2)):
        pool = LabelPool.from_site(write_pool_site(tmp_path / name, tiny_data), tmp_path / f"{name}.json",
                                   VICTIM, DISASTER)
        unlabeled = set(pool.unlabeled_records())
        labeled = {r.image_path for r in pool.labeled_records()}
        label_step(pool, CountingScorer(), SimulatedOracle(pool.held_back()), "hybrid", budget=2,
                   round_num=round_num, seed=7, pool_sample=sample, progress=False)
        assert len(scored[-1]) == sample < len(unlabeled) and scored[-1] <= unlabeled
        assert unlabeled - set(pool.unlabeled_records()) <= scored[-1]
        assert len(embedded[-1]) == min(sample, len(labeled)) and embedded[-1] <= labeled
    assert scored[0] == scored[1] and scored[2] != scored[0]
    assert len(embedded[0]) == 3 > len(embedded[3]) == 2  # every labeled image, then a sample of 2


def test_detection_weight_decides_which_task_ranks_a_both_task_site(scorer, tiny_data, tmp_path):
    """detection_weight (a plan setting) reaches the ranking: at 0 `entropy` labels the
    pool's highest disaster-head entropies, at 1 its highest detection uncertainties."""
    from src.active_learning.selection import disaster_entropy, most_uncertain

    acquired, expected = {}, {}
    for weight in (0.0, 1.0):
        pool = LabelPool.from_site(write_pool_site(tmp_path / str(weight), tiny_data),
                                   tmp_path / f"{weight}.json", VICTIM, DISASTER)
        assert {"boxes", "class"} <= set(pool.tasks)
        scores = scorer.score(pool.unlabeled_records(), batch_size=4, progress=False)
        ranked_by = disaster_entropy(scores.disaster_probs) if weight == 0 else scores.detection_uncertainty
        expected[weight] = {scores.keys[i] for i in most_uncertain(ranked_by, 3)}
        unlabeled = set(pool.unlabeled_records())
        label_step(pool, scorer, SimulatedOracle(pool.held_back()), "entropy", budget=3, round_num=1,
                   detection_weight=weight, progress=False)
        acquired[weight] = unlabeled - set(pool.unlabeled_records())
    assert acquired == expected and expected[0.0] != expected[1.0]


def test_a_human_oracle_step_does_not_block_and_leaves_the_choice_pending(scorer, tiny_data, tmp_path):
    pool = LabelPool.from_site(write_pool_site(tmp_path / "site1", tiny_data), tmp_path / "al.json",
                               VICTIM, DISASTER)
    before = pool.counts()
    oracle = HumanOracle(tmp_path / "queue", VICTIM, DISASTER, tasks=pool.tasks)
    metrics = label_step(pool, scorer, oracle, "hybrid", budget=2, round_num=1, progress=False)
    assert metrics["labeled"] == before["labeled"] and metrics["pending"] == 2
    assert (tmp_path / "queue" / "1" / "queue.csv").exists()


@pytest.mark.parametrize("settings, fragment", [
    ({}, "exactly one of budget"),
    ({"budget": 5, "final_fraction": 0.3}, "exactly one of budget"),
    ({"final_fraction": 1.5}, "final_fraction must be in (0, 1]"),
    ({"budget": -1}, "budget must be >= 0"),
    ({"budget": 5, "query_every": 0}, "query_every must be >= 1"),
    ({"budget": 5, "strategy": "smart"}, "strategy 'smart'"),
    ({"budget": 5, "budjet": 3}, "unknown settings ['budjet']"),
    ({"budget": 5, "epoch_images": "some"}, "epoch_images 'some'"),
    ({"budget": 5, "candidate_factor": 0.5}, "candidate_factor must be >= 1"),
    ({"budget": 5, "detection_weight": -0.1}, "detection_weight must be in [0, 1]"),
    ({"budget": 5, "pool_sample": 0}, "pool_sample must be >= 1 or null"),
])
def test_plan_labeling_settings_are_checked_with_the_field_named(settings, fragment):
    from src.active_learning.site_labeling import LabelingSettings

    with pytest.raises(ValueError) as err:
        LabelingSettings.from_plan(settings)
    assert fragment in str(err.value)


def test_a_final_fraction_becomes_one_per_query_budget_kept_across_a_restart(scorer, tiny_data, tmp_path):
    """From the seed set to final_fraction of the site's training images over its query
    rounds (rounds 1..4 of 5 here), the same per-query budget after a restart."""
    import math
    from dataclasses import replace

    from src.active_learning.site_labeling import LabelingSettings, SiteLabeling
    from src.data.manifests import load_site

    folder = write_pool_site(tmp_path / "site1", tiny_data)
    site = load_site(folder, VICTIM, DISASTER)
    settings = LabelingSettings.from_plan({"final_fraction": 0.8, "strategy": "random",
                                           "state": str(tmp_path / "al_{site}.json")})

    model = build_model(scorer.config)

    def labeling():
        return SiteLabeling(settings, site, folder, model, scorer.config, VICTIM, DISASTER, rounds=5)

    first = labeling()
    seed, total = len(site.train), len(site.train) + len(site.pool)
    assert first.budget == math.ceil((math.ceil(0.8 * total) - seed) / 4) > 0
    assert first.expected_labeled() == seed + min(len(site.pool), 4 * first.budget)
    first.start_round(1)
    assert first.pool.counts()["labeled"] == seed + first.budget
    assert labeling().budget == first.budget  # restarted with more labeled: same budget
    # an epoch covers as many images as the site's training images, labeled or not
    assert first.epoch_size() == total
    fresh = replace(settings, final_fraction=0.5, epoch_images="labeled", state=str(tmp_path / "fresh_{site}.json"))
    one_pass = SiteLabeling(fresh, site, folder, model, scorer.config, VICTIM, DISASTER, rounds=5)
    assert one_pass.epoch_size() == seed + 4 * one_pass.budget < total


def test_a_human_oracle_site_restarted_mid_round_keeps_its_queue_and_asks_for_no_second_batch(
        scorer, tiny_data, tmp_path):
    """A site with a human queue that restarts and redoes round 1 (one of its two images
    answered meanwhile): the queue stays as written, the answer is taken, the other image
    stays pending, no second batch is queued for that round, and a later restart with
    part of the queue answered keeps the queue too."""
    from src.active_learning.site_labeling import LabelingSettings, SiteLabeling
    from src.data.manifests import load_site
    from tests.test_al_oracles import mark, read_csv

    folder = write_pool_site(tmp_path / "site1", tiny_data)
    site = load_site(folder, VICTIM, DISASTER)
    settings = LabelingSettings.from_plan({"budget": 2, "strategy": "hybrid", "oracle": "human",
                                           "state": str(tmp_path / "al_{site}.json"),
                                           "queue": str(tmp_path / "queue" / "{site}")})

    model = build_model(scorer.config)

    def started_site():
        return SiteLabeling(settings, site, folder, model, scorer.config, VICTIM, DISASTER, rounds=3)

    first = started_site().start_round(1)
    assert first["pending"] == 2 and first["labeled"] == SEED_COUNT
    queue = tmp_path / "queue" / "site1" / "1"
    rows = read_csv(queue / "queue.csv")
    mark(queue / "classes.csv", {rows[0]["key"]: (DISASTER[0], "1")})
    written = (queue / "queue.csv").read_bytes()

    restarted = started_site()
    again = restarted.start_round(1)
    assert (queue / "queue.csv").read_bytes() == written and sorted(p.name for p in queue.parent.iterdir()) == ["1"]
    assert again["labeled"] == SEED_COUNT + 1 and again["pending"] == 1 and "selected" not in again
    assert restarted.pool.requested_rounds() == {1}
    # restarted once more, one image of the round's queue still pending: the queue stands
    assert started_site().pool.pending == restarted.pool.pending
    assert (queue / "queue.csv").read_bytes() == written
