"""OpenFL task runner for the multi-task model.

Differences from the stock KerasTaskRunner, each for a reason:
- tensors are keyed by `variable.path` (`backbone_stage1_down_conv/kernel`),
  unique and identical in every process because every layer is explicitly
  named; the stock `layer.name + weight.name` is neither for every model;
- training is the core `Trainer` (custom multi-task loss), one epoch per call;
- validation reports victim mAP@0.5, disaster accuracy and one `score`
  (their mean) so `best.pbuf` follows one number;
- save_native/load_native round-trip a Keras 3 `.keras` file (the stock
  save_native writes a SavedModel folder that load_native cannot read);
- decoupled per-task weights (src/task_groups.py): the site trains only the
  groups its labels reach (the rest frozen), uploads only those tensors, and
  reports per group how many images taught it (`samples_<group>` metrics),
  which the aggregator (src/federated/decoupled.py) uses as that group's weight;
- each task reports how long its work took (`seconds_validate`, `seconds_label`,
  `seconds_data`: building the round's training dataset, `seconds_train` metrics),
  so the coordinator can break a round's time into phases (workspace/simulate/phases.py)
  from what reaches it, without the sites' logs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import keras
import numpy as np
from openfl.federated.task.runner_keras import KerasTaskRunner
from openfl.utilities import Metric, TensorKey, change_tags

from src.active_learning.site_labeling import LabelingSettings, SiteLabeling
from src.atomic_files import save_model_atomically
from src.settings import model_config, resolve
from src.training import train_options
from src.evaluation import Predictor, score_predictions
from src.federated.checkpoint import assign_weights
from src.federated.update_checks import update_problem
from src.model import build_model
from src.model.config import TASKS, task_group_of
from src.task_groups import (group_sample_counts, load_group_weights, model_for_groups, model_groups,
                             starts_from_checkpoint, tasks_of)
from src.training import Trainer, class_prior

log = logging.getLogger(__name__)

VALIDATION_METRICS = ("map50", "accuracy", "score")
# seconds a task spent on each part of its work, reported as metrics (module docstring)
PHASE_METRICS = {"validate": "seconds_validate", "label": "seconds_label", "data": "seconds_data",
                 "train": "seconds_train"}


def labeling_metric_values(metrics: dict) -> dict:
    """A label step's metrics as scalar `al_*` metrics (the class histogram one per class)."""
    out = {f"al_{k}": float(v) for k, v in metrics.items() if k != "class_histogram"}
    for i, count in enumerate(metrics.get("class_histogram", [])):
        out[f"al_chosen_class_{i}"] = float(count)
    return out


def untrained_labels(records, groups) -> str:
    """What a site whose labels count for nothing holds, and what the model's `groups` train."""
    held = [task.name for task in TASKS if any(getattr(r, task.label) for r in records)]
    trained = [task.name for task in tasks_of(groups)]
    return (f"it holds {held or 'no labels'}, the model trains {trained}: a task's head is in the model when "
            "the settings ask for it, e.g. model.segmentation: true for masks")


def validation_score(result: dict) -> float:
    """Mean of mAP@0.5, accuracy and mIoU over the tasks this site can score (mIoU: a segmenting
    model at a site holding masks), so every kind of site has a say in which model is best."""
    parts = [result[k] for k in ("map50", "accuracy", "miou") if result.get(k) is not None and np.isfinite(result[k])]
    return float(np.mean(parts)) if parts else 0.0


