"""Synthetic disaster scenes: the built-in default data set.

Why: the federation needs a data set every site can hold without shipping
images around, and without real data mounted. This module stands in for
AIDER (five disaster-scene classes) and C2A (people in disaster scenes):
aerial / oblique scenes of collapsed buildings, fires, floods, traffic
incidents and normal land, with person figures (the victims, boxed) and
person-sized things that are not people (hard negatives).

It is deterministic: image i depends only on (seed, i), never on the
number of workers or on other images, so every site regenerates identical
images from the seed instead of downloading them. Files are written in the
same real formats the readers handle (JPEG, YOLO txt, a class TSV), so the
synthetic set exercises the same code path as real data.

Two knobs make it look more like what a drone team actually collects
(both off by default): ``burst_size`` images per scene, a burst of
near-duplicate frames (the same scene and victims, each frame a slightly
different crop and exposure), and ``class_weights``, how often each
disaster class occurs (e.g. mostly ``normal`` land, rare fires). Splits of a
burst-generated set keep each burst in one split (``scene_groups``), so no
test image has a near-duplicate in training.

Classes are confusable at the margins on purpose, controlled by
``difficulty`` in [0, 1]: smoke in traffic scenes, fires with little flame,
debris in both collapsed and flooded scenes, intact houses and roads in
several classes, overlapping ground palettes and a per-image brightness /
tint so mean colour alone does not give the class away.
"""
from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

LOG = logging.getLogger(__name__)

GENERATOR_VERSION = 1
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
JPEG_QUALITY = 92
FIGURE_LENGTH_PX = (8.0, 60.0)  # person length (standing height), log-uniform
MIN_VISIBLE_FRACTION = 0.4  # drop a victim label below this visible share
MIN_BOX_PX = 2
NO_VICTIM_PROBABILITY = 0.13  # plus occlusion drops: about 15% empty images
MAX_OVERLAP = 0.25  # intersection over the smaller full figure box
CLASS_STREAM = 1000  # rng stream used for the balanced disaster-class draw

# Separate random streams per component: disabling victims, say, leaves the
# background pixels identical (tests rely on this).
_STREAM_SIZE, _STREAM_SCENE, _STREAM_DISTRACTORS = 1, 2, 3
_STREAM_VICTIMS, _STREAM_OCCLUDERS, _STREAM_CAMERA = 4, 5, 6
_STREAM_FRAME = 7
BURST_CROP = (0.8, 0.95)  # a burst frame shows this share of its scene's width and height

Colour = tuple[int, int, int]
Box = tuple[float, float, float, float]

# Ground palettes (two colours mixed by low-frequency noise). Each class has
# its own, but with probability ~0.35 * difficulty any palette is used.
GROUND_PALETTES: dict[str, tuple[Colour, Colour]] = {
    "dust": ((152, 142, 126), (118, 106, 92)),
    "burnt": ((58, 48, 42), (92, 76, 60)),
    "mud": ((122, 102, 74), (96, 86, 66)),
    "grass": ((84, 122, 58), (112, 140, 72)),
    "dry": ((150, 140, 96), (124, 114, 80)),
    "urban": ((122, 122, 118), (96, 96, 96)),
}
CLASS_GROUNDS = {
    "collapsed_building": ("dust", "urban", "dry"),
    "fire": ("burnt", "burnt", "dry"),
    "flooded_areas": ("mud", "grass"),
    "traffic_incident": ("urban", "dry", "grass"),
    "normal": ("grass", "grass", "dry"),
}
ROOF_COLOURS: tuple[Colour, ...] = (
    (160, 70, 55), (120, 120, 125), (90, 80, 70), (175, 150, 120), (70, 90, 110), (150, 150, 145))
CAR_COLOURS: tuple[Colour, ...] = (
    (200, 30, 30), (30, 60, 160), (230, 230, 230), (20, 20, 25), (150, 150, 155),
    (220, 190, 40), (40, 110, 60), (120, 30, 30))
RUBBLE_COLOURS: tuple[Colour, ...] = (
    (150, 145, 138), (120, 112, 100), (175, 165, 150), (98, 90, 82), (140, 110, 85), (185, 180, 170))
SKIN_TONES: tuple[Colour, ...] = (
    (255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 51, 23))
CLOTHING: tuple[Colour, ...] = (
    (200, 40, 40), (40, 70, 170), (240, 240, 235), (30, 30, 30), (60, 120, 60), (250, 140, 20),
    (230, 220, 40), (120, 80, 50), (130, 130, 140), (150, 60, 140), (60, 160, 190), (190, 170, 140))
TROUSERS: tuple[Colour, ...] = (
    (35, 45, 80), (25, 25, 28), (90, 70, 50), (110, 110, 115), (160, 140, 100), (60, 75, 50))


# --------------------------------------------------------------------------
# Options


def default_class_names(config_path: str | Path = DEFAULT_CONFIG) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(disaster class names, victim class names) from the config file."""
    with open(config_path, encoding="utf-8") as handle:
        classes = yaml.safe_load(handle)["classes"]
    return tuple(classes["disaster"]), tuple(classes["victim"])


@dataclass(frozen=True)
class SceneOptions:
    """Everything that shapes an image besides (seed, index)."""

    min_size: int = 192
    max_size: int = 256
    difficulty: float = 0.5
    max_victims: int = 6
    disaster_classes: tuple[str, ...] = ()
    victim_classes: tuple[str, ...] = ()
    burst_size: int = 1  # consecutive images showing one scene (1: every image its own scene)
    # relative frequency of each disaster class: {name: weight}, unnamed classes
    # weigh 1; None = balanced. Kept as a tuple in disaster_classes order.
    class_weights: tuple[float, ...] | dict | None = None

    def __post_init__(self):
        disaster, victim = (), ()
        if not self.disaster_classes or not self.victim_classes:
            disaster, victim = default_class_names()
        object.__setattr__(self, "disaster_classes", tuple(self.disaster_classes or disaster))
        object.__setattr__(self, "victim_classes", tuple(self.victim_classes or victim))
        object.__setattr__(self, "difficulty", float(self.difficulty))
        object.__setattr__(self, "class_weights", _class_weights(self.class_weights, self.disaster_classes))
        if int(self.burst_size) < 1:
            raise ValueError(f"burst_size must be >= 1, got {self.burst_size}")
        if not 32 <= int(self.min_size) <= int(self.max_size):
            raise ValueError(f"need 32 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if self.max_victims < 0:
            raise ValueError(f"max_victims must be >= 0, got {self.max_victims}")
        _check_names("disaster", self.disaster_classes, SCENE_PAINTERS)
        _check_names("victim", self.victim_classes, VICTIM_PAINTERS)


def _check_names(kind: str, names: Sequence[str], known: dict) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate {kind} class names: {list(names)}")
    for name in names:
        if name not in known:
            raise ValueError(
                f"unknown {kind} class {name!r}: the synthetic generator can paint {sorted(known)}")


def _class_weights(weights, names: Sequence[str]) -> tuple[float, ...] | None:
    """{name: weight} (unnamed classes weigh 1) or a weight per class, as a tuple; None stays None."""
    if weights is None:
        return None
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"class_weights names unknown disaster classes {unknown}; classes: {list(names)}")
        weights = [weights.get(name, 1.0) for name in names]
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(names):
        raise ValueError(f"class_weights has {len(weights)} weights for {len(names)} disaster classes")
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"class_weights must be >= 0 with a positive sum, got {list(weights)}")
    return weights


def _coerce_options(options: SceneOptions | dict | None) -> SceneOptions:
    if options is None:
        return SceneOptions()
    if isinstance(options, dict):
        return SceneOptions(**options)
    return options


# --------------------------------------------------------------------------
# Small drawing helpers


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), stream])


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: int = 12) -> Colour:
    noise = rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(np.asarray(colour) + noise, 0, 255))


def _shade(colour: Sequence[int], factor: float) -> Colour:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _low_freq(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1], (height, width) float32, about `cells` blobs across."""
    scale = cells / max(width, height)
    small = rng.integers(0, 256, (max(2, round(height * scale)), max(2, round(width * scale))), np.uint8)
    smooth = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    return np.asarray(smooth, np.float32) / 255.0


