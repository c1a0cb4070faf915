"""The split builder on a non-synthetic layout: C2A-style COCO json + AIDER-style folders + a TSV source."""
from pathlib import Path

import pytest

from src.settings import load_config, parse_assignments
from src.data.manifests import load_site, load_test_split, read_manifest
from src.data.sources import load_sources
from src.data.splits import SplitError, build_split, main
from tests.real_formats import write_sources_spec

CFG = load_config()
VICTIM, DISASTER = CFG["classes"]["victim"], CFG["classes"]["disaster"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return write_sources_spec(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module")
def per_source(spec):
    records, report = load_sources(spec, VICTIM, DISASTER)
    assert not report.messages
    return records


def all_rows(out: Path) -> dict:
    return {site.name: read_manifest(site / "manifest.tsv") for site in sorted(out.glob("site*"))}


def test_dirichlet_split_partitions_every_image_once_and_reads_back(spec, per_source, tmp_path):
    out = tmp_path / "real"
    summary, merges = build_split(per_source, out, spec, num_sites=3, strategy="dirichlet:0.5", seed=0,
                                  class_names=DISASTER)
    assert merges.pictures == 0
    assert [s["site"] for s in summary] == ["site1", "site2", "site3"]
    keys = [row[0] for rows in all_rows(out).values() for row in rows]
    test = (out / "test.tsv").read_text().split()[1:]
    total = sum(len(v) for v in per_source.values())
    assert len(keys) + len(test) == total and len(set(keys) | set(test)) == total
    site = load_site(out / "site1", VICTIM, DISASTER)
    assert len(site.train) == summary[0]["train"] and site.train[0].image_path.startswith("/")
    assert any(r.has_boxes and len(r.boxes) for r in site.train)
    test_records = load_test_split(out, VICTIM, DISASTER)
    assert len(test_records) == len(test)


def test_real_data_split_warns_of_a_class_the_class_sites_barely_hold(spec, per_source, tmp_path, caplog):
    """Three 'fire' pictures in all: whatever the strategy, the class sites cannot hold 10. A
    detection-only federation (the same pictures without their classes) has no class sites to warn about."""
    import dataclasses
    import logging

    fires = [r for recs in per_source.values() for r in recs if r.has_class and DISASTER[r.disaster_class] == "fire"]
    few = {name: [r for r in recs if r not in fires[3:]] for name, recs in per_source.items()}
    with caplog.at_level(logging.WARNING, logger="src.data.splits.user_sources"):
        build_split(few, tmp_path / "few", spec, num_sites=3, strategy="iid", class_names=DISASTER)
    warned = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("disaster class 'fire': ") and "at the sites that label classes (site1, site2, site3)"
               in m and "the iid strategy" in m for m in warned), warned
    caplog.clear()
    boxes_only = {name: [dataclasses.replace(r, has_class=False, disaster_class=-1) for r in recs if r.has_boxes]
                  for name, recs in few.items()}
    with caplog.at_level(logging.WARNING, logger="src.data.splits.user_sources"):
        build_split({k: v for k, v in boxes_only.items() if v}, tmp_path / "boxes", spec, num_sites=2,
                    strategy="iid", class_names=DISASTER)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_split_is_reproducible_from_its_seed(spec, per_source, tmp_path):
    a = build_split(per_source, tmp_path / "a", spec, seed=3)
    b = build_split(per_source, tmp_path / "b", spec, seed=3)
    c = build_split(per_source, tmp_path / "c", spec, seed=4)
    assert a == b and all_rows(tmp_path / "a") == all_rows(tmp_path / "b")
    assert all_rows(tmp_path / "a") != all_rows(tmp_path / "c")


def test_by_source_gives_each_source_its_own_site(spec, per_source, tmp_path):
    summary, _ = build_split(per_source, tmp_path / "s", spec, strategy="by-source")
    assert [s["site"] for s in summary] == ["c2a", "crisis"]
    crisis = {s["site"]: s for s in summary}["crisis"]
    assert crisis["labels"]["boxes"] == 0 and crisis["labels"]["class"] == crisis["train"]


def test_task_disjoint_sites_hold_one_task_each(spec, per_source, tmp_path):
    build_split(per_source, tmp_path / "t", spec, num_sites=2, strategy="task-disjoint")
    one = load_site(tmp_path / "t" / "site1", VICTIM, DISASTER)
    two = load_site(tmp_path / "t" / "site2", VICTIM, DISASTER)
    assert one.has_boxes and not one.has_class
    assert two.has_class and not two.has_boxes


def test_seed_fraction_leaves_the_rest_in_the_active_learning_pool(spec, per_source, tmp_path):
    summary, _ = build_split(per_source, tmp_path / "p", spec, num_sites=2, strategy="iid", seed_fraction=0.3)
    for s in summary:
        assert s["pool"] > s["train"] > 0
    site = load_site(tmp_path / "p" / "site1", VICTIM, DISASTER)
    assert len(site.pool) == summary[0]["pool"]


def test_refuses_a_split_that_leaves_a_site_empty(spec, per_source, tmp_path):
    with pytest.raises(SplitError, match="without labeled training data"):
        build_split(per_source, tmp_path / "x", spec, num_sites=80, strategy="iid")
    with pytest.raises(SplitError, match="unknown strategy"):
        build_split(per_source, tmp_path / "x", spec, strategy="random")


def test_cli_prints_the_per_site_table(spec, tmp_path, capsys):
    assert main(["--sources", str(spec), "--name", "x", "--out", str(tmp_path / "cli"), "--sites", "2",
                 "--strategy", "iid"]) == 0
    out = capsys.readouterr().out
    assert "with boxes" in out and "site2" in out and "collapsed_building" in out
    assert main(["--sources", str(tmp_path / "nope.yaml"), "--name", "x", "--out", str(tmp_path / "n")]) == 2


def test_default_split_builder_seed_fraction_keeps_the_partition_and_pools_the_rest(tmp_path):
    """src.data.splits on the built-in data: with --seed-fraction the same
    sites hold the same images, only part of each site's training images start labeled."""
    from tests.tiny_federation import write_tiny_site_split

    write_tiny_site_split(tmp_path, num_images=40, num_sites=2, labels=("both",), seed=3)
    from src.data.splits import build_site_splits

    cfg = load_config(overrides=parse_assignments([f"data.root={tmp_path / 'data'}", "data.test_fraction=0.25",
                                 "data.val_fraction=0.25"]))
    summary = build_site_splits(cfg, tmp_path / "al", num_sites=2, alpha=100.0, seed=0,
                                labels=("both",), seed_fraction=0.25)
    full, al = all_rows(tmp_path / "splits"), all_rows(tmp_path / "al")
    assert full.keys() == al.keys() == {"site1", "site2"}
    for site in full:
        assert {r[0] for r in full[site]} == {r[0] for r in al[site]}  # same images
        assert not [r for r in full[site] if r[1] == "pool"]
        train = [r for r in full[site] if r[1] == "train"]
        seed = [r for r in al[site] if r[1] == "train"]
        assert len(seed) == max(1, round(0.25 * len(train)))
        assert len([r for r in al[site] if r[1] == "pool"]) == len(train) - len(seed)
        assert [r for r in full[site] if r[1] == "val"] == [r for r in al[site] if r[1] == "val"]
    assert [s["train"] + s["pool"] for s in summary] == [
        sum(r[1] == "train" for r in full[s["site"]]) for s in summary]


def test_stratified_split_keeps_a_group_in_one_split():
    """Groups (e.g. frames of one burst) go whole to one split; no groups = one group per record,
    which is the plain per-record split."""
    import numpy as np

    from src.data.records import Record
    from src.data.splits import stratified_split

    records = [Record(f"img{i}.jpg", disaster_class=(i // 4) % 3, has_class=True) for i in range(240)]
    groups = [i // 4 for i in range(240)]
    split = stratified_split(records, 0.2, 0.1, seed=1, groups=groups)
    where = {}
    for name, part in split.items():
        for r in part:
            where.setdefault(int(r.image_path[3:-4]) // 4, set()).add(name)
    assert len(where) == 60 and all(len(names) == 1 for names in where.values())
    assert len(split["test"]) == 4 * 12 and len(split["val"]) == 4 * 6  # 20 groups a class: 4 test, 2 val
    for c in range(3):
        assert sum(r.disaster_class == c for r in split["test"]) == 16
    plain = stratified_split(records, 0.2, 0.1, seed=1)
    assert plain == stratified_split(records, 0.2, 0.1, seed=1, groups=list(range(240)))
    assert plain != split
    with pytest.raises(ValueError, match="3 group keys for 240 records"):
        stratified_split(records, 0.2, 0.1, seed=1, groups=[0, 1, 2])
    assert np.array_equal(sorted(r.image_path for p in split.values() for r in p), sorted(r.image_path for r in records))


def test_sparse_class_warnings_name_a_class_the_class_labeling_sites_barely_hold():
    """Only the sites that label classes count, with their train and pool rows (not val): a
    class plentiful at a box-only site but rare at the class sites is warned about."""
    from src.data.records import Record
    from src.data.splits.builtin_data import label_flags
    from src.data.splits.partition import SPARSE_CLASS_IMAGES, sparse_class_warnings, trained_classes

    names = ["flood", "normal"]
    by_path, rows = {}, {"site1": [], "site2": [], "site3": []}

    def add(site, cls, split, count):
        for _ in range(count):
            key = f"img{len(by_path)}.jpg"
            by_path[key] = Record(key, disaster_class=cls, has_class=True)
            rows[site].append((key, split, 1, 1))

    add("site1", 0, "train", 30)
    add("site1", 1, "pool", SPARSE_CLASS_IMAGES - 2)
    add("site3", 1, "train", 1)
    add("site3", 1, "val", 5)            # validation images do not train
    add("site2", 1, "train", 50)         # a box-only site's images do not train the class head
    labels = {"site1": "both", "site2": "boxes", "site3": "class"}

    def warnings(label_sets):  # the manifests' flags, as each site's label set writes them
        flagged = {site: [(k, split, *label_flags(label_sets[site])) for k, split, *_ in site_rows]
                   for site, site_rows in rows.items()}
        return sparse_class_warnings(trained_classes(flagged, by_path), names, "Another --seed")
    found = warnings(labels)
    assert len(found) == 1
    assert found[0] == (f"disaster class 'normal': {SPARSE_CLASS_IMAGES - 1} training image(s) at the sites that "
                        "label classes (site1, site3); the federation can hardly learn it. Another --seed deals "
                        "the classes out more evenly")
    add("site3", 1, "pool", 1)
    assert warnings(labels) == []
    assert warnings({**labels, "site1": "boxes", "site3": "masks"}) == []


def test_default_split_builder_logs_the_sparse_class_warning(tmp_path, caplog):
    """A 40-image data set cannot give its class site 10 images of each of five classes."""
    import logging

    from tests.tiny_federation import write_tiny_site_split

    with caplog.at_level(logging.WARNING, logger="src.data.splits.builtin_data"):
        write_tiny_site_split(tmp_path, num_images=40, num_sites=2, labels=("boxes", "class"), seed=3)
    assert any("at the sites that label classes (site2)" in r.getMessage() for r in caplog.records)
