"""A paired experiment's file (configs/paired_experiment.yaml, configs/segmentation_experiment.yaml),
its set of arms and their comparisons.

The file speaks the language of `make al-experiment` (`config:` settings keys, `plan:`
plan values, the sites, labels and active-learning budget); its federated arms run
as that experiment's runs (workspace/al_experiment/), each arm a named variant with
its strategy and its own plan values, so what a kept run depends on is hashed the
same way. The arms are fixed here, not in the file (which names its `arm_set`): each
comparison is defined by the one thing its two arms differ in.

Two sets: `default_federation` (the default federation's choices: federated vs
centralized, decoupled vs full exchange, hybrid vs random active learning) and
`segmentation` (a mask-only site beside the box and scene sites: federated vs
centralized mIoU, 3 tasks vs 2, multi-task vs single-task masks). An arm trains on
the label kinds it names (`tasks`) and the model has the heads they need.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence
from pathlib import Path

from workspace.al_experiment.experiment import FULL, check_experiment, read_experiment_file, run_key
from workspace.simulate.fx_workspace import REPO
from workspace.simulate.plan_edits import plan_value

DEFAULT_CONFIG = REPO / "configs" / "paired_experiment.yaml"
DEFAULT_OUT = REPO / "workspace" / "runs" / "paired"
# the file's keys that describe the federations (handed to workspace/al_experiment as they are)
FEDERATION_KEYS = ("config", "plan", "sites", "labels", "alpha", "rounds", "seed_fraction", "final_fraction",
                   "query_every", "deterministic", "seeds")
KNOWN_KEYS = {*FEDERATION_KEYS, "out", "arm_set"}
FEDERATION, CENTRAL = "federation", "central"
DEFAULT_ARM_SET = "default_federation"
# the test scores compared: detection, classification and (with the segmentation head) masks
DETECTION_AND_CLASS = ("map50", "map50_95", "accuracy")


@dataclass(frozen=True)
class Arm:
    """One run per seed: a federation (with an active-learning strategy, or every label when
    strategy is None) under the plan with `plan` changed, or the centralized trainer."""
    name: str
    runs_as: str                     # FEDERATION | CENTRAL
    strategy: str | None             # active-learning strategy; None: every label of the split
    plan: dict = field(default_factory=dict)  # plan values beyond the experiment's
    description: str = ""
    # the label kinds (manifest columns: boxes, class, masks) it trains on: the split's sites
    # holding one of them, with only those labels; the segmentation head on with masks.
    # None: every label of the split, the experiment's model
    tasks: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Comparison:
    """`first` - `second`, seed by seed: the two arms differ in `differs_in` only."""
    name: str
    first: str
    second: str
    differs_in: str
    metrics: tuple[str, ...] = DETECTION_AND_CLASS


ARMS = {arm.name: arm for arm in (
    Arm("fed_hybrid", FEDERATION, "hybrid", description="the default federation: hybrid active learning, "
                                                        "decoupled exchange"),
    Arm("fed_hybrid_full_exchange", FEDERATION, "hybrid", {"task_runner.settings.exchange": "full"},
        "hybrid active learning, every site sends and receives the whole model"),
    Arm("fed_random", FEDERATION, "random", description="random picks at the same labeling budget"),
    Arm("fed_all_labels", FEDERATION, None, description="every label of the split, no active learning"),
    Arm("central_all_labels", CENTRAL, None, description="the centralized trainer (src/central.py) on the union "
                                                         "of the sites' training images and labels"),
)}
COMPARISONS = (
    Comparison("federated_vs_centralized", "fed_all_labels", "central_all_labels",
               "federated (the plan's rounds x local epochs) vs one trainer for as many epochs, same labels"),
    Comparison("decoupled_vs_full_exchange", "fed_hybrid", "fed_hybrid_full_exchange",
               "task_runner.settings.exchange decoupled vs full"),
    Comparison("hybrid_vs_random", "fed_hybrid", "fed_random", "active-learning strategy hybrid vs random"),
)
SEGMENTATION_ARMS = {arm.name: arm for arm in (
    Arm("fed_3task", FEDERATION, None, description="every label of the split: box, scene and mask sites"),
    Arm("central_3task", CENTRAL, None, description="the centralized trainer on the union of those sites' "
                                                    "images and labels"),
    Arm("fed_2task", FEDERATION, None, tasks=("boxes", "class"),
        description="the box and scene sites only, no segmentation head"),
    Arm("central_2task", CENTRAL, None, tasks=("boxes", "class"),
        description="the centralized trainer on the box and scene sites' labels, no segmentation head"),
    Arm("central_masks", CENTRAL, None, tasks=("masks",),
        description="the centralized trainer on the mask site's labels only: a single-task segmentation model"),
)}
SEGMENTATION_COMPARISONS = (
    Comparison("federated_vs_centralized", "fed_3task", "central_3task",
               "federated (the plan's rounds x local epochs) vs one trainer for as many epochs, same labels",
               ("miou", *DETECTION_AND_CLASS)),
    Comparison("three_vs_two_tasks_federated", "fed_3task", "fed_2task",
               "the mask site and the segmentation head added to the federation"),
    Comparison("three_vs_two_tasks_centralized", "central_3task", "central_2task",
               "the mask site's images and the segmentation head added to the centralized trainer"),
    Comparison("multi_vs_single_task_masks", "central_3task", "central_masks",
               "boxes and scenes trained beside the masks, on the shared backbone", ("miou",)),
)
# an experiment file's `arm_set`: (arms, comparisons, what the report is titled)
ARM_SETS = {DEFAULT_ARM_SET: (ARMS, COMPARISONS, "Paired comparisons of the default federation"),
            "segmentation": (SEGMENTATION_ARMS, SEGMENTATION_COMPARISONS,
                             "Segmentation as a third task: paired comparisons")}


def arms_of(exp: dict) -> dict[str, Arm]:
    return ARM_SETS[exp.get("arm_set", DEFAULT_ARM_SET)][0]


def comparisons_of(exp: dict) -> Sequence[Comparison]:
    return ARM_SETS[exp.get("arm_set", DEFAULT_ARM_SET)][1]


def arm_settings(arm: Arm) -> dict:
    """The settings an arm's tasks need beyond the experiment's (the segmentation head exactly
    when it trains on masks); none for an arm of every label."""
    return {} if arm.tasks is None else {"model.segmentation": "masks" in arm.tasks}


def arm_experiment(exp: dict, arm: Arm) -> dict:
    """The federation experiment `exp` with the arm's own settings in its `config:`."""
    return {**exp, "config": {**exp.get("config", {}), **arm_settings(arm)}}


