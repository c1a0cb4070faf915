"""tf.data input pipeline: decode -> letterbox -> (augment) -> encode YOLO targets -> batch.

Boxes travel padded to `max_boxes` with class -1 as padding (keras-cv's dense
box format), so every batch has static shapes and the label encoder is
vectorised. Augmentation uses keras-cv layers that move boxes with pixels.

With a segmentation head (`ModelConfig.num_mask_classes`) each element also
carries its mask: read as class indices (a palette PNG's indices, not its
colours, which ``tf.io.decode_png`` would return), letterboxed nearest-neighbour
with ``IGNORE_INDEX`` in the bars, flipped and scale-jittered with its image, and
all ``IGNORE_INDEX`` for an image without a mask. Without the head no mask is read.

Images are checked when records are loaded (``formats.check_image``: size
limit, truncation, format), so a bad file normally never gets here. One that
still fails to read or decode (deleted or replaced since, or corrupt in a way
only a full decode finds) drops out of the stream instead of ending training
or a federated round: tf.data logs the error (a C++ warning, hidden at
TF_CPP_MIN_LOG_LEVEL=2), and every element carries its record ``index`` so
an inference caller can tell which records are missing (``Predictor``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import keras_cv
import numpy as np
import tensorflow as tf

from src.data.formats.masks import IGNORE_INDEX, mask_class_map, read_mask
from src.data.records import Record
from src.model.config import ModelConfig
from src.model.targets import encode_targets

log = logging.getLogger(__name__)

LETTERBOX_FILL = 0.5


@dataclass(frozen=True)
class PipelineOptions:
    batch_size: int = 16
    max_boxes: int = 32
    shuffle_buffer: int = 2048
    flip: bool = True
    color_jitter: float = 0.2
    scale_jitter: tuple = (0.75, 1.25)
    seed: int = 0


def pipeline_options(cfg: dict) -> PipelineOptions:
    """PipelineOptions from the settings' `pipeline` section, seeded by the run seed."""
    p = dict(cfg.get("pipeline", {}))
    if p.get("scale_jitter"):
        p["scale_jitter"] = tuple(p["scale_jitter"])
    return PipelineOptions(seed=cfg["seed"], **p)


def records_to_arrays(records: list[Record], max_boxes: int, masks: bool = False) -> dict:
    """Stack records into padded numpy arrays (boxes in original-image pixels); with `masks`,
    each record's mask file ("" when it holds none) and its has_mask flag."""
    n = len(records)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    classes = np.full((n, max_boxes), -1, np.int32)
    truncated = 0
    for i, r in enumerate(records):
        k = min(len(r.boxes), max_boxes)
        truncated += len(r.boxes) > max_boxes
        boxes[i, :k] = r.boxes[:k]
        classes[i, :k] = r.victim_classes[:k]
    if truncated:
        log.warning("%d images have more than max_boxes=%d boxes; extra boxes are dropped",
                    truncated, max_boxes)
    arrays = {
        "index": np.arange(n, dtype=np.int64),
        "path": np.array([r.image_path for r in records]),
        "boxes": boxes,
        "classes": classes,
        "disaster": np.array([max(r.disaster_class, -1) for r in records], np.int32),
        "has_boxes": np.array([r.has_boxes for r in records], np.float32),
        "has_class": np.array([r.has_class for r in records], np.float32),
    }
    if masks:
        arrays["mask_path"] = np.array([r.mask_path if r.has_mask else "" for r in records])
        arrays["has_mask"] = np.array([r.has_mask for r in records], np.float32)
    return arrays


def _letterbox_geometry(image_hw, size: int):
    """(scale, resized (h, w), pad_y, pad_x) that fit an image of `image_hw` into size x size."""
    shape = tf.cast(image_hw, tf.float32)
    scale = tf.minimum(size / shape[0], size / shape[1])
    new_hw = tf.cast(tf.round(shape * scale), tf.int32)
    return scale, new_hw, (size - new_hw[0]) // 2, (size - new_hw[1]) // 2


def letterbox(image, boxes, size: int):
    """Resize keeping aspect ratio, centre on a grey square; move boxes along.

    Returns (image (size, size, 3) float32 in [0, 1], boxes, scale, offset_xy),
    where scale/offset map original pixels to model pixels: p' = p * scale + offset.
    """
    scale, new_hw, pad_y, pad_x = _letterbox_geometry(tf.shape(image)[:2], size)
    resized = tf.image.resize(image, new_hw)
    padded = tf.image.pad_to_bounding_box(resized - LETTERBOX_FILL, pad_y, pad_x, size, size)
    offset = tf.cast(tf.stack([pad_x, pad_y, pad_x, pad_y]), tf.float32)
    return padded + LETTERBOX_FILL, boxes * scale + offset, scale, offset[:2]


