"""Masks in records, manifests and splits: the optional masks column round-trips, a manifest
without it (every split made before masks) loads as before, and the split builder gives a
site masks only when the data has them."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.data.formats import DataError
from src.data.manifests import load_site, load_test_split, read_manifest, write_site
from src.data.records import Record
from src.data.splits import SplitError, build_site_splits
from src.settings import load_config
from tests.tiny_federation import write_tiny_site_split

REPO = Path(__file__).resolve().parent.parent
VICTIM, DISASTER = ("person",), ("collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """32 synthetic images (with masks) split over a `both` site and a `masks` site, plus test.tsv."""
    root = tmp_path_factory.mktemp("masks_split")
    write_tiny_site_split(root, num_images=32, num_sites=2, labels=("both", "masks"), seed=6)
    return root


def test_a_mask_site_gets_the_column_and_the_others_keep_the_old_manifest(tiny):
    both, masks = tiny / "splits" / "site1" / "manifest.tsv", tiny / "splits" / "site2" / "manifest.tsv"
    assert both.read_text().splitlines()[0] == "image\tsplit\tboxes\tclass"
    assert masks.read_text().splitlines()[0] == "image\tsplit\tboxes\tclass\tmasks"
    assert {row[2:] for row in read_manifest(masks, with_masks=True)} == {(False, False, True)}
    assert {row[2:] for row in read_manifest(both, with_masks=True)} == {(True, True, False)}
    assert all(len(row) == 4 for row in read_manifest(masks))  # the default rows stay (image, split, boxes, class)
    site1, site2 = (load_site(tiny / "splits" / name, VICTIM, DISASTER) for name in ("site1", "site2"))
    assert site1.has_boxes and site1.has_class and not site1.has_mask
    assert all(r.mask_path is None for r in site1.train + site1.val)  # held by the data, not by this site
    assert site2.has_mask and not site2.has_boxes and not site2.has_class
    assert all(r.has_mask and Path(r.mask_path).is_file() for r in site2.train + site2.val)
    test = load_test_split(tiny / "splits", VICTIM, DISASTER)
    assert test and all(r.has_mask for r in test)  # the test split scores every label the data has


def test_rows_with_and_without_masks_round_trip(tiny, tmp_path):
    data_root = str((tiny / "data").resolve())
    rows = [("images/00000.jpg", "train", 1, 1, 1), ("images/00001.jpg", "train", 0, 1, 0),
            ("images/00002.jpg", "val", 1, 0, 1)]
    write_site(tmp_path / "with", "with", data_root, rows)
    assert read_manifest(tmp_path / "with" / "manifest.tsv", with_masks=True) == \
        [(key, split, bool(b), bool(c), bool(m)) for key, split, b, c, m in rows]
    site = load_site(tmp_path / "with", VICTIM, DISASTER)
    assert [(r.has_boxes, r.has_class, r.has_mask) for r in site.train + site.val] == \
        [(True, True, True), (False, True, False), (True, False, True)]
    # no row holds masks: the manifest is the four-column one, byte for byte
    write_site(tmp_path / "five", "five", data_root, [row[:4] + (0,) for row in rows])
    write_site(tmp_path / "four", "four", data_root, [row[:4] for row in rows])
    assert (tmp_path / "five" / "manifest.tsv").read_bytes() == (tmp_path / "four" / "manifest.tsv").read_bytes()
    assert not load_site(tmp_path / "four", VICTIM, DISASTER).has_mask


def test_the_committed_default_split_reads_as_before():
    rows = read_manifest(REPO / "data_splits" / "default" / "site1" / "manifest.tsv", with_masks=True)
    assert rows and all(len(row) == 5 and row[4] is False for row in rows)


def test_a_bad_masks_flag_names_file_and_line(tmp_path):
    (tmp_path / "manifest.tsv").write_text("image\tsplit\tboxes\tclass\tmasks\nimages/a.jpg\ttrain\t1\t0\t2\n")
    with pytest.raises(DataError, match=r"manifest.tsv: line 2: expected image, train\|val\|pool, 0\|1, 0\|1, 0\|1"):
        read_manifest(tmp_path / "manifest.tsv")


def test_a_record_with_has_mask_needs_its_file():
    with pytest.raises(ValueError, match="has_mask set but no mask_path"):
        Record("a.jpg", has_mask=True)


def test_the_split_builder_refuses_a_mask_site_on_data_without_masks(tiny, tmp_path):
    legacy = tmp_path / "data"
    (legacy / "images").mkdir(parents=True)
    for path in (tiny / "data" / "images").iterdir():
        (legacy / "images" / path.name).write_bytes(path.read_bytes())
    cfg = load_config(overrides={"data.root": str(legacy), "data.test_fraction": 0.25, "data.val_fraction": 0.25})
    with pytest.raises(SplitError, match=r"no image has a mask \(no masks/ folder\), but site\(s\) \['site2'\]"):
        build_site_splits(cfg, tmp_path / "split", 2, 100.0, 0, labels=("boxes", "class+masks"))
    build_site_splits(cfg, tmp_path / "split", 2, 100.0, 0, labels=("boxes", "class"))  # no mask site: fine
    assert yaml.safe_load((tmp_path / "split" / "split.yaml").read_text())["labels"] == ["boxes", "class"]
