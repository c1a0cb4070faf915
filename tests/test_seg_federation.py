"""Three task groups in the federation: a site holding boxes and classes, and a mask-only site,
on OpenFL's own Aggregator and Collaborator classes in process (tiny model with the segmentation
head, real training). The mask-only site trains and sends backbone + seg_head only, leaves the
detector and the disaster head bit-identical, and its masks get the backbone a vote of their own."""
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from src.data.manifests import read_manifest
from src.federated.checkpoint import load_pbuf_weights
from src.model.config import TASK_GROUPS, task_group_of
from src.task_groups import task_balanced_weights
from tests.tiny_federation import TINY, write_tiny_plan, write_tiny_site_split

SITES = ("site1", "site2")  # both (boxes + class), masks
SEGMENTATION = {"model.segmentation": True}
NOT_AT_MASK_SITE = ("neck", "det_head", "cls_head")


@pytest.fixture(scope="module")
def seg_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_fed")
    summary = write_tiny_site_split(root, num_images=40, num_sites=2, labels=("both", "masks"), seed=3,
                                    test_fraction=0.2)
    assert [s["labels"] for s in summary] == ["both", "masks"]
    return root / "splits"


def label_counts(sites_dir: Path, site: str) -> dict:
    """Training images per label kind, read from the site's manifest (not through the runner)."""
    rows = [r for r in read_manifest(sites_dir / site / "manifest.tsv", with_masks=True) if r[1] == "train"]
    return {"boxes": sum(r[2] for r in rows), "class": sum(r[3] for r in rows), "masks": sum(r[4] for r in rows)}


def run_one_round(workspace: Path, sites_dir: Path, monkeypatch, runner: dict, overrides: dict,
                  aggregator: dict | None = None):
    from src.federated.in_process import run_federation

    plan = write_tiny_plan(workspace, sites_dir, rounds=1, sites=SITES, runner=runner,
                           aggregator={"final_validation_tasks": None, **(aggregator or {})},
                           overrides={**SEGMENTATION, **overrides})
    monkeypatch.chdir(workspace)
    aggregator, clients = run_federation(workspace)
    uploads = {s: clients[s].uploads[(0, "train")]["tensors"] for s in SITES}
    events = [json.loads(x) for x in (workspace / "logs" / "events.jsonl").read_text().splitlines()]
    server_lr = plan["tasks"]["train"]["aggregation_type"]["settings"]["server_lr"]
    return aggregator, clients, uploads, events, server_lr


def model_groups_sent(upload: dict) -> set:
    return {task_group_of(n) for n in upload if "/" in n}


def assert_untouched(model, received: dict, groups) -> int:
    """Every weight of `groups` in the site's model equals the global model it received."""
    variables = [v for v in model.weights if task_group_of(v.path) in groups]
    for v in variables:
        np.testing.assert_array_equal(v.numpy(), received[v.path].reshape(v.shape), err_msg=v.path)
    return len(variables)


