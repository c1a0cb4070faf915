"""A split is what it says it is: no stale site, no picture in two places, the sites that were asked for.

Real files on disk throughout: the data guide's C2A + AIDER + CrisisIBD example
(tests/real_formats.py), whose AIDER class folders hold byte copies of C2A pictures.
"""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from src.data import duplicates
from src.data.datasets import load_split_union
from src.data.duplicates import file_digest, merge_duplicates
from src.data.manifests import load_site, load_test_split, read_manifest, read_merged, split_sites
from src.data.sources import load_sources
from src.data.splits import SplitError, build_split, main
from src.data.splits import output as split_output
from src.settings import load_config
from tests.real_formats import DISASTER_CLASSES, VICTIM_CLASSES, write_c2a_aider_crisis, write_c2a_coco

VICTIMS, DISASTERS = list(VICTIM_CLASSES), list(DISASTER_CLASSES)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """(sources.yaml, {aider copy key: c2a original key}, records per source)."""
    spec, same = write_c2a_aider_crisis(tmp_path_factory.mktemp("example") / "data")
    per_source, report = load_sources(spec, VICTIMS, DISASTERS)
    assert report.clean
    return spec, same, per_source


def split_folder_names(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if p.is_dir())


# --------------------------------------------------------------------------- 1. stale site folders


def test_a_rebuild_with_fewer_sites_leaves_exactly_what_it_reports(example, tmp_path, capsys):
    spec = example[0]
    out = tmp_path / "data_splits" / "real"
    args = ["--sources", str(spec), "--name", "real", "--out", str(out), "--strategy", "iid"]
    assert main([*args, "--sites", "3"]) == 0
    assert split_folder_names(out) == ["site1", "site2", "site3"]
    assert main([*args, "--sites", "2"]) == 0
    assert "wrote" in capsys.readouterr().out.splitlines()[-1]
    assert split_folder_names(out) == ["site1", "site2"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["real"]  # no temporary folder left
    assert split_sites(out) == ["site1", "site2"]
    assert [s["site"] for s in yaml.safe_load((out / "split.yaml").read_text())["sites"]] == ["site1", "site2"]


def test_every_consumer_reads_the_sites_split_yaml_lists(example, tmp_path):
    """A site folder split.yaml does not list (left by an older tool, or copied in) is read by nobody:
    not the centralized trainer's union, not make simulate's workspace."""
    from workspace.simulate.fx_workspace import copy_split
    from workspace.simulate.fx_workspace import split_sites as simulate_sites

    spec, _, per_source = example
    out = tmp_path / "real"
    build_split(per_source, out, spec, num_sites=2, strategy="iid")
    shutil.copytree(out / "site2", out / "site3")  # a folder that looks like a site
    (out / "site3" / "site.yaml").write_text("site: site3\nsources: ../../data/sources.yaml\n")
    held = {name: {r[0] for r in read_manifest(out / name / "manifest.tsv")} for name in ("site1", "site2")}

    assert split_sites(out) == simulate_sites(out) == ["site1", "site2"]
    union = load_split_union(load_config(), out)
    union_keys = [Path(r.image_path) for r in union["train"] + union["val"]]
    assert len(union_keys) == len(set(union_keys)) == sum(len(keys) for keys in held.values())
    copy_split(out, tmp_path / "ws" / "real")
    assert split_folder_names(tmp_path / "ws" / "real") == ["site1", "site2"]


def test_a_folder_without_split_yaml_is_no_split(tmp_path):
    (tmp_path / "site1").mkdir()
    (tmp_path / "site1" / "site.yaml").write_text("site: site1\n")
    with pytest.raises(FileNotFoundError, match="split.yaml: missing"):
        split_sites(tmp_path)
    (tmp_path / "split.yaml").write_text("sites: [{site: site1}, {site: site9}]\n")
    with pytest.raises(FileNotFoundError, match=r"sites\[1\]: site 'site9' has no"):
        split_sites(tmp_path)
    (tmp_path / "split.yaml").write_text("sites: [{site: ../elsewhere}]\n")
    with pytest.raises(ValueError, match="needs a site folder name"):
        split_sites(tmp_path)


def test_a_failed_rebuild_leaves_the_split_it_would_replace_untouched(example, tmp_path, monkeypatch):
    spec, _, per_source = example
    out = tmp_path / "real"
    build_split(per_source, out, spec, num_sites=3, strategy="iid")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def failing_write_site(folder, *args, **kwargs):
        calls.append(folder)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write_site(folder, *args, **kwargs)

    real_write_site = split_output.write_site
    monkeypatch.setattr(split_output, "write_site", failing_write_site)
    with pytest.raises(OSError, match="disk full"):
        build_split(per_source, out, spec, num_sites=2, strategy="iid")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]


