"""The site data loader's batch-size and epoch-length policies (plan data_loader settings)."""
from dataclasses import replace

import pytest

from src.federated.data_loader import SiteDataLoader


def _loader(records, config, batch_size=16, **settings):
    loader = SiteDataLoader(None, overrides={"pipeline.batch_size": batch_size}, **settings)
    loader.bind_model(config)
    loader.train_records = records
    return loader


def _batch_sizes(loader):
    return [int(images.shape[0]) for images, _ in loader.get_train_loader()]


def test_a_small_site_trains_smaller_batches_down_to_the_floor(tiny_config, bright_box_records):
    records = bright_box_records[:10]
    loader = _loader(records, tiny_config, batch_size=8, min_batches_per_epoch=4, min_batch_size=2)
    assert loader.train_batch_size() == 2 and loader.train_batches_per_epoch() == 5
    assert _batch_sizes(loader) == [2] * 5
    floor = _loader(records, tiny_config, batch_size=8, min_batches_per_epoch=10, min_batch_size=3)
    assert floor.train_batch_size() == 3 and floor.train_batches_per_epoch() == 3
    off = _loader(records, tiny_config, batch_size=8)
    assert _batch_sizes(off) == [8]  # (the pipeline drops a partial last batch)


def test_repeat_to_batches_lengthens_only_a_short_epoch(tiny_config, bright_box_records):
    """A site with fewer batches than repeat_to_batches repeats its images up to that
    many full batches (the learning-rate schedule counts them); a longer epoch is kept."""
    short = _loader(bright_box_records[:6], tiny_config, batch_size=4, repeat_to_batches=5)
    assert short.train_batches_per_epoch() == 5
    assert _batch_sizes(short) == [4] * 5
    long = _loader(bright_box_records[:12], tiny_config, batch_size=2, repeat_to_batches=5)
    assert long.train_batches_per_epoch() == 6
    assert _batch_sizes(long) == [2] * 6


def test_repeat_to_batches_by_label_kind_leaves_other_sites_alone(tiny_config, bright_box_records):
    """{boxes: N}: a site holding box labels repeats up to N batches; a classification-only
    site keeps one pass (it would only lengthen the round it bounds); a kind that does not
    exist is an error naming the setting."""
    boxes = _loader(bright_box_records[:6], tiny_config, batch_size=4, repeat_to_batches={"boxes": 5})
    assert boxes.train_batches_per_epoch() == 5 and _batch_sizes(boxes) == [4] * 5
    class_only = [replace(r, has_boxes=False, boxes=r.boxes[:0], victim_classes=r.victim_classes[:0])
                  for r in bright_box_records[:6]]
    cls = _loader(class_only, tiny_config, batch_size=4, repeat_to_batches={"boxes": 5})
    assert cls.train_batches_per_epoch() == 1 and _batch_sizes(cls) == [4]
    both = _loader(bright_box_records[:6], tiny_config, batch_size=4, repeat_to_batches={"boxes": 3, "class": 5})
    assert both.train_batches_per_epoch() == 5  # a site holding both kinds: the larger floor
    with pytest.raises(ValueError, match="repeat_to_batches.*'victims'"):
        SiteDataLoader(None, repeat_to_batches={"victims": 5})


