"""Masks through the input pipeline: read as palette indices, letterboxed, flipped and
scale-jittered with their images, so a painted square stays under its box."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from src.data.formats.masks import IGNORE_INDEX
from src.data.formats.masks import mask_in_image
from src.data.pipeline import PipelineOptions, inference_dataset, letterbox_mask, training_dataset
from src.data.records import Record

SQUARE = 2  # the square's mask class


def write_square_images(folder, count, seed=0):
    """Dark images with one bright square each, labelled by a box and by a palette mask whose
    colours say nothing of the class (index 2 is drawn dark green, 0 white)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        w, h = (int(v) for v in rng.integers(48, 96, 2))
        side = int(rng.integers(20, 30))
        x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        pixels = (rng.random((h, w, 3)) * 40).astype(np.uint8)
        pixels[y0:y0 + side, x0:x0 + side] = 250
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        labels = np.zeros((h, w), np.uint8)
        labels[y0:y0 + side, x0:x0 + side] = SQUARE
        mask = Image.fromarray(labels, mode="P")
        mask.putpalette([255, 255, 255, 0, 0, 255, 0, 90, 0, 200, 0, 0] + [0] * (3 * 252))
        mask.save(folder / f"img{i}_mask.png")
        records.append(Record(str(folder / f"img{i}.png"), [[x0, y0, x0 + side, y0 + side]], [0],
                              has_boxes=True, mask_path=str(folder / f"img{i}_mask.png"), has_mask=True))
    return records


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    return write_square_images(tmp_path_factory.mktemp("squares"), 12)


def _check_aligned(images, masks, boxes, classes):
    """The square's pixels and its class coincide, and its box covers them."""
    checked = 0
    for image, mask, box, cls in zip(images, masks, boxes, classes):
        bright = image.mean(axis=-1) > 0.8
        labelled = mask == SQUARE
        assert labelled.sum() > 0
        # bilinear pixels and nearest-neighbour labels may differ by a pixel along the edges
        # (IoU >= 0.68 for the smallest square, 10 px); a flip the mask misses leaves ~0
        assert (labelled & bright).sum() >= 0.6 * (labelled | bright).sum()
        x1, y1, x2, y2 = box[cls >= 0][0]
        inside = labelled[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
        assert inside.size and inside.all()
        checked += 1
    return checked


def test_masks_stay_under_their_boxes_through_letterbox_flip_and_scale_jitter(tiny_config, squares):
    config = tiny_config.with_overrides(num_mask_classes=4)
    batch = next(iter(inference_dataset(squares, config, batch_size=12)))
    masks = batch["masks"].numpy()
    assert _check_aligned(batch["images"].numpy(), masks, batch["boxes"].numpy(), batch["classes"].numpy()) == 12
    # the letterbox bars are unlabeled: a portrait image's left and right bars, a landscape one's top and bottom
    for mask, (x, y), (h, w) in zip(masks, batch["offset"].numpy().astype(int), batch["image_hw"].numpy()):
        scale = min(64 / h, 64 / w)
        inside = np.zeros_like(mask, bool)
        inside[y:y + round(h * scale), x:x + round(w * scale)] = True
        assert (mask[~inside] == IGNORE_INDEX).all()
        assert set(np.unique(mask[inside])) == {0, SQUARE}

    batches = 0
    for seed in range(3):
        options = PipelineOptions(batch_size=6, color_jitter=0.0, seed=seed, scale_jitter=(0.75, 1.25))
        for images, targets in training_dataset(squares, config, options):
            masks = targets["segmentation"].numpy()
            assert targets["has_mask"].numpy().tolist() == [1.0] * 6
            assert _check_aligned(images.numpy(), masks, targets["gt_boxes"].numpy(),
                                  targets["gt_classes"].numpy()) == 6
            batches += 1
    assert batches == 6


def test_an_image_without_a_mask_is_unlabeled_everywhere(tiny_config, squares):
    config = tiny_config.with_overrides(num_mask_classes=4)
    unmasked = [Record(r.image_path, r.boxes, r.victim_classes, has_boxes=True) for r in squares[:3]]
    _, targets = next(iter(training_dataset(unmasked + squares[3:5], config, PipelineOptions(batch_size=5))))
    has_mask = targets["has_mask"].numpy()
    masks = targets["segmentation"].numpy()
    assert sorted(has_mask.tolist()) == [0, 0, 0, 1, 1]
    assert (masks[has_mask == 0] == IGNORE_INDEX).all() and (masks[has_mask == 1] == SQUARE).any()


def test_without_the_head_no_mask_is_read(tiny_config, squares):
    batch = next(iter(inference_dataset(squares, tiny_config, batch_size=4)))
    _, targets = next(iter(training_dataset(squares, tiny_config, PipelineOptions(batch_size=4))))
    assert "masks" not in batch and "image_hw" not in batch and "mask_path" not in batch
    assert "segmentation" not in targets and "has_mask" not in targets


@pytest.mark.parametrize("hw", [(40, 64), (64, 40), (23, 57), (100, 37), (64, 64)])
def test_a_letterboxed_mask_maps_back_to_the_image_pixels(hw):
    """mask_in_image undoes letterbox_mask: exactly when the image is enlarged, and within the
    nearest-neighbour loss of a shrunk one."""
    rng = np.random.default_rng(hw[0])
    mask = np.repeat(np.repeat(rng.integers(0, 4, (hw[0] // 8 + 1, hw[1] // 8 + 1)), 8, 0), 8, 1)[:hw[0], :hw[1]]
    boxed = letterbox_mask(tf.constant(mask, tf.uint8), 64).numpy()
    scale = min(64 / hw[0], 64 / hw[1])
    new_h, new_w = round(hw[0] * scale), round(hw[1] * scale)
    offset = ((64 - new_w) // 2, (64 - new_h) // 2)
    back = mask_in_image(boxed, hw, scale, offset)
    assert back.shape == hw
    assert (back == mask).mean() >= (1.0 if scale >= 1 else 0.9)
