"""Which `budget` images of a site's unlabeled pool to label next.

Labels are the scarce resource at a disaster site. Pure uncertainty sampling
fails on disaster data: classes look alike, so the most uncertain images are
often near-duplicates of one confusing scene, and a batch of them teaches
little more than one. The default (`hybrid`) lets uncertainty pre-select
candidates and diversity (k-center greedy on backbone embeddings) pick among
them.

Scoring runs batched over a pool that need not fit in memory: the scoring
functions map one batch of model outputs to per-image numbers, which the
caller accumulates (scalars and a global-average-pooled backbone embedding
per image); `select` then works on those pool-sized arrays. Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

EPS = 1e-12
# An image with no detection above the score threshold is not "certain" there
# are no victims (a missed victim is the costly error at a disaster site), but
# empty is also the common, often truly empty, case: halfway ranks it above
# confident detections (H(0.9) = 0.47) and below ambiguous ones (H(0.3) = 0.88).
EMPTY_IMAGE_UNCERTAINTY = 0.5
# `hybrid` lets diversity choose among the candidate_factor * budget most
# uncertain images: 1 is pure uncertainty, the whole pool is pure diversity.
CANDIDATE_FACTOR = 3
# At a site with both tasks, the detector's share of the combined uncertainty
# (the disaster head has the rest): equal by default; a site whose detector is
# still too weak for its confidences to mean much can lower it.
DETECTION_WEIGHT = 0.5
# At a site with masks, the mask uncertainty's share before the shares are normalised over
# the tasks the site trains (the detector has detection_weight, the disaster head the rest
# of 1): the detector's default, so every task of a three-task site weighs alike by default.
MASK_WEIGHT = 0.5
BACKGROUND_CLASS = "background"  # the mask class that is no disaster region (classes.mask)
_CHUNK = 1024  # labeled embeddings compared at a time (bounds memory)


# --------------------------------------------------------------------------- per-batch scores

def disaster_entropy(probs: np.ndarray) -> np.ndarray:
    """(B, C) disaster-head probabilities -> (B,) entropy / log(C), in [0, 1]:
    normalised so the value means the same for any number of classes."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (batch, classes >= 2), got shape {probs.shape}")
    return -np.sum(probs * np.log(np.maximum(probs, EPS)), axis=1) / np.log(probs.shape[1])


