"""The paired experiment's file (configs/paired_experiment.yaml), its five arms and three comparisons.

The file speaks the language of `make al-experiment` (`config:` settings keys, `plan:`
plan values, the sites, labels and active-learning budget); its federated arms run
as that experiment's runs (workspace/al_experiment/), each arm a named variant with
its strategy and its own plan values, so what a kept run depends on is hashed the
same way. The arms are fixed here, not in the file: each comparison is defined by
the one thing its two arms differ in.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from workspace.al_experiment.experiment import FULL, check_experiment, read_experiment_file, run_key
from workspace.simulate.fx_workspace import REPO
from workspace.simulate.plan_edits import plan_value

DEFAULT_CONFIG = REPO / "configs" / "paired_experiment.yaml"
DEFAULT_OUT = REPO / "workspace" / "runs" / "paired"
# the file's keys that describe the federations (handed to workspace/al_experiment as they are)
FEDERATION_KEYS = ("config", "plan", "sites", "labels", "alpha", "rounds", "seed_fraction", "final_fraction",
                   "query_every", "deterministic", "seeds")
KNOWN_KEYS = {*FEDERATION_KEYS, "out"}
FEDERATION, CENTRAL = "federation", "central"


@dataclass(frozen=True)
class Arm:
    """One run per seed: a federation (with an active-learning strategy, or every label when
    strategy is None) under the plan with `plan` changed, or the centralized trainer."""
    name: str
    runs_as: str                     # FEDERATION | CENTRAL
    strategy: str | None             # active-learning strategy; None: every label of the split
    plan: dict = field(default_factory=dict)  # plan values beyond the experiment's
    description: str = ""


@dataclass(frozen=True)
class Comparison:
    """`first` - `second`, seed by seed: the two arms differ in `differs_in` only."""
    name: str
    first: str
    second: str
    differs_in: str


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
    exp["arms"] = list(ARMS) if arms is None else list(arms)
    wrong = [a for a in exp["arms"] if a not in ARMS]
    if wrong:
        raise SystemExit(f"--arms: unknown arms {wrong}; known: {list(ARMS)}")
    check_experiment(federation_experiment(exp), path)
    return exp


def federation_experiment(exp: dict) -> dict:
    """The `make al-experiment` experiment whose runs are the federated arms: each arm with
    active learning a variant (its strategy, its plan values), the all-labels arm its
    all-labels run."""
    federated = [a for a in ARMS.values() if a.runs_as == FEDERATION and a.strategy is not None]
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
    from the same backbone: it depends on exactly the same settings."""
    fexp = federation_experiment(exp)
    if arm.runs_as == FEDERATION:
        return run_key(fexp, federation_run_name(arm), seed)
    text = f"{arm.name} {run_key(fexp, FULL, seed)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
