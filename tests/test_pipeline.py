"""Input pipeline: letterbox geometry and keras-cv augmentation keep boxes on their objects."""
import logging
from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from src.data.pipeline import (PipelineOptions, RecordStream, inference_dataset, letterbox, records_to_arrays,
                               training_dataset, validation_dataset)
from src.data.formats import check_image
from src.data.records import Record
from tests.real_formats import write_odd_image


def _mean_inside(images, boxes, classes):
    """Mean brightness inside each labelled box (shrunk by 1 px against resampling blur)."""
    means = []
    for img, bxs, cls in zip(images, boxes, classes):
        for (x1, y1, x2, y2), c in zip(bxs, cls):
            if c < 0:
                continue
            x1, y1 = int(np.ceil(x1)) + 1, int(np.ceil(y1)) + 1
            x2, y2 = int(np.floor(x2)) - 1, int(np.floor(y2)) - 1
            if x2 > x1 and y2 > y1:
                means.append(float(img[y1:y2, x1:x2].mean()))
    return np.array(means)


def test_letterbox_maps_boxes_with_the_image():
    image = np.zeros((40, 80, 3), np.float32)
    image[10:20, 30:50] = 1.0
    out, boxes, scale, offset = letterbox(tf.constant(image), tf.constant([[30., 10., 50., 20.]]), 64)
    assert float(scale) == pytest.approx(0.8)
    np.testing.assert_allclose(offset.numpy(), [0, 16])
    np.testing.assert_allclose(boxes.numpy(), [[24, 24, 40, 32]])
    out = out.numpy()
    assert out[25:31, 25:39].min() > 0.9          # the object moved with its box
    assert out[0:10].mean() == pytest.approx(0.5)  # grey letterbox bars


def test_inference_batches_keep_boxes_on_objects(tiny_config, bright_box_records):
    batch = next(iter(inference_dataset(bright_box_records, tiny_config, batch_size=16)))
    means = _mean_inside(batch["images"].numpy(), batch["boxes"].numpy(), batch["classes"].numpy())
    assert len(means) >= 12 and means.min() > 0.85


def test_augmented_batches_keep_boxes_on_objects(tiny_config, bright_box_records):
    options = PipelineOptions(batch_size=8, color_jitter=0.0, seed=3)  # flip + scale jitter
    seen = 0
    for images, targets in training_dataset(bright_box_records, tiny_config, options):
        means = _mean_inside(images.numpy(), targets["gt_boxes"].numpy(), targets["gt_classes"].numpy())
        seen += len(means)
        assert means.size == 0 or np.median(means) > 0.85
    assert seen >= 8
    # every surviving box is encoded as exactly one positive target slot (or shares one)
    positives = sum(float(tf.reduce_sum(targets[k][..., 4])) for k in ("det_s8", "det_s16", "det_s32"))
    assert 0 < positives <= float(tf.reduce_sum(tf.cast(targets["gt_classes"] >= 0, tf.float32)))


def test_a_fixed_number_of_batches_repeats_few_records(tiny_config, bright_box_records):
    """num_batches: exactly that many full batches, however few the records (a site with
    few labels trains as many steps as one with many), each record seen as often as
    the others, give or take one pass."""
    options = PipelineOptions(batch_size=4, seed=1)
    records = bright_box_records[:3]
    batches = list(training_dataset(records, tiny_config, options, num_batches=5))
    assert [int(images.shape[0]) for images, _ in batches] == [4] * 5
    one_pass = list(training_dataset(records, tiny_config, options))
    assert len(one_pass) == 1 and int(one_pass[0][0].shape[0]) == 3


def test_a_record_stream_trains_on_the_records_given_last_from_one_pipeline(tiny_config, bright_box_records):
    """A site's labeled set grows between rounds: the stream's next pass draws from the new
    records only, through the same built pipeline, num_batches full batches each pass."""
    first = [replace(r, disaster_class=0, has_class=True) for r in bright_box_records[:6]]
    later = [replace(r, disaster_class=2, has_class=True) for r in bright_box_records[6:13]]
    stream = RecordStream(tiny_config, PipelineOptions(batch_size=4, seed=1), num_batches=3)
    ds = stream.dataset(first)
    for records, disaster in ((first, 0), (later, 2), (later, 2)):
        assert stream.dataset(records) is ds
        batches = [targets["disaster"].numpy() for _, targets in ds]
        assert [len(b) for b in batches] == [4, 4, 4]
        assert all((b == disaster).all() for b in batches), (disaster, batches)


def test_datasets_run_without_the_autotune_model(tiny_config, bright_box_records):
    """Every dataset the project iterates has tf.data's autotuning model off: destroying
    an iterator waited up to ~37 s for its sleeping optimizer thread (the end of an
    epoch, every other round; src/data/pipeline.py:_without_autotune_model), and
    the batches still come through."""
    records = bright_box_records[:4]
    for ds in (training_dataset(records, tiny_config, PipelineOptions(batch_size=2)),
               training_dataset(records, tiny_config, PipelineOptions(batch_size=2), num_batches=3),
               RecordStream(tiny_config, PipelineOptions(batch_size=2), num_batches=3).dataset(records),
               inference_dataset(records, tiny_config, batch_size=2),
               validation_dataset(records, tiny_config, batch_size=2)):
        assert ds.options().autotune.enabled is False
        assert sum(1 for _ in ds) >= 2


