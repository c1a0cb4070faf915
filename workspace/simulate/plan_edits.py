"""A run's changes to plan/plan.yaml: typed values by dotted plan path, applied in one place.

`make simulate`'s options and `--plan-set`, and `make al-experiment`'s `plan:` entries, all
become one dict such as {"task_runner.settings.backbone_mode": "frozen"}; keys of the
settings (configs/default.yaml) go into the plan's shared `overrides` as
{"model.input_size": 128}. Values stay typed from the command line or YAML file to the
plan file: nothing is written as text and parsed again on the way.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

# Values plan/plan.yaml writes once and uses in two sections (YAML anchors): setting
# one path sets its twin too, so the sections never disagree.
_LINKED = {"aggregator.settings.rounds_to_train": "task_runner.settings.rounds",
           "task_runner.settings.config": "data_loader.settings.config",
           "task_runner.settings.overrides": "data_loader.settings.overrides",
           "aggregator.settings.pairwise_masking": "task_runner.settings.pairwise_masking"}
LINKED_PATHS = {**_LINKED, **{twin: path for path, twin in _LINKED.items()}}
# the sections that read the settings, through the same `overrides` mapping
SETTINGS_SECTIONS = ("data_loader", "task_runner")


def edit_plan(plan: dict, values: Mapping[str, Any] | None = None,
              overrides: Mapping[str, Any] | None = None) -> dict:
    """A copy of `plan` with each dotted plan path of `values` set (in their order, so a
    later value wins) and `overrides` (dotted settings keys) added to the settings overrides.

    A path must lead through existing sections (a misspelt one is an error naming it);
    its last key may be new."""
    plan = copy.deepcopy(plan)
    for path, value in (values or {}).items():
        value = copy.deepcopy(value)
        for target in filter(None, (path, LINKED_PATHS.get(path))):
            _set(plan, target, value)  # twins share the one value, as the anchors do
    if overrides:
        _add_overrides(plan, overrides)
    return plan


def plan_value(plan: dict, path: str, default=None):
    """The value at a dotted plan path, `default` where a section or key is missing."""
    node = plan
    for name in path.split("."):
        if not isinstance(node, dict) or name not in node:
            return default
        node = node[name]
    return node


def settings_overrides(plan: dict) -> dict:
    """The settings overrides the plan hands to its data loader and task runner."""
    return plan_value(plan, "task_runner.settings.overrides") or {}


def simulated_labeling(strategy: str, final_fraction: float, seed: int, query_every: int = 1) -> dict:
    """The plan's task_runner.settings.active_learning for a run whose oracle reveals held-back labels."""
    return {"strategy": strategy, "final_fraction": final_fraction, "query_every": query_every,
            "oracle": "simulated", "seed": seed}


def _set(plan: dict, path: str, value) -> None:
    *parents, key = path.split(".")
    node = plan
    for depth, name in enumerate(parents):
        if not isinstance(node.get(name), dict):
            where = ".".join(parents[:depth]) or "its top level"
            raise ValueError(f"plan path {path!r}: the plan has no section {name!r} in {where}")
        node = node[name]
    node[key] = value


def _add_overrides(plan: dict, overrides: Mapping[str, Any]) -> None:
    sections = [plan[name]["settings"] for name in SETTINGS_SECTIONS]
    shared = next((s["overrides"] for s in sections if s.get("overrides") is not None), {})
    for settings in sections:
        if settings.get("overrides") is None:
            settings["overrides"] = shared
        settings["overrides"].update(copy.deepcopy(dict(overrides)))
