"""Which task groups a site trains and exchanges, read off the labels it holds.

Every weight belongs to one group by its name prefix (`task_group_of`). A
detection label (boxes) reaches backbone, neck and det_head; a disaster label
reaches backbone and cls_head; a mask reaches backbone and seg_head (the task
table `TASKS` in src/model/config.py). So a site's capability follows from its data:
a classification-only site trains (and sends) backbone + cls_head and never
touches neck/det_head. Within the backbone a site trains only what its losses
reach (`outputs_for_groups`): the disaster head reads the stride-16 features,
so a classification-only site never runs, trains or sends the last backbone
stage, which only the detector uses; nor does a mask-only site.

Two plan settings shape this:
- backbone_mode `joint`: the backbone is trained and averaged over every site;
  `frozen`: it stays the pretrained checkpoint everywhere and never travels
  (only the task parts are trained and exchanged); backbone_init says where a
  `joint` backbone starts: `scratch` (random) or `checkpoint` (the pretrained
  one, then trained and averaged like any other weight);
- exchange `decoupled` (the design): each group is averaged over the sites
  that trained it, weighted by how many images taught it; `full`: the naive
  baseline, every site trains and sends every group, weighted by its whole
  train size.
Framework-free: the trainer and the OpenFL runner both use it.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from src.model.config import TASK_GROUPS, TASKS, ModelConfig, model_task_groups, task_group_of

BACKBONE_MODES = ("joint", "frozen")
BACKBONE_INITS = ("scratch", "checkpoint")
EXCHANGES = ("decoupled", "full")
# The groups below the backbone that each kind of label trains.
LABEL_GROUPS = {task.label: task.groups for task in TASKS}
# What a caller that names no groups means: the default model's (no segmentation head), so
# a site or aggregator that has not been told about an optional head neither counts its
# labels nor sends sums for it.
DEFAULT_GROUPS = model_task_groups(ModelConfig())


def tasks_of(groups=None) -> tuple:
    """The tasks (config.TASKS) whose every group is among `groups` (default DEFAULT_GROUPS)."""
    present = set(DEFAULT_GROUPS if groups is None else groups)
    return tuple(task for task in TASKS if present >= set(task.groups))


def outputs_for_groups(groups, available=None) -> tuple[str, ...]:
    """The model outputs whose losses train `groups` (every output when None or when the
    groups name no task part). A site computes only these: the rest of the model is
    neither run nor trained nor sent. available: the model's outputs (default: those of
    DEFAULT_GROUPS' tasks); a task whose outputs the model lacks adds none."""
    everything = [name for task in (TASKS if available is not None else tasks_of()) for name in task.outputs]
    available = everything if available is None else [name for name in everything if name in set(available)]
    groups = set(TASK_GROUPS if groups is None else groups)
    outputs = tuple(name for task in TASKS if groups & set(task.groups) for name in task.outputs
                    if name in available)
    return outputs or tuple(available)


def model_for_groups(model: keras.Model, groups) -> keras.Model:
    """The part of `model` that computes the outputs training `groups` needs (outputs_for_groups);
    its weights are the ones a site's training step reaches and uploads."""
    outputs = outputs_for_groups(groups, available=model.output)
    if len(outputs) == len(model.output):
        return model
    return keras.Model(model.inputs, {k: model.output[k] for k in outputs}, name=f"{model.name}_{'_'.join(outputs)}")


def starts_from_checkpoint(backbone_mode: str, backbone_init: str) -> bool:
    """Whether the model starts from the pretrained backbone checkpoint (`frozen` always does)."""
    if backbone_mode not in BACKBONE_MODES:
        raise ValueError(f"backbone_mode must be one of {BACKBONE_MODES}, got {backbone_mode!r}")
    if backbone_init not in BACKBONE_INITS:
        raise ValueError(f"backbone_init must be one of {BACKBONE_INITS}, got {backbone_init!r}")
    return backbone_mode == "frozen" or backbone_init == "checkpoint"


def groups_of_names(names) -> tuple[str, ...]:
    """The task groups of weight names (`task_group_of`), in TASK_GROUPS order."""
    present = {task_group_of(name) for name in names}
    return tuple(g for g in TASK_GROUPS if g in present)


def model_groups(model: keras.Model) -> tuple[str, ...]:
    """The task groups `model` has weights in, in TASK_GROUPS order (no seg_head without the head).

    A federation's groups are those of the model its plan builds: the sites read them off
    their model, the aggregator off the initial state that model wrote (the same names)."""
    return groups_of_names(v.path for v in model.weights)


def group_sample_counts(records, backbone_mode: str = "joint", exchange: str = "decoupled",
                        groups=None) -> dict:
    """{group: number of training images that teach it}, only for groups this site trains.

    These counts are both the site's trained groups and its aggregation
    weights per group. groups: the task groups the model has (`model_groups`; default
    DEFAULT_GROUPS): a label whose head the model lacks (a mask with the segmentation
    head off) teaches nothing and counts for nothing.
    """
    if backbone_mode not in BACKBONE_MODES:
        raise ValueError(f"backbone_mode must be one of {BACKBONE_MODES}, got {backbone_mode!r}")
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")
    records = list(records)
    present = set(DEFAULT_GROUPS if groups is None else groups)
    tasks = tasks_of(present)
    labeled = [r for r in records if any(getattr(r, task.label) for task in tasks)]
    counts = {"backbone": len(labeled)}
    for task in tasks:
        n = sum(bool(getattr(r, task.label)) for r in records)
        counts.update({g: n for g in task.groups})
    if exchange == "full":
        counts = {g: len(records) for g in TASK_GROUPS if g in present} if labeled else {}
    if backbone_mode == "frozen":
        counts.pop("backbone", None)
    return {g: n for g, n in counts.items() if n > 0}


