"""One active-learning label step of one site: score, select, ask, take answers.

The pieces live in their own modules (scoring.py: the model's view of the
pool; selection.py: which images; oracles.py: who labels them; pool.py: what
is labeled, persisted). This module is the order they run in, so a runner
(a collaborator every `query_every` rounds, or an experiment) calls one
function and gets the metrics the aggregator should see.
"""
from __future__ import annotations

import numpy as np

from src.active_learning.oracles import Oracle, ingest_answers, request_labels
from src.active_learning.pool import LabelPool
from src.active_learning.scoring import PoolScorer, PoolScores
from src.active_learning.selection import (CANDIDATE_FACTOR, DETECTION_WEIGHT, MASK_WEIGHT,
                                           combined_task_uncertainty, select, selection_summary, strategy_named,
                                           task_weights, top2_margin)


def pool_uncertainty(strategy: str, scores: PoolScores, tasks, detection_weight: float = DETECTION_WEIGHT,
                     mask_weight: float = MASK_WEIGHT) -> np.ndarray:
    """Per pool image, the uncertainty `strategy` ranks by, over the tasks the site trains: the
    disaster head's by the strategy's disaster score, the others' as the scorer measured them."""
    per_task = dict(scores.task_uncertainty)
    if "class" in tasks:
        per_task["class"] = strategy_named(strategy).disaster_score(scores.disaster_probs)
    return combined_task_uncertainty({t: per_task[t] for t in tasks}, task_weights(detection_weight, mask_weight))


def sampled_pool(unlabeled: dict, size: int | None, rng: np.random.Generator) -> dict:
    """`size` of the unlabeled images at random (all when None or the pool is smaller).
    Ranking a random subset rather than the whole pool is common practice for large pools
    (Yoo and Kweon 2019 score 10,000 random pool images): scoring costs a forward pass per
    image, and the uncertain images of a uniform sample stand in for those of the pool."""
    if size is None or len(unlabeled) <= size:
        return unlabeled
    keys = sorted(unlabeled)
    return {keys[i]: unlabeled[keys[i]] for i in sorted(rng.choice(len(keys), size=size, replace=False))}


def label_step(pool: LabelPool, scorer: PoolScorer, oracle: Oracle, strategy: str, budget: int,
               round_num: int, seed: int = 0, batch_size: int = 16, progress: bool = True,
               candidate_factor: float = CANDIDATE_FACTOR,
               detection_weight: float = DETECTION_WEIGHT, pool_sample: int | None = None,
               mask_weight: float = MASK_WEIGHT) -> dict:
    """Pick `budget` unlabeled images by `strategy`, send them to `oracle`, ingest every
    answer that is in (a human oracle's may come rounds later). Returns the site's
    counts (labeled, pool, pending, ...) and the chosen batch's mean uncertainty and
    predicted disaster-class histogram (where the scorer runs the disaster head). `hybrid` also keeps picks away from what is
    already labeled (one more pass, through the backbone only, over the labeled images: at
    most pool_sample of them, a random sample).
    pool_sample: score only this many unlabeled images, drawn at random afresh each step
    (None: all), and likewise the labeled images `hybrid` embeds, so a step's cost stays
    flat however large the pool and the labeled set grow (`sampled_pool`).
    `scorer` must score every task the pool's site trains."""
    missing = sorted(set(pool.tasks) - set(scorer.tasks))
    if missing:
        raise ValueError(f"the site trains {list(pool.tasks)} but its pool scorer scores {list(scorer.tasks)} "
                         f"only (build PoolScorer with tasks={list(pool.tasks)})")
    candidates = sampled_pool(pool.unlabeled_records(), pool_sample, np.random.default_rng([seed, round_num, 1]))
    scores = scorer.score(candidates, batch_size, progress)
    uncertainty = (pool_uncertainty(strategy, scores, pool.tasks, detection_weight, mask_weight) if scores.keys
                   else np.zeros(0))
    labeled = None
    if strategy_named(strategy).uses_labeled_embeddings and scores.keys:
        labeled_records = list(sampled_pool(dict(enumerate(pool.labeled_records())), pool_sample,
                                            np.random.default_rng([seed, round_num, 2])).values())
        labeled = scorer.embed(labeled_records, batch_size, progress) if labeled_records else None
    probs = scores.disaster_probs
    chosen = select(strategy, budget, uncertainty, margins=None if probs is None else top2_margin(probs),
                    embeddings=scores.embeddings, rng=np.random.default_rng([seed, round_num]),
                    candidate_factor=candidate_factor, labeled_embeddings=labeled)
    request_labels(pool, oracle, [scores.keys[i] for i in chosen], round_num, strategy)
    ingest_answers(pool, oracle, round_num)
    summary = selection_summary(chosen, uncertainty, None if probs is None else probs.argmax(axis=1),
                                None if probs is None else probs.shape[1])
    return {**pool.counts(), **summary}