def top2_margin(probs: np.ndarray) -> np.ndarray:
    """(B, C) -> (B,) raw margin p1 - p2 between the two likeliest classes
    (small = hard); `emh` bands the pool by it."""
    top2 = np.sort(np.asarray(probs, np.float64), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def disaster_margin(probs: np.ndarray) -> np.ndarray:
    """(B, C) -> (B,) 1 - (p1 - p2), so that higher = more uncertain like the other scores."""
    return 1.0 - top2_margin(probs)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a yes/no confidence: 1 at 0.5, 0 at 0 and 1."""
    p = np.clip(np.asarray(p, np.float64), EPS, 1.0 - EPS)
    return -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))


def detection_uncertainty(scores: Sequence[np.ndarray],
                          empty: float = EMPTY_IMAGE_UNCERTAINTY) -> np.ndarray:
    """Per image, the mean binary entropy of its detections' confidences, in [0, 1].

    scores: one 1-D array per image of the confidences kept after NMS
    (objectness x victim-class probability; for `detect`'s dense output,
    `scores[i, :num_detections[i]]`). A detection near 0.5 is one the model
    cannot decide on; near 0 or 1 it has decided. The mean (not the sum) keeps
    crowded scenes from outranking everything. Per-detection class
    probabilities are not used: there is one victim class by default and the
    confidence already carries its score. An image without detections gets
    `empty` (see EMPTY_IMAGE_UNCERTAINTY).
    """
    return np.array([binary_entropy(s).mean() if np.size(s) else float(empty)
                     for s in (np.ravel(s) for s in scores)], np.float64)


def mask_uncertainty(probs: np.ndarray, valid: np.ndarray | None = None, background: int = 0) -> np.ndarray:
    """Per image, the mean normalised pixel entropy over the pixels predicted as foreground, in [0, 1].

    probs: (B, H, W, K) per-pixel class probabilities (softmax of the segmentation logits);
    valid: (B, H, W) True where a pixel shows the image (False in the letterbox bars, which
    show no scene); background: the index of the class that is no disaster region.
    Foreground only, because background fills most of a disaster image and the model is
    soon sure of it: a mean over every pixel would rank images by how little flood, fire
    or rubble they show, and an uncertain flood edge would vanish in confident sky. The mean
    (not the sum) keeps images with large regions from outranking everything, as the
    detector's mean over detections does. An image with no predicted foreground gets 0: the
    model claims no region there to be unsure of (`hybrid`'s diversity still reaches such
    images). Entropy is divided by log(K), so the value means the same for any class count.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 4 or probs.shape[-1] < 2:
        raise ValueError(f"probs must be (batch, height, width, classes >= 2), got shape {probs.shape}")
    entropy = -np.sum(probs * np.log(np.maximum(probs, EPS)), axis=-1) / np.log(probs.shape[-1])
    foreground = probs.argmax(axis=-1) != background
    if valid is not None:
        foreground &= np.asarray(valid, bool)
    counts = foreground.sum(axis=(1, 2))
    totals = np.where(foreground, entropy, 0.0).sum(axis=(1, 2))
    return np.divide(totals, counts, out=np.zeros(len(probs)), where=counts > 0)


def background_index(mask_classes) -> int:
    """The index of BACKGROUND_CLASS in the mask class names (classes.mask), else 0."""
    names = list(mask_classes or ())
    return names.index(BACKGROUND_CLASS) if BACKGROUND_CLASS in names else 0


# --------------------------------------------------------------------------- pool-level combination

def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Each value's rank in the pool scaled to [0, 1] (ties share their mean rank):
    a scale-free version of a score, so two scores can be averaged fairly."""
    values = np.asarray(values, np.float64)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    _, tie_group = np.unique(values, return_inverse=True)
    ranks = (np.bincount(tie_group, ranks) / np.bincount(tie_group))[tie_group]
    return ranks / max(len(values) - 1, 1)


def task_weights(detection_weight: float = DETECTION_WEIGHT, mask_weight: float = MASK_WEIGHT) -> dict:
    """Each task's share of the combined uncertainty, before normalising over the tasks a
    site trains: the detector detection_weight, the disaster head the rest of 1, the
    masks mask_weight (so a two-task site weighs exactly as detection_weight says)."""
    for name, value in (("detection_weight", detection_weight), ("mask_weight", mask_weight)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    return {"boxes": detection_weight, "class": 1.0 - detection_weight, "masks": mask_weight}


def combined_task_uncertainty(uncertainties: dict, weights: dict) -> np.ndarray:
    """One per-image uncertainty over the pool from {task: (N,) uncertainty} of the tasks
    this site trains.

    Several tasks: the weighted mean of each task's percentile rank (`weights`, normalised
    over these tasks), so no task's scale dominates. One task: its values unchanged
    (already in [0, 1])."""
    if not uncertainties:
        raise ValueError("a site without labels of any task (boxes, class, masks) has nothing to be "
                         "uncertain about")
    used = {task: np.asarray(u, np.float64) for task, u in uncertainties.items()}
    for task, u in used.items():
        if not np.all(np.isfinite(u)):
            raise ValueError(f"uncertainty of a task the site trains ({task}) must be finite")
    if len(used) == 1:
        return next(iter(used.values()))
    total = sum(weights[task] for task in used)
    if total <= 0:
        raise ValueError(f"the weights of the tasks {sorted(used)} sum to 0: {dict(weights)}")
    return sum(weights[task] / total * percentile_rank(u) for task, u in used.items())


def combined_uncertainty(det_u: np.ndarray | None, cls_u: np.ndarray | None,
                         has_boxes_task: bool, has_class_task: bool,
                         detection_weight: float = DETECTION_WEIGHT) -> np.ndarray:
    """`combined_task_uncertainty` of a site's boxes and class tasks: the detector's weight
    `detection_weight`, the disaster head's the rest; a task the site does not train may be
    None or NaN and is not read."""
    used = {task: u for task, u, has in (("boxes", det_u, has_boxes_task), ("class", cls_u, has_class_task))
            if has}
    return combined_task_uncertainty(used, task_weights(detection_weight))


# --------------------------------------------------------------------------- strategies

def most_uncertain(uncertainty: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` highest uncertainties; ties go to the lower index."""
    return np.argsort(-np.asarray(uncertainty, np.float64), kind="stable")[:count]


def select_random(budget: int, uncertainty: np.ndarray, rng: np.random.Generator, **_) -> np.ndarray:
    """The baseline every other strategy must beat."""
    return rng.choice(len(uncertainty), size=budget, replace=False)


def select_top(budget: int, uncertainty: np.ndarray, **_) -> np.ndarray:
    """Pure uncertainty sampling (`entropy` / `margin`: the caller's score decides which)."""
    return most_uncertain(uncertainty, budget)


