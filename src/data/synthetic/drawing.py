"""Colours and the small drawing helpers every painter of the synthetic scenes uses.

Colours are drawn with a little jitter from fixed palettes, and shapes are
polygons in image coordinates, so every element (a house, a person, a barrel)
is a few lines of PIL drawing that depend only on the random stream given.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

Colour = tuple[int, int, int]
Box = tuple[float, float, float, float]

FIGURE_LENGTH_PX = (8.0, 60.0)  # person length (standing height), log-uniform

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


def jitter(rng: np.random.Generator, colour: Sequence[int], amount: int = 12) -> Colour:
    noise = rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(np.asarray(colour) + noise, 0, 255))


def shade(colour: Sequence[int], factor: float) -> Colour:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)


def pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def low_freq(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1], (height, width) float32, about `cells` blobs across."""
    scale = cells / max(width, height)
    small = rng.integers(0, 256, (max(2, round(height * scale)), max(2, round(width * scale))), np.uint8)
    smooth = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    return np.asarray(smooth, np.float32) / 255.0


def rect(cx: float, cy: float, length: float, width: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a rectangle centred at (cx, cy), long side along `angle` (rad)."""
    ux, uy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    vx, vy = -math.sin(angle) * width / 2, math.cos(angle) * width / 2
    return [(cx - ux - vx, cy - uy - vy), (cx + ux - vx, cy + uy - vy),
            (cx + ux + vx, cy + uy + vy), (cx - ux + vx, cy - uy + vy)]


def blob(rng: np.random.Generator, cx: float, cy: float, radius: float,
          vertices: int = 9, roughness: float = 0.35) -> list[tuple[float, float]]:
    """Irregular polygon around (cx, cy)."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
    radii = radius * (1 + rng.uniform(-roughness, roughness, vertices))
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)]


def random_point(rng: np.random.Generator, width: int, height: int, margin: float = 0.05) -> tuple[float, float]:
    return (float(rng.uniform(margin, 1 - margin) * width), float(rng.uniform(margin, 1 - margin) * height))


def polygon_mask(size: tuple[int, int], polygon: Sequence[tuple[float, float]]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(list(polygon), fill=255)
    return mask
