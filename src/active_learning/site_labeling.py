"""Active learning at one site across a federation: when to query, and with what.

The plan names the settings (task_runner.settings.active_learning):
strategy, the budget (either `budget`, images per query, or `final_fraction`,
the share of the site's training images labeled after the last query, which
each site turns into its own per-query budget from its pool size and the
number of query rounds), query_every (rounds), oracle (simulated | human),
seed, candidate_factor (`hybrid`: how many times the budget uncertainty
pre-selects before diversity picks), detection_weight (at a site with both
tasks, the detector's share of the combined uncertainty), mask_weight (at a site
with masks, their share before the shares are normalised over its tasks), epoch_images (what
one training epoch covers, see `epoch_size`), pool_sample (how many pool images a query
scores, and at most how many labeled ones `hybrid` compares with, drawn at random; see
step.label_step), and where the site keeps its
labeled set (`state`, under its local state so a restart resumes) and its
human queue.
A query runs before a round's training, on the global model the site just
received; training then sees only labeled images. Answers of a human oracle
are ingested at the start of every round, whenever they appear.
A site restarted mid-round (a crash, a kill) redoes that round: it asks its
oracle again for the images it had requested and not yet labeled (a simulated
oracle keeps nothing across a restart), and a round that holds a query
already does not query again, so a crash never spends a second budget.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path

from src.active_learning.oracles import HumanOracle, SimulatedOracle, ingest_answers
from src.active_learning.pool import LABEL_FLAGS, LabelPool
from src.active_learning.scoring import PoolScorer, model_tasks
from src.active_learning.selection import (CANDIDATE_FACTOR, DETECTION_WEIGHT, MASK_WEIGHT, STRATEGIES,
                                           background_index)
from src.active_learning.step import label_step
from src.evaluation import Predictor

log = logging.getLogger(__name__)
ORACLES = ("simulated", "human")
EPOCH_IMAGES = ("all", "labeled")
# Pool images a query scores, a fresh random sample each time (null: every one), and the
# most labeled images `hybrid` embeds: bounds a label step at a large site (the default
# federation's class-only site has ~1,800 images and labels ~550 of them).
POOL_SAMPLE = 300


@dataclass(frozen=True)
class LabelingSettings:
    strategy: str = "hybrid"
    budget: int | None = None
    final_fraction: float | None = None
    query_every: int = 1
    oracle: str = "simulated"
    seed: int = 0
    candidate_factor: float = CANDIDATE_FACTOR
    detection_weight: float = DETECTION_WEIGHT
    mask_weight: float = MASK_WEIGHT
    epoch_images: str = "all"
    pool_sample: int | None = POOL_SAMPLE
    state: str = "local_state/al_{site}.json"
    queue: str = "al_queue/{site}"

    @classmethod
    def from_plan(cls, settings: dict) -> "LabelingSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"active_learning: unknown settings {unknown}; known: {sorted(known)}")
        out = cls(**settings)
        if out.strategy not in STRATEGIES:
            raise ValueError(f"active_learning.strategy {out.strategy!r}: known {sorted(STRATEGIES)}")
        if out.oracle not in ORACLES:
            raise ValueError(f"active_learning.oracle {out.oracle!r}: known {ORACLES}")
        if (out.budget is None) == (out.final_fraction is None):
            raise ValueError("active_learning: set exactly one of budget (images per query) and "
                             "final_fraction (share of the training images labeled at the end)")
        if out.budget is not None and out.budget < 0:
            raise ValueError(f"active_learning.budget must be >= 0, got {out.budget}")
        if out.final_fraction is not None and not 0 < out.final_fraction <= 1:
            raise ValueError(f"active_learning.final_fraction must be in (0, 1], got {out.final_fraction}")
        if out.epoch_images not in EPOCH_IMAGES:
            raise ValueError(f"active_learning.epoch_images {out.epoch_images!r}: known {EPOCH_IMAGES}")
        if not out.candidate_factor >= 1:
            raise ValueError(f"active_learning.candidate_factor must be >= 1, got {out.candidate_factor}")
        if not 0 <= out.detection_weight <= 1:
            raise ValueError(f"active_learning.detection_weight must be in [0, 1], got {out.detection_weight}")
        if not 0 <= out.mask_weight <= 1:
            raise ValueError(f"active_learning.mask_weight must be in [0, 1], got {out.mask_weight}")
        if out.pool_sample is not None and out.pool_sample < 1:
            raise ValueError(f"active_learning.pool_sample must be >= 1 or null (the whole pool), got {out.pool_sample}")
        if out.query_every < 1:
            raise ValueError(f"active_learning.query_every must be >= 1, got {out.query_every}")
        return out


class SiteLabeling:
    """The site's LabelPool, oracle and scorer, driven round by round."""

    def __init__(self, settings: LabelingSettings, site_data, site_folder, model, model_config,
                 victim_classes, disaster_classes, rounds: int, mask_classes=None):
        """site_data: the site as its data loader read it (src.data.manifests.SiteData);
        rounds: how many rounds the federation runs (for a final_fraction budget);
        mask_classes: classes.mask, whose `background` the mask uncertainty leaves out."""
        self.settings = settings
        self.rounds = rounds
        site = site_data.name
        # the tasks the site holds labels of and the model has heads for (no masks without the head)
        held = site_data.train + site_data.pool
        tasks = tuple(t for t in model_tasks(model) if any(getattr(r, LABEL_FLAGS[t]) for r in held))
        self.pool = LabelPool.from_site_data(site_data, site_folder, Path(settings.state.format(site=site)),
                                             victim_classes, disaster_classes, tasks)
        if settings.oracle == "simulated":
            self.oracle = SimulatedOracle(self.pool.held_back(), self.pool.tasks)
        else:
            # the model that picks the images also pre-annotates them (predictions.json in the queue)
            self.oracle = HumanOracle(Path(settings.queue.format(site=site)), victim_classes,
                                      disaster_classes, tasks=self.pool.tasks,
                                      predictor=Predictor(model, model_config), mask_classes=mask_classes or ())
        self.scorer = PoolScorer(model, model_config, tasks=self.pool.tasks,
                                 background_class=background_index(mask_classes))
        self.budget = self._budget_per_query()
        self._ask_again_for_pending()
        log.info("site %s: active learning %s, %d labeled, %d in the pool, %d per query", site, settings,
                 self.pool.counts()["labeled"], self.pool.counts()["pool"], self.budget)

    def _budget_per_query(self) -> int:
        """`budget`, or the per-query count that brings this site from its seed set to
        final_fraction of its training images over all query rounds (computed from the
        seed, not the current count, so a restarted site keeps the same budget)."""
        if self.settings.final_fraction is None:
            return self.settings.budget
        counts = self.pool.counts()
        total = counts["labeled"] + counts["pool"]  # pending images are still in the pool
        missing = math.ceil(self.settings.final_fraction * total) - counts["seed"]
        queries = sum(self.due(r) for r in range(self.rounds))
        return math.ceil(max(0, missing) / queries) if queries else 0

    def _ask_again_for_pending(self) -> None:
        """Images requested before this process started and not answered: requested from
        this process's oracle again, under the round each was asked in (a human queue already
        written for that round stays as it is)."""
        by_round: dict[int, list[str]] = {}
        for key, entry in self.pool.pending.items():
            by_round.setdefault(int(entry["round"]), []).append(key)
        records = self.pool.pending_records()
        for round_num, keys in sorted(by_round.items()):
            self.oracle.request({k: records[k] for k in keys}, round_num)

    def due(self, round_num: int) -> bool:
        """Query rounds: every query_every rounds after the first (round 0's model knows nothing)."""
        return round_num > 0 and round_num % self.settings.query_every == 0

    def expected_labeled(self) -> int:
        """Labeled images at the end of the federation if every query is answered (for the
        learning-rate schedule, which is planned once for the whole federation)."""
        counts = self.pool.counts()
        queries = sum(self.due(r) for r in range(self.rounds))
        return counts["labeled"] + min(counts["pool"], queries * self.budget)

    def epoch_size(self) -> int:
        """Images one training epoch covers (the data loader's batches, the learning-rate
        schedule). `all` (the default): as many as the site's training images, labeled
        or not, the labeled ones repeated: a site trains as many steps as it would with
        every label, so the budget limits labels, not compute (with one pass over the
        labeled set, a site at 30 % of its labels takes 30 % of the steps). `labeled`:
        one pass over the labeled set (as it will be at the end, for the schedule)."""
        counts = self.pool.counts()
        if self.settings.epoch_images == "all":
            return counts["labeled"] + counts["pool"]
        return self.expected_labeled()

    def start_round(self, round_num: int) -> dict:
        """Ingest answers that arrived, query if due and not queried in this round already
        (a restarted site redoes its round); the site's labeling metrics."""
        ingest_answers(self.pool, self.oracle, round_num)
        if not self.due(round_num) or round_num in self.pool.requested_rounds():
            return self.pool.counts()
        s = self.settings
        return label_step(self.pool, self.scorer, self.oracle, s.strategy, self.budget, round_num,
                          seed=s.seed, candidate_factor=s.candidate_factor,
                          detection_weight=s.detection_weight, pool_sample=s.pool_sample,
                          mask_weight=s.mask_weight, progress=False)

    def labeled_records(self) -> list:
        return self.pool.labeled_records()
