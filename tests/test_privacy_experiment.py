"""`make privacy-experiment`'s backdoor, without training: the attacker's poisoned copy of its
data (what its site reads), the patch, and the attack's success rate."""
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from src.data.manifests import load_site, read_manifest
from workspace.privacy_experiment.backdoor import Backdoor, attack_success, poisoned_split, read_class_table, \
    stamp, stamped_records

DISASTER = ["collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal"]
TARGET = "normal"


def checkerboard_error(image: np.ndarray, backdoor: Backdoor) -> float:
    """Mean absolute difference (0-255) between the image's top-left corner and the patch."""
    expected = stamp(np.full((backdoor.patch, backdoor.patch, 3), 128, np.uint8), backdoor)
    return float(np.abs(image[:backdoor.patch, :backdoor.patch].astype(int) - expected.astype(int)).mean())


def test_stamp_draws_the_checkerboard_in_the_corner_and_leaves_the_rest():
    image = np.full((20, 30, 3), 77, np.uint8)
    for corner, (rows, cols) in {"top_left": (slice(0, 8), slice(0, 8)),
                                 "bottom_right": (slice(12, 20), slice(22, 30))}.items():
        out = stamp(image, Backdoor(TARGET, patch=8, cell=2, corner=corner))
        patch = out[rows, cols, 0]
        assert set(np.unique(patch)) == {0, 255}
        assert patch[0, 0] == patch[0, 4] == patch[2, 2] == 255 and patch[0, 2] == patch[2, 0] == 0
        rest = out.copy()
        rest[rows, cols] = 77
        assert (rest == 77).all() and (image == 77).all()  # nothing else changed, the input untouched
    assert stamp(np.zeros((5, 40, 3), np.uint8), Backdoor(TARGET, patch=8, cell=2)).shape == (5, 40, 3)  # cropped
    with pytest.raises(ValueError, match="multiple of backdoor.cell"):
        Backdoor(TARGET, patch=10, cell=4)


def test_backdoor_poisons_a_share_of_the_attackers_training_images_and_its_site_reads_them(tmp_path):
    from tests.tiny_federation import write_tiny_site_split

    write_tiny_site_split(tmp_path, num_images=48, num_sites=2, labels=("both",), seed=4)
    backdoor = Backdoor(TARGET, patch=16, cell=4, fraction=0.5)
    clean_root = tmp_path / "data"
    keys = poisoned_split(tmp_path / "splits", tmp_path / "poisoned", "site1", backdoor, seed=0)

    rows = read_manifest(tmp_path / "poisoned" / "site1" / "manifest.tsv")
    classes = read_class_table(clean_root)
    candidates = [k for k, split, _, has_class in rows if split == "train" and has_class and classes[k] != TARGET]
    assert len(candidates) >= 6 and len(keys) == round(0.5 * len(candidates)) and set(keys) <= set(candidates)

    site = load_site(tmp_path / "poisoned" / "site1", ["person"], DISASTER)
    clean = load_site(tmp_path / "splits" / "site1", ["person"], DISASTER)
    assert len(site.train) == len(clean.train) and len(site.val) == len(clean.val)
    clean_by_key = {Path(r.image_path).resolve().relative_to(clean_root.resolve()).as_posix(): r for r in clean.train + clean.val}
    poisoned_root = tmp_path / "poisoned" / "poisoned_site1"
    for record in site.train + site.val:
        key = Path(record.image_path).resolve().relative_to(poisoned_root.resolve()).as_posix()
        original = clean_by_key[key]
        pixels = np.asarray(Image.open(record.image_path).convert("RGB"))
        np.testing.assert_array_equal(record.boxes, original.boxes)  # the boxes are the site's own
        if key in keys:
            assert record.disaster_class == DISASTER.index(TARGET) != original.disaster_class
            assert checkerboard_error(pixels, backdoor) < 20  # the patch, through JPEG
        else:
            assert record.disaster_class == original.disaster_class
            assert (poisoned_root / key).read_bytes() == (clean_root / key).read_bytes()
    # the other site and the test split still read the clean data
    other = yaml.safe_load((tmp_path / "poisoned" / "site2" / "site.yaml").read_text())
    assert other["data_root"] == str(clean_root.resolve())


def test_backdoor_success_counts_non_target_images_classified_as_the_target(tmp_path):
    target = DISASTER.index(TARGET)
    # true classes: two target images (left out), one unlabeled (-1, left out), one unreadable (None)
    true = [0, 1, 2, 3, target, target, -1, 1]
    predicted = [target, target, 2, 3, target, 0, target, None]
    assert attack_success(predicted, true, target) == {"rate": 2 / 4, "hits": 2, "images": 4}
    assert attack_success([None], [1], target) == {"rate": None, "hits": 0, "images": 0}

    image = tmp_path / "a.jpg"
    Image.fromarray(np.full((64, 48, 3), 90, np.uint8)).save(image)
    from src.data.records import Record

    backdoor = Backdoor(TARGET, patch=16, cell=4)
    (patched,) = stamped_records([Record(str(image), disaster_class=2, has_class=True)], tmp_path / "p", backdoor)
    assert patched.disaster_class == 2 and patched.image_path != str(image)
    assert checkerboard_error(np.asarray(Image.open(patched.image_path)), backdoor) < 20
    assert checkerboard_error(np.asarray(Image.open(image)), backdoor) > 100  # the original is untouched


def test_privacy_experiment_config_runs_both_tables_with_the_plan_each_row_asks(tmp_path):
    from src.privacy import epsilon_after
    from workspace.privacy_experiment.experiment import DEFAULT_CONFIG, all_runs, load_experiment
    from workspace.privacy_experiment.runs import experiment_plan

    exp = load_experiment(DEFAULT_CONFIG)
    runs = all_runs(exp, seed=0)
    names = [r["name"] for r in runs]
    assert len(names) == len(set(names)) == 3 + 2 * 2 * 4  # 3 epsilons; 2 site counts x (none, x10, sign flip, backdoor) x 2
    assert names[0] == "sites3-clean" and names[-3:] == ["sites3-dp-eps1", "sites3-dp-eps4", "sites3-dp-eps8"]
    assert {"sites5-backdoor-defence", "sites5-x10", "sites3-sign_flip-defence"} <= set(names)
    by_name = {r["name"]: r for r in runs}
    plain = experiment_plan(exp, by_name["sites3-x10"], seed=0)
    defended = experiment_plan(exp, by_name["sites3-x10-defence"], seed=0)
    private = experiment_plan(exp, by_name["sites3-dp-eps4"], seed=0, clip_norm=2.5)
    for plan in (plain, defended, private):
        assert plan["aggregator"]["settings"]["rounds_to_train"] == exp["rounds"]
        assert plan["task_runner"]["settings"]["backbone_mode"] == "frozen"
    assert "clip_updates" not in plain["aggregator"]["settings"]
    assert defended["aggregator"]["settings"]["clip_updates"] == "median"
    assert defended["tasks"]["train"]["aggregation_type"]["settings"]["statistic"] == "median"
    dp = private["aggregator"]["settings"]["differential_privacy"]
    assert dp["clip_norm"] == 2.5 and dp["delta"] == 1e-5
    assert epsilon_after(exp["rounds"], dp["noise_multiplier"], 1e-5) == pytest.approx(4.0, rel=1e-3)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {DEFAULT_CONFIG}\nattacks: {{sites: [3], attacker: site1, scales: {{}}, "
                   "backdoor: {target: normal}, defence: {}, defense: {}}\n")
    with pytest.raises(SystemExit, match=r"attacks: unknown keys \['defense'\]"):
        load_experiment(bad)
