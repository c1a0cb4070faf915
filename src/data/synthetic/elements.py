"""Scene elements shared by several disaster classes: houses, trees, roads, cars,
rubble, debris, smoke, flames, water.

Sharing them is what makes the classes confusable at the margins (intact
houses in a flood, smoke at a traffic incident), as in real aerial imagery.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from src.data.synthetic.drawing import (CAR_COLOURS, CLOTHING, ROOF_COLOURS, RUBBLE_COLOURS, Colour, blob, jitter,
                                        low_freq, pick, random_point, rect, shade)


def draw_house(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                length: float, angle: float, roof: Colour | None = None) -> None:
    """Intact gable-roofed house seen from above: shadow, two roof halves, ridge."""
    width = length * rng.uniform(0.55, 0.8)
    roof = roof or jitter(rng, pick(rng, ROOF_COLOURS), 15)
    offset = length * 0.12
    draw.polygon(rect(cx + offset, cy + offset, length, width, angle), fill=(55, 55, 50))
    vx, vy = -math.sin(angle) * width / 4, math.cos(angle) * width / 4
    draw.polygon(rect(cx - vx, cy - vy, length, width / 2, angle), fill=roof)
    draw.polygon(rect(cx + vx, cy + vy, length, width / 2, angle), fill=shade(roof, 0.72))
    ux, uy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    draw.line([(cx - ux, cy - uy), (cx + ux, cy + uy)], fill=shade(roof, 0.55), width=1)


def draw_tree(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
               radius: float, burnt: bool = False) -> None:
    """Tree crown from above: shadow plus a few overlapping circles."""
    leaf = (45, 45, 40) if burnt else (52, 98, 42)
    draw.ellipse([cx - radius + radius * 0.3, cy - radius + radius * 0.3,
                  cx + radius * 1.3, cy + radius * 1.3], fill=(35, 45, 30))
    for _ in range(int(rng.integers(3, 6))):
        x, y = cx + rng.normal(0, radius * 0.3), cy + rng.normal(0, radius * 0.3)
        r = radius * rng.uniform(0.5, 0.8)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=jitter(rng, leaf, 18))


def draw_road(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int,
               angle: float | None = None, centre: tuple[float, float] | None = None
               ) -> tuple[float, float, float, float]:
    """Asphalt strip across the image with edge lines and dashed centre line.

    Returns (cx, cy, angle, road_width) for placing cars.
    """
    cx, cy = centre or random_point(rng, width, height, 0.25)
    angle = float(rng.uniform(0, math.pi)) if angle is None else angle
    road_width = float(rng.uniform(0.16, 0.3) * min(width, height))
    span = math.hypot(width, height) * 2
    draw.polygon(rect(cx, cy, span, road_width, angle), fill=jitter(rng, (82, 82, 84), 14))
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


def draw_car(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
              length: float, angle: float, flipped: bool = False) -> None:
    """Car from above: shadow, body, windscreen and rear window (or underside)."""
    width = length * 0.46
    draw.polygon(rect(cx + length * 0.08, cy + length * 0.08, length, width, angle), fill=(40, 40, 38))
    ux, uy = math.cos(angle), math.sin(angle)
    if flipped:
        draw.polygon(rect(cx, cy, length, width, angle), fill=jitter(rng, (60, 60, 58), 10))
        for along in (-0.32, 0.32):
            for across in (-0.5, 0.5):
                x = cx + ux * along * length - uy * across * width
                y = cy + uy * along * length + ux * across * width
                r = length * 0.09
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(15, 15, 15))
        return
    draw.polygon(rect(cx, cy, length, width, angle), fill=jitter(rng, pick(rng, CAR_COLOURS), 15))
    glass = (40, 48, 60)
    draw.polygon(rect(cx + ux * length * 0.16, cy + uy * length * 0.16, length * 0.17, width * 0.82, angle), fill=glass)
    draw.polygon(rect(cx - ux * length * 0.3, cy - uy * length * 0.3, length * 0.1, width * 0.75, angle), fill=glass)


def cars_along_road(draw: ImageDraw.ImageDraw, rng: np.random.Generator, road, count: int,
                     width: int, height: int) -> None:
    """Normally driving cars: in lane, aligned with the road."""
    cx, cy, angle, road_width = road
    ux, uy, vx, vy = math.cos(angle), math.sin(angle), -math.sin(angle), math.cos(angle)
    reach = 0.45 * math.hypot(width, height)
    for _ in range(count):
        lane = pick(rng, (-1, 1))
        t = rng.uniform(-reach, reach)
        x = cx + ux * t + vx * lane * road_width / 4
        y = cy + uy * t + vy * lane * road_width / 4
        heading = angle + (math.pi if lane < 0 else 0.0) + rng.normal(0, 0.03)
        draw_car(draw, rng, x, y, road_width * rng.uniform(0.4, 0.55), heading)


def draw_rubble(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                 radius: float, count: int) -> None:
    """A pile of irregular concrete / brick fragments."""
    for _ in range(count):
        x, y = cx + rng.normal(0, radius * 0.45), cy + rng.normal(0, radius * 0.45)
        r = radius * rng.uniform(0.05, 0.22)
        draw.polygon(blob(rng, x, y, r, int(rng.integers(4, 7)), 0.45),
                     fill=jitter(rng, pick(rng, RUBBLE_COLOURS), 18))


def draw_debris(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int,
                 count: int) -> None:
    """Planks, metal bits, sheets and rags scattered over the image."""
    for _ in range(count):
        x, y = random_point(rng, width, height, 0.0)
        kind = int(rng.integers(4))
        if kind <= 1:  # planks and bars
            length, a = rng.uniform(5, 22), rng.uniform(0, math.pi)
            colour = (125, 90, 55) if kind == 0 else (110, 110, 115)
            draw.line([(x, y), (x + math.cos(a) * length, y + math.sin(a) * length)],
                      fill=jitter(rng, colour, 20), width=int(rng.integers(1, 4)))
        elif kind == 2:  # roofing sheets
            draw.polygon(rect(x, y, rng.uniform(6, 16), rng.uniform(4, 10), rng.uniform(0, math.pi)),
                         fill=jitter(rng, pick(rng, ROOF_COLOURS), 20))
        else:  # rags, plastic
            draw.polygon(blob(rng, x, y, rng.uniform(2, 5), 5, 0.5), fill=jitter(rng, pick(rng, CLOTHING), 30))


def smoke_mask(rng: np.random.Generator, width: int, height: int, origins: Sequence[tuple[float, float]],
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
    texture = 0.55 + 0.45 * low_freq(rng, width, height, 10)
    return Image.fromarray((np.asarray(mask, np.float32) * texture).astype(np.uint8))


def draw_flames(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, size: float) -> None:
    """A fire: layered red / orange / yellow tongues."""
    for _ in range(int(rng.integers(2, 5))):
        x, y = cx + rng.normal(0, size * 0.35), cy + rng.normal(0, size * 0.25)
        r = size * rng.uniform(0.35, 0.6)
        for colour, scale in (((190, 35, 20), 1.0), ((240, 115, 25), 0.7), ((255, 215, 90), 0.38)):
            draw.polygon(blob(rng, x, y - r * (1 - scale) * 0.5, r * scale, 8, 0.4), fill=jitter(rng, colour, 12))


def flame_glow_mask(width: int, height: int, flames: Sequence[tuple[float, float, float]]) -> Image.Image:
    """Soft orange glow around flames (quarter-size, blurred)."""
    small_w, small_h = max(8, width // 4), max(8, height // 4)
    mask = Image.new("L", (small_w, small_h), 0)
    draw = ImageDraw.Draw(mask)
    for x, y, size in flames:
        r = size * 0.45
        draw.ellipse([x / 4 - r, y / 4 - r, x / 4 + r, y / 4 + r], fill=90)
    return mask.filter(ImageFilter.GaussianBlur(2.0)).resize((width, height), Image.BILINEAR)


def water_texture(rng: np.random.Generator, width: int, height: int, colour: Colour) -> Image.Image:
    """Full-size water surface: colour, slow variation, wave stripes, glints."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, frequency = rng.uniform(0, math.pi), rng.uniform(0.25, 0.6)
    phase = low_freq(rng, width, height, 6) * 6.0
    waves = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * frequency + phase)
    cross = angle + rng.uniform(0.6, 1.2)
    ripples = np.sin((xs * math.cos(cross) + ys * math.sin(cross)) * frequency * 1.7 + phase * 0.5)
    slow = low_freq(rng, width, height, 5) - 0.5
    pixels = np.asarray(colour, np.float32) + (slow * 32 + (0.75 * waves + 0.25 * ripples) * rng.uniform(4, 10))[..., None]
    pixels += ((waves > 0.94) & (slow > -0.1))[..., None] * 20.0  # broken glints on wave crests
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
