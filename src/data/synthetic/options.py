"""SceneOptions: everything that shapes a synthetic image besides (seed, index), checked once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from src.data.synthetic.regions import DEFAULT_MASK_CLASSES, region_lookup
from src.data.synthetic.scenes import SCENE_PAINTERS
from src.data.synthetic.victims import VICTIM_PAINTERS
from src.settings import load_config


def default_class_names(config_path: str | Path | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(disaster class names, victim class names) from the settings file (default configs/default.yaml)."""
    classes = load_config(config_path)["classes"]
    return tuple(classes["disaster"]), tuple(classes["victim"])


def default_mask_classes(config_path: str | Path | None = None) -> tuple[str, ...]:
    """Mask class names from the settings file (``classes.mask``), else the generator's own regions."""
    return tuple(load_config(config_path)["classes"].get("mask") or DEFAULT_MASK_CLASSES)


@dataclass(frozen=True)
class SceneOptions:
    """Everything that shapes an image besides (seed, index)."""

    min_size: int = 192  # each side is drawn from [min_size, max_size] pixels
    max_size: int = 256
    difficulty: float = 0.5  # 0 = easy, 1 = classes overlap most
    max_victims: int = 6  # per scene; some scenes have none
    disaster_classes: tuple[str, ...] = ()
    victim_classes: tuple[str, ...] = ()
    burst_size: int = 1  # consecutive images showing one scene (1: every image its own scene)
    # relative frequency of each disaster class: {name: weight}, unnamed classes
    # weigh 1; None = balanced. Kept as a tuple in disaster_classes order.
    class_weights: tuple[float, ...] | dict | None = None
    # the segmentation classes the written masks index (background, water, fire_smoke, rubble, ...);
    # () = the settings file's classes.mask
    mask_classes: tuple[str, ...] = ()

    def __post_init__(self):
        disaster, victim = (), ()
        if not self.disaster_classes or not self.victim_classes:
            disaster, victim = default_class_names()
        object.__setattr__(self, "disaster_classes", tuple(self.disaster_classes or disaster))
        object.__setattr__(self, "victim_classes", tuple(self.victim_classes or victim))
        object.__setattr__(self, "difficulty", float(self.difficulty))
        object.__setattr__(self, "class_weights", _class_weights(self.class_weights, self.disaster_classes))
        object.__setattr__(self, "mask_classes", tuple(self.mask_classes or default_mask_classes()))
        region_lookup(self.mask_classes)  # 'background' named, names unique
        if int(self.burst_size) < 1:
            raise ValueError(f"burst_size must be >= 1, got {self.burst_size}")
        if not 32 <= int(self.min_size) <= int(self.max_size):
            raise ValueError(f"need 32 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if self.max_victims < 0:
            raise ValueError(f"max_victims must be >= 0, got {self.max_victims}")
        _check_names("disaster", self.disaster_classes, SCENE_PAINTERS)
        _check_names("victim", self.victim_classes, VICTIM_PAINTERS)


def _check_names(kind: str, names: Sequence[str], known: dict) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate {kind} class names: {list(names)}")
    for name in names:
        if name not in known:
            raise ValueError(
                f"unknown {kind} class {name!r}: the synthetic generator can paint {sorted(known)}")


def _class_weights(weights, names: Sequence[str]) -> tuple[float, ...] | None:
    """{name: weight} (unnamed classes weigh 1) or a weight per class, as a tuple; None stays None."""
    if weights is None:
        return None
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"class_weights names unknown disaster classes {unknown}; classes: {list(names)}")
        weights = [weights.get(name, 1.0) for name in names]
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(names):
        raise ValueError(f"class_weights has {len(weights)} weights for {len(names)} disaster classes")
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"class_weights must be >= 0 with a positive sum, got {list(weights)}")
    return weights


def coerce_options(options: SceneOptions | dict | None) -> SceneOptions:
    if options is None:
        return SceneOptions()
    if isinstance(options, dict):
        return SceneOptions(**options)
    return options
