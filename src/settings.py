"""The run's settings: `configs/default.yaml` with the plan's (or a command line's) overrides.

One resolved dict per process, handed to every component (task runner, data loader,
trainer, tools), so a key set once reaches all of them. Loading it imports no
TensorFlow: the data tools and the split builder start in a second.

Overrides are a mapping of dotted keys to typed values (`{"training.learning_rate":
0.002}`), as the plan writes them; a command line's `--set key=value` strings are
parsed once, at the edge, by `parse_assignments`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Iterable, Mapping

import yaml

from src.model.config import ModelConfig, variant_config

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def parse_assignments(items: Iterable[str]) -> dict:
    """`key.sub=value` strings (a command line's --set) as {key: YAML-typed value}."""
    parsed = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"setting {item!r} is not key=value")
        key, value = item.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def apply_overrides(cfg: dict, overrides: Mapping | None) -> dict:
    """A copy of `cfg` with each dotted key of `overrides` set to its (typed) value."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping of dotted keys to values, got {type(overrides).__name__}"
                        " (command-line strings go through parse_assignments)")
    cfg = copy.deepcopy(cfg)
    for key, value in (overrides or {}).items():
        node = cfg
        parts = str(key).split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"setting {key!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return cfg


def load_config(path=None, overrides: Mapping | None = None) -> dict:
    """The YAML file at `path` (default: configs/default.yaml) with `overrides` applied."""
    path = Path(path or DEFAULT_CONFIG)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    return apply_overrides(cfg, overrides)


_RESOLVED: dict[tuple[str, str], dict] = {}


def resolve(config=None, overrides: Mapping | None = None) -> dict:
    """The settings for (config file, overrides), built once per process.

    The plan names the same file and overrides for the data loader and the task
    runner (YAML anchors); both get this one object, so neither can see a
    setting the other does not. Treat it as read-only.
    """
    key = (str(config or ""), json.dumps(dict(overrides or {}), sort_keys=True, default=str))
    if key not in _RESOLVED:  # built from the values themselves; the JSON text is only the key
        _RESOLVED[key] = load_config(config or None, overrides)
    return _RESOLVED[key]


def model_config(cfg: dict) -> ModelConfig:
    """ModelConfig from the `model` section plus the class counts from `classes`.

    `model.segmentation: true` adds the segmentation head over `classes.mask`; off (the
    default), the model has no such head and the class list is not read."""
    settings = dict(cfg.get("model", {}))
    variant = settings.pop("variant", "small")
    segmentation = settings.pop("segmentation", False)
    if not isinstance(segmentation, bool):
        raise ValueError(f"model.segmentation must be true or false, got {segmentation!r}")
    settings["num_victim_classes"] = len(cfg["classes"]["victim"])
    settings["num_disaster_classes"] = len(cfg["classes"]["disaster"])
    if segmentation:
        mask_classes = cfg["classes"].get("mask")
        if not mask_classes:
            raise ValueError("model.segmentation is on but classes.mask names no mask classes "
                             "(e.g. [background, water, fire_smoke, rubble])")
        settings["num_mask_classes"] = len(mask_classes)
    return variant_config(variant, **settings)
