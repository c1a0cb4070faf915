"""What a run trains on: the built-in synthetic data and a site split of it (or a split of
one's own), and the public backbone checkpoint the model starts from.

Each is made when missing, so `make simulate` works on a fresh clone.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from workspace.simulate import RunFailed
from workspace.simulate.fx_workspace import REPO, split_sites
from workspace.simulate.plan_edits import settings_overrides

DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
DEFAULT_SPLIT = REPO / "data_splits" / "default"

log = logging.getLogger("simulate")


def provide_split(run_dir: Path, split: Path | None, sites: int, seed: int, alpha: float,
                  labels: Sequence[str] | None, seed_fraction: float | None) -> Path:
    """The split a run uses: `split` as given, the committed default split when it fits the
    request, else a new one of the built-in data in the run folder.

    seed_fraction: with active learning, the share of each site's training images labeled
    at the start (the rest form its pool); None: every training image labeled."""
    if split is not None:
        if not split.is_dir():
            raise RunFailed(f"--split {split}: no such folder")
        split_sites(split)  # the split's own site list (split.yaml), or a clear refusal
        if seed_fraction is not None and not split_has_pool(split):
            raise RunFailed(f"--split {split}: no site has unlabeled `pool` rows for --active-learning; "
                            "build one with `python -m src.data.splits --seed-fraction 0.1`")
        return split.resolve()
    from src.settings import load_config
    from src.data.splits import DEFAULT_LABELS, build_site_splits
    from src.data.synthetic import generate_from_config

    cfg = load_config(DEFAULT_CONFIG)
    generate_from_config(cfg, REPO / cfg["data"]["root"])
    labels = list(labels or DEFAULT_LABELS)
    fraction = 1.0 if seed_fraction is None else seed_fraction
    if (sites == 3 and seed == 0 and alpha == 0.5 and labels == list(DEFAULT_LABELS)
            and fraction == 1.0 and DEFAULT_SPLIT.exists()):
        return DEFAULT_SPLIT
    split_dir = run_dir / "split" / f"sites{sites}-seed{seed}"
    for s in build_site_splits(cfg, split_dir, sites, alpha, seed, labels, fraction):
        log.info("%s (%s labels): %d train, %d pool, %d val", s["site"], s["labels"], s["train"], s["pool"],
                 s["val"])
    return split_dir


def split_has_pool(split_dir: Path) -> bool:
    """Whether any site of the split holds unlabeled (`pool`) training images."""
    from src.data.manifests import read_manifest

    return any(row[1] == "pool" for site in split_sites(split_dir)
               for row in read_manifest(split_dir / site / "manifest.tsv"))


def ensure_backbone_checkpoint(plan: dict, pretrain_overrides: Mapping | None = None) -> None:
    """Make the public pretrained backbone (settings pretrain.checkpoint) when the plan's
    model starts from it (backbone_mode frozen, or joint with backbone_init checkpoint)
    and it is missing. `pretrain_overrides`: settings for the pretraining run itself."""
    from src.settings import load_config
    from src.task_groups import starts_from_checkpoint

    runner = plan["task_runner"]["settings"]
    if not starts_from_checkpoint(runner.get("backbone_mode", "joint"), runner.get("backbone_init", "checkpoint")):
        return
    config = REPO / runner.get("config", DEFAULT_CONFIG)
    checkpoint = load_config(config, settings_overrides(plan))["pretrain"]["checkpoint"]
    if (REPO / checkpoint).exists():
        return
    from src.central import pretrain

    cfg = load_config(DEFAULT_CONFIG, {**(pretrain_overrides or {}), "pretrain.checkpoint": checkpoint})
    log.info("backbone checkpoint %s missing: pretraining it on the public slice (%d images, %d epochs)",
             checkpoint, cfg["pretrain"]["num_images"], cfg["pretrain"]["epochs"])
    pretrain(cfg, REPO / "workspace" / "runs" / "pretrain")