def letterbox_mask(mask, size: int):
    """A (h, w) uint8 mask moved as `letterbox` moves its image: nearest-neighbour (a class
    index has no in-between), IGNORE_INDEX in the bars, which show no scene."""
    _, new_hw, pad_y, pad_x = _letterbox_geometry(tf.shape(mask)[:2], size)
    resized = tf.image.resize(mask[..., None], new_hw, method="nearest")[..., 0]
    return tf.pad(resized, [[pad_y, size - new_hw[0] - pad_y], [pad_x, size - new_hw[1] - pad_x]],
                  constant_values=IGNORE_INDEX)


def _mask_reader(num_classes: int):
    """numpy reader of one record's mask at its image's (h, w): file values are class indices
    (the readers check every mask against classes.mask when records load); all IGNORE_INDEX
    for an empty path (no mask)."""
    lookup = mask_class_map([str(i) for i in range(num_classes)])

    def read(path, image_hw):
        if not path:
            return np.full(tuple(image_hw), IGNORE_INDEX, np.uint8)
        return read_mask(path.decode(), lookup, (int(image_hw[1]), int(image_hw[0])))
    return read


def decode_pixels(path):
    """Decode any JPEG/PNG/BMP (grey or RGBA -> RGB) to uint8 (h, w, 3)."""
    raw = tf.io.read_file(path)
    return tf.io.decode_image(raw, channels=3, expand_animations=False)


def load_image(path):
    """Decode any JPEG/PNG/BMP (grey or RGBA -> RGB) to float32 [0, 1]."""
    return tf.image.convert_image_dtype(decode_pixels(path), tf.float32)


def _with_pixels(num_mask_classes: int):
    read = _mask_reader(num_mask_classes) if num_mask_classes else None

    def fn(item):
        out = dict(item)
        out["images"] = decode_pixels(item["path"])
        if read is not None:
            image_hw = tf.shape(out["images"])[:2]
            mask = tf.numpy_function(read, [item["mask_path"], image_hw], tf.uint8, stateful=False)
            out["masks"] = tf.ensure_shape(mask, [None, None])
            out["image_hw"] = image_hw
        return out
    return fn


def _letterboxed(size: int):
    def fn(item):
        image = tf.image.convert_image_dtype(item["images"], tf.float32)
        image, boxes, scale, offset = letterbox(image, item["boxes"], size)
        valid = item["classes"] >= 0
        boxes = tf.where(valid[:, None], boxes, 0.0)
        out = dict(item)
        out.update(images=image, boxes=boxes, scale=scale, offset=offset)
        if "masks" in item:
            out["masks"] = tf.ensure_shape(letterbox_mask(item["masks"], size), [size, size])
        return out
    return fn


def _decoded(ds: tf.data.Dataset, config: ModelConfig) -> tf.data.Dataset:
    """Per-record decode + letterbox; a record whose image (or mask) cannot be read or decoded
    is dropped.

    Only the read + decode step may fail quietly (a bug further on still
    raises), and it hands on uint8 pixels, a quarter of their float size.
    """
    ds = ds.map(_with_pixels(config.num_mask_classes), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=True)
    return ds.map(_letterboxed(config.input_size), num_parallel_calls=tf.data.AUTOTUNE)