def _ground(rng: np.random.Generator, width: int, height: int, palette: tuple[Colour, Colour]) -> Image.Image:
    """Two-colour ground mixed by smooth noise plus grain, as an RGB image."""
    mix = 0.65 * _low_freq(rng, width, height, 4) + 0.35 * _low_freq(rng, width, height, 18)
    first = np.asarray(_jitter(rng, palette[0], 14), np.float32)
    second = np.asarray(_jitter(rng, palette[1], 14), np.float32)
    pixels = first + (second - first) * mix[..., None]
    pixels += rng.standard_normal((height, width, 1), np.float32) * 7.0
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _ground_palette(rng: np.random.Generator, class_name: str, difficulty: float) -> tuple[Colour, Colour]:
    """The class's own ground palette, or any palette with prob ~0.35*difficulty."""
    if rng.random() < 0.35 * difficulty:
        return GROUND_PALETTES[_pick(rng, sorted(GROUND_PALETTES))]
    return GROUND_PALETTES[_pick(rng, CLASS_GROUNDS[class_name])]


def _rect(cx: float, cy: float, length: float, width: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a rectangle centred at (cx, cy), long side along `angle` (rad)."""
    ux, uy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    vx, vy = -math.sin(angle) * width / 2, math.cos(angle) * width / 2
    return [(cx - ux - vx, cy - uy - vy), (cx + ux - vx, cy + uy - vy),
            (cx + ux + vx, cy + uy + vy), (cx - ux + vx, cy - uy + vy)]


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float,
          vertices: int = 9, roughness: float = 0.35) -> list[tuple[float, float]]:
    """Irregular polygon around (cx, cy)."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
    radii = radius * (1 + rng.uniform(-roughness, roughness, vertices))
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)]


def _random_point(rng: np.random.Generator, width: int, height: int, margin: float = 0.05) -> tuple[float, float]:
    return (float(rng.uniform(margin, 1 - margin) * width), float(rng.uniform(margin, 1 - margin) * height))


def _polygon_mask(size: tuple[int, int], polygon: Sequence[tuple[float, float]]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(list(polygon), fill=255)
    return mask


# --------------------------------------------------------------------------
# Scene elements shared by several classes


def _draw_house(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                length: float, angle: float, roof: Colour | None = None) -> None:
    """Intact gable-roofed house seen from above: shadow, two roof halves, ridge."""
    width = length * rng.uniform(0.55, 0.8)
    roof = roof or _jitter(rng, _pick(rng, ROOF_COLOURS), 15)
    offset = length * 0.12
    draw.polygon(_rect(cx + offset, cy + offset, length, width, angle), fill=(55, 55, 50))
    vx, vy = -math.sin(angle) * width / 4, math.cos(angle) * width / 4
    draw.polygon(_rect(cx - vx, cy - vy, length, width / 2, angle), fill=roof)
    draw.polygon(_rect(cx + vx, cy + vy, length, width / 2, angle), fill=_shade(roof, 0.72))
    ux, uy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    draw.line([(cx - ux, cy - uy), (cx + ux, cy + uy)], fill=_shade(roof, 0.55), width=1)


def _draw_tree(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
               radius: float, burnt: bool = False) -> None:
    """Tree crown from above: shadow plus a few overlapping circles."""
    leaf = (45, 45, 40) if burnt else (52, 98, 42)
    draw.ellipse([cx - radius + radius * 0.3, cy - radius + radius * 0.3,
                  cx + radius * 1.3, cy + radius * 1.3], fill=(35, 45, 30))
    for _ in range(int(rng.integers(3, 6))):
        x, y = cx + rng.normal(0, radius * 0.3), cy + rng.normal(0, radius * 0.3)
        r = radius * rng.uniform(0.5, 0.8)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(rng, leaf, 18))


def _draw_road(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int,
               angle: float | None = None, centre: tuple[float, float] | None = None
               ) -> tuple[float, float, float, float]:
    """Asphalt strip across the image with edge lines and dashed centre line.

    Returns (cx, cy, angle, road_width) for placing cars.
    """
    cx, cy = centre or _random_point(rng, width, height, 0.25)
    angle = float(rng.uniform(0, math.pi)) if angle is None else angle
    road_width = float(rng.uniform(0.16, 0.3) * min(width, height))
    span = math.hypot(width, height) * 2
    draw.polygon(_rect(cx, cy, span, road_width, angle), fill=_jitter(rng, (82, 82, 84), 14))
    ux, uy = math.cos(angle), math.sin(angle)
    vx, vy = -uy, ux
    edge = road_width / 2 - 2
    for side in (-1, 1):
        ex, ey = cx + side * vx * edge, cy + side * vy * edge
        draw.line([(ex - ux * span, ey - uy * span), (ex + ux * span, ey + uy * span)], fill=(200, 200, 195))
    marking = (235, 235, 230) if rng.random() < 0.7 else (230, 200, 60)
    dash, line_width = road_width * 0.35, max(1, round(road_width / 22))
    for t in np.arange(-span / 2, span / 2, dash * 2):
        draw.line([(cx + ux * t, cy + uy * t), (cx + ux * (t + dash), cy + uy * (t + dash))],
                  fill=marking, width=line_width)
    return cx, cy, angle, road_width


def _draw_car(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
              length: float, angle: float, flipped: bool = False) -> None:
    """Car from above: shadow, body, windscreen and rear window (or underside)."""
    width = length * 0.46
    draw.polygon(_rect(cx + length * 0.08, cy + length * 0.08, length, width, angle), fill=(40, 40, 38))
    ux, uy = math.cos(angle), math.sin(angle)
    if flipped:
        draw.polygon(_rect(cx, cy, length, width, angle), fill=_jitter(rng, (60, 60, 58), 10))
        for along in (-0.32, 0.32):
            for across in (-0.5, 0.5):
                x = cx + ux * along * length - uy * across * width
                y = cy + uy * along * length + ux * across * width
                r = length * 0.09
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(15, 15, 15))
        return
    draw.polygon(_rect(cx, cy, length, width, angle), fill=_jitter(rng, _pick(rng, CAR_COLOURS), 15))
    glass = (40, 48, 60)
    draw.polygon(_rect(cx + ux * length * 0.16, cy + uy * length * 0.16, length * 0.17, width * 0.82, angle), fill=glass)
    draw.polygon(_rect(cx - ux * length * 0.3, cy - uy * length * 0.3, length * 0.1, width * 0.75, angle), fill=glass)


def _cars_along_road(draw: ImageDraw.ImageDraw, rng: np.random.Generator, road, count: int,
                     width: int, height: int) -> None:
    """Normally driving cars: in lane, aligned with the road."""
    cx, cy, angle, road_width = road
    ux, uy, vx, vy = math.cos(angle), math.sin(angle), -math.sin(angle), math.cos(angle)
    reach = 0.45 * math.hypot(width, height)
    for _ in range(count):
        lane = _pick(rng, (-1, 1))
        t = rng.uniform(-reach, reach)
        x = cx + ux * t + vx * lane * road_width / 4
        y = cy + uy * t + vy * lane * road_width / 4
        heading = angle + (math.pi if lane < 0 else 0.0) + rng.normal(0, 0.03)
        _draw_car(draw, rng, x, y, road_width * rng.uniform(0.4, 0.55), heading)