class MultiTaskRunner(KerasTaskRunner):
    def __init__(self, data_loader=None, config: str | None = None, overrides: dict | None = None,
                 rounds: int = 1, backbone_mode: str = "joint", backbone_init: str = "checkpoint",
                 exchange: str = "decoupled", active_learning: dict | None = None,
                 pairwise_masking: bool = False, **kwargs):
        """config + overrides: the settings (src/settings.py); the plan gives the data loader
        the same two values, so both hold one settings object.

        backbone_mode joint|frozen and exchange decoupled|full: see src/task_groups.py.
        The pretrained backbone (.npz, settings pretrain.checkpoint) is where `frozen`
        starts, and `joint` too with backbone_init: checkpoint (scratch: random init).
        rounds: the federation's training rounds (the learning-rate schedule's length).
        pairwise_masking: upload masked sums (secure aggregation, src/federated/secure_sums.py); the
        collaborator connects `self.masking` to the aggregator before the first task.
        active_learning: label-step settings (src/active_learning/site_labeling.py); the
        site then trains on its labeled set only, which grows every query_every rounds
        (an epoch as many batches as all its training images would give, unless
        epoch_images: labeled).
        """
        cfg = resolve(config, overrides)
        if data_loader is not None and data_loader.cfg is not cfg:
            raise ValueError("the data loader and the task runner were given different settings: the plan "
                             "must give data_loader.settings and task_runner.settings the same `config` and "
                             "`overrides` (plan/plan.yaml writes them once, as *config and *overrides)")
        self.cfg = cfg
        self.model_config = model_config(cfg)
        if data_loader is not None:
            data_loader.bind_model(self.model_config)
        super().__init__(data_loader=data_loader, **kwargs)
        keras.utils.set_random_seed(cfg["seed"])
        self.model = build_model(self.model_config)
        self.groups = model_groups(self.model)  # the federation's task groups (the aggregator reads the same)
        if starts_from_checkpoint(backbone_mode, backbone_init):
            checkpoint = cfg.get("pretrain", {}).get("checkpoint")
            if not checkpoint:
                raise ValueError(f"backbone_mode {backbone_mode} with backbone_init {backbone_init} "
                                 "needs the setting pretrain.checkpoint (a backbone .npz)")
            load_group_weights(self.model, checkpoint)
        self.labeling, self.labeling_metrics = None, {}
        self.phase_seconds: dict = {}  # this round's train task: label step, training
        if active_learning is not None and data_loader is not None and data_loader.site_folder:
            self.labeling = SiteLabeling(LabelingSettings.from_plan(active_learning), data_loader.site,
                                         data_loader.site_folder, self.model, self.model_config,
                                         cfg["classes"]["victim"], cfg["classes"]["disaster"], int(rounds),
                                         mask_classes=cfg["classes"].get("mask"))
            data_loader.train_records = self.labeling.labeled_records()
            if self.labeling.settings.epoch_images == "all":
                data_loader.epoch_images = self.labeling.epoch_size()
        records = data_loader.train_records if data_loader is not None else []
        self.group_samples = group_sample_counts(records, backbone_mode, exchange, self.groups)
        if records and not self.group_samples:
            raise ValueError(f"site {data_loader.site_name}: none of its {len(records)} training "
                             f"images has a label this federation trains ({untrained_labels(records, self.groups)})")
        self.backbone_mode, self.exchange = backbone_mode, exchange
        self.pairwise_masking, self.masking = bool(pairwise_masking), None
        self.rounds = int(rounds)
        self.epochs_per_round = None  # the train task's `epochs`, known at its first call
        self.trainer = None
        self.predictor = Predictor(self.model, self.model_config, **cfg.get("evaluation", {}))
        self.initialize_tensorkeys_for_functions()

    # ---- tensors, keyed by variable path -------------------------------------------------
    def get_tensor_dict(self, with_opt_vars=False, suffix=""):
        return {v.path + suffix: np.array(v.numpy()) for v in self.model.weights}

    def set_tensor_dict(self, tensor_dict, with_opt_vars=False):
        assign_weights(self.model, {k: np.asarray(v) for k, v in tensor_dict.items()})

    def reset_opt_vars(self):
        """RESET: fresh optimizer state (the stock Keras runner does nothing here)."""
        self.trainer = None

    # ---- tasks ------------------------------------------------------------------------------
    def _trainer(self) -> Trainer:
        if self.trainer is None:
            options = train_options(self.cfg)
            steps = self.data_loader.train_batches_per_epoch()
            options = replace(options, epochs=self.rounds * self.epochs_per_round)
            prior = class_prior(self.data_loader.train_records, self.model_config.num_disaster_classes)
            self.trainer = Trainer(self.model, self.model_config, options, steps_per_epoch=steps,
                                   groups=tuple(self.group_samples), disaster_prior=prior)
            log.info("training groups %s (images per group %s; backbone %s, exchange %s)",
                     list(self.group_samples), self.group_samples, self.backbone_mode, self.exchange)
        return self.trainer

    def rebuild_model(self, round_num, input_tensor_dict, validation=False):
        """The global model arrives here; before training on it, the site ingests label
        answers and, in a query round, runs its label step with it (active learning)."""
        super().rebuild_model(round_num, input_tensor_dict, validation=validation)
        if self.labeling is None or validation:
            return
        started = time.perf_counter()
        self.labeling_metrics = self.labeling.start_round(round_num)
        self.phase_seconds["label"] = time.perf_counter() - started
        labeled = self.labeling.labeled_records()
        # the labeled set only grows: at the same size it is the same set, and the data
        # loader keeps the training dataset it built (building one costs seconds)
        if len(labeled) != len(self.data_loader.train_records):
            self.data_loader.train_records = labeled
        self.group_samples = group_sample_counts(self.data_loader.train_records, self.backbone_mode,
                                                 self.exchange, self.groups)
        log.info("active learning, round %d: %s", round_num, self.labeling_metrics)

    def train_task(self, col_name, round_num, input_tensor_dict, metrics, epochs=1, batch_size=None,
                   **kwargs):
        """The stock task, then the upload cut down to the groups this site trained,
        plus one `samples_<group>` metric per group of the model (0 = not trained here) and, with
        active learning, `al_<count>` metrics (labeled, pool, pending, mean_uncertainty
        and `al_chosen_class_<i>`: the predicted disaster classes of the chosen batch)."""
        if self.epochs_per_round is None:
            self.epochs_per_round = int(epochs)
        self.phase_seconds = {"label": 0.0, "train": 0.0}
        built = self.data_loader.build_seconds
        # batch_size: the data loader's (settings pipeline.batch_size, adjusted per site)
        global_out, local_out = super().train_task(col_name, round_num, input_tensor_dict, metrics,
                                                   epochs=epochs, batch_size=None, **kwargs)
        self.phase_seconds["data"] = self.data_loader.build_seconds - built
        reached = self._trainer().reached  # weights this site's losses reach (task_groups)
        upload = {k: v for k, v in global_out.items() if "metric" in k.tags or (
            task_group_of(k.tensor_name) in self.group_samples and k.tensor_name in reached)}
        for group in self.groups:
            key = TensorKey(f"samples_{group}", col_name, round_num, True, ("metric",))
            upload[key] = np.array(float(self.group_samples.get(group, 0)))
        for name, value in labeling_metric_values(self.labeling_metrics).items():
            upload[TensorKey(name, col_name, round_num, True, ("metric",))] = np.array(value)
        for phase, seconds in self.phase_seconds.items():
            upload[TensorKey(PHASE_METRICS[phase], col_name, round_num, True, ("metric",))] = np.array(seconds)
        if self.pairwise_masking:
            upload = self._masked(upload, round_num)
        return upload, local_out

    def upload_shapes(self) -> dict:
        """{name: shape} of what this site uploads when it trains: its groups' weights that its losses reach."""
        reached = {v.path: tuple(v.shape) for v in model_for_groups(self.model, tuple(self.group_samples)).weights}
        return {name: shape for name, shape in reached.items() if task_group_of(name) in self.group_samples}

    def _masked(self, upload: dict, round_num: int) -> dict:
        """The upload with masked sums for trained tensors; a site whose own update is
        not finite abstains this round (zero counts), since no masked message can be left out."""
        if self.masking is None:
            raise RuntimeError("pairwise_masking is on but no collaborator connected the masking "
                               "(the plan's collaborator must be src.federated.collaborator.SiteCollaborator)")
        shapes = {v.path: tuple(v.shape) for v in self.model.weights}
        plain = {k.tensor_name: v for k, v in upload.items() if "metric" not in k.tags}
        problem = update_problem(plain, shapes)
        counts = {g: float(self.group_samples.get(g, 0)) for g in self.groups}
        if problem is not None:
            log.warning("round %d: this site's update is not sent (%s); it abstains this round", round_num, problem)
            for key in [k for k in upload if k.tensor_name.startswith("samples_")]:
                upload[key] = np.array(0.0)
        return self.masking.mask_upload(upload, round_num, counts, abstain=problem is not None)

    def train_(self, batch_generator, metrics=None, **kwargs):
        """One epoch of the core trainer; returns the requested loss metrics."""
        started = time.perf_counter()
        result = self._trainer().train_epoch(batch_generator, progress=False)
        self.phase_seconds["train"] = self.phase_seconds.get("train", 0.0) + time.perf_counter() - started
        log.info("train: loss %.3f (detection %.3f, disaster %.3f) on %d images, %.1f img/s",
                 result["loss"], result["detection"], result["disaster"], result["images"],
                 result["images_per_s"])
        names = metrics or ["loss"]
        unknown = [m for m in names if m not in result]
        if unknown:
            raise ValueError(f"unknown train metrics {unknown}; available: {sorted(result)}")
        return [Metric(name=m, value=np.array(result[m])) for m in names]

    def validate_task(self, col_name, round_num, input_tensor_dict, **kwargs):
        started = time.perf_counter()
        self.rebuild_model(round_num, input_tensor_dict, validation=True)
        records = self.data_loader.val_records
        result = score_predictions(self.predictor.predict(records), records, self.model_config)
        result["score"] = validation_score(result)
        seconds = time.perf_counter() - started
        log.info("validate (%s): mAP50 %s accuracy %s score %.3f on %d images", kwargs.get("apply"),
                 _fmt(result.get("map50")), _fmt(result.get("accuracy")), result["score"], len(records))
        # Only `score` carries the validate_agg tag: the aggregator keeps best.pbuf
        # whenever ANY validate_agg metric beats the best so far, so the
        # per-task numbers travel under another tag.
        suffix = "validate_local" if kwargs.get("apply") == "local" else "validate_agg"
        names = kwargs.get("metrics") or list(VALIDATION_METRICS)
        out = {}
        for m in names:
            tags = change_tags(("metric",), add_field=suffix if m == "score" else "validate_detail")
            # NaN = this site holds no labels to score it (e.g. mAP at a classification-only site)
            out[TensorKey(m, col_name, round_num, True, tags)] = np.array(float(result.get(m, np.nan)))
        tags = change_tags(("metric",), add_field="validate_detail")
        out[TensorKey(PHASE_METRICS["validate"], col_name, round_num, True, tags)] = np.array(seconds)
        return out, {}

    # ---- native model files ---------------------------------------------------------------
    def save_native(self, filepath):
        filepath = str(filepath)
        if not filepath.endswith(".keras"):
            filepath += ".keras"
        save_model_atomically(self.model, filepath)
        return filepath

    def load_native(self, filepath):
        loaded = keras.models.load_model(filepath)
        self.set_tensor_dict({v.path: v.numpy() for v in loaded.weights})


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"