def test_max_images_per_epoch_shortens_only_a_long_epoch_with_a_new_share_each_round(tiny_config,
                                                                                      bright_box_records):
    """A site whose epoch covers more images than max_images_per_epoch trains on that many
    (smaller batches by min_batches_per_epoch, as at a small site), a different random
    share each epoch; a repeat floor whose batches would cover more trains smaller batches
    (not below min_batch_size); a shorter epoch is left alone; a negative cap is refused."""
    records = bright_box_records[:12]
    capped = _loader(records, tiny_config, batch_size=4, max_images_per_epoch=8)
    assert capped.capped() and capped.train_batches_per_epoch() == 2
    assert _batch_sizes(capped) == [4, 4]
    seen = [sorted(float(x) for x in images.numpy().mean(axis=(1, 2, 3))) for images, _ in capped.get_train_loader()]
    again = [sorted(float(x) for x in images.numpy().mean(axis=(1, 2, 3))) for images, _ in capped.get_train_loader()]
    assert seen != again  # the next epoch draws another share (and other augmentations)
    smaller = _loader(records, tiny_config, batch_size=4, max_images_per_epoch=8, min_batches_per_epoch=4,
                      min_batch_size=2)
    assert smaller.train_batch_size() == 2 and smaller.train_batches_per_epoch() == 4
    short = _loader(records[:6], tiny_config, batch_size=2, max_images_per_epoch=10, repeat_to_batches=5)
    assert not short.capped() and short.train_batch_size() == 2 and short.train_batches_per_epoch() == 5
    # a repeat floor that would cover more than the cap trains smaller batches, down to min_batch_size
    repeated = _loader(records[:6], tiny_config, batch_size=4, max_images_per_epoch=10, repeat_to_batches=5,
                       min_batch_size=1)
    assert not repeated.capped() and repeated.train_batches_per_epoch() == 5
    assert _batch_sizes(repeated) == [2] * 5
    floored = _loader(records[:6], tiny_config, batch_size=4, max_images_per_epoch=10, repeat_to_batches=5,
                      min_batch_size=3)
    assert floored.train_batch_size() == 3 and floored.train_batches_per_epoch() == 5
    with pytest.raises(ValueError, match="max_images_per_epoch"):
        SiteDataLoader(None, max_images_per_epoch=-3)


def test_a_pipeline_setting_in_the_plan_reaches_the_sites_batches(tmp_path, monkeypatch):
    """The plan's shared `overrides` reach the data loader, not only the task runner: both
    are built by OpenFL from the plan and hold one settings object."""
    from openfl.federated import Plan

    from tests.tiny_federation import write_tiny_plan, write_tiny_site_split

    write_tiny_site_split(tmp_path / "data", num_images=24, num_sites=1, labels=["both"], seed=0)
    write_tiny_plan(tmp_path / "ws", tmp_path / "data" / "splits", rounds=1, sites=("site1",),
                    overrides={"pipeline.batch_size": 3, "pipeline.max_boxes": 5})
    monkeypatch.chdir(tmp_path / "ws")
    plan = Plan.parse(plan_config_path=tmp_path / "ws" / "plan" / "plan.yaml",
                      cols_config_path=tmp_path / "ws" / "plan" / "cols.yaml",
                      data_config_path=tmp_path / "ws" / "plan" / "data.yaml")
    loader = plan.get_data_loader("site1")
    runner = plan.get_task_runner(loader)
    assert runner.cfg is loader.cfg and loader.cfg["pipeline"]["max_boxes"] == 5
    images, targets = next(iter(runner.data_loader.get_train_loader()))
    assert images.shape[0] == 3


def test_a_site_without_validation_images_validates_to_no_scores(tmp_path, monkeypatch):
    """A split made with --val-fraction 0 leaves sites without a val split: the site's
    validation reports NaN per task and score 0 instead of ending the round."""
    import math

    import yaml

    from src.data.manifests import read_manifest, write_site
    from tests.test_al_site_rounds import site_runner
    from tests.tiny_federation import write_tiny_plan, write_tiny_site_split

    write_tiny_site_split(tmp_path / "data", num_images=24, num_sites=1, labels=["both"], seed=0)
    folder = tmp_path / "data" / "splits" / "site1"
    rows = [(k, s, int(b), int(c)) for k, s, b, c in read_manifest(folder / "manifest.tsv") if s != "val"]
    write_site(folder, "site1", yaml.safe_load((folder / "site.yaml").read_text())["data_root"], rows)
    write_tiny_plan(tmp_path / "ws", folder.parent, rounds=1, sites=("site1",))
    monkeypatch.chdir(tmp_path / "ws")
    runner, tasks = site_runner()
    assert runner.data_loader.val_records == []
    validated, _ = runner.validate_task("site1", 0, runner.get_tensor_dict(),
                                        **tasks["aggregated_model_validation"]["kwargs"])
    scores = {key.tensor_name: float(value) for key, value in validated.items()}
    assert scores["score"] == 0.0 and math.isnan(scores["map50"]) and math.isnan(scores["accuracy"])