def test_the_swap_without_an_atomic_exchange_still_replaces_the_whole_split(example, tmp_path, monkeypatch):
    spec, _, per_source = example
    monkeypatch.setattr(split_output, "_exchange", lambda a, b: False)
    build_split(per_source, tmp_path / "real", spec, num_sites=3, strategy="iid")
    build_split(per_source, tmp_path / "real", spec, num_sites=2, strategy="iid")
    assert split_folder_names(tmp_path / "real") == ["site1", "site2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]


def test_a_folder_that_is_no_split_is_never_replaced(example, tmp_path):
    spec, _, per_source = example
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "notes.txt").write_text("mine")
    with pytest.raises(SplitError, match=r"holds \['images', 'notes.txt'\], which no split folder holds"):
        build_split(per_source, data, spec, num_sites=2, strategy="iid")
    assert (data / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- 2. one picture, two sources


def places_of_each_picture(split: Path) -> dict[str, list[str]]:
    """file digest -> where the split puts a record of it ('test' or a site). A record's copies
    (merged.tsv) must be the same picture. Every source root of the example is <spec folder>/<name>."""
    root = (split / yaml.safe_load((split / "split.yaml").read_text())["sources"]).resolve().parent
    places = defaultdict(list)
    folders = [("test", split, (split / "test.tsv").read_text().split()[1:])]
    folders += [(site, split / site, [r[0] for r in read_manifest(split / site / "manifest.tsv")])
                for site in split_sites(split)]
    for place, folder, keys in folders:
        copies = read_merged(folder)
        for key in keys:
            digest = file_digest(root / key)
            assert all(file_digest(root / other) == digest for other, _ in copies.get(key, ()))
            places[digest].append(place)
    return places


@pytest.mark.parametrize("strategy", ["dirichlet:0.5", "iid", "by-source"])
def test_no_picture_is_both_in_test_and_at_a_site_or_at_two_sites(example, tmp_path, strategy):
    spec, same, per_source = example
    _, merges = build_split(per_source, tmp_path / "real", spec, num_sites=None, strategy=strategy, seed=1,
                            class_names=DISASTERS)
    places = places_of_each_picture(tmp_path / "real")
    assert len(places) == sum(len(v) for v in per_source.values()) - len(same)  # every picture
    assert {digest: where for digest, where in places.items() if len(where) > 1} == {}  # once
    assert merges.pictures == merges.copies_merged == len(same)


def test_copies_merge_their_labels_boxes_from_one_class_from_the_other(example, tmp_path):
    spec, same, per_source = example
    out = tmp_path / "real"
    build_split(per_source, out, spec, num_sites=2, strategy="iid", class_names=DISASTERS)
    records = {r.key: r for recs in per_source.values() for r in recs}
    held = {}
    for site in split_sites(out):
        data = load_site(out / site, VICTIMS, DISASTERS)
        held.update((Path(r.image_path), r) for r in data.train + data.val + list(data.pool))
    held.update((Path(r.image_path), r) for r in load_test_split(out, VICTIMS, DISASTERS))
    for copy, original in same.items():
        record = held[Path(records[original].image_path)]
        assert record.has_boxes and record.has_class
        assert np.array_equal(record.boxes, records[original].boxes)
        assert record.disaster_class == records[copy].disaster_class
    split_yaml = yaml.safe_load((out / "split.yaml").read_text())
    assert split_yaml["duplicates"] == {"pictures": 15, "copies_merged": 15, "label_disagreements": 0,
                                        "kinds": {"c2a + aider: boxes from c2a, class from aider": 15}}


def test_the_builder_prints_what_it_merged(example, tmp_path, capsys):
    spec = example[0]
    assert main(["--sources", str(spec), "--out", str(tmp_path / "real"), "--sites", "2"]) == 0
    out = capsys.readouterr().out
    assert "15 picture(s) found in two or more places (same file content): 90 distinct pictures in 105 images" in out
    assert "  15 x c2a + aider: boxes from c2a, class from aider" in out


def test_copies_that_disagree_keep_the_first_listed_label_and_say_so(tmp_path):
    """The same picture in two class folders of different classes, and with other boxes in a second
    COCO file: the first listed copy's labels count, each disagreement is reported."""
    first = write_c2a_coco(tmp_path / "a", 4, seed=3, class_folders=False)
    second = tmp_path / "b"
    shutil.copytree(tmp_path / "a", second)
    wrong = next(c for c in DISASTERS if c != first.images[1].disaster)
    (second / wrong).mkdir()
    shutil.copy(second / first.images[1].key, second / wrong / "moved.jpg")
    (tmp_path / "c" / first.images[1].disaster).mkdir(parents=True)
    shutil.copy(second / first.images[1].key, tmp_path / "c" / first.images[1].disaster / "x.jpg")
    annotations = json.loads((second / "annotations.json").read_text())
    assert annotations["annotations"][0]["image_id"] == 2  # image 0 has no victims
    annotations["annotations"][0]["bbox"][0] += 5  # image 1's first box, 5 px to the right
    (second / "annotations.json").write_text(json.dumps(annotations))
    spec = {"class_map": {"victim": {p: "person" for p in ("lying", "sitting", "standing", "bending", "kneeling")}},
            "sources": [{"name": "a", "root": "a", "boxes": {"format": "coco", "file": "annotations.json"}},
                        {"name": "c", "root": "c", "classes": {"format": "folders"}},
                        {"name": "b", "root": "b", "boxes": {"format": "coco", "file": "annotations.json"},
                         "classes": {"format": "folders", "drop_unmapped": True}}]}
    per_source, report = load_sources(spec, VICTIMS, DISASTERS, base_dir=tmp_path)
    assert report.clean
    merged, merges = merge_duplicates(per_source, DISASTERS)
    assert [r.key for r in merged["a"]] == [f"a/{image.key}" for image in first.images]
    assert merged["b"] == [] and merged["c"] == []
    picture = merged["a"][1]
    assert picture.disaster_class == DISASTERS.index(first.images[1].disaster)
    assert np.allclose(picture.boxes, first.images[1].boxes, atol=0.01)
    assert len(merges.disagreements) == 2, merges.disagreements
    assert any(f"({wrong})" in text and f"kept {first.images[1].disaster}" in text for text in merges.disagreements)
    assert any("with other boxes; kept those of a/images/c2a_001.jpg" in text for text in merges.disagreements)


def test_byte_hash_finds_copies_and_only_copies(tmp_path):
    """Same bytes under any name: one picture. The same pixels saved again (other bytes): two."""
    from PIL import Image

    from src.data.records import Record

    pixels = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    shutil.copy(tmp_path / "a.png", tmp_path / "b.png")
    Image.fromarray(pixels).save(tmp_path / "c.png", compress_level=1)
    Image.fromarray(255 - pixels).save(tmp_path / "d.png")
    records = [Record(str(tmp_path / name)) for name in ("a.png", "b.png", "c.png", "d.png")]
    assert duplicates.find_copies(records) == [[0, 1]]


# --------------------------------------------------------------------------- 9. by-source


def test_by_source_with_one_source_refuses_rather_than_writing_fewer_sites(tmp_path, capsys):
    write_c2a_coco(tmp_path / "c2a", 12, seed=4, class_folders=False)
    spec = tmp_path / "one.yaml"
    spec.write_text(yaml.safe_dump({
        "class_map": {"victim": {p: "person" for p in ("lying", "sitting", "standing", "bending", "kneeling")}},
        "sources": [{"name": "c2a", "root": "c2a", "boxes": {"format": "coco", "file": "annotations.json"}}]}))
    args = ["--sources", str(spec), "--out", str(tmp_path / "s"), "--strategy", "by-source"]
    for extra in (["--sites", "3"], []):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: strategy 'by-source' makes one site per source")
        assert not (tmp_path / "s").exists()
    assert main([*args, "--sites", "1"]) == 0
    assert split_sites(tmp_path / "s") == ["c2a"]
