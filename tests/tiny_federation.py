"""A tiny OpenFL workspace for in-process federation tests: the real plan, tiny model and batches."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TINY = {"model.input_size": 64, "model.width": 0.125, "model.depth": [1, 1, 1, 1, 1],
        "model.cls_head_blocks": 1}


def write_tiny_plan(workspace: Path, sites_dir: Path, rounds: int, sites=("site1", "site2"),
                    runner: dict | None = None, aggregator: dict | None = None, overrides: dict | None = None):
    """plan/ (plan.yaml from the repository with tiny settings; `runner` / `aggregator`
    settings and settings `overrides` to set), cols.yaml and data.yaml for `sites` under `sites_dir`."""
    plan = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    # in-process runs never restart: no OpenFL restart database (its writes cost seconds a round)
    plan["aggregator"]["settings"].update(rounds_to_train=rounds, event_log="logs/events.jsonl",
                                          persist_checkpoint=False)
    # config, overrides and rounds are YAML anchors: one object in both sections
    plan["task_runner"]["settings"]["config"] = plan["data_loader"]["settings"]["config"] = \
        str(REPO / "configs" / "default.yaml")
    plan["task_runner"]["settings"]["rounds"] = rounds
    # batch 8 at every site, one pass an epoch (the plan's small-site batches and repeated
    # epochs would multiply the steps of these tiny sites; those policies have their own
    # test, tests/test_site_data_loader.py, and the fx end-to-end test runs them as planned)
    plan["task_runner"]["settings"]["overrides"].update({**TINY, "pipeline.batch_size": 8, **(overrides or {})})
    # the shipped public backbone fits the default model, not this tiny one
    plan["task_runner"]["settings"].update({"backbone_init": "scratch", **(runner or {})})
    plan["aggregator"]["settings"].update(aggregator or {})
    plan["data_loader"]["settings"].update(min_batches_per_epoch=None, repeat_to_batches=None)
    (workspace / "plan").mkdir(parents=True)
    (workspace / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan))
    (workspace / "plan" / "cols.yaml").write_text(yaml.safe_dump({"collaborators": list(sites)}))
    (workspace / "plan" / "data.yaml").write_text("".join(f"{s},{sites_dir / s}\n" for s in sites))
    return plan


def write_tiny_site_split(root: Path, num_images: int, num_sites: int, labels, seed: int,
                          test_fraction: float = 0.25, val_fraction: float = 0.25) -> list[dict]:
    """A small synthetic data set in root/data split over sites in root/splits (+ test.tsv)."""
    from src.settings import load_config, parse_assignments
    from src.data.splits import build_site_splits
    from src.data.synthetic import generate_dataset

    cfg = load_config(overrides=parse_assignments([f"data.root={root / 'data'}", f"data.test_fraction={test_fraction}",
                                 f"data.val_fraction={val_fraction}"]))
    generate_dataset(root / "data", num_images=num_images, seed=seed, min_size=96, max_size=128, workers=1)
    return build_site_splits(cfg, root / "splits", num_sites=num_sites, alpha=100.0, seed=0, labels=labels)
