"""Loading the YAML configuration (configs/default.yaml) with dotted overrides.

One place for sizes, class lists, seeds and training settings; the CLI and
the federation plan override single keys (`training.epochs=5`).
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from src.model.config import ModelConfig, variant_config
from src.model.loss import LossWeights

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def load_config(path=None, overrides=()) -> dict:
    """Read YAML and apply `key.sub=value` overrides (values parsed as YAML)."""
    path = Path(path or DEFAULT_CONFIG)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return cfg


def model_config(cfg: dict) -> ModelConfig:
    """ModelConfig from the `model` section plus the class counts from `classes`."""
    settings = dict(cfg.get("model", {}))
    variant = settings.pop("variant", "small")
    settings["num_victim_classes"] = len(cfg["classes"]["victim"])
    settings["num_disaster_classes"] = len(cfg["classes"]["disaster"])
    return variant_config(variant, **settings)


def pipeline_options(cfg: dict):
    """PipelineOptions from the `pipeline` section, seeded by the run seed."""
    from src.data.pipeline import PipelineOptions

    p = dict(cfg.get("pipeline", {}))
    if p.get("scale_jitter"):
        p["scale_jitter"] = tuple(p["scale_jitter"])
    return PipelineOptions(seed=cfg["seed"], **p)


def train_options(cfg: dict):
    """TrainOptions from the `training` section."""
    from src.training import TrainOptions

    t = dict(cfg["training"])
    t["loss_weights"] = LossWeights(**t.get("loss_weights", {}))
    return TrainOptions(**t)
