"""Decoupled per-task weights, on real tensors after real rounds of OpenFL's own
Aggregator and Collaborators (in process, tiny model): three sites holding
both labels / boxes only / disaster classes only."""
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest

from src.settings import load_config, model_config
from src.data.manifests import read_manifest
from src.data.splits import DEFAULT_LABELS
from src.federated.checkpoint import load_pbuf_weights
from src.model import build_model
from src.model.config import task_group_of
from src.task_groups import group_sample_counts, load_group_weights, save_group_weights
from tests.tiny_federation import REPO, TINY, write_tiny_plan, write_tiny_site_split

SITES = ("site1", "site2", "site3")
DETECTION = ("neck", "det_head")


@pytest.fixture(scope="module")
def mixed_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoupled")
    summary = write_tiny_site_split(root, num_images=75, num_sites=3, labels=DEFAULT_LABELS, seed=2,
                                    test_fraction=0.2)
    assert [s["labels"] for s in summary] == ["both", "boxes", "class"]
    # site1 tagged the disaster type of only every other training image, so its
    # per-task counts differ from its train size (and the test can tell them apart)
    manifest = root / "splits" / "site1" / "manifest.tsv"
    lines = manifest.read_text().splitlines()
    train = [i for i, line in enumerate(lines) if "\ttrain\t" in line]
    for i in train[::2]:
        lines[i] = lines[i][:-1] + "0"
    manifest.write_text("\n".join(lines) + "\n")
    return root


def train_counts(sites_dir: Path, site: str) -> dict:
    """Images per label kind in a site's train manifest (read independently of the runner)."""
    rows = [r for r in read_manifest(sites_dir / site / "manifest.tsv") if r[1] == "train"]
    return {"boxes": sum(r[2] for r in rows), "class": sum(r[3] for r in rows),
            "any": sum(r[2] or r[3] for r in rows), "all": len(rows)}


def group_of_names(names):
    return {task_group_of(n) for n in names}


def expected_aggregate(uploads: dict, weights: dict, start: dict, name: str, server_lr: float):
    total = sum(weights.values())
    mean = sum(w / total * uploads[s][name] for s, w in weights.items())
    step = 1.0 if name.endswith(("moving_mean", "moving_variance")) else server_lr
    base = start[name].reshape(mean.shape)
    return base + step * (mean - base)


def run(workspace: Path, sites_dir: Path, monkeypatch, rounds: int, runner: dict, overrides: dict | None = None):
    from src.federated.in_process import run_federation

    # no validation-only round at the end: these tests read the sites' models as their
    # training left them, and that round would load the global model into them
    plan = write_tiny_plan(workspace, sites_dir, rounds=rounds, sites=SITES, runner=runner,
                           aggregator={"final_validation_tasks": None}, overrides=overrides)
    monkeypatch.chdir(workspace)
    aggregator, clients = run_federation(workspace)
    assert aggregator.round_number == rounds
    server_lr = plan["tasks"]["train"]["aggregation_type"]["settings"]["server_lr"]
    return aggregator, clients, server_lr


