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
# What the sites of a new split of the built-in data hold, cycled over them: the 3 sites of the
# default federation (its committed split), then a site holding masks only (SITES=4), so a
# larger federation has every kind of site the decoupled exchange is built for.
SITE_LABEL_CYCLE = ("both", "boxes", "class", "masks")
# The settings each task's labels need in the model, by the manifest column that holds them.
SETTINGS_FOR_LABELS = {"masks": {"model.segmentation": True}}

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
    from src.data.splits import DEFAULT_LABELS, build_site_splits, site_labels
    from src.data.synthetic import generate_from_config

    cfg = load_config(DEFAULT_CONFIG)
    generate_from_config(cfg, REPO / cfg["data"]["root"])
    labels = list(labels) if labels else site_labels(sites, SITE_LABEL_CYCLE)
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


def held_labels(split_dir: Path) -> list[str]:
    """The label kinds (manifest columns: boxes, class, masks) some site of the split holds."""
    from src.data.manifests import read_manifest
    from src.data.splits import LABEL_KINDS

    rows = [row for site in split_sites(split_dir)
            for row in read_manifest(split_dir / site / "manifest.tsv", with_masks=True)]
    return [kind for i, kind in enumerate(LABEL_KINDS) if any(row[2 + i] for row in rows)]


def settings_for_split(split_dir: Path, settings: Mapping) -> dict:
    """The settings the split's labels need in the model (`SETTINGS_FOR_LABELS`: a site holding
    masks needs the segmentation head), as run overrides; a key the run sets itself is kept."""
    needed = {}
    for kind in held_labels(split_dir):
        needed.update(SETTINGS_FOR_LABELS.get(kind, {}))
    return {key: value for key, value in needed.items() if key not in settings}


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