def _draw_rubble(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                 radius: float, count: int) -> None:
    """A pile of irregular concrete / brick fragments."""
    for _ in range(count):
        x, y = cx + rng.normal(0, radius * 0.45), cy + rng.normal(0, radius * 0.45)
        r = radius * rng.uniform(0.05, 0.22)
        draw.polygon(_blob(rng, x, y, r, int(rng.integers(4, 7)), 0.45),
                     fill=_jitter(rng, _pick(rng, RUBBLE_COLOURS), 18))


def _draw_debris(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int,
                 count: int) -> None:
    """Planks, metal bits, sheets and rags scattered over the image."""
    for _ in range(count):
        x, y = _random_point(rng, width, height, 0.0)
        kind = int(rng.integers(4))
        if kind <= 1:  # planks and bars
            length, a = rng.uniform(5, 22), rng.uniform(0, math.pi)
            colour = (125, 90, 55) if kind == 0 else (110, 110, 115)
            draw.line([(x, y), (x + math.cos(a) * length, y + math.sin(a) * length)],
                      fill=_jitter(rng, colour, 20), width=int(rng.integers(1, 4)))
        elif kind == 2:  # roofing sheets
            draw.polygon(_rect(x, y, rng.uniform(6, 16), rng.uniform(4, 10), rng.uniform(0, math.pi)),
                         fill=_jitter(rng, _pick(rng, ROOF_COLOURS), 20))
        else:  # rags, plastic
            draw.polygon(_blob(rng, x, y, rng.uniform(2, 5), 5, 0.5), fill=_jitter(rng, _pick(rng, CLOTHING), 30))