def test_colour_jitter_changes_pixels_not_boxes(tiny_config, bright_box_records):
    plain = PipelineOptions(batch_size=4, flip=False, scale_jitter=None, color_jitter=0.0, shuffle_buffer=1)
    jitter = PipelineOptions(batch_size=4, flip=False, scale_jitter=None, color_jitter=0.3, shuffle_buffer=1)
    a_img, a_t = next(iter(training_dataset(bright_box_records[:4], tiny_config, plain)))
    b_img, b_t = next(iter(training_dataset(bright_box_records[:4], tiny_config, jitter)))
    np.testing.assert_allclose(a_t["gt_boxes"], b_t["gt_boxes"])
    assert float(tf.reduce_mean(tf.abs(a_img - b_img))) > 0.005


def test_too_many_boxes_are_truncated_with_a_warning(caplog):
    record = Record("x.jpg", np.tile([[0, 0, 4, 4]], (5, 1)), np.zeros(5), 0, True, True)
    with caplog.at_level(logging.WARNING):
        arrays = records_to_arrays([record], max_boxes=3)
    assert arrays["classes"].tolist() == [[0, 0, 0]]
    assert "max_boxes=3" in caplog.text


def test_empty_training_set_is_a_clear_error(tiny_config):
    with pytest.raises(ValueError, match="no records"):
        training_dataset([], tiny_config)


# --------------------------------------------------------------------------- images that fail to decode


@pytest.fixture
def records_with_undecodable_images(bright_box_records, tmp_path):
    """8 records; 2 and 5 pass the loader's checks (or passed them once) but TensorFlow cannot
    read them: corrupt JPEG scan data (found only by a full decode), a file deleted since."""
    records = list(bright_box_records[:8])
    corrupt = write_odd_image(tmp_path / "corrupt.jpg", "corrupt_jpeg")
    check_image(corrupt)  # what the site loader checks by default: passes
    records[2] = replace(records[2], image_path=str(corrupt))
    records[5] = replace(records[5], image_path=str(tmp_path / "deleted_since_loading.png"))
    return records


def test_training_drops_images_that_fail_to_decode(tiny_config, records_with_undecodable_images):
    options = PipelineOptions(batch_size=2, color_jitter=0.0, scale_jitter=None)
    seen = sum(int(images.shape[0]) for images, _ in
               training_dataset(records_with_undecodable_images, tiny_config, options))
    assert seen == 6  # the epoch ends normally, without the two


def test_inference_says_which_records_it_could_not_decode(tiny_config, records_with_undecodable_images):
    ds = inference_dataset(records_with_undecodable_images, tiny_config, batch_size=4)
    indices = np.concatenate([batch["index"].numpy() for batch in ds])
    assert indices.tolist() == [0, 1, 3, 4, 6, 7]


def test_predictor_leaves_undecodable_images_out_of_the_scores(tiny_config, records_with_undecodable_images,
                                                                caplog):
    from src.evaluation import Predictor, score_predictions
    from src.model import build_model

    records = records_with_undecodable_images
    with caplog.at_level(logging.WARNING):
        predictions = Predictor(build_model(tiny_config), tiny_config).predict(records, batch_size=4)
    assert [p is None for p in predictions] == [i in (2, 5) for i in range(8)]
    assert "2 of 8 image(s) could not be read or decoded" in caplog.text
    assert "corrupt.jpg" in caplog.text and "deleted_since_loading.png" in caplog.text
    result = score_predictions(predictions, records, tiny_config)
    assert result["unreadable_images"] == 2 and result["classification_images"] == 6
    assert result["images"] == 8 and result["detection_images"] == 6


def test_predict_with_loss_is_predict_plus_the_validation_loss(tiny_config, records_with_undecodable_images):
    """One forward pass for an evaluation's predictions and loss: the same predictions as
    `predict`, and the same mean loss as the loss taken batch by batch over
    `validation_dataset` (the separate pass it replaces); undecodable images are out of both."""
    from src.evaluation import Predictor
    from src.model import build_model
    from src.model.loss import MultiTaskLoss

    records = records_with_undecodable_images
    model = build_model(tiny_config)
    loss = MultiTaskLoss(tiny_config)
    predictor = Predictor(model, tiny_config)
    predictions, mean_loss = predictor.predict_with_loss(records, loss, batch_size=4)
    alone = predictor.predict(records, batch_size=4)
    assert [p is None for p in predictions] == [p is None for p in alone] == [i in (2, 5) for i in range(8)]
    for got, want in zip(predictions, alone):
        if want is not None:
            np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(got["disaster_probs"], want["disaster_probs"], rtol=1e-5, atol=1e-6)
    batches = [(float(loss(targets, model(images, training=False))["loss"]), int(images.shape[0]))
               for images, targets in validation_dataset(records, tiny_config, batch_size=4)]
    expected = sum(value * n for value, n in batches) / sum(n for _, n in batches)
    assert sum(n for _, n in batches) == 6
    assert mean_loss == pytest.approx(expected, rel=1e-5)