# The manifest's label columns, as the task votes of `task_balanced_weights` name them.
TASK_VOTE_NAMES = {task.name: task.label for task in TASKS}


def task_votes(votes: dict | None = None) -> dict:
    """{"boxes": v, "class": v, "masks": v}: the given task votes, 1 for a task not named; a bad
    setting is named."""
    votes = {**dict.fromkeys(TASK_VOTE_NAMES, 1.0), **(votes or {})}
    unknown = set(votes) - set(TASK_VOTE_NAMES)
    if unknown or any(not float(v) >= 0 for v in votes.values()):
        raise ValueError(f"task votes must be non-negative numbers for {sorted(TASK_VOTE_NAMES)}, got {votes}")
    return {task: float(v) for task, v in votes.items()}


def task_balanced_weights(samples: dict, votes: dict | None = None) -> dict:
    """Each site's weight for the shared backbone when each task, not each image, gets a vote.

    samples: {site: {group: images}} as the sites report them. Each task (box
    labels, counted by `neck`; disaster labels, by `cls_head`; masks, by `seg_head`) hands
    out its vote (`votes`, {"boxes": v, "class": v, "masks": v}; 1 each by default; a task
    no site holds hands out nothing), split over the
    sites by their share of that task's images; a site's weight is the sum of
    its shares. Why: weighted by image counts, a large classification-only site
    dominates the shared backbone and the detector's features drift towards
    classification (3 default sites: the classification-only site would hold
    76 % of the backbone weight, 41 % with equal votes, 21 % with boxes 3: class 1).
    """
    votes = task_votes(votes)
    weights = dict.fromkeys(samples, 0.0)
    for task, label in TASK_VOTE_NAMES.items():
        group = LABEL_GROUPS[label][0]
        total = sum(counts.get(group, 0) for counts in samples.values())
        for site, counts in samples.items():
            if total:
                weights[site] += votes[task] * counts.get(group, 0) / total
    return weights


def weight_components(group: str, backbone_weighting: str, votes: dict | None = None, groups=None) -> dict:
    """{component: (group whose image count weighs it, vote or None)}: how a group's mean splits into sums.

    A masked sum (src/secure_aggregation.py) can only carry weights a site knows on
    its own: its image counts. Sample weighting is one sum per group; the backbone's
    `task_balanced` weighting is one sum per task, each weighted by that task's count
    (task_balanced_weights is linear in them: see mean_of_component_sums), over the tasks of
    the model's `groups` (default DEFAULT_GROUPS): a sum for a head no model has is never sent."""
    if group == "backbone" and backbone_weighting == "task_balanced":
        votes = task_votes(votes)
        return {task.name: (task.groups[0], votes[task.name]) for task in tasks_of(groups)}
    return {"samples": (group, None)}


def mean_of_component_sums(sums: dict, totals: dict, components: dict, sender_totals: dict | None = None):
    """The weighted mean from per-component sums sum_i n_i * x_i and their totals sum_i n_i.

    Equals the mean under task_balanced_weights (vote / total per task) or sample
    weights (1 per image); None when no component has any image. sender_totals: the
    totals over the sites that sent this tensor, when fewer than all sites did (the
    plain path's per-tensor mean: task weights from all sites, normalised over the senders)."""
    sender_totals = totals if sender_totals is None else sender_totals
    numerator, denominator = 0.0, 0.0
    for component, (_, vote) in components.items():
        total = float(totals[component])
        if total <= 0:
            continue
        coefficient = 1.0 if vote is None else vote / total
        numerator = numerator + coefficient * sums[component]
        denominator += coefficient * float(sender_totals[component])
    return None if denominator <= 0 else numerator / denominator


def weights_of_groups(model: keras.Model, groups) -> dict:
    """{variable path: array} of the model's weights in `groups` (trainable or not)."""
    groups = set(groups)
    return {v.path: np.array(v.numpy()) for v in model.weights if task_group_of(v.path) in groups}


def save_group_weights(model: keras.Model, groups, path) -> Path:
    """Write the weights of `groups` to an .npz keyed by variable path (e.g. a pretrained backbone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **weights_of_groups(model, groups))
    tmp.replace(path)
    return path


def load_group_weights(model: keras.Model, path) -> list[str]:
    """Assign every weight an .npz from `save_group_weights` holds; returns the groups loaded.

    Every stored name must exist in the model with the same shape: a
    checkpoint made for another variant is an error, not a partial load.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found (make one with `make pretrain-backbone`)")
    by_path = {v.path: v for v in model.weights}
    with np.load(path) as stored:
        for name in stored.files:
            if name not in by_path:
                raise ValueError(f"{path}: weight {name!r} is not in model {model.name}")
            if tuple(stored[name].shape) != tuple(by_path[name].shape):
                raise ValueError(f"{path}: weight {name!r} has shape {stored[name].shape}, "
                                 f"the model expects {tuple(by_path[name].shape)} (another model variant?)")
        for name in stored.files:
            by_path[name].assign(stored[name])
        return sorted({task_group_of(n) for n in stored.files})
