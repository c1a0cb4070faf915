"""One synthetic image in memory: scene, distractors, victims, burst framing and camera.

Image i depends only on (seed, i) and the options, never on the number of
workers or on other images: each component draws from its own seeded stream.
Its region map (what each pixel shows, ``regions``) is painted along with it
from the same shapes, drawing no random number of its own.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from src.data.synthetic.distractors import paint_distractors
from src.data.synthetic.drawing import jitter, low_freq
from src.data.synthetic.options import SceneOptions, coerce_options
from src.data.synthetic.regions import paint_overlay_regions
from src.data.synthetic.scenes import SCENE_PAINTERS
from src.data.synthetic.victims import paint_victims

CLASS_STREAM = 1000  # rng stream used for the balanced disaster-class draw

# Separate random streams per component: disabling victims, say, leaves the
# background pixels identical (tests rely on this).
_STREAM_SIZE, _STREAM_SCENE, _STREAM_DISTRACTORS = 1, 2, 3
_STREAM_VICTIMS, _STREAM_OCCLUDERS, _STREAM_CAMERA = 4, 5, 6
_STREAM_FRAME = 7
BURST_CROP = (0.8, 0.95)  # a burst frame shows this share of its scene's width and height


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), stream])


def _apply_camera(rng: np.random.Generator, image: Image.Image, difficulty: float) -> Image.Image:
    """Per-image exposure, contrast, tint, uneven lighting, haze and sensor noise."""
    pixels = np.asarray(image, np.float32)
    height, width = pixels.shape[:2]
    strength = 0.4 + difficulty
    gain = math.exp(rng.uniform(-0.3, 0.25) * strength)
    tint = np.exp(rng.normal(0, 0.06 * strength, 3)).astype(np.float32)
    contrast = math.exp(rng.uniform(-0.3, 0.15) * strength)
    shading = 1 + (low_freq(rng, width, height, 2) - 0.5) * 0.3 * strength
    mean = pixels.mean(axis=(0, 1))
    pixels = ((pixels - mean) * contrast + mean) * (gain * tint) * shading[..., None]
    if rng.random() < 0.25 * strength:
        haze = rng.uniform(0.05, 0.25)
        pixels = pixels * (1 - haze) + haze * np.asarray(jitter(rng, (200, 200, 205), 15), np.float32)
    pixels += rng.standard_normal((height, width, 1), np.float32) * rng.uniform(1.5, 5.0)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def disaster_class_of(seed: int, scene: int, num_classes: int, weights: Sequence[float] | None = None) -> int:
    """The class of a scene. Balanced (weights None): each block of num_classes scenes is a
    seeded permutation. Weighted: a seeded draw with the weights' proportions."""
    if weights is not None:
        p = np.asarray(weights, np.float64)
        return int(np.random.default_rng([int(seed), int(scene), CLASS_STREAM]).choice(num_classes, p=p / p.sum()))
    block, position = divmod(int(scene), num_classes)
    return int(np.random.default_rng([int(seed), block, CLASS_STREAM]).permutation(num_classes)[position])


def _burst_frame(rng: np.random.Generator, image: Image.Image, regions: Image.Image, boxes: np.ndarray
                 ) -> tuple[Image.Image, Image.Image, np.ndarray]:
    """One frame of a burst: a crop of the scene (BURST_CROP of each side, larger when the
    victims need it) scaled back to full size, its region map cropped alike (nearest pixel,
    so codes stay codes). The crop holds every victim box whole, so boxes stay tight (a box
    cut by the frame edge would not be)."""
    width, height = image.size
    low, high = (boxes[:, :2].min(axis=0).tolist(), boxes[:, 2:].max(axis=0).tolist()) if len(boxes) else \
        ((width, height), (0, 0))
    needed = max((high[0] - low[0]) / width, (high[1] - low[1]) / height, 0.0)
    share = min(max(rng.uniform(*BURST_CROP), needed), 1.0)
    crop_w, crop_h = width * share, height * share

    def origin(first, last, crop, side):  # the crop's start: inside the image, holding [first, last]
        earliest = max(0.0, last - crop)
        return rng.uniform(earliest, max(earliest, min(first, side - crop)))

    x0, y0 = origin(low[0], high[0], crop_w, width), origin(low[1], high[1], crop_h, height)
    extent = (x0, y0, x0 + crop_w, y0 + crop_h)
    frame = image.transform((width, height), Image.Transform.EXTENT, extent, Image.Resampling.BILINEAR)
    frame_regions = regions.transform((width, height), Image.Transform.EXTENT, extent, Image.Resampling.NEAREST)
    scaled = (boxes - np.array([x0, y0, x0, y0], np.float32)) / share
    return frame, frame_regions, np.clip(scaled, 0, [width, height, width, height]).astype(np.float32).reshape(-1, 4)


def render_scene(seed: int, index: int, options: SceneOptions | dict | None = None
                 ) -> tuple[Image.Image, np.ndarray, np.ndarray, int]:
    """Image `index` of the data set with this seed, in memory.

    Returns (RGB image, boxes (N, 4) float32 absolute-pixel xyxy of the
    visible part of each victim, victim classes (N,) int32, disaster class
    index). Depends only on (seed, index, options). With burst_size > 1, images
    index // burst_size share their scene (class, layout, victims) and differ
    in crop and camera.
    """
    return render_labelled_scene(seed, index, options)[:4]


def render_labelled_scene(seed: int, index: int, options: SceneOptions | dict | None = None
                          ) -> tuple[Image.Image, np.ndarray, np.ndarray, int, Image.Image]:
    """``render_scene`` plus the image's region map: an 8-bit image of region codes
    (``regions.BACKGROUND``, ``WATER``, ``FIRE_SMOKE``, ``RUBBLE``), the image's size."""
    options = coerce_options(options)
    scene_index = int(index) // int(options.burst_size)
    disaster = disaster_class_of(seed, scene_index, len(options.disaster_classes), options.class_weights)
    size_rng = _rng(seed, scene_index, _STREAM_SIZE)
    width = int(size_rng.integers(options.min_size, options.max_size + 1))
    height = int(size_rng.integers(options.min_size, options.max_size + 1))
    painter = SCENE_PAINTERS[options.disaster_classes[disaster]]
    scene = painter(_rng(seed, scene_index, _STREAM_SCENE), width, height, options.difficulty)
    paint_distractors(_rng(seed, scene_index, _STREAM_DISTRACTORS), scene.image, scene.regions, options.difficulty)
    boxes, classes = paint_victims(_rng(seed, scene_index, _STREAM_VICTIMS),
                                    _rng(seed, scene_index, _STREAM_OCCLUDERS), scene, options)
    image, regions = scene.image, scene.regions
    for colour, mask, region in scene.overlays:
        image = Image.composite(Image.new("RGB", image.size, colour), image, mask)
        regions = paint_overlay_regions(regions, mask, region)
    if options.burst_size > 1:
        image, regions, boxes = _burst_frame(_rng(seed, index, _STREAM_FRAME), image, regions, boxes)
    image = _apply_camera(_rng(seed, index, _STREAM_CAMERA), image, options.difficulty)
    return image, boxes, classes, disaster, regions