class Augmenter:
    """keras-cv flip, scale jitter, brightness and contrast on a letterboxed batch; masks, when
    the batch has them, take the same flip and jitter as their images."""

    def __init__(self, size: int, options: PipelineOptions):
        seed = options.seed
        self.layers = []
        if options.flip:
            self.layers.append(keras_cv.layers.RandomFlip(
                mode="horizontal", bounding_box_format="xyxy", seed=seed))
        if options.scale_jitter:
            self.layers.append(keras_cv.layers.JitteredResize(
                target_size=(size, size), scale_factor=tuple(options.scale_jitter),
                bounding_box_format="xyxy", seed=seed + 1))
        self.color = []
        if options.color_jitter:
            # Brightness + contrast only: keras-cv's hue/saturation ops cost ~5x more
            # CPU than the train step can spare here; the generator varies tint.
            c = options.color_jitter
            self.color = [keras_cv.layers.RandomBrightness(c, value_range=(0, 1), seed=seed + 2),
                          keras_cv.layers.RandomContrast(value_range=(0, 1), factor=c, seed=seed + 3)]
        self.max_boxes = options.max_boxes

    def __call__(self, batch):
        data = {"images": batch["images"],
                "bounding_boxes": {"boxes": batch["boxes"],
                                   "classes": tf.cast(batch["classes"], tf.float32)}}
        if "masks" in batch:  # shifted by 1: the 0 the layers pad with becomes IGNORE_INDEX below
            data["segmentation_masks"] = tf.cast(batch["masks"], tf.float32)[..., None] + 1.0
        for layer in self.layers:
            data = layer(data)
        boxes = keras_cv.bounding_box.to_dense(data["bounding_boxes"], max_boxes=self.max_boxes)
        images = data["images"]
        for layer in self.color:
            images = layer(images)
        out = dict(batch)
        out["images"] = tf.clip_by_value(images, 0.0, 1.0)
        out["boxes"] = tf.reshape(boxes["boxes"], tf.shape(batch["boxes"]))
        out["classes"] = tf.reshape(tf.cast(boxes["classes"], tf.int32), tf.shape(batch["classes"]))
        if "masks" in batch:
            shifted = tf.cast(tf.round(data["segmentation_masks"][..., 0]), tf.int32)
            masks = tf.where(shifted == 0, IGNORE_INDEX, shifted - 1)
            out["masks"] = tf.reshape(tf.cast(masks, tf.uint8), tf.shape(batch["masks"]))
        return out


def _drop_degenerate(batch, min_size: float = 1.0):
    """Boxes cut to slivers by cropping lose their label (class -1)."""
    wh = batch["boxes"][..., 2:] - batch["boxes"][..., :2]
    keep = (batch["classes"] >= 0) & (wh[..., 0] >= min_size) & (wh[..., 1] >= min_size)
    out = dict(batch)
    out["classes"] = tf.where(keep, batch["classes"], -1)
    out["boxes"] = tf.where(keep[..., None], batch["boxes"], 0.0)
    return out


def _targets(batch, config: ModelConfig) -> dict:
    """The loss's targets for a batch: encoded detector grids, boxes, labels and label flags
    (and the segmentation masks, when the batch carries them)."""
    batch = _drop_degenerate(batch)
    s8, s16, s32 = encode_targets(batch["boxes"], batch["classes"], config)
    targets = {"det_s8": s8, "det_s16": s16, "det_s32": s32,
               "gt_boxes": batch["boxes"], "gt_classes": batch["classes"],
               "has_boxes": batch["has_boxes"], "disaster": batch["disaster"],
               "has_class": batch["has_class"]}
    if "masks" in batch:
        targets.update(segmentation=batch["masks"], has_mask=batch["has_mask"])
    return targets


def _to_model_io(config: ModelConfig):
    def fn(batch):
        return batch["images"], _targets(batch, config)
    return fn


def _without_autotune_model(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Turn off tf.data's autotuning model (its background optimizer thread).

    Destroying an iterator waits for that thread, which sleeps between
    optimizations for a period that doubles up to a minute, and the wake-up
    is not always prompt: the end of an epoch can then hang for tens of
    seconds with the CPU idle, and a federation's rounds alternate between
    short and long. AUTOTUNE parallelism and prefetch keep their defaults
    without the model."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def training_dataset(records: list[Record], config: ModelConfig,
                     options: PipelineOptions = PipelineOptions(),
                     num_batches: int | None = None) -> tf.data.Dataset:
    """Shuffled, augmented, encoded batches (images, targets): one pass over `records`,
    or exactly `num_batches` batches, the records reshuffled and repeated as often as
    that takes (a site with few labels training as many steps as one with many)."""
    if not records:
        raise ValueError("training_dataset: no records (nothing labeled to train on)")
    arrays = records_to_arrays(records, options.max_boxes, masks=bool(config.num_mask_classes))
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    ds = ds.shuffle(min(len(records), options.shuffle_buffer), seed=options.seed,
                    reshuffle_each_iteration=True)
    if num_batches is not None:
        ds = ds.repeat()
    return _augmented_batches(ds, config, options, num_batches,
                              drop_remainder=num_batches is not None or len(records) >= options.batch_size)


