"""Active-learning selection: hand-computed scores and what each strategy picks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from src.active_learning.selection import (
    EMPTY_IMAGE_UNCERTAINTY, STRATEGIES, combined_uncertainty, detection_uncertainty,
    disaster_entropy, disaster_margin, select, selection_summary, top2_margin)

# --------------------------------------------------------------------------- per-image scores


def test_disaster_entropy_by_hand():
    probs = np.array([[0.25] * 4, [1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.7, 0.1, 0.1, 0.1]])
    expected_last = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)) / math.log(4)
    np.testing.assert_allclose(disaster_entropy(probs), [1.0, 0.0, 0.5, expected_last], atol=1e-9)


def test_disaster_margin_by_hand():
    probs = np.array([[0.2] * 5, [0, 0, 1.0, 0, 0], [0.1, 0.6, 0.3, 0, 0]])
    np.testing.assert_allclose(top2_margin(probs), [0.0, 1.0, 0.3], atol=1e-9)
    np.testing.assert_allclose(disaster_margin(probs), [1.0, 0.0, 0.7], atol=1e-9)


def test_detection_uncertainty_ranks_ambiguous_above_confident_and_handles_empty():
    u = detection_uncertainty([np.array([0.99, 0.98]), np.array([0.5, 0.55]), np.array([]),
                               np.array([0.5, 1.0])])
    assert u[0] < 0.2 and u[1] > 0.95
    assert u[2] == EMPTY_IMAGE_UNCERTAINTY
    assert u[3] == pytest.approx(0.5)  # H(0.5) = 1 bit, H(1.0) = 0
    assert detection_uncertainty([np.array([])], empty=0.8)[0] == 0.8


# --------------------------------------------------------------------------- combining tasks


def test_combined_is_invariant_to_the_scale_of_one_task():
    rng = np.random.default_rng(0)
    det, cls = rng.random(50), rng.random(50)
    both = combined_uncertainty(det, cls, True, True)
    np.testing.assert_allclose(combined_uncertainty(det * 1000, cls, True, True), both)
    # Raw averaging would let the x1000 task decide alone; the ranks keep both.
    assert not np.array_equal(np.argsort(both), np.argsort(det))
    # Hand example: ranks det (0, 1, 2) -> (0, .5, 1), cls (2, 1, 0) -> (1, .5, 0).
    np.testing.assert_allclose(combined_uncertainty([1, 2, 3], [30, 20, 10], True, True), [0.5] * 3)


def test_detection_weight_sets_each_task_s_share():
    """0 ranks by the disaster head alone, 1 by the detector alone, 0.5 is the plain mean."""
    rng = np.random.default_rng(2)
    det, cls = rng.random(40), rng.random(40)
    np.testing.assert_array_equal(np.argsort(combined_uncertainty(det, cls, True, True, 0.0)), np.argsort(cls))
    np.testing.assert_array_equal(np.argsort(combined_uncertainty(det, cls, True, True, 1.0)), np.argsort(det))
    np.testing.assert_allclose(combined_uncertainty(det, cls, True, True, 0.5),
                               combined_uncertainty(det, cls, True, True))
    # Hand example: ranks det (0, .5, 1), cls (1, .5, 0); 0.25 * det + 0.75 * cls.
    np.testing.assert_allclose(combined_uncertainty([1, 2, 3], [30, 20, 10], True, True, 0.25),
                               [0.75, 0.5, 0.25])
    # A one-task site has nothing to weigh.
    np.testing.assert_array_equal(combined_uncertainty(det, None, True, False, 0.0), det)
    with pytest.raises(ValueError, match=r"detection_weight must be in \[0, 1\], got 1.5"):
        combined_uncertainty(det, cls, True, True, 1.5)


def test_single_task_site_ignores_the_other_task():
    det, nan = np.array([0.1, 0.9, 0.4]), np.full(3, np.nan)
    np.testing.assert_array_equal(combined_uncertainty(det, nan, True, False), det)
    np.testing.assert_array_equal(combined_uncertainty(None, det, False, True), det)
    with pytest.raises(ValueError):
        combined_uncertainty(det, nan, True, True)
    with pytest.raises(ValueError):
        combined_uncertainty(det, det, False, False)


# --------------------------------------------------------------------------- strategies


def test_emh_takes_equal_thirds_from_the_margin_bands():
    margins = np.random.default_rng(1).permutation(np.linspace(0, 1, 300))
    band = np.where(margins >= margins[np.argsort(margins)[200]], "easy",
                    np.where(margins >= margins[np.argsort(margins)[100]], "moderate", "hard"))
    chosen = select("emh", 30, 1 - margins, margins=margins, rng=3)
    assert {b: int(np.sum(band[chosen] == b)) for b in ("easy", "moderate", "hard")} == \
        {"easy": 10, "moderate": 10, "hard": 10}
    chosen = select("emh", 32, 1 - margins, margins=margins, rng=3)
    assert int(np.sum(band[chosen] == "hard")) == 12  # the remainder goes to the hard band


@pytest.mark.parametrize("n, budget", [(1, 3), (2, 2), (4, 3), (5, 5)])
def test_emh_on_tiny_pools_still_fills_the_budget(n, budget):
    margins = np.linspace(0, 1, n)
    chosen = select("emh", budget, 1 - margins, margins=margins, rng=0)
    assert len(set(chosen.tolist())) == len(chosen) == min(budget, n)


def clustered_pool(per_cluster=40, clusters=5, dim=8, seed=0):
    """Tight clusters around orthogonal axes; the 12 most uncertain images all sit in
    cluster 0, the next 20 are 5 per other cluster, the rest are certain."""
    rng = np.random.default_rng(seed)
    cluster = np.repeat(np.arange(clusters), per_cluster)
    embeddings = np.eye(dim)[cluster] * 10 + rng.normal(0, 0.05, (len(cluster), dim))
    uncertainty = rng.uniform(0, 0.5, len(cluster))
    uncertainty[:12] = np.linspace(0.99, 0.9, 12)
    for c in range(1, clusters):
        uncertainty[c * per_cluster:c * per_cluster + 5] = rng.uniform(0.6, 0.7, 5)
    return cluster, embeddings, uncertainty


def test_hybrid_covers_the_clusters_pure_uncertainty_misses():
    cluster, embeddings, uncertainty = clustered_pool()
    assert set(cluster[select("entropy", 10, uncertainty)]) == {0}
    chosen = select("hybrid", 10, uncertainty, embeddings=embeddings, candidate_factor=3)
    candidates = set(np.argsort(-uncertainty)[:30].tolist())
    assert set(chosen.tolist()) <= candidates
    assert len(set(cluster[chosen])) == 5
    assert chosen[0] == np.argmax(uncertainty)  # starts from the most uncertain


def test_hybrid_moves_away_from_already_labeled_clusters():
    cluster, embeddings, uncertainty = clustered_pool()
    assert cluster[select("hybrid", 2, uncertainty, embeddings=embeddings, candidate_factor=20)[0]] == 0
    labeled = np.eye(8)[[0, 1, 2]] * 10
    chosen = select("hybrid", 2, uncertainty, embeddings=embeddings, candidate_factor=20,
                    labeled_embeddings=labeled)
    assert set(cluster[chosen]) == {3, 4}


def test_hybrid_stays_unique_when_embeddings_repeat():
    chosen = select("hybrid", 5, np.linspace(1, 0, 10), embeddings=np.ones((10, 4)))
    np.testing.assert_array_equal(np.sort(chosen), np.arange(5))  # ties fall back to uncertainty


def random_pool(n=50, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(5), n)
    return {"uncertainty": disaster_entropy(probs), "margins": top2_margin(probs),
            "embeddings": rng.normal(size=(n, 16))}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("budget", [0, 1, 7, 50, 80])
def test_every_strategy_returns_unique_deterministic_indices(strategy, budget):
    pool = random_pool()
    chosen = select(strategy, budget, rng=11, **pool)
    assert chosen.dtype == np.int64 and len(chosen) == min(budget, 50)
    assert len(set(chosen.tolist())) == len(chosen) and np.all((chosen >= 0) & (chosen < 50))
    np.testing.assert_array_equal(select(strategy, budget, rng=11, **pool), chosen)


def test_random_depends_on_the_seed():
    pool = random_pool()
    assert not np.array_equal(select("random", 10, rng=1, **pool), select("random", 10, rng=2, **pool))


def test_unknown_strategy_and_missing_inputs_raise():
    pool = random_pool()
    with pytest.raises(ValueError, match="random.*entropy.*margin.*emh.*hybrid"):
        select("coreset", 5, pool["uncertainty"])
    with pytest.raises(ValueError, match="emh"):
        select("emh", 5, pool["uncertainty"])
    with pytest.raises(ValueError, match="embeddings"):
        select("hybrid", 5, pool["uncertainty"])
    with pytest.raises(ValueError, match="budget"):
        select("random", -1, pool["uncertainty"])


def test_selection_summary():
    summary = selection_summary(np.array([0, 2]), np.array([0.2, 0.9, 0.6]), np.array([1, 0, 1]),
                                num_classes=3)
    assert summary == {"selected": 2, "mean_uncertainty": pytest.approx(0.4), "class_histogram": [0, 2, 0]}
    assert math.isnan(selection_summary(np.array([], int), np.array([0.5]))["mean_uncertainty"])