def select_emh(budget: int, uncertainty: np.ndarray, rng: np.random.Generator,
               margins: np.ndarray | None = None, **_) -> np.ndarray:
    """Stratified margin sampling: equal thirds from the easy, moderate and hard bands.

    The pool is sorted by raw margin p1 - p2 and cut into three bands of equal
    count (fixed margin thresholds would leave bands empty while a young model
    is unsure of everything). Each band gives budget // 3, the remainder goes to
    the hard band; within a band images are drawn at random (the common reading
    of the reference). A band too small for its share passes the rest on, the
    hardest band with room first.
    """
    if margins is None:
        raise ValueError("emh needs the raw disaster margins (top2_margin), from the disaster head, which "
                         "a site with masks only does not run: choose another strategy there")
    order = np.argsort(-np.asarray(margins, np.float64), kind="stable")
    bands = np.array_split(order, 3)  # easy (large margin), moderate, hard
    quota = [budget // 3] * 3
    quota[2] += budget - sum(quota)
    take = [min(q, len(b)) for q, b in zip(quota, bands)]
    for i in (2, 1, 0):
        extra = min(budget - sum(take), len(bands[i]) - take[i])
        take[i] += extra
    return np.concatenate([rng.choice(b, size=k, replace=False) for b, k in zip(bands, take)])


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, d), (m, d) -> (n, m) squared Euclidean distances, without an (n, m, d) temporary."""
    dist = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(dist, 0.0)


def k_center_greedy(embeddings: np.ndarray, count: int,
                    labeled_embeddings: np.ndarray | None = None) -> np.ndarray:
    """`count` row indices, each the row farthest from those chosen (and labeled) so far.

    Rows should come most-uncertain first: the first pick without a labeled set
    is row 0, and ties in distance go to the earlier row. Distances are updated
    one pick at a time, O(count * rows), never a full pairwise matrix.
    """
    nearest = np.full(len(embeddings), np.inf)
    if labeled_embeddings is not None:
        for start in range(0, len(labeled_embeddings), _CHUNK):
            chunk = labeled_embeddings[start:start + _CHUNK]
            nearest = np.minimum(nearest, squared_distances(embeddings, chunk).min(axis=1))
    chosen = []
    for _ in range(count):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, squared_distances(embeddings, embeddings[pick:pick + 1])[:, 0])
        nearest[chosen] = -1.0  # never again, even among exact duplicates
    return np.array(chosen, np.int64)


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: diversity by direction of the features, not their size."""
    embeddings = np.asarray(embeddings, np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), EPS)


def select_hybrid(budget: int, uncertainty: np.ndarray, embeddings: np.ndarray | None = None,
                  candidate_factor: float = CANDIDATE_FACTOR,
                  labeled_embeddings: np.ndarray | None = None, **_) -> np.ndarray:
    """Uncertainty pre-selects candidate_factor * budget images, k-center greedy on
    L2-normalised embeddings picks `budget` of them spread over the feature space
    (and away from `labeled_embeddings`, the site's already-labeled images)."""
    if embeddings is None:
        raise ValueError("hybrid needs per-image embeddings (pooled backbone features)")
    candidates = most_uncertain(uncertainty, max(budget, int(candidate_factor * budget)))
    has_labeled = labeled_embeddings is not None and len(labeled_embeddings) > 0
    labeled = l2_normalise(labeled_embeddings) if has_labeled else None
    return candidates[k_center_greedy(l2_normalise(embeddings)[candidates], budget, labeled)]


@dataclass(frozen=True)
class Strategy:
    """One way to pick the images to label: its selection function, the disaster-head
    score it ranks by (fed into `combined_uncertainty` with the detector's), and
    whether it needs the labeled images' embeddings (one more pass of the model)."""

    name: str
    choose: Callable[..., np.ndarray]
    disaster_score: Callable[[np.ndarray], np.ndarray] = disaster_entropy
    uses_labeled_embeddings: bool = False


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("random", select_random),
    Strategy("entropy", select_top, disaster_entropy),
    Strategy("margin", select_top, disaster_margin),
    Strategy("emh", select_emh),
    Strategy("hybrid", select_hybrid, disaster_entropy, uses_labeled_embeddings=True),
)}


def strategy_named(name: str) -> Strategy:
    """The registered strategy `name`; unknown names are refused with the known ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def select(strategy: str, budget: int, uncertainty: np.ndarray, *, margins: np.ndarray | None = None,
           embeddings: np.ndarray | None = None, rng: np.random.Generator | int | None = None,
           candidate_factor: float = CANDIDATE_FACTOR,
           labeled_embeddings: np.ndarray | None = None) -> np.ndarray:
    """Pool indices of the images to label: unique, min(budget, pool) of them,
    deterministic for a given seed. `uncertainty` is per image, higher = more
    informative (`combined_uncertainty` with the strategy's disaster_score)."""
    chosen_by = strategy_named(strategy)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    uncertainty = np.asarray(uncertainty, np.float64)
    budget = min(int(budget), len(uncertainty))
    if budget == 0:
        return np.zeros(0, np.int64)
    chosen = chosen_by.choose(
        budget, uncertainty, rng=np.random.default_rng(rng), margins=margins, embeddings=embeddings,
        candidate_factor=candidate_factor, labeled_embeddings=labeled_embeddings)
    return np.asarray(chosen, np.int64)


def selection_summary(indices: np.ndarray, uncertainty: np.ndarray,
                      disaster_classes_pred: np.ndarray | None = None,
                      num_classes: int | None = None) -> dict:
    """Metrics of the chosen batch for the aggregator: how uncertain it was (NaN
    when empty) and which disaster classes the model predicted for it."""
    indices = np.asarray(indices, np.int64)
    chosen = np.asarray(uncertainty, np.float64)[indices]
    summary = {"selected": int(len(indices)),
               "mean_uncertainty": float(chosen.mean()) if len(chosen) else float("nan")}
    if disaster_classes_pred is not None:
        classes = np.asarray(disaster_classes_pred, np.int64)[indices]
        summary["class_histogram"] = np.bincount(classes, minlength=num_classes or 0).tolist()
    return summary