def _augmented_batches(ds: tf.data.Dataset, config: ModelConfig, options: PipelineOptions,
                       num_batches: int | None, drop_remainder: bool) -> tf.data.Dataset:
    """Records -> decoded, batched (`num_batches` of them when set), augmented, encoded."""
    ds = _decoded(ds, config)
    ds = ds.batch(options.batch_size, drop_remainder=drop_remainder)
    if num_batches is not None:
        ds = ds.take(max(1, int(num_batches)))
    ds = ds.map(Augmenter(config.input_size, options), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(_to_model_io(config), num_parallel_calls=tf.data.AUTOTUNE)
    return _without_autotune_model(ds.prefetch(tf.data.AUTOTUNE))


class RecordStream:
    """`num_batches` training batches per epoch, as `training_dataset` makes them, over
    records that can be replaced between epochs without building the pipeline again.

    Building a pipeline traces its decode, augment and encode functions, about 3-4 s on
    this CPU; a federated site whose labeled set grows every round (active learning)
    would pay that every round. Here the records enter through a Python generator that
    reads `records` afresh at the start of each epoch (each new iterator) and hands them
    over a whole shuffled pass at a time, seeded with (seed, epoch), so one build serves
    every round."""

    def __init__(self, config: ModelConfig, options: PipelineOptions, num_batches: int):
        self.records: list[Record] = []
        self.config, self.options, self.num_batches = config, options, num_batches
        self.masks = bool(config.num_mask_classes)
        self._epochs = 0
        self._dataset = None

    def dataset(self, records: list[Record]) -> tf.data.Dataset:
        """The batches of one epoch (each iteration is a new epoch) over `records` from now on."""
        if not records:
            raise ValueError("RecordStream: no records (nothing labeled to train on)")
        self.records = list(records)
        if self._dataset is None:  # built at the first records, which give the elements' types
            first = records_to_arrays(self.records[:1], self.options.max_boxes, masks=self.masks)
            signature = {k: tf.TensorSpec((None, *v.shape[1:]),
                                          tf.string if v.dtype.kind == "U" else tf.as_dtype(v.dtype))
                         for k, v in first.items()}
            source = tf.data.Dataset.from_generator(self._shuffled_passes, output_signature=signature).unbatch()
            self._dataset = _augmented_batches(source, self.config, self.options, self.num_batches,
                                               drop_remainder=True)
        return self._dataset

    def _shuffled_passes(self):
        """The records' arrays, reshuffled, over and over: one Python call per pass over the
        records (the pipeline unbatches them), not one per image, which would contend for
        the interpreter with the training loop."""
        arrays = records_to_arrays(self.records, self.options.max_boxes, masks=self.masks)
        rng = np.random.default_rng([self.options.seed, self._epochs])
        self._epochs += 1
        while True:  # the pipeline takes its num_batches, then drops this generator
            order = rng.permutation(len(self.records))
            yield {k: v[order] for k, v in arrays.items()}


def inference_dataset(records: list[Record], config: ModelConfig, batch_size: int = 16,
                      max_boxes: int = 32) -> tf.data.Dataset:
    """Letterboxed batches in record order, with the scale/offset to map boxes back.

    A record whose image cannot be decoded is missing from the batches; each
    batch's ``index`` says which records it holds. With a segmentation head, each
    batch also holds ``image_hw``, the original sizes its masks map back to.
    """
    arrays = records_to_arrays(records, max_boxes, masks=bool(config.num_mask_classes))
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    ds = _decoded(ds, config)
    ds = ds.batch(batch_size)
    return _without_autotune_model(ds.prefetch(tf.data.AUTOTUNE))


def validation_dataset(records: list[Record], config: ModelConfig, batch_size: int = 16,
                       max_boxes: int = 32) -> tf.data.Dataset:
    """Letterboxed, encoded, un-augmented batches for validation losses."""
    ds = inference_dataset(records, config, batch_size, max_boxes)
    return ds.map(_to_model_io(config), num_parallel_calls=tf.data.AUTOTUNE)


def inference_dataset_with_targets(records: list[Record], config: ModelConfig, batch_size: int = 16,
                                   max_boxes: int = 32) -> tf.data.Dataset:
    """`inference_dataset`'s batches, each with its targets: (batch, targets). To predict
    and take the loss from one forward pass (src/evaluation.py:Predictor.predict_with_loss)."""
    ds = inference_dataset(records, config, batch_size, max_boxes)
    return ds.map(lambda batch: (batch, _targets(batch, config)), num_parallel_calls=tf.data.AUTOTUNE)


def letterbox_scale(image_size_wh, size: int) -> float:
    """The factor `letterbox` applies to an image of (w, h) pixels."""
    w, h = image_size_wh
    return min(size / h, size / w)