def test_decoupled_joint_round_trains_and_averages_each_group_over_its_sites(mixed_sites, tmp_path,
                                                                            monkeypatch):
    sites_dir = mixed_sites / "splits"
    aggregator, clients, server_lr = run(tmp_path, sites_dir, monkeypatch, rounds=1,
                                         runner={"backbone_mode": "joint", "exchange": "decoupled"})
    uploads = {s: clients[s].uploads[(0, "train")]["tensors"] for s in SITES}
    # Each site uploads exactly the groups its labels reach (model tensors are `layer/weight`).
    groups = {s: group_of_names(n for n in uploads[s] if "/" in n) for s in SITES}
    assert groups == {"site1": {"backbone", "neck", "det_head", "cls_head"},
                      "site2": {"backbone", "neck", "det_head"},
                      "site3": {"backbone", "cls_head"}}

    # The classification-only site never changed neck/det_head: its local weights
    # after training are bit-identical to the global model it received (init.pbuf),
    # batch-norm statistics included.
    received, _ = load_pbuf_weights(tmp_path / "save" / "init.pbuf")
    model = clients["site3"].collaborator.task_runner.model
    detection_vars = [v for v in model.weights if task_group_of(v.path) in DETECTION]
    assert len(detection_vars) > 20
    for v in detection_vars:
        np.testing.assert_array_equal(v.numpy(), received[v.path].reshape(v.shape), err_msg=v.path)
    # ... while its backbone and cls_head did train.
    trained = [v for v in model.weights if task_group_of(v.path) == "cls_head" and "kernel" in v.path]
    assert any(not np.array_equal(v.numpy(), received[v.path].reshape(v.shape)) for v in trained)
    # Of the backbone it ran, trained and sent only what the disaster head reads: the
    # last stage feeds the detector alone, so it stayed bit-identical and did not travel.
    to_disaster = {v.path for v in keras.Model(model.inputs, model.output["disaster"]).weights}
    backbone = {v.path for v in model.weights if task_group_of(v.path) == "backbone"}
    detector_only = backbone - to_disaster
    assert 0 < len(detector_only) < len(backbone)
    assert {n for n in uploads["site3"] if "/" in n and task_group_of(n) == "backbone"} == backbone & to_disaster
    assert all(backbone <= set(uploads[s]) for s in ("site1", "site2"))
    for v in model.weights:
        if v.path in detector_only:
            np.testing.assert_array_equal(v.numpy(), received[v.path].reshape(v.shape), err_msg=v.path)

    # The aggregate of each group is the mean over exactly the sites that trained it,
    # weighted by their image counts for that task (from the manifests, not the runner);
    # the shared backbone by the plan's task-balanced weights (each task one vote).
    from src.task_groups import task_balanced_weights

    assert aggregator.backbone_weighting == "task_balanced"
    counts = {s: train_counts(sites_dir, s) for s in SITES}
    weight_of = {"backbone": task_balanced_weights({s: {"neck": counts[s]["boxes"], "cls_head": counts[s]["class"]}
                                                    for s in SITES}),
                 "neck": {s: counts[s]["boxes"] for s in ("site1", "site2")},
                 "det_head": {s: counts[s]["boxes"] for s in ("site1", "site2")},
                 "cls_head": {s: counts[s]["class"] for s in ("site1", "site3")}}
    final, final_round = load_pbuf_weights(tmp_path / "save" / "final.pbuf")
    assert final_round == 1
    checked = set()
    for name in final:
        group = task_group_of(name)
        weights = weight_of[group]
        if name in detector_only:  # averaged over the sites whose losses reach it
            weights = {s: w for s, w in weights.items() if s != "site3"}
        assert all(name in uploads[s] for s in weights) and not any(
            name in uploads[s] for s in SITES if s not in weights), name
        expected = expected_aggregate(uploads, weights, received, name, server_lr)
        np.testing.assert_allclose(final[name].ravel(), np.ravel(expected), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        checked.add(group)
    assert checked == set(weight_of)
    assert 0 < counts["site1"]["class"] < counts["site1"]["all"]  # task counts, not train sizes

    events = [json.loads(x) for x in (tmp_path / "logs" / "events.jsonl").read_text().splitlines()]
    # A site reports NaN for what it has no labels to score, not a fake 0.
    metric = {(e["site"], e["name"]): e["value"] for e in events if e["event"] == "metric"}
    assert math.isnan(metric[("site3", "map50")]) and math.isnan(metric[("site2", "accuracy")])
    assert all(math.isfinite(metric[(s, n)]) for s, n in (("site1", "map50"), ("site1", "accuracy"),
                                                         ("site2", "map50"), ("site3", "accuracy")))

    # Wire accounting: every site's upload and download per round, by group.
    ups = {(e["round"], e["site"]): e for e in events if e["event"] == "upload" and e["task"] == "train"}
    downs = {(e["round"], e["site"]): e for e in events if e["event"] == "download"}
    model_event = next(e for e in events if e["event"] == "model")
    assert set(ups) == set(downs) == {(0, s) for s in SITES}
    assert set(ups[(0, "site3")]["by_group"]) == {"backbone", "cls_head", "metrics"}
    for key in ups:  # every site downloads the whole model each round (message headers differ a little)
        assert abs(downs[key]["bytes"] - model_event["model_bytes"]) < 0.01 * model_event["model_bytes"]
    raw = {g: sum(uploads["site3"][n].nbytes for n in uploads["site3"] if "/" in n and task_group_of(n) == g)
           for g in ("backbone", "cls_head")}
    for g, nbytes in raw.items():  # the serialized tensors, a little more than their raw bytes
        assert nbytes <= ups[(0, "site3")]["by_group"][g] < 1.1 * nbytes + 4096


def test_frozen_backbone_never_travels_and_naive_exchange_sends_every_other_group(mixed_sites, tmp_path,
                                                                                  monkeypatch):
    """exchange full (the naive baseline): every site trains and sends every group it may
    train, weighted by its whole train size; backbone frozen: it stays the checkpoint."""
    sites_dir = mixed_sites / "splits"
    cfg = load_config(overrides={**TINY, "seed": 11})
    pretrained = build_model(model_config(cfg))
    checkpoint = save_group_weights(pretrained, ["backbone"], tmp_path / "pretrained" / "backbone.npz")
    fresh = build_model(model_config(load_config(overrides=TINY)))
    assert load_group_weights(fresh, checkpoint) == ["backbone"]

    aggregator, clients, server_lr = run(tmp_path / "ws", sites_dir, monkeypatch, rounds=1,
                                         runner={"backbone_mode": "frozen", "exchange": "full"},
                                         overrides={"pretrain.checkpoint": str(checkpoint)})
    uploads = {s: clients[s].uploads[(0, "train")]["tensors"] for s in SITES}
    for s in SITES:
        assert group_of_names(n for n in uploads[s] if "/" in n) == {"neck", "det_head", "cls_head"}, s
    init, _ = load_pbuf_weights(tmp_path / "ws" / "save" / "init.pbuf")
    final, _ = load_pbuf_weights(tmp_path / "ws" / "save" / "final.pbuf")
    backbone = [v for v in pretrained.weights if task_group_of(v.path) == "backbone"]
    for v in backbone:  # nobody trained the backbone: the global one is still the checkpoint
        np.testing.assert_array_equal(init[v.path].reshape(v.shape), v.numpy())
        np.testing.assert_array_equal(final[v.path].reshape(v.shape), v.numpy())
    sizes = {s: train_counts(sites_dir, s)["all"] for s in SITES}
    for name in final:
        if task_group_of(name) != "backbone":
            expected = expected_aggregate(uploads, sizes, init, name, server_lr)
            np.testing.assert_allclose(final[name].ravel(), np.ravel(expected), rtol=1e-5, atol=1e-6)


def test_a_site_computes_the_outputs_its_groups_need():
    from src.task_groups import outputs_for_groups

    detection, everything = ("det_s8", "det_s16", "det_s32"), ("det_s8", "det_s16", "det_s32", "disaster")
    assert outputs_for_groups(("backbone", "cls_head")) == ("disaster",)
    assert outputs_for_groups(("cls_head",)) == ("disaster",)
    assert outputs_for_groups(("backbone", "neck", "det_head")) == detection
    assert outputs_for_groups(("neck", "det_head", "cls_head")) == everything
    assert outputs_for_groups(None) == outputs_for_groups(("backbone",)) == everything


def test_group_sample_counts_follow_labels_and_modes():
    from src.data.records import Record

    def rec(boxes, cls):
        return Record(image_path="x.jpg", disaster_class=0 if cls else -1, has_boxes=boxes, has_class=cls)

    records = [rec(True, True), rec(True, False), rec(False, True), rec(False, True), rec(False, False)]
    assert group_sample_counts(records) == {"backbone": 4, "neck": 2, "det_head": 2, "cls_head": 3}
    assert group_sample_counts(records, "frozen") == {"neck": 2, "det_head": 2, "cls_head": 3}
    assert group_sample_counts(records, "joint", "full") == dict.fromkeys(
        ("backbone", "neck", "det_head", "cls_head"), 5)
    assert group_sample_counts([rec(False, True)], "frozen") == {"cls_head": 1}
    assert group_sample_counts([rec(False, False)]) == {}
    with pytest.raises(ValueError, match="backbone_mode"):
        group_sample_counts(records, "partial")


def test_a_joint_backbone_can_start_from_the_checkpoint_and_stays_trainable(tmp_path):
    """backbone_init checkpoint: the runner (and so `fx plan initialize`'s init.pbuf) starts
    from the pretrained backbone, the task parts from their own initialization; the
    backbone is still a trained group. scratch leaves the random initialization."""
    from src.federated.data_loader import SiteDataLoader
    from src.federated.task_runner import MultiTaskRunner
    from src.task_groups import starts_from_checkpoint

    pretrained = build_model(model_config(load_config(overrides={**TINY, "seed": 11})))
    checkpoint = save_group_weights(pretrained, ["backbone"], tmp_path / "backbone.npz")
    stored = {v.path: v.numpy() for v in pretrained.weights}

    overrides = {**TINY, "pretrain.checkpoint": str(checkpoint)}

    def runner(init):
        return MultiTaskRunner(data_loader=SiteDataLoader(None, overrides=overrides), overrides=overrides,
                               backbone_mode="joint", backbone_init=init).get_tensor_dict()

    from_checkpoint, from_scratch = runner("checkpoint"), runner("scratch")
    backbone = [n for n in stored if task_group_of(n) == "backbone"]
    heads = [n for n in stored if task_group_of(n) == "cls_head" and "kernel" in n]
    assert backbone and heads
    for name in backbone:
        np.testing.assert_array_equal(from_checkpoint[name], stored[name])
    assert any(not np.array_equal(from_scratch[n], stored[n]) for n in backbone)
    for name in heads:  # the checkpoint holds the backbone only
        np.testing.assert_array_equal(from_checkpoint[name], from_scratch[name])
    assert starts_from_checkpoint("joint", "checkpoint") and starts_from_checkpoint("frozen", "scratch")
    assert not starts_from_checkpoint("joint", "scratch")
    with pytest.raises(ValueError, match="backbone_init"):
        starts_from_checkpoint("joint", "imagenet")
    no_checkpoint = {**TINY, "pretrain.checkpoint": None}
    with pytest.raises(ValueError, match="pretrain.checkpoint"):
        MultiTaskRunner(data_loader=SiteDataLoader(None, overrides=no_checkpoint), overrides=no_checkpoint,
                        backbone_init="checkpoint")
    with pytest.raises(ValueError, match="different settings"):
        MultiTaskRunner(data_loader=SiteDataLoader(None), overrides=overrides, backbone_init="scratch")


def test_the_shipped_public_backbone_fits_the_default_plan_model():
    """The plan starts every federation from data/pretrained/backbone.npz (shipped in git):
    it must load, shape for shape, into the model the default plan builds."""
    import yaml

    plan = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    runner = plan["task_runner"]["settings"]
    cfg = load_config(overrides=runner["overrides"])
    checkpoint = REPO / cfg["pretrain"]["checkpoint"]
    assert runner["backbone_init"] == "checkpoint"
    assert load_group_weights(build_model(model_config(cfg)), checkpoint) == ["backbone"]
    provenance = json.loads(checkpoint.with_suffix(".json").read_text())
    assert provenance["model"]["variant"] == cfg["model"]["variant"]


def test_frozen_checkpoint_of_another_variant_is_refused(tmp_path):
    small = build_model(model_config(load_config(overrides=TINY)))
    path = save_group_weights(small, ["backbone"], tmp_path / "b.npz")
    wider = build_model(model_config(load_config(overrides={**TINY, "model.width": 0.25})))
    with pytest.raises(ValueError, match="shape"):
        load_group_weights(wider, path)
    with pytest.raises(FileNotFoundError, match="pretrain-backbone"):
        load_group_weights(wider, tmp_path / "missing.npz")


def test_task_balanced_backbone_weights_give_each_task_its_vote():
    from src.task_groups import task_balanced_weights

    samples = {"both": {"backbone": 400, "neck": 400, "det_head": 400, "cls_head": 400},
               "boxes": {"backbone": 200, "neck": 200, "det_head": 200},
               "class": {"backbone": 1800, "cls_head": 1800}}
    w = task_balanced_weights(samples)
    assert w == pytest.approx({"both": 400 / 600 + 400 / 2200, "boxes": 200 / 600, "class": 1800 / 2200})
    assert sum(w.values()) == pytest.approx(2.0)  # one vote per task
    # sites holding only one kind of label: that task's vote alone
    assert task_balanced_weights({"a": {"cls_head": 1}, "b": {"cls_head": 3}}) == {"a": 0.25, "b": 0.75}
    w = task_balanced_weights(samples, {"boxes": 3})  # boxes 3 votes, class 1
    assert w == pytest.approx({"both": 3 * 400 / 600 + 400 / 2200, "boxes": 3 * 200 / 600, "class": 1800 / 2200})
    with pytest.raises(ValueError, match="task votes"):
        task_balanced_weights(samples, {"victims": 2})
    with pytest.raises(ValueError, match="task votes"):
        task_balanced_weights(samples, {"class": -1})