def _smoke_mask(rng: np.random.Generator, width: int, height: int, origins: Sequence[tuple[float, float]],
                max_alpha: float, size: float = 1.0) -> Image.Image:
    """Translucency mask of drifting smoke plumes, drawn at quarter size and blurred."""
    small_w, small_h = max(8, width // 4), max(8, height // 4)
    mask = Image.new("L", (small_w, small_h), 0)
    draw = ImageDraw.Draw(mask)
    wind = rng.uniform(0, 2 * math.pi)
    for ox, oy in origins:
        puffs, x, y = [], ox / 4, oy / 4
        r, alpha = rng.uniform(1.5, 3.5) * size, max_alpha * rng.uniform(0.6, 1.0)
        for _ in range(int(rng.integers(4, 9))):
            puffs.append((x, y, r, alpha))
            x += math.cos(wind) * r * 0.9 + rng.normal(0, r * 0.3)
            y += math.sin(wind) * r * 0.9 + rng.normal(0, r * 0.3)
            r, alpha = r * 1.25, alpha * 0.86
        for x, y, r, alpha in reversed(puffs):  # faint far puffs first, dense source last
            draw.ellipse([x - r, y - r, x + r, y + r], fill=int(255 * alpha))
    mask = mask.filter(ImageFilter.GaussianBlur(1.5)).resize((width, height), Image.BILINEAR)
    texture = 0.55 + 0.45 * _low_freq(rng, width, height, 10)
    return Image.fromarray((np.asarray(mask, np.float32) * texture).astype(np.uint8))


def _draw_flames(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, size: float) -> None:
    """A fire: layered red / orange / yellow tongues."""
    for _ in range(int(rng.integers(2, 5))):
        x, y = cx + rng.normal(0, size * 0.35), cy + rng.normal(0, size * 0.25)
        r = size * rng.uniform(0.35, 0.6)
        for colour, scale in (((190, 35, 20), 1.0), ((240, 115, 25), 0.7), ((255, 215, 90), 0.38)):
            draw.polygon(_blob(rng, x, y - r * (1 - scale) * 0.5, r * scale, 8, 0.4), fill=_jitter(rng, colour, 12))


def _flame_glow_mask(width: int, height: int, flames: Sequence[tuple[float, float, float]]) -> Image.Image:
    """Soft orange glow around flames (quarter-size, blurred)."""
    small_w, small_h = max(8, width // 4), max(8, height // 4)
    mask = Image.new("L", (small_w, small_h), 0)
    draw = ImageDraw.Draw(mask)
    for x, y, size in flames:
        r = size * 0.45
        draw.ellipse([x / 4 - r, y / 4 - r, x / 4 + r, y / 4 + r], fill=90)
    return mask.filter(ImageFilter.GaussianBlur(2.0)).resize((width, height), Image.BILINEAR)


def _water_texture(rng: np.random.Generator, width: int, height: int, colour: Colour) -> Image.Image:
    """Full-size water surface: colour, slow variation, wave stripes, glints."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, frequency = rng.uniform(0, math.pi), rng.uniform(0.25, 0.6)
    phase = _low_freq(rng, width, height, 6) * 6.0
    waves = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * frequency + phase)
    cross = angle + rng.uniform(0.6, 1.2)
    ripples = np.sin((xs * math.cos(cross) + ys * math.sin(cross)) * frequency * 1.7 + phase * 0.5)
    slow = _low_freq(rng, width, height, 5) - 0.5
    pixels = np.asarray(colour, np.float32) + (slow * 32 + (0.75 * waves + 0.25 * ripples) * rng.uniform(4, 10))[..., None]
    pixels += ((waves > 0.94) & (slow > -0.1))[..., None] * 20.0  # broken glints on wave crests
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------
# Scene painters: one per disaster class


@dataclass
class Scene:
    """A painted background plus how to occlude victims and what to lay on top.

    occlude(rng, image, owner, figure_box) draws something over part of a
    figure on the RGB image and with 0 on the owner map (which records
    which figure each pixel shows).
    overlays: (colour, alpha mask) pairs composited after the victims
    (smoke, glow); translucent, so they do not hide figures.
    """

    image: Image.Image
    occlude: Callable[[np.random.Generator, Image.Image, Image.Image, Box], None]
    occlusion_probability: float
    overlays: list[tuple[Colour, Image.Image]] = field(default_factory=list)


def _blob_occluder(colours: Sequence[Colour], rng: np.random.Generator, image: Image.Image,
                   owner: Image.Image, box: Box) -> None:
    """Irregular shapes over the lower part of a figure (rubble, bush, debris)."""
    x1, y1, x2, y2 = box
    size = max(x2 - x1, y2 - y1)
    cx = rng.uniform(x1, x2)
    cy = rng.uniform(y1 + 0.4 * (y2 - y1), y2)
    draw_rgb, draw_owner = ImageDraw.Draw(image), ImageDraw.Draw(owner)
    for _ in range(int(rng.integers(1, 4))):
        polygon = _blob(rng, cx + rng.normal(0, size * 0.12), cy + rng.normal(0, size * 0.12),
                        size * rng.uniform(0.18, 0.35), 7, 0.35)
        draw_rgb.polygon(polygon, fill=_jitter(rng, _pick(rng, colours), 15))
        draw_owner.polygon(polygon, fill=0)


def _water_occluder(water: Image.Image, rng: np.random.Generator, image: Image.Image,
                    owner: Image.Image, box: Box) -> None:
    """Water surface over the lower part of a figure (wading / floating)."""
    x1, y1, x2, y2 = box
    level = y1 + (y2 - y1) * rng.uniform(0.3, 0.7)
    xs = np.linspace(x1 - 3, x2 + 3, 6)
    top = [(float(x), float(level + rng.normal(0, 0.8))) for x in xs]
    polygon = top + [(x2 + 3, y2 + 3), (x1 - 3, y2 + 3)]
    image.paste(water, (0, 0), _polygon_mask(image.size, polygon))
    ImageDraw.Draw(owner).polygon(polygon, fill=0)


def _car_occluder(rng: np.random.Generator, image: Image.Image, owner: Image.Image, box: Box) -> None:
    """A car partly in front of a figure."""
    x1, y1, x2, y2 = box
    size = max(x2 - x1, y2 - y1)
    length = max(10.0, size * rng.uniform(0.9, 1.4))
    cx = _pick(rng, (x1, x2)) + rng.normal(0, size * 0.1)
    cy = rng.uniform(y1 + 0.3 * (y2 - y1), y2)
    angle = rng.uniform(0, math.pi)
    _draw_car(ImageDraw.Draw(image), rng, cx, cy, length, angle)
    ImageDraw.Draw(owner).polygon(_rect(cx, cy, length, length * 0.46, angle), fill=0)


def _paint_collapsed_building(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Dusty ground, broken tilted building blocks, rubble piles, debris."""
    image = _ground(rng, width, height, _ground_palette(rng, "collapsed_building", difficulty))
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.15 + 0.5 * difficulty:  # surviving houses nearby
        for _ in range(int(rng.integers(1, 3))):
            _draw_house(draw, rng, *_random_point(rng, width, height), rng.uniform(25, 50), rng.uniform(0, math.pi))
    for _ in range(int(rng.integers(2, 5))):
        _draw_broken_block(draw, rng, *_random_point(rng, width, height, 0.1), rng.uniform(30, 80))
    for _ in range(int(rng.integers(2, 6))):
        _draw_rubble(draw, rng, *_random_point(rng, width, height), rng.uniform(15, 45), int(rng.integers(10, 30)))
    _draw_debris(draw, rng, width, height, int(rng.integers(8, 25)))
    overlays = []
    if rng.random() < 0.4 * difficulty:  # dust cloud, looks a bit like smoke
        dust = _smoke_mask(rng, width, height, [_random_point(rng, width, height)], 0.45, 1.3)
        overlays.append((_jitter(rng, (175, 165, 145), 10), dust))
    return Scene(image, partial(_blob_occluder, RUBBLE_COLOURS), 0.45, overlays)


def _draw_broken_block(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                       size: float) -> None:
    """A collapsed building block: tilted slab, exposed wall, jagged edge, cracks."""
    angle = rng.uniform(0, math.pi)
    corners = _rect(cx, cy, size, size * rng.uniform(0.5, 0.9), angle)
    concrete = _jitter(rng, _shade((165, 160, 150), rng.uniform(0.75, 1.15)), 8)
    dx, dy = rng.uniform(-0.25, 0.25) * size, rng.uniform(0.1, 0.3) * size
    wall = [corners[2], corners[3], (corners[3][0] + dx, corners[3][1] + dy), (corners[2][0] + dx, corners[2][1] + dy)]
    draw.polygon(wall, fill=_shade(concrete, 0.55))
    for _ in range(int(rng.integers(2, 6))):  # window holes in the fallen wall
        t, s = rng.uniform(0.15, 0.85), rng.uniform(0.2, 0.8)
        x = wall[0][0] + (wall[1][0] - wall[0][0]) * t + dx * s
        y = wall[0][1] + (wall[1][1] - wall[0][1]) * t + dy * s
        draw.rectangle([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(30, 30, 32))
    slab = [(x + rng.normal(0, size * 0.06), y + rng.normal(0, size * 0.06)) for x, y in corners]
    broken_edge = int(rng.integers(4))
    (ax, ay), (bx, by) = slab[broken_edge], slab[(broken_edge + 1) % 4]
    jag = [(ax + (bx - ax) * t + rng.normal(0, size * 0.1), ay + (by - ay) * t + rng.normal(0, size * 0.1))
           for t in (0.25, 0.5, 0.75)]
    draw.polygon(slab[:broken_edge + 1] + jag + slab[broken_edge + 1:], fill=concrete)
    for _ in range(int(rng.integers(2, 5))):
        x, y = cx + rng.normal(0, size * 0.2), cy + rng.normal(0, size * 0.2)
        a, length = rng.uniform(0, math.pi), size * rng.uniform(0.2, 0.5)
        draw.line([(x, y), (x + math.cos(a) * length, y + math.sin(a) * length)], fill=_shade(concrete, 0.4))


def _paint_fire(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Burnt ground, charred patches and buildings, flames, smoke plumes."""
    image = _ground(rng, width, height, _ground_palette(rng, "fire", difficulty))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):  # charred patches
        draw.polygon(_blob(rng, *_random_point(rng, width, height, 0.0), rng.uniform(10, 40), 10, 0.4),
                     fill=_jitter(rng, (30, 26, 24), 8))
    if rng.random() < 0.4 * difficulty:
        _cars_along_road(draw, rng, _draw_road(draw, rng, width, height), int(rng.integers(0, 3)), width, height)
    for _ in range(int(rng.integers(0, 3))):
        _draw_house(draw, rng, *_random_point(rng, width, height), rng.uniform(25, 50), rng.uniform(0, math.pi),
                    roof=_jitter(rng, (58, 52, 48), 10))
    for _ in range(int(rng.integers(2, 7))):
        _draw_tree(draw, rng, *_random_point(rng, width, height, 0.0), rng.uniform(5, 12), burnt=rng.random() < 0.7)
    little_flame = rng.random() < 0.5 * difficulty
    count = int(rng.integers(0, 2)) if little_flame else int(rng.integers(2, 7))
    flames = [(*_random_point(rng, width, height, 0.1), rng.uniform(6, 14) if little_flame else rng.uniform(10, 40))
              for _ in range(count)]
    for x, y, size in flames:
        _draw_flames(draw, rng, x, y, size)
    overlays = [((255, 130, 30), _flame_glow_mask(width, height, flames))] if flames else []
    sources = [(x, y) for x, y, _ in flames] or [_random_point(rng, width, height)]
    grey = int(rng.integers(80, 170))
    overlays.append(((grey, grey, grey), _smoke_mask(rng, width, height, sources, rng.uniform(0.4, 0.75), 1.2)))
    return Scene(image, partial(_blob_occluder, ((35, 30, 28), (70, 60, 50), (50, 45, 42))), 0.2, overlays)


def _paint_flooded_areas(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Large brown/blue water with waves, submerged roofs and trees, floating debris."""
    land = _ground(rng, width, height, _ground_palette(rng, "flooded_areas", difficulty))
    mix = rng.uniform()
    water_colour = _jitter(rng, np.add(np.multiply((128, 106, 76), 1 - mix), np.multiply((62, 96, 122), mix)), 12)
    water = _water_texture(rng, width, height, water_colour)
    if rng.random() < 0.5 * difficulty:  # a dry house or two on the remaining land
        draw_land = ImageDraw.Draw(land)
        for _ in range(int(rng.integers(1, 3))):
            _draw_house(draw_land, rng, *_random_point(rng, width, height), rng.uniform(25, 45), rng.uniform(0, math.pi))
    coverage = rng.uniform(0.55, 0.95)
    field_ = _low_freq(rng, width, height, 3)
    water_mask = Image.fromarray(((field_ <= np.quantile(field_, coverage)) * 255).astype(np.uint8))
    image = Image.composite(water, land, water_mask)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):  # houses, then water over part of them
        x, y = _random_point(rng, width, height)
        size, angle = rng.uniform(25, 55), rng.uniform(0, math.pi)
        _draw_house(draw, rng, x, y, size, angle)
        cut = _rect(x + rng.normal(0, size * 0.3), y + size * rng.uniform(0.1, 0.5), size * 1.6, size * 0.8, angle)
        image.paste(water, (0, 0), _polygon_mask(image.size, cut))
    for _ in range(int(rng.integers(2, 8))):
        _draw_tree(draw, rng, *_random_point(rng, width, height, 0.0), rng.uniform(5, 12))
    _draw_debris(draw, rng, width, height, int(rng.integers(8, 25)))
    return Scene(image, partial(_water_occluder, water), 0.55)


def _paint_traffic_incident(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Road with lane markings, crashed / rotated cars, debris, skid marks, maybe smoke."""
    image = _ground(rng, width, height, _ground_palette(rng, "traffic_incident", difficulty))
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.2 + 0.4 * difficulty:
        for _ in range(int(rng.integers(1, 3))):
            _draw_house(draw, rng, *_random_point(rng, width, height), rng.uniform(25, 45), rng.uniform(0, math.pi))
    road = _draw_road(draw, rng, width, height)
    if rng.random() < 0.35:  # a crossing road through the crash site
        _draw_road(draw, rng, width, height, angle=road[2] + math.pi / 2 + rng.normal(0, 0.2), centre=road[:2])
    _cars_along_road(draw, rng, road, int(rng.integers(0, 4)), width, height)
    crash = _draw_crash(draw, rng, road, width, height)
    overlays = []
    if rng.random() < 0.15 + 0.5 * difficulty:
        grey = int(rng.integers(70, 160))
        overlays.append(((grey, grey, grey), _smoke_mask(rng, width, height, [crash], rng.uniform(0.35, 0.65))))
        if rng.random() < 0.3 * difficulty:
            _draw_flames(draw, rng, crash[0], crash[1], rng.uniform(6, 12))
    return Scene(image, _car_occluder, 0.2, overlays)


def _draw_crash(draw: ImageDraw.ImageDraw, rng: np.random.Generator, road, width: int, height: int) -> tuple[float, float]:
    """Two to four cars at odd angles around a crash point, skid marks, debris."""
    cx, cy, angle, road_width = road
    t = rng.uniform(-0.08, 0.08) * min(width, height)  # stays well inside the image
    px, py = cx + math.cos(angle) * t, cy + math.sin(angle) * t
    length = road_width * rng.uniform(0.45, 0.6)
    for side in (-1, 1):  # skid marks leading to the crash
        ox, oy = -math.sin(angle) * side * length * 0.2, math.cos(angle) * side * length * 0.2
        back = length * rng.uniform(1.5, 3.0)
        draw.line([(px + ox - math.cos(angle) * back, py + oy - math.sin(angle) * back), (px + ox, py + oy)],
                  fill=(35, 35, 35), width=max(1, round(length * 0.08)))
    for _ in range(int(rng.integers(2, 5))):
        x, y = px + rng.normal(0, length * 0.45), py + rng.normal(0, length * 0.45)
        _draw_car(draw, rng, x, y, length, angle + rng.uniform(0.5, 2.6) * _pick(rng, (-1, 1)),
                  flipped=rng.random() < 0.2)
    for _ in range(int(rng.integers(10, 30))):  # glass and plastic fragments
        x, y = px + rng.normal(0, length * 0.7), py + rng.normal(0, length * 0.7)
        colour = _jitter(rng, _pick(rng, ((210, 225, 235), (60, 60, 60), (200, 40, 30), (230, 150, 30))), 15)
        draw.rectangle([x, y, x + rng.uniform(1, 3), y + rng.uniform(1, 3)], fill=colour)
    return px, py


def _paint_normal(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Green fields, trees, intact houses, a road with normally aligned cars."""
    image = _ground(rng, width, height, _ground_palette(rng, "normal", difficulty))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):  # field patchwork
        colour = _pick(rng, ((70, 130, 50), (120, 150, 70), (160, 150, 90), (95, 110, 55), (130, 105, 70)))
        draw.polygon(_rect(*_random_point(rng, width, height, 0.0), rng.uniform(40, 140), rng.uniform(30, 100),
                           rng.uniform(0, math.pi)), fill=_jitter(rng, colour, 15))
    if rng.random() < 0.3 * difficulty:  # a pond
        pond = _blob(rng, *_random_point(rng, width, height), rng.uniform(15, 35), 10, 0.3)
        draw.polygon(pond, fill=_jitter(rng, (70, 100, 120), 15))
    if rng.random() < 0.7:
        road = _draw_road(draw, rng, width, height)
        _cars_along_road(draw, rng, road, int(rng.integers(0, 5)), width, height)
    for _ in range(int(rng.integers(1, 6))):
        _draw_house(draw, rng, *_random_point(rng, width, height), rng.uniform(22, 50), rng.uniform(0, math.pi))
    for _ in range(int(rng.integers(4, 16))):
        _draw_tree(draw, rng, *_random_point(rng, width, height, 0.0), rng.uniform(5, 14))
    overlays = []
    if rng.random() < 0.3 * difficulty:  # chimney / bonfire smoke, light
        overlays.append(((200, 200, 200), _smoke_mask(rng, width, height, [_random_point(rng, width, height)], 0.3)))
    bush = ((45, 95, 40), (60, 115, 45), (35, 80, 35))
    return Scene(image, partial(_blob_occluder, bush), 0.2, overlays)


SCENE_PAINTERS: dict[str, Callable[[np.random.Generator, int, int, float], Scene]] = {
    "collapsed_building": _paint_collapsed_building,
    "fire": _paint_fire,
    "flooded_areas": _paint_flooded_areas,
    "traffic_incident": _paint_traffic_incident,
    "normal": _paint_normal,
}


# --------------------------------------------------------------------------
# Distractors: person-sized things that are not people


def _paint_distractors(rng: np.random.Generator, image: Image.Image, difficulty: float) -> None:
    """Poles, barrels, bushes, round signs, hydrants, crates, cones (hard negatives)."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    kinds = (_draw_pole, _draw_barrel, _draw_bush, _draw_round_sign, _draw_hydrant, _draw_crate, _draw_cone)
    for _ in range(int(rng.integers(0, 3 + round(4 * difficulty)))):
        size = _loguniform(rng, *FIGURE_LENGTH_PX)
        x, y = _random_point(rng, width, height, 0.03)
        _pick(rng, kinds)(draw, rng, x, y, size)


def _draw_pole(draw, rng, x, y, size):
    colour = _jitter(rng, _pick(rng, ((120, 120, 125), (110, 80, 50), (200, 200, 200))), 12)
    draw.line([(x, y - size / 2), (x, y + size / 2)], fill=colour, width=max(1, round(size * 0.07)))
    if rng.random() < 0.5:  # lamp arm or cross bar
        draw.line([(x - size * 0.2, y - size * 0.45), (x + size * 0.2, y - size * 0.45)], fill=colour,
                  width=max(1, round(size * 0.05)))


def _draw_barrel(draw, rng, x, y, size):
    colour = _jitter(rng, _pick(rng, ((40, 80, 160), (220, 110, 30), (140, 70, 40), (90, 100, 90))), 15)
    w, h = size * 0.28, size * 0.38
    draw.rectangle([x - w, y - h, x + w, y + h], fill=colour)
    for t in (-0.4, 0.4):
        draw.line([(x - w, y + h * t), (x + w, y + h * t)], fill=_shade(colour, 0.6), width=max(1, round(size * 0.04)))
    draw.ellipse([x - w, y - h - w * 0.4, x + w, y - h + w * 0.4], fill=_shade(colour, 1.25))


def _draw_bush(draw, rng, x, y, size):
    for _ in range(int(rng.integers(3, 7))):
        bx, by, r = x + rng.normal(0, size * 0.15), y + rng.normal(0, size * 0.15), size * rng.uniform(0.15, 0.3)
        draw.ellipse([bx - r, by - r, bx + r, by + r], fill=_jitter(rng, (55, 105, 45), 20))


def _draw_round_sign(draw, rng, x, y, size):
    """Round sign on a post: head-on-a-body shape, the hardest negative."""
    draw.line([(x, y - size * 0.3), (x, y + size / 2)], fill=(150, 150, 155), width=max(1, round(size * 0.06)))
    r = size * rng.uniform(0.14, 0.22)
    outer, inner = _pick(rng, (((200, 30, 30), (240, 240, 240)), ((30, 70, 170), (40, 90, 200)),
                               ((230, 200, 40), (30, 30, 30))))
    draw.ellipse([x - r, y - size * 0.3 - r, x + r, y - size * 0.3 + r], fill=outer)
    draw.ellipse([x - r * 0.6, y - size * 0.3 - r * 0.6, x + r * 0.6, y - size * 0.3 + r * 0.6], fill=inner)


def _draw_hydrant(draw, rng, x, y, size):
    colour = _jitter(rng, _pick(rng, ((200, 30, 25), (230, 200, 40))), 12)
    w, h = size * 0.14, size * 0.28
    draw.rectangle([x - w, y - h, x + w, y + h], fill=colour)
    draw.ellipse([x - w, y - h - w, x + w, y - h + w], fill=_shade(colour, 0.85))
    draw.line([(x - w * 2, y - h * 0.3), (x + w * 2, y - h * 0.3)], fill=colour, width=max(1, round(w)))


def _draw_crate(draw, rng, x, y, size):
    colour = _jitter(rng, (150, 110, 65), 20)
    s = size * rng.uniform(0.25, 0.4)
    draw.rectangle([x - s, y - s, x + s, y + s], fill=colour)
    draw.line([(x - s, y - s), (x + s, y + s)], fill=_shade(colour, 0.6), width=max(1, round(s * 0.12)))
    draw.line([(x - s, y + s), (x + s, y - s)], fill=_shade(colour, 0.6), width=max(1, round(s * 0.12)))


def _draw_cone(draw, rng, x, y, size):
    h, w = size * 0.4, size * 0.18
    draw.polygon([(x, y - h), (x + w, y + h), (x - w, y + h)], fill=_jitter(rng, (240, 110, 20), 10))
    draw.line([(x - w * 0.5, y), (x + w * 0.5, y)], fill=(240, 240, 240), width=max(1, round(size * 0.05)))


# --------------------------------------------------------------------------
# Victims: person figures, their occlusion and their visible boxes

# A primitive is (kind, geometry, line width, colour); kind is "circle"
# (geometry = (centre, radius)), "polygon" (points) or "line" (points).
Primitive = tuple[str, object, int, Colour]
POSES = ("standing", "lying", "sitting")
POSE_PROBABILITIES = (0.4, 0.35, 0.25)


def _person_colours(rng: np.random.Generator) -> dict[str, Colour]:
    top = _jitter(rng, _pick(rng, CLOTHING), 20)
    skin = _jitter(rng, _pick(rng, SKIN_TONES), 10)
    return {"skin": skin, "top": top, "bottom": _jitter(rng, _pick(rng, TROUSERS), 15),
            "sleeve": top if rng.random() < 0.7 else skin}


def _person_upper_body(rng: np.random.Generator, length: float, colours: dict) -> tuple[list[Primitive], float]:
    """Head, torso and arms of an upright figure of `length`, centred on 0; returns hip y too."""
    r = max(1.0, 0.09 * length)
    top_y = -0.5 * length
    shoulder_y, hip_y = top_y + 2 * r + 0.01 * length, 0.03 * length
    shoulder, hip = 0.12 * length, 0.09 * length
    torso = [(-shoulder, shoulder_y), (shoulder, shoulder_y), (hip, hip_y), (-hip, hip_y)]
    arm_width = max(1, round(0.065 * length))
    arm_pose = _pick(rng, ("down", "down", "raised", "out"))
    arms = []
    for side in (-1, 1):
        start = (side * (shoulder - arm_width * 0.4), shoulder_y + arm_width * 0.5)
        if arm_pose == "down":
            elbow, hand = (side * (shoulder + 0.04 * length), shoulder_y + 0.17 * length), (side * (shoulder + 0.05 * length), hip_y)
        elif arm_pose == "raised":
            elbow, hand = (side * (shoulder + 0.08 * length), shoulder_y - 0.08 * length), (side * (shoulder + 0.1 * length), top_y + 0.05 * length)
        else:
            elbow, hand = (side * (shoulder + 0.12 * length), shoulder_y + 0.04 * length), (side * (shoulder + 0.24 * length), shoulder_y + 0.03 * length)
        wobble = rng.normal(0, 0.02 * length, 4)
        arms.append(("line", [start, (elbow[0] + wobble[0], elbow[1] + wobble[1]), (hand[0] + wobble[2], hand[1] + wobble[3])],
                     arm_width, colours["sleeve"]))
    head = ("circle", ((0.0, top_y + r), r), 0, colours["skin"])
    return [("polygon", torso, 0, colours["top"]), *arms, head], hip_y


def _person_legs(rng: np.random.Generator, length: float, hip_y: float, colours: dict, sitting: bool) -> list[Primitive]:
    leg_width = max(1, round(0.08 * length))
    if sitting:
        facing = _pick(rng, (-1, 1))
        knee = (facing * 0.22 * length, hip_y + 0.02 * length)
        return [("line", [(side * 0.04 * length, hip_y), (knee[0] + side * 0.03 * length, knee[1]),
                          (knee[0] + side * 0.03 * length + facing * 0.02 * length, hip_y + 0.24 * length)],
                 leg_width, colours["bottom"]) for side in (-1, 1)]
    legs = []
    for side in (-1, 1):
        spread = rng.normal(0, 0.03 * length)
        legs.append(("line", [(side * 0.05 * length, hip_y), (side * 0.06 * length + spread, 0.27 * length),
                              (side * 0.07 * length + 2 * spread, 0.5 * length)], leg_width, colours["bottom"]))
    return legs


def _transform(primitives: list[Primitive], angle_deg: float, dx: float, dy: float) -> list[Primitive]:
    """Rotate about the origin by angle, then translate."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))

    def move(point):
        return (point[0] * c - point[1] * s + dx, point[0] * s + point[1] * c + dy)

    moved = []
    for kind, geometry, width, colour in primitives:
        if kind == "circle":
            moved.append((kind, (move(geometry[0]), geometry[1]), width, colour))
        else:
            moved.append((kind, [move(p) for p in geometry], width, colour))
    return moved


def _extent(primitives: list[Primitive]) -> Box:
    """Bounding box (x1, y1, x2, y2) of primitives, line widths included."""
    xs, ys = [], []
    for kind, geometry, width, _ in primitives:
        if kind == "circle":
            (x, y), r = geometry
            xs += [x - r, x + r]
            ys += [y - r, y + r]
        else:
            pad = width / 2
            xs += [p[0] - pad for p in geometry] + [p[0] + pad for p in geometry]
            ys += [p[1] - pad for p in geometry] + [p[1] + pad for p in geometry]
    return min(xs), min(ys), max(xs), max(ys)


def _draw_primitives(draw: ImageDraw.ImageDraw, primitives: list[Primitive], fill=None) -> None:
    """Draw with each primitive's colour, or with one `fill` value (masks)."""
    for kind, geometry, width, colour in primitives:
        colour = colour if fill is None else fill
        if kind == "circle":
            (x, y), r = geometry
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif kind == "polygon":
            draw.polygon(geometry, fill=colour)
        else:
            draw.line(geometry, fill=colour, width=width, joint="curve")


def _person_primitives(rng: np.random.Generator, length: float, pose: str | None = None) -> list[Primitive]:
    """A person figure of the given length (standing height), centred on 0; random pose by default."""
    if pose is None:
        pose = POSES[int(rng.choice(len(POSES), p=POSE_PROBABILITIES))]
    colours = _person_colours(rng)
    upper, hip_y = _person_upper_body(rng, length, colours)
    legs = _person_legs(rng, length, hip_y, colours, sitting=pose == "sitting")
    figure = legs + upper
    if pose == "standing":
        return _transform(figure, rng.uniform(-8, 8), 0, 0)
    if pose == "sitting":
        return _transform(figure, rng.uniform(-6, 6), 0, 0.12 * length)
    return _transform(figure, _pick(rng, (-1, 1)) * (90 + rng.uniform(-25, 25)), 0, 0)


VICTIM_PAINTERS: dict[str, Callable[[np.random.Generator, float], list[Primitive]]] = {
    "person": _person_primitives,
}


def _overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1e-6)


def _place_victim(rng: np.random.Generator, painter, width: int, height: int,
                  taken: list[Box]) -> tuple[list[Primitive], Box] | None:
    """A figure at a spot not heavily overlapping earlier ones (None after 20 tries)."""
    for _ in range(20):
        figure = painter(rng, _loguniform(rng, *FIGURE_LENGTH_PX))
        figure = _transform(figure, 0, *_random_point(rng, width, height, 0.02))
        box = _extent(figure)
        if all(_overlap(box, other) < MAX_OVERLAP for other in taken):
            return figure, box
    return None


def _visible_box(owner: np.ndarray, figure: list[Primitive], box: Box, figure_id: int) -> Box | None:
    """Tight box of the figure's still-visible pixels; None if < 40% visible or tiny."""
    x0, y0 = int(math.floor(box[0])) - 2, int(math.floor(box[1])) - 2
    x1, y1 = int(math.ceil(box[2])) + 3, int(math.ceil(box[3])) + 3
    full = Image.new("L", (x1 - x0, y1 - y0), 0)
    _draw_primitives(ImageDraw.Draw(full), _transform(figure, 0, -x0, -y0), fill=1)
    full_pixels = int(np.count_nonzero(np.asarray(full)))
    height, width = owner.shape
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if full_pixels == 0 or cx1 <= cx0 or cy1 <= cy0:
        return None
    ys, xs = np.nonzero(owner[cy0:cy1, cx0:cx1] == figure_id)
    if len(xs) < MIN_VISIBLE_FRACTION * full_pixels:
        return None
    visible = (cx0 + xs.min(), cy0 + ys.min(), cx0 + xs.max() + 1, cy0 + ys.max() + 1)
    if visible[2] - visible[0] < MIN_BOX_PX or visible[3] - visible[1] < MIN_BOX_PX:
        return None
    return tuple(float(v) for v in visible)


def _paint_victims(rng: np.random.Generator, occluder_rng: np.random.Generator, scene: Scene,
                   options: SceneOptions) -> tuple[np.ndarray, np.ndarray]:
    """Draw 0..max_victims figures, occlude some, return visible boxes and classes.

    An owner map (figure id per pixel, 0 = background) is drawn alongside the
    image; later figures and occluders overwrite it, so each label box is the
    tight box of what is actually visible.
    """
    image = scene.image
    width, height = image.size
    count = 0
    if options.max_victims > 0 and rng.random() >= NO_VICTIM_PROBABILITY:
        count = int(rng.integers(1, options.max_victims + 1))
    owner = Image.new("L", image.size, 0)
    draw_rgb, draw_owner = ImageDraw.Draw(image), ImageDraw.Draw(owner)
    placed: list[tuple[list[Primitive], Box, int]] = []
    for _ in range(count):
        victim_class = int(rng.integers(len(options.victim_classes)))
        spot = _place_victim(rng, VICTIM_PAINTERS[options.victim_classes[victim_class]], width, height,
                             [box for _, box, _ in placed])
        if spot is None:
            continue
        figure, box = spot
        _draw_primitives(draw_rgb, figure)
        _draw_primitives(draw_owner, figure, fill=len(placed) + 1)
        placed.append((figure, box, victim_class))
    for _, box, _ in placed:
        if occluder_rng.random() < scene.occlusion_probability:
            scene.occlude(occluder_rng, image, owner, box)
    owner_pixels = np.asarray(owner)
    boxes, classes = [], []
    for figure_id, (figure, box, victim_class) in enumerate(placed, start=1):
        visible = _visible_box(owner_pixels, figure, box, figure_id)
        if visible is not None:
            boxes.append(visible)
            classes.append(victim_class)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int32)


# --------------------------------------------------------------------------
# Camera and the whole image


def _apply_camera(rng: np.random.Generator, image: Image.Image, difficulty: float) -> Image.Image:
    """Per-image exposure, contrast, tint, uneven lighting, haze and sensor noise."""
    pixels = np.asarray(image, np.float32)
    height, width = pixels.shape[:2]
    strength = 0.4 + difficulty
    gain = math.exp(rng.uniform(-0.3, 0.25) * strength)
    tint = np.exp(rng.normal(0, 0.06 * strength, 3)).astype(np.float32)
    contrast = math.exp(rng.uniform(-0.3, 0.15) * strength)
    shading = 1 + (_low_freq(rng, width, height, 2) - 0.5) * 0.3 * strength
    mean = pixels.mean(axis=(0, 1))
    pixels = ((pixels - mean) * contrast + mean) * (gain * tint) * shading[..., None]
    if rng.random() < 0.25 * strength:
        haze = rng.uniform(0.05, 0.25)
        pixels = pixels * (1 - haze) + haze * np.asarray(_jitter(rng, (200, 200, 205), 15), np.float32)
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


def _burst_frame(rng: np.random.Generator, image: Image.Image, boxes: np.ndarray
                 ) -> tuple[Image.Image, np.ndarray]:
    """One frame of a burst: a crop of the scene (BURST_CROP of each side, larger when the
    victims need it) scaled back to full size. The crop holds every victim box whole, so
    boxes stay tight (a box cut by the frame edge would not be)."""
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
    frame = image.transform((width, height), Image.Transform.EXTENT, (x0, y0, x0 + crop_w, y0 + crop_h),
                            Image.Resampling.BILINEAR)
    scaled = (boxes - np.array([x0, y0, x0, y0], np.float32)) / share
    return frame, np.clip(scaled, 0, [width, height, width, height]).astype(np.float32).reshape(-1, 4)


def render_scene(seed: int, index: int, options: SceneOptions | dict | None = None
                 ) -> tuple[Image.Image, np.ndarray, np.ndarray, int]:
    """Image `index` of the data set with this seed, in memory.

    Returns (RGB image, boxes (N, 4) float32 absolute-pixel xyxy of the
    visible part of each victim, victim classes (N,) int32, disaster class
    index). Depends only on (seed, index, options). With burst_size > 1, images
    index // burst_size share their scene (class, layout, victims) and differ
    in crop and camera.
    """
    options = _coerce_options(options)
    scene_index = int(index) // int(options.burst_size)
    disaster = disaster_class_of(seed, scene_index, len(options.disaster_classes), options.class_weights)
    size_rng = _rng(seed, scene_index, _STREAM_SIZE)
    width = int(size_rng.integers(options.min_size, options.max_size + 1))
    height = int(size_rng.integers(options.min_size, options.max_size + 1))
    painter = SCENE_PAINTERS[options.disaster_classes[disaster]]
    scene = painter(_rng(seed, scene_index, _STREAM_SCENE), width, height, options.difficulty)
    _paint_distractors(_rng(seed, scene_index, _STREAM_DISTRACTORS), scene.image, options.difficulty)
    boxes, classes = _paint_victims(_rng(seed, scene_index, _STREAM_VICTIMS),
                                    _rng(seed, scene_index, _STREAM_OCCLUDERS), scene, options)
    image = scene.image
    for colour, mask in scene.overlays:
        image = Image.composite(Image.new("RGB", image.size, colour), image, mask)
    if options.burst_size > 1:
        image, boxes = _burst_frame(_rng(seed, index, _STREAM_FRAME), image, boxes)
    image = _apply_camera(_rng(seed, index, _STREAM_CAMERA), image, options.difficulty)
    return image, boxes, classes, disaster


# --------------------------------------------------------------------------
# Writing the data set


def yolo_lines(boxes: np.ndarray, classes: np.ndarray, image_size: tuple[int, int]) -> str:
    """YOLO txt: one 'class cx cy w h' line per box, normalized, 6 decimals."""
    width, height = image_size
    lines = []
    for (x1, y1, x2, y2), victim_class in zip(boxes.tolist(), classes.tolist()):
        lines.append(f"{victim_class} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return "".join(line + "\n" for line in lines)


def _write_example(job: tuple[str, int, int, SceneOptions]) -> tuple[int, str]:
    """Render image `index` and write its JPEG and label file; returns (index, class name)."""
    out_dir, seed, index, options = job
    image, boxes, classes, disaster = render_scene(seed, index, options)
    stem = f"{index:05d}"
    image.save(Path(out_dir, "images", f"{stem}.jpg"), "JPEG", quality=JPEG_QUALITY)
    Path(out_dir, "labels", f"{stem}.txt").write_text(yolo_lines(boxes, classes, image.size), encoding="utf-8")
    return index, options.disaster_classes[disaster]


def _manifest(seed: int, num_images: int, options: SceneOptions) -> dict:
    return {
        "generator": "src.data.synthetic",
        "version": GENERATOR_VERSION,
        "options": {"seed": int(seed), "num_images": int(num_images), "min_size": int(options.min_size),
                    "max_size": int(options.max_size), "difficulty": float(options.difficulty),
                    "max_victims": int(options.max_victims), "burst_size": int(options.burst_size),
                    "class_weights": None if options.class_weights is None else list(options.class_weights)},
        "disaster_classes": list(options.disaster_classes),
        "victim_classes": list(options.victim_classes),
    }


def _already_generated(out: Path, manifest: dict) -> bool:
    manifest_path = out / "dataset.yaml"
    if not manifest_path.is_file() or not (out / "classes.tsv").is_file():
        return False
    with open(manifest_path, encoding="utf-8") as handle:
        if yaml.safe_load(handle) != manifest:
            return False
    return len(list((out / "images").glob("*.jpg"))) == manifest["options"]["num_images"]


def scene_groups(root: str | Path, image_paths: Sequence[str | Path]) -> list[int] | None:
    """The scene (burst) of each image of a synthetic set generated with burst_size > 1, so
    splits keep a burst together; None for any other folder (every image its own group)."""
    manifest_path = Path(root) / "dataset.yaml"
    if not manifest_path.is_file():
        return None
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle) or {}
    burst = int(manifest.get("options", {}).get("burst_size", 1)) if manifest.get("generator") == __name__ else 1
    if burst == 1:
        return None
    return [int(Path(path).stem) // burst for path in image_paths]


def _render_all(out: Path, seed: int, num_images: int, options: SceneOptions, workers: int) -> dict[int, str]:
    from tqdm import tqdm

    jobs = [(str(out), seed, index, options) for index in range(num_images)]
    progress = dict(total=num_images, desc="synthetic", unit="img", disable=num_images < 200)
    if workers <= 1:
        return dict(tqdm(map(_write_example, jobs), **progress))
    # spawn, not fork: callers (trainers) may already have TensorFlow threads running.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return dict(tqdm(pool.imap_unordered(_write_example, jobs, chunksize=16), **progress))


def _remove_stale(out: Path, num_images: int) -> None:
    """Delete images / labels left over from an earlier, larger generation."""
    for folder, suffix in (("images", ".jpg"), ("labels", ".txt")):
        for path in (out / folder).glob(f"*{suffix}"):
            if not path.stem.isdigit() or int(path.stem) >= num_images:
                path.unlink()


def generate_dataset(out_dir: str | Path, num_images: int = 3000, seed: int = 0, min_size: int = 192,
                     max_size: int = 256, difficulty: float = 0.5, max_victims: int = 6, workers: int = 2,
                     disaster_classes: Sequence[str] | None = None,
                     victim_classes: Sequence[str] | None = None, burst_size: int = 1,
                     class_weights: dict | Sequence[float] | None = None) -> Path:
    """Write the synthetic data set to out_dir and return it.

    Layout: images/{i:05d}.jpg, labels/{i:05d}.txt (YOLO, empty = no
    victims), classes.tsv (image, disaster_class name), dataset.yaml (the
    options and class names; written last, so it marks a complete set).
    Skips the work if dataset.yaml already records identical options.
    """
    out = Path(out_dir)
    options = SceneOptions(min_size, max_size, difficulty, max_victims,
                           tuple(disaster_classes or ()), tuple(victim_classes or ()), burst_size, class_weights)
    manifest = _manifest(seed, num_images, options)
    if _already_generated(out, manifest):
        LOG.info("%s already holds this synthetic data set (seed=%d, %d images); not regenerating",
                 out, seed, num_images)
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "dataset.yaml").unlink(missing_ok=True)
    LOG.info("generating %d synthetic images into %s (seed=%d, difficulty=%.2f, %d image(s) per scene, "
             "workers=%d)", num_images, out, seed, difficulty, options.burst_size, workers)
    started = time.perf_counter()
    class_names = _render_all(out, seed, num_images, options, workers)
    rows = [f"images/{index:05d}.jpg\t{class_names[index]}\n" for index in range(num_images)]
    (out / "classes.tsv").write_text("image\tdisaster_class\n" + "".join(rows), encoding="utf-8")
    _remove_stale(out, num_images)
    with open(out / "dataset.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump(manifest, handle, sort_keys=False)
    LOG.info("wrote %d images in %.1f s", num_images, time.perf_counter() - started)
    return out


def generate_from_config(cfg: dict, root=None) -> Path:
    """The built-in data set as a loaded config (configs/default.yaml) describes it."""
    d = cfg["data"]
    return generate_dataset(root or d["root"], num_images=d["num_images"], seed=cfg["seed"],
                            min_size=d["min_size"], max_size=d["max_size"],
                            difficulty=d["difficulty"], max_victims=d["max_victims"],
                            disaster_classes=cfg["classes"]["disaster"],
                            victim_classes=cfg["classes"]["victim"],
                            burst_size=d.get("burst_size", 1), class_weights=d.get("class_weights"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-images", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", type=float, default=0.5, help="0 = easy, 1 = classes overlap most")
    parser.add_argument("--min-size", type=int, default=192)
    parser.add_argument("--max-size", type=int, default=256)
    parser.add_argument("--max-victims", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--burst-size", type=int, default=1, help="images per scene (near-duplicate frames)")
    parser.add_argument("--class-weights", type=yaml.safe_load, default=None,
                        help="relative class frequencies, e.g. '{normal: 4, fire: 0.5}' (default: balanced)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML with classes.disaster / classes.victim")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    disaster, victim = default_class_names(args.config)
    generate_dataset(args.out, args.num_images, args.seed, args.min_size, args.max_size, args.difficulty,
                     args.max_victims, args.workers, disaster, victim, args.burst_size, args.class_weights)


if __name__ == "__main__":
    main()

