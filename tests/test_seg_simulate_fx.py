"""`make simulate SITES=4`: the default federation's three sites plus a site holding masks only,
whose labels turn the segmentation head on; over real `fx` processes (slow) and as the split and
settings the run starts from (fast)."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from src.settings import load_config
from tests.tiny_federation import REPO, TINY, write_tiny_site_split

MASK_SITE_GROUPS = {"backbone", "seg_head", "metrics"}


def test_four_simulated_sites_add_a_mask_only_site_and_the_segmentation_head(tmp_path):
    from src.data.manifests import read_manifest
    from workspace.simulate.data import DEFAULT_SPLIT, provide_split, settings_for_split

    # 3 sites: the committed default split, and nothing added to the settings
    three = provide_split(tmp_path, None, 3, 0, 0.5, None, None)
    assert three == DEFAULT_SPLIT and settings_for_split(three, {}) == {}
    four = provide_split(tmp_path, None, 4, 0, 0.5, None, None)
    sites = yaml.safe_load((four / "split.yaml").read_text())["sites"]
    assert {s["site"]: s["labels"] for s in sites} == {"site1": "both", "site2": "boxes", "site3": "class",
                                                      "site4": "masks"}
    rows = [r for r in read_manifest(four / "site4" / "manifest.tsv", with_masks=True) if r[1] == "train"]
    assert rows and all(r[2:] == (False, False, True) for r in rows)
    # a site holding masks needs the segmentation head: a run override, unless the run sets it itself
    assert settings_for_split(four, {}) == {"model.segmentation": True}
    assert settings_for_split(four, {"model.segmentation": False}) == {}


@pytest.mark.slow  # (in `make test-faults`: five fx processes for two rounds)
def test_simulate_with_a_mask_only_fourth_site_over_real_fx_processes(tmp_path):
    """Four sites (both, boxes, class, masks) over real `fx` processes with mTLS, tiny model and
    images, two rounds: the mask-only site sends backbone + seg_head only over gRPC, and the
    report scores the segmentation on the test split."""
    summary = write_tiny_site_split(tmp_path / "data", num_images=100, num_sites=4,
                                    labels=("both", "boxes", "class", "masks"), seed=5, test_fraction=0.2)
    assert [s["labels"] for s in summary] == ["both", "boxes", "class", "masks"]
    settings = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "pipeline.batch_size": 8}.items()]
    cmd = [sys.executable, "-m", "workspace.simulate", "--rounds", "2", "--split", str(tmp_path / "data" / "splits"),
           "--runs-dir", str(tmp_path / "runs"), "--backbone-init", "scratch",
           *[arg for s in settings for arg in ("--set", s)],
           # one pass over a tiny site's images per epoch (the plan's step floors are for real sites)
           "--plan-set", "data_loader.settings.repeat_to_batches=null",
           "--plan-set", "data_loader.settings.min_batches_per_epoch=null"]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKE_COMMAND", "PYTHONPATH")}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = (tmp_path / "runs" / "latest").resolve()
    plan = yaml.safe_load((run / "workspace" / "plan" / "plan.yaml").read_text())
    assert plan["task_runner"]["settings"]["overrides"]["model.segmentation"] is True
    metrics = json.loads((run / "metrics.json").read_text())
    mask_classes = load_config()["classes"]["mask"]
    assert metrics["model"]["num_mask_classes"] == len(mask_classes)
    for rnd in metrics["rounds"][:2]:
        groups = {s: set(m["upload_bytes_by_group"]) for s, m in rnd["sites"].items()}
        assert groups == {"site1": {"backbone", "neck", "det_head", "cls_head", "metrics"},
                          "site2": {"backbone", "neck", "det_head", "metrics"},
                          "site3": {"backbone", "cls_head", "metrics"}, "site4": MASK_SITE_GROUPS}
        assert rnd["sites"]["site4"]["samples_seg_head"] == summary[3]["train"]
        assert all(rnd["sites"][s]["samples_seg_head"] == 0 for s in ("site1", "site2", "site3"))
    assert set(metrics["traffic"]["site4"]["upload_bytes_by_group"]) == MASK_SITE_GROUPS
    assert "seg_head" in metrics["model_bytes_by_group"]
    test = metrics["final"]["test"]
    assert test["segmentation_images"] == test["images"] > 0
    assert 0.0 <= test["miou"] <= 1.0 and list(test["per_class_iou"]) == mask_classes
    assert "miou" in metrics["last_aggregate"]["test"]
    assert f"test segmentation (best global model): mIoU {test['miou']:.3f}" in result.stdout
    assert "split's labels need {'model.segmentation': True}" in result.stderr