def test_a_mask_only_site_trains_and_sends_backbone_and_seg_head_only(seg_sites, tmp_path, monkeypatch):
    aggregator, clients, uploads, events, server_lr = run_one_round(
        tmp_path, seg_sites, monkeypatch, runner={"backbone_mode": "joint"}, overrides={})
    assert aggregator.groups == TASK_GROUPS  # read off the model the plan builds (segmentation on)
    assert model_groups_sent(uploads["site1"]) == {"backbone", "neck", "det_head", "cls_head"}
    assert model_groups_sent(uploads["site2"]) == {"backbone", "seg_head"}

    # The mask-only site never moved the detector, its neck or the disaster head (batch-norm
    # statistics included); its segmentation head did train.
    received, _ = load_pbuf_weights(tmp_path / "save" / "init.pbuf")
    model = clients["site2"].collaborator.task_runner.model
    assert assert_untouched(model, received, NOT_AT_MASK_SITE) > 20
    seg_kernels = [v for v in model.weights if task_group_of(v.path) == "seg_head" and "kernel" in v.path]
    assert seg_kernels and all(not np.array_equal(v.numpy(), received[v.path].reshape(v.shape)) for v in seg_kernels)
    # Of the backbone it sent exactly what the segmentation output reads (not the last stage).
    to_masks = {v.path for v in keras.Model(model.inputs, model.output["segmentation"]).weights}
    backbone = {v.path for v in model.weights if task_group_of(v.path) == "backbone"}
    assert {n for n in uploads["site2"] if "/" in n and task_group_of(n) == "backbone"} == backbone & to_masks
    assert backbone & to_masks != backbone

    # Each site reports one image count per group of the model, masks counted like the other labels.
    counts = {s: label_counts(seg_sites, s) for s in SITES}
    assert counts["site1"]["masks"] == 0 < counts["site2"]["masks"] and counts["site2"]["boxes"] == 0
    reported = {(e["site"], e["name"]): e["value"] for e in events
                if e["event"] == "metric" and e["name"].startswith("samples_")}
    assert {name for _, name in reported} == {f"samples_{g}" for g in TASK_GROUPS}
    assert reported[("site2", "samples_seg_head")] == counts["site2"]["masks"]
    assert reported[("site1", "samples_seg_head")] == 0 and reported[("site2", "samples_neck")] == 0

    # The aggregate: each group over the sites that trained it, weighted by their images for it;
    # the shared backbone task-balanced over three tasks (the masks are a vote of their own).
    assert aggregator.backbone_weighting == "task_balanced"
    shared = task_balanced_weights({s: {"neck": counts[s]["boxes"], "cls_head": counts[s]["class"],
                                        "seg_head": counts[s]["masks"]} for s in SITES})
    assert shared["site2"] == pytest.approx(1.0) and shared["site1"] == pytest.approx(2.0)
    weight_of = {"backbone": shared, "neck": {"site1": 1.0}, "det_head": {"site1": 1.0},
                 "cls_head": {"site1": 1.0}, "seg_head": {"site2": 1.0}}
    final, _ = load_pbuf_weights(tmp_path / "save" / "final.pbuf")
    checked = set()
    for name, value in final.items():
        group = task_group_of(name)
        senders = {s: w for s, w in weight_of[group].items() if name in uploads[s]}
        assert senders, name
        total = sum(senders.values())
        mean = sum(w / total * uploads[s][name] for s, w in senders.items())
        step = 1.0 if name.endswith(("moving_mean", "moving_variance")) else server_lr
        base = received[name].reshape(mean.shape)
        np.testing.assert_allclose(value.ravel(), np.ravel(base + step * (mean - base)), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        checked.add(group)
    assert checked == set(TASK_GROUPS)

    # Wire accounting per group: the mask-only site's upload is backbone + seg_head (+ its metrics).
    ups = {e["site"]: e for e in events if e["event"] == "upload" and e["task"] == "train"}
    assert set(ups["site2"]["by_group"]) == {"backbone", "seg_head", "metrics"}
    seg_bytes = sum(uploads["site2"][n].nbytes for n in uploads["site2"] if "/" in n and task_group_of(n) == "seg_head")
    assert seg_bytes <= ups["site2"]["by_group"]["seg_head"] < 1.1 * seg_bytes + 4096
    model_event = next(e for e in events if e["event"] == "model")
    assert set(model_event["model_bytes_by_group"]) == set(TASK_GROUPS)


@pytest.mark.slow
def test_with_a_frozen_backbone_the_mask_only_site_sends_its_seg_head_alone(seg_sites, tmp_path, monkeypatch):
    from src.settings import load_config, model_config
    from src.model import build_model
    from src.task_groups import save_group_weights

    pretrained = build_model(model_config(load_config(overrides={**TINY, **SEGMENTATION, "seed": 11})))
    checkpoint = save_group_weights(pretrained, ["backbone"], tmp_path / "pretrained" / "backbone.npz")
    aggregator, clients, uploads, _, _ = run_one_round(
        tmp_path / "ws", seg_sites, monkeypatch, runner={"backbone_mode": "frozen"},
        overrides={"pretrain.checkpoint": str(checkpoint)})
    assert model_groups_sent(uploads["site1"]) == {"neck", "det_head", "cls_head"}
    assert model_groups_sent(uploads["site2"]) == {"seg_head"}
    received, _ = load_pbuf_weights(tmp_path / "ws" / "save" / "init.pbuf")
    assert assert_untouched(clients["site2"].collaborator.task_runner.model, received,
                            ("backbone",) + NOT_AT_MASK_SITE) > 50
    final, _ = load_pbuf_weights(tmp_path / "ws" / "save" / "final.pbuf")
    for v in pretrained.weights:  # nobody trained the backbone: the global one is the checkpoint
        if task_group_of(v.path) == "backbone":
            np.testing.assert_array_equal(final[v.path].reshape(v.shape), v.numpy())


def test_masked_sums_give_the_mask_site_its_backbone_vote(seg_sites, tmp_path, monkeypatch):
    """Secure aggregation (pairwise_masking) over the three tasks: the backbone's masked sums
    carry one component per task of the model, masks included, so the masked aggregate equals
    the plain task-balanced one."""
    from src.federated.secure_sums import SiteMasking

    plain, real_mask = {}, SiteMasking.mask_upload

    def recording_mask(self, upload, round_number, counts, abstain=False):
        plain[self.site] = ({k.tensor_name: np.array(v, np.float64) for k, v in upload.items()
                             if "metric" not in k.tags}, dict(counts))
        return real_mask(self, upload, round_number, counts, abstain)

    monkeypatch.setattr(SiteMasking, "mask_upload", recording_mask)
    aggregator, _, _, _, server_lr = run_one_round(tmp_path, seg_sites, monkeypatch, overrides={},
                                                   runner={"pairwise_masking": True},
                                                   aggregator={"pairwise_masking": True})
    assert aggregator.rosters.components["backbone"] == {"boxes": ["neck", 1.0], "class": ["cls_head", 1.0],
                                                         "masks": ["seg_head", 1.0]}
    shared = task_balanced_weights({s: counts for s, (_, counts) in plain.items()})
    received, _ = load_pbuf_weights(tmp_path / "save" / "init.pbuf")
    final, _ = load_pbuf_weights(tmp_path / "save" / "final.pbuf")
    backbone = [n for n in final if task_group_of(n) == "backbone" and all(n in u for u, _ in plain.values())]
    assert len(backbone) > 20  # (sent by both sites: a tensor one site alone holds is not summed)
    expected, without_masks, got = [], [], []
    for name in backbone:
        mean = sum(shared[s] * u[name] for s, (u, _) in plain.items()) / sum(shared.values())
        step = 1.0 if name.endswith(("moving_mean", "moving_variance")) else server_lr
        base = received[name].reshape(mean.shape).astype(np.float64)
        expected.append(np.ravel(base + step * (mean - base)))
        without_masks.append(np.ravel(base + step * (plain["site1"][0][name] - base)))
        got.append(final[name].ravel().astype(np.float64))
    expected, without_masks, got = (np.concatenate(x) for x in (expected, without_masks, got))
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5
    # (the mask site's vote moved the backbone: the check above tells the two apart)
    assert np.linalg.norm(without_masks - expected) > 100 * np.linalg.norm(got - expected)


def test_a_metric_only_some_sites_report_is_averaged_over_them():
    """A mask-only site reports label counts the others do not (e.g. active learning's
    `al_labeled_masks`), and they theirs: the aggregator averages a metric over the sites that
    sent it instead of stopping the round; a model tensor a site lacks still aggregates to None."""
    from openfl.interface.aggregation_functions import WeightedAverage
    from openfl.utilities import TensorKey

    from src.federated.tensor_db import KeyedTensorDB

    db = KeyedTensorDB()
    db.cache_tensor({TensorKey("al_labeled_masks", "agg", 0, True, ("metric", "site2")): np.array(6.0),
                     TensorKey("loss", "agg", 0, True, ("metric", "site1")): np.array(1.0),
                     TensorKey("loss", "agg", 0, True, ("metric", "site2")): np.array(3.0),
                     TensorKey("seg_head_conv/kernel", "agg", 0, False, ("site2", "trained")): np.ones(2)})
    weights = {"site1": 0.75, "site2": 0.25}
    metric = db.get_aggregated_tensor(TensorKey("al_labeled_masks", "agg", 0, True, ("metric",)), weights,
                                      aggregation_function=WeightedAverage())
    assert float(metric) == 6.0
    both = db.get_aggregated_tensor(TensorKey("loss", "agg", 0, True, ("metric",)), weights,
                                    aggregation_function=WeightedAverage())
    assert float(both) == pytest.approx(1.5)
    assert db.get_aggregated_tensor(TensorKey("seg_head_conv/kernel", "agg", 0, False, ("trained",)), weights,
                                    aggregation_function=WeightedAverage()) is None