def load_experiment(path: Path, seeds=None, rounds=None, arms=None) -> dict:
    """The experiment settings, command-line choices applied, checked (its federations as
    workspace/al_experiment checks them)."""
    exp = read_experiment_file(Path(path))
    unknown = sorted(set(exp) - KNOWN_KEYS)
    if unknown:
        raise SystemExit(f"{path}: unknown keys {unknown}; known: {sorted(KNOWN_KEYS)} (settings keys go under "
                         "`config:`, plan values under `plan:`; the arms are fixed)")
    missing = sorted(set(FEDERATION_KEYS) - set(exp))
    if missing:
        raise SystemExit(f"{path}: missing keys {missing}")
    if seeds is not None:
        exp["seeds"] = seeds
    if rounds is not None:
        exp["rounds"] = rounds
    if exp.setdefault("arm_set", DEFAULT_ARM_SET) not in ARM_SETS:
        raise SystemExit(f"{path}: arm_set {exp['arm_set']!r}: known {sorted(ARM_SETS)}")
    known = arms_of(exp)
    exp["arms"] = list(known) if arms is None else list(arms)
    wrong = [a for a in exp["arms"] if a not in known]
    if wrong:
        raise SystemExit(f"--arms: unknown arms {wrong}; known: {list(known)}")
    check_experiment(federation_experiment(exp), path)
    return exp


def federation_experiment(exp: dict) -> dict:
    """The `make al-experiment` experiment whose runs are the federated arms: each arm with
    active learning a variant (its strategy, its plan values), the all-labels arm its
    all-labels run."""
    federated = [a for a in arms_of(exp).values() if a.runs_as == FEDERATION and a.strategy is not None]
    return {**{k: exp[k] for k in FEDERATION_KEYS}, "strategies": [a.name for a in federated],
            "variants": {a.name: {"strategy": a.strategy, "plan": dict(a.plan)} for a in federated}}


def federation_run_name(arm: Arm) -> str:
    """The name of an arm's run in the al-experiment (its variant, or the all-labels run)."""
    if arm.runs_as != FEDERATION:
        raise ValueError(f"arm {arm.name} is not a federation")
    return arm.name if arm.strategy is not None else FULL


def central_epochs(exp: dict, plan: dict) -> int:
    """The centralized arm's epochs: as many as the federation's rounds x local epochs per round."""
    return exp["rounds"] * int(plan_value(plan, "tasks.train.kwargs.epochs", 1))


def arm_key(exp: dict, arm: Arm, seed: int) -> str:
    """What a finished run of `arm` depends on. The centralized arm trains on what the
    all-labels federation trains on, for as many epochs as it runs rounds x local epochs,
    from the same backbone: it depends on exactly the same settings. An arm of some tasks
    depends on them and on the settings they bring."""
    fexp = arm_experiment(federation_experiment(exp), arm)
    if arm.runs_as == FEDERATION and arm.tasks is None:
        return run_key(fexp, federation_run_name(arm), seed)
    text = f"{arm.name} {run_key(fexp, FULL, seed)}" + (f" {list(arm.tasks)}" if arm.tasks else "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]
