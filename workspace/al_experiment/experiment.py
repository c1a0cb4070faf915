"""An experiment file (configs/al_experiment*.yaml): read, extended, checked, and what each run
of it depends on.

It speaks the language of `make simulate`: `config:` holds settings keys
(configs/default.yaml) by dotted name, `plan:` plan values by dotted plan path, both
applied by the same function (workspace/simulate/plan_edits.py); the other keys
describe the experiment itself (sites, budget, strategies, seeds).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from workspace.simulate.fx_workspace import REPO
from workspace.simulate.plan_edits import simulated_labeling

DEFAULT_CONFIG = REPO / "configs" / "al_experiment.yaml"
DEFAULT_OUT = REPO / "workspace" / "runs" / "al"
FULL = "full_labels"  # the runs with every label, the reference each strategy is measured against
# experiment settings that only runs with active learning read: changing them keeps
# the all-labels runs (a variant of a strategy reuses its baseline)
ACTIVE_LEARNING_ONLY = ("seed_fraction", "final_fraction", "query_every", "epoch_images", "active_learning")
# a variant: its strategy, its own active-learning settings, its own plan values (say
# task_runner.settings.exchange: full, to run a strategy under another plan side by side)
VARIANT_KEYS = {"strategy", "active_learning", "plan"}
# mappings an `extends:` file merges entry by entry (the others it replaces whole)
MERGED_KEYS = ("config", "plan")
KNOWN_KEYS = {"config", "plan", "sites", "labels", "alpha", "rounds", "seed_fraction", "final_fraction",
              "query_every", "epoch_images", "active_learning", "variants", "deterministic", "strategies",
              "seeds", "out"}


def read_experiment_file(path: Path) -> dict:
    """An experiment config; one with `extends: BASE` is BASE (relative to it) with its own
    keys replacing BASE's, `config:` and `plan:` entries one by one (a variant names only
    what differs)."""
    exp = yaml.safe_load(path.read_text())
    base_name = exp.pop("extends", None)
    if base_name is None:
        return exp
    base = read_experiment_file(path.parent / base_name)
    for key, value in exp.items():
        base[key] = {**base.get(key, {}), **value} if key in MERGED_KEYS else value
    return base


def load_experiment(path: Path, seeds=None, strategies=None, rounds=None) -> dict:
    """The experiment settings, command-line choices applied, checked."""
    exp = read_experiment_file(Path(path))
    if seeds is not None:
        exp["seeds"] = seeds
    if strategies is not None:
        exp["strategies"] = strategies
    if rounds is not None:
        exp["rounds"] = rounds
    return check_experiment(exp, path)


def check_experiment(exp: dict, path) -> dict:
    """The experiment `exp` (read from `path`, named in the errors) with its defaults, checked:
    a misspelt key, strategy or setting fails here, not an hour into the runs."""
    from src.active_learning.selection import STRATEGIES
    from src.active_learning.site_labeling import LabelingSettings

    unknown_keys = sorted(set(exp) - KNOWN_KEYS)
    if unknown_keys:
        raise SystemExit(f"{path}: unknown keys {unknown_keys}; known: {sorted(KNOWN_KEYS)} (settings keys "
                         "go under `config:`, plan values under `plan:`)")
    exp.setdefault("config", {})
    exp.setdefault("plan", {})
    variants = exp.setdefault("variants", {})
    for name, variant in variants.items():
        if name in STRATEGIES or name == FULL:
            raise SystemExit(f"{path}: variant {name!r} has the name of a strategy; give it its own")
        if (not isinstance(variant, dict) or set(variant) - VARIANT_KEYS or variant.get("strategy") not in STRATEGIES
                or not isinstance(variant.get("plan", {}), dict)):
            raise SystemExit(f"{path}: variant {name!r} must be {{strategy: one of {sorted(STRATEGIES)}, "
                             f"active_learning: {{...}}, plan: {{plan path: value}}}}, got {variant!r}")
    unknown = [s for s in exp["strategies"] if s not in STRATEGIES and s not in variants]
    if unknown:
        raise SystemExit(f"{path}: unknown strategies {unknown}; known: {sorted(STRATEGIES)}, "
                         f"variants: {sorted(variants)}")
    for name in exp["strategies"]:  # a misspelt setting fails here, not an hour into the runs
        try:
            LabelingSettings.from_plan(labeling_settings(exp, name, seed=0))
        except (TypeError, ValueError) as err:
            raise SystemExit(f"{path}: {name}: {err}") from None
    if not exp["seeds"]:
        raise SystemExit(f"{path}: no seeds")
    if exp["rounds"] < 2:
        raise SystemExit(f"{path}: rounds must be >= 2 (round 0 trains on the seed set only)")
    return exp


def strategy_settings(exp: dict, name: str) -> tuple[str, dict]:
    """(selection strategy, further active_learning settings) of a run named `name`:
    a strategy with the experiment's `active_learning:`, or a `variants:` entry's
    strategy with its own settings on top."""
    variant = exp.get("variants", {}).get(name, {"strategy": name})
    return variant["strategy"], {**exp.get("active_learning", {}), **variant.get("active_learning", {})}


def variant_plan(exp: dict, name: str) -> dict:
    """The plan values of the run named `name` beyond the experiment's `plan:` (a variant's own)."""
    return dict(exp.get("variants", {}).get(name, {}).get("plan", {}))


def labeling_settings(exp: dict, name: str, seed: int) -> dict:
    """The plan's task_runner.settings.active_learning of the run named `name` (a strategy
    or a variant): the simulated oracle at the experiment's budget, plus its own settings
    (e.g. candidate_factor)."""
    selection, settings = strategy_settings(exp, name)
    return {**simulated_labeling(selection, exp["final_fraction"], seed, exp["query_every"]),
            "epoch_images": exp.get("epoch_images", "all"), **settings}


def run_key(exp: dict, strategy: str, seed: int) -> str:
    """What a finished run depends on: a changed setting makes its kept result stale
    (a variant's runs depend on its own entry, not on the other variants)."""
    ignored = ("strategies", "seeds", "out", "variants") + (ACTIVE_LEARNING_ONLY if strategy == FULL else ())
    fields = {k: exp[k] for k in exp if k not in ignored}
    text = json.dumps({"exp": fields, "strategy": strategy, "seed": seed,
                       "variant": exp.get("variants", {}).get(strategy),
                       "plan": (REPO / "plan" / "plan.yaml").read_text()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def experiment_settings(exp: dict) -> dict:
    """The experiment's `config:` entries that override configs/default.yaml (null keeps default.yaml's value)."""
    return {k: v for k, v in exp.get("config", {}).items() if v is not None}


def base_config(exp: dict) -> dict:
    """configs/default.yaml with the experiment's settings: data set, model, evaluation of every run."""
    from src.settings import load_config

    return load_config(REPO / "configs" / "default.yaml", experiment_settings(exp))
