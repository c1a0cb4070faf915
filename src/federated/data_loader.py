"""OpenFL data loader for one site: its manifest's records, fed through the core pipeline.

`data_path` is the site folder that plan/data.yaml maps the collaborator to
(site.yaml + manifest.tsv, see src.data.manifests). OpenFL builds a loader
with data_path=None to initialise the model; then it holds no records.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from openfl.federated.data.loader_keras import KerasDataLoader

from src.data.pipeline import pipeline_options
from src.data.manifests import load_site
from src.data.pipeline import RecordStream, training_dataset, validation_dataset
from src.settings import model_config, resolve
from src.task_groups import TASK_VOTE_NAMES

log = logging.getLogger(__name__)


def repeat_floors(setting) -> dict:
    """repeat_to_batches as {label kind: batches}: a number applies to every kind; a
    mapping names kinds ({boxes: 150}: only sites with box labels repeat). Why by
    kind: the detector is the part that lacks local steps at a small site; a
    classification-only site repeating its images only lengthens the round."""
    if not setting:
        return {}
    floors = dict(setting) if isinstance(setting, dict) else dict.fromkeys(TASK_VOTE_NAMES, setting)
    unknown = set(floors) - set(TASK_VOTE_NAMES)
    if unknown:
        raise ValueError(f"data_loader repeat_to_batches: unknown label kind(s) {sorted(unknown)}; "
                         f"use a number or a mapping over {sorted(TASK_VOTE_NAMES)}")
    try:
        return {kind: int(n) for kind, n in floors.items() if n}
    except (TypeError, ValueError):
        raise ValueError(f"data_loader repeat_to_batches: batch counts must be integers, got {setting!r}") from None


class SiteDataLoader(KerasDataLoader):
    def __init__(self, data_path=None, config: str | None = None, overrides: dict | None = None,
                 on_error: str = "raise", min_batches_per_epoch: int | None = None,
                 min_batch_size: int = 4, repeat_to_batches: int | dict | None = None,
                 max_images_per_epoch: int | None = None, **kwargs):
        """config + overrides: the settings (src/settings.py), the same object the task
        runner resolves from the same plan values; the batch size is pipeline.batch_size.
        min_batches_per_epoch (None = off): a site whose epoch would have fewer
        batches trains with smaller batches, down to min_batch_size (see train_batch_size).
        repeat_to_batches (None = off): a site whose epoch still has fewer batches repeats
        its images (reshuffled, new augmentations) up to that many (train_batches_per_epoch);
        a mapping by label kind ({boxes: 150}) applies only to sites holding that kind.
        max_images_per_epoch (None = off): a site whose epoch would cover more images
        trains on this many, a fresh random share of them each round (see epoch_image_count),
        and a repeat floor's batches shrink to cover at most this many (train_batch_size)."""
        self.cfg = resolve(config, overrides)
        super().__init__(int(self.cfg["pipeline"]["batch_size"]), **kwargs)
        self.model_config = None
        self.train_records, self.val_records = [], []
        self.min_batches_per_epoch = int(min_batches_per_epoch) if min_batches_per_epoch else None
        self.min_batch_size = int(min_batch_size)
        self.repeat_to_batches = repeat_floors(repeat_to_batches)
        self.max_images_per_epoch = int(max_images_per_epoch) if max_images_per_epoch else None
        if self.max_images_per_epoch is not None and self.max_images_per_epoch < 1:
            raise ValueError(f"data_loader max_images_per_epoch must be >= 1 or null, got {max_images_per_epoch!r}")
        # None: an epoch is one pass over train_records; else this many images (the task
        # runner sets it when a site's epoch is sized by more than its labels)
        self.epoch_images = None
        # the training dataset and what it was built from (see get_train_loader)
        self._train_dataset, self._train_built_from = None, None
        self.build_seconds = 0.0  # spent building training datasets so far (the task runner reports it)
        self.site_name, self.site_folder, self.site = None, data_path, None
        if data_path is not None:
            # a segmenting model's classes.mask name what the mask values index (checked against the data)
            mask_classes = self.cfg["classes"].get("mask") if model_config(self.cfg).num_mask_classes else None
            site = load_site(data_path, self.cfg["classes"]["victim"], self.cfg["classes"]["disaster"],
                             on_error=on_error, mask_classes=mask_classes)
            self.site = site  # all of it, pool rows included (active learning)
            self.site_name = site.name
            self.train_records, self.val_records = site.train, site.val
            log.info("site %s: %d train / %d val images; boxes: %s, classes: %s, masks: %s", site.name,
                     len(site.train), len(site.val), site.has_boxes, site.has_class, site.has_mask)

    def bind_model(self, model_config):
        """The task runner tells the loader the model's input size and anchors."""
        self.model_config = model_config

    def get_feature_shape(self):
        size = self.model_config.input_size if self.model_config else None
        return (size, size, 3)

    def get_num_classes(self):
        return len(self.cfg["classes"]["disaster"])

    def _options(self, batch_size):
        return replace(pipeline_options(self.cfg), batch_size=batch_size or self.batch_size)

    def train_batch_size(self, requested=None) -> int:
        """The batch size this site trains with: the plan's, or smaller at a small site so
        that its epoch still has min_batches_per_epoch steps (never below min_batch_size).
        Why: FedAvg averages what each site learned in its local steps; at one fixed batch
        size a site with few images takes few steps per round and the parts only it
        trains (the detector, at a site that holds most of the boxes) barely move.
        With max_images_per_epoch, also small enough (down to min_batch_size) that the
        repeat_to_batches floor covers at most that many images: the cap bounds what an
        epoch trains on, repeats included."""
        requested = int(requested or self.batch_size)
        smallest = min(requested, self.min_batch_size)
        batch = requested
        if self.min_batches_per_epoch:
            batch = max(smallest, min(requested, self.epoch_image_count() // self.min_batches_per_epoch))
        floor = self.repeat_floor()
        if self.max_images_per_epoch and floor * batch > self.max_images_per_epoch:
            # the repeat floor's batches would cover more than the cap: smaller batches
            batch = max(smallest, self.max_images_per_epoch // floor)
        return batch

    def train_batches_per_epoch(self, requested=None) -> int:
        """Optimizer steps in one epoch at this site (the learning-rate schedule's unit).
        With repeat_to_batches, at least that many: a small site then takes as many
        local steps per round as the plan asks for, by passing over its images more
        than once (more passes than a centralized epoch makes; say so beside results)."""
        images = self.epoch_image_count()
        return max(1, images // self.train_batch_size(requested), self.repeat_floor())

    def epoch_image_count(self) -> int:
        """Images one epoch covers before repeat_to_batches: one pass over train_records (or
        the task runner's epoch_images), at most max_images_per_epoch. Why a cap: the sites
        of a round train at once on shared CPUs and the round waits for the slowest; a site
        with many images (the scene-labeling site of the default federation: 3x the images
        of a box site) would set the pace of every round. Each round it draws another share."""
        images = self.one_pass_images()
        return min(images, self.max_images_per_epoch) if self.max_images_per_epoch else images

    def one_pass_images(self) -> int:
        """Images of one pass: the task runner's epoch_images, else train_records."""
        return self.epoch_images or len(self.train_records)

    def capped(self) -> bool:
        """Whether max_images_per_epoch shortens this site's epoch."""
        return self.epoch_image_count() < self.one_pass_images()

    def repeat_floor(self) -> int:
        """The fewest batches an epoch has here by repeat_to_batches: the largest floor of
        the label kinds this site's training images hold (0 = no floor)."""
        if not self.repeat_to_batches:
            return 0
        held = {kind for kind, flag in TASK_VOTE_NAMES.items()
                if any(getattr(r, flag) for r in self.train_records)}
        return max((n for kind, n in self.repeat_to_batches.items() if kind in held), default=0)

    def get_train_loader(self, batch_size=None, num_batches=None):
        """The training batches for one epoch, from a pipeline built once and reused:
        building traces the decode/augment/encode functions, about 4 s on this CPU. An
        epoch of a set number of batches (active learning, repeat_to_batches,
        max_images_per_epoch) reads the records through a `RecordStream`, so labels that
        arrive (active learning assigns
        a new list) need no new build; a one-pass epoch is rebuilt when its records
        change. Each pass reshuffles and draws new augmentations."""
        if num_batches is None and (self.epoch_images or self.repeat_floor() or self.capped()):
            num_batches = self.train_batches_per_epoch(batch_size)
        batch_size = self.train_batch_size(batch_size)
        if num_batches is not None:
            if self._train_built_from != (batch_size, num_batches):
                self._train_dataset = RecordStream(self.model_config, self._options(batch_size), num_batches)
                self._timed(lambda: self._train_dataset.dataset(self.train_records))  # the first call builds
                self._train_built_from = (batch_size, num_batches)
            return self._train_dataset.dataset(self.train_records)
        built_from = (self.train_records, len(self.train_records), batch_size)
        previous = self._train_built_from
        if previous is None or len(previous) != 3 or previous[0] is not built_from[0] or previous[1:] != built_from[1:]:
            self._train_dataset = self._timed(lambda: training_dataset(self.train_records, self.model_config,
                                                                       self._options(batch_size)))
            self._train_built_from = built_from
        return self._train_dataset

    def _timed(self, build):
        """build(), its time added to build_seconds."""
        started = time.perf_counter()
        try:
            return build()
        finally:
            self.build_seconds += time.perf_counter() - started

    def get_valid_loader(self, batch_size=None):
        return validation_dataset(self.val_records, self.model_config, batch_size or self.batch_size)

    def get_train_data_size(self):
        return len(self.train_records)

    def get_valid_data_size(self):
        return len(self.val_records)
