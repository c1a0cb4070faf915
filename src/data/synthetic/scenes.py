"""Scene painters, one per disaster class: the background a scene's victims are placed on.

Each painter returns a ``Scene``: the painted image, how things in that scene
hide part of a victim (rubble, water, a car), and translucent overlays (smoke,
glow) laid on after the victims.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from src.data.synthetic.drawing import (CLASS_GROUNDS, GROUND_PALETTES, RUBBLE_COLOURS, Box, Colour, blob, jitter,
                                        low_freq, pick, polygon_mask, random_point, rect, shade)
from src.data.synthetic.elements import (cars_along_road, draw_car, draw_debris, draw_flames, draw_house,
                                         draw_road, draw_rubble, draw_tree, flame_glow_mask, smoke_mask,
                                         water_texture)
from src.data.synthetic.regions import BACKGROUND, FIRE_SMOKE, RUBBLE, WATER, RegionDraw, new_region_map


def _ground(rng: np.random.Generator, width: int, height: int, palette: tuple[Colour, Colour]) -> Image.Image:
    """Two-colour ground mixed by smooth noise plus grain, as an RGB image."""
    mix = 0.65 * low_freq(rng, width, height, 4) + 0.35 * low_freq(rng, width, height, 18)
    first = np.asarray(jitter(rng, palette[0], 14), np.float32)
    second = np.asarray(jitter(rng, palette[1], 14), np.float32)
    pixels = first + (second - first) * mix[..., None]
    pixels += rng.standard_normal((height, width, 1), np.float32) * 7.0
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _ground_palette(rng: np.random.Generator, class_name: str, difficulty: float) -> tuple[Colour, Colour]:
    """The class's own ground palette, or any palette with prob ~0.35*difficulty."""
    if rng.random() < 0.35 * difficulty:
        return GROUND_PALETTES[pick(rng, sorted(GROUND_PALETTES))]
    return GROUND_PALETTES[pick(rng, CLASS_GROUNDS[class_name])]


@dataclass
class Scene:
    """A painted background plus how to occlude victims and what to lay on top.

    occlude(rng, image, owner, regions, figure_box) draws something over part
    of a figure on the RGB image, with 0 on the owner map (which records
    which figure each pixel shows) and with its region code on the region map.
    overlays: (colour, alpha mask, region code or None) triples composited
    after the victims (smoke, glow); translucent, so they do not hide figures;
    dense smoke labels its pixels (``regions.paint_overlay_regions``).
    regions: what each pixel shows (an 8-bit map of ``regions`` codes), painted with the image.
    """

    image: Image.Image
    regions: Image.Image
    occlude: Callable[[np.random.Generator, Image.Image, Image.Image, Image.Image, Box], None]
    occlusion_probability: float
    overlays: list[tuple[Colour, Image.Image, int | None]] = field(default_factory=list)


def _blob_occluder(colours: Sequence[Colour], region: int, rng: np.random.Generator, image: Image.Image,
                   owner: Image.Image, regions: Image.Image, box: Box) -> None:
    """Irregular shapes over the lower part of a figure (rubble, bush, debris), labelled `region`."""
    x1, y1, x2, y2 = box
    size = max(x2 - x1, y2 - y1)
    cx = rng.uniform(x1, x2)
    cy = rng.uniform(y1 + 0.4 * (y2 - y1), y2)
    draw_scene, draw_owner = RegionDraw(image, regions, region), ImageDraw.Draw(owner)
    for _ in range(int(rng.integers(1, 4))):
        polygon = blob(rng, cx + rng.normal(0, size * 0.12), cy + rng.normal(0, size * 0.12),
                        size * rng.uniform(0.18, 0.35), 7, 0.35)
        draw_scene.polygon(polygon, fill=jitter(rng, pick(rng, colours), 15))
        draw_owner.polygon(polygon, fill=0)


def _water_occluder(water: Image.Image, rng: np.random.Generator, image: Image.Image,
                    owner: Image.Image, regions: Image.Image, box: Box) -> None:
    """Water surface over the lower part of a figure (wading / floating)."""
    x1, y1, x2, y2 = box
    level = y1 + (y2 - y1) * rng.uniform(0.3, 0.7)
    xs = np.linspace(x1 - 3, x2 + 3, 6)
    top = [(float(x), float(level + rng.normal(0, 0.8))) for x in xs]
    polygon = top + [(x2 + 3, y2 + 3), (x1 - 3, y2 + 3)]
    image.paste(water, (0, 0), polygon_mask(image.size, polygon))
    ImageDraw.Draw(owner).polygon(polygon, fill=0)
    ImageDraw.Draw(regions).polygon(polygon, fill=WATER)


def _car_occluder(rng: np.random.Generator, image: Image.Image, owner: Image.Image, regions: Image.Image,
                  box: Box) -> None:
    """A car partly in front of a figure."""
    x1, y1, x2, y2 = box
    size = max(x2 - x1, y2 - y1)
    length = max(10.0, size * rng.uniform(0.9, 1.4))
    cx = pick(rng, (x1, x2)) + rng.normal(0, size * 0.1)
    cy = rng.uniform(y1 + 0.3 * (y2 - y1), y2)
    angle = rng.uniform(0, math.pi)
    draw_car(RegionDraw(image, regions, BACKGROUND), rng, cx, cy, length, angle)
    ImageDraw.Draw(owner).polygon(rect(cx, cy, length, length * 0.46, angle), fill=0)


def _paint_collapsed_building(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Dusty ground, broken tilted building blocks, rubble piles, debris."""
    image = _ground(rng, width, height, _ground_palette(rng, "collapsed_building", difficulty))
    regions = new_region_map(image.size)
    draw = RegionDraw(image, regions)
    if rng.random() < 0.15 + 0.5 * difficulty:  # surviving houses nearby
        for _ in range(int(rng.integers(1, 3))):
            draw_house(draw, rng, *random_point(rng, width, height), rng.uniform(25, 50), rng.uniform(0, math.pi))
    with draw.region(RUBBLE):  # collapsed blocks, rubble piles and debris
        for _ in range(int(rng.integers(2, 5))):
            _draw_broken_block(draw, rng, *random_point(rng, width, height, 0.1), rng.uniform(30, 80))
        for _ in range(int(rng.integers(2, 6))):
            draw_rubble(draw, rng, *random_point(rng, width, height), rng.uniform(15, 45),
                        int(rng.integers(10, 30)))
        draw_debris(draw, rng, width, height, int(rng.integers(8, 25)))
    overlays = []
    if rng.random() < 0.4 * difficulty:  # dust cloud, looks a bit like smoke (and is no region of its own)
        dust = smoke_mask(rng, width, height, [random_point(rng, width, height)], 0.45, 1.3)
        overlays.append((jitter(rng, (175, 165, 145), 10), dust, None))
    return Scene(image, regions, partial(_blob_occluder, RUBBLE_COLOURS, RUBBLE), 0.45, overlays)


def _draw_broken_block(draw: RegionDraw, rng: np.random.Generator, cx: float, cy: float,
                       size: float) -> None:
    """A collapsed building block: tilted slab, exposed wall, jagged edge, cracks."""
    angle = rng.uniform(0, math.pi)
    corners = rect(cx, cy, size, size * rng.uniform(0.5, 0.9), angle)
    concrete = jitter(rng, shade((165, 160, 150), rng.uniform(0.75, 1.15)), 8)
    dx, dy = rng.uniform(-0.25, 0.25) * size, rng.uniform(0.1, 0.3) * size
    wall = [corners[2], corners[3], (corners[3][0] + dx, corners[3][1] + dy), (corners[2][0] + dx, corners[2][1] + dy)]
    draw.polygon(wall, fill=shade(concrete, 0.55))
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
        draw.line([(x, y), (x + math.cos(a) * length, y + math.sin(a) * length)], fill=shade(concrete, 0.4))


def _paint_fire(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Burnt ground, charred patches and buildings, flames, smoke plumes."""
    image = _ground(rng, width, height, _ground_palette(rng, "fire", difficulty))
    regions = new_region_map(image.size)
    draw = RegionDraw(image, regions)
    for _ in range(int(rng.integers(3, 8))):  # charred patches
        draw.polygon(blob(rng, *random_point(rng, width, height, 0.0), rng.uniform(10, 40), 10, 0.4),
                     fill=jitter(rng, (30, 26, 24), 8))
    if rng.random() < 0.4 * difficulty:
        cars_along_road(draw, rng, draw_road(draw, rng, width, height), int(rng.integers(0, 3)), width, height)
    for _ in range(int(rng.integers(0, 3))):
        draw_house(draw, rng, *random_point(rng, width, height), rng.uniform(25, 50), rng.uniform(0, math.pi),
                    roof=jitter(rng, (58, 52, 48), 10))
    for _ in range(int(rng.integers(2, 7))):
        draw_tree(draw, rng, *random_point(rng, width, height, 0.0), rng.uniform(5, 12), burnt=rng.random() < 0.7)
    little_flame = rng.random() < 0.5 * difficulty
    count = int(rng.integers(0, 2)) if little_flame else int(rng.integers(2, 7))
    flames = [(*random_point(rng, width, height, 0.1), rng.uniform(6, 14) if little_flame else rng.uniform(10, 40))
              for _ in range(count)]
    with draw.region(FIRE_SMOKE):
        for x, y, size in flames:
            draw_flames(draw, rng, x, y, size)
    overlays = [((255, 130, 30), flame_glow_mask(width, height, flames), None)] if flames else []
    sources = [(x, y) for x, y, _ in flames] or [random_point(rng, width, height)]
    grey = int(rng.integers(80, 170))
    overlays.append(((grey, grey, grey), smoke_mask(rng, width, height, sources, rng.uniform(0.4, 0.75), 1.2),
                     FIRE_SMOKE))
    charred = ((35, 30, 28), (70, 60, 50), (50, 45, 42))
    return Scene(image, regions, partial(_blob_occluder, charred, BACKGROUND), 0.2, overlays)


def _paint_flooded_areas(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Large brown/blue water with waves, submerged roofs and trees, floating debris."""
    land = _ground(rng, width, height, _ground_palette(rng, "flooded_areas", difficulty))
    mix = rng.uniform()
    water_colour = jitter(rng, np.add(np.multiply((128, 106, 76), 1 - mix), np.multiply((62, 96, 122), mix)), 12)
    water = water_texture(rng, width, height, water_colour)
    if rng.random() < 0.5 * difficulty:  # a dry house or two on the remaining land
        draw_land = ImageDraw.Draw(land)
        for _ in range(int(rng.integers(1, 3))):
            draw_house(draw_land, rng, *random_point(rng, width, height), rng.uniform(25, 45), rng.uniform(0, math.pi))
    coverage = rng.uniform(0.55, 0.95)
    field_ = low_freq(rng, width, height, 3)
    water_mask = Image.fromarray(((field_ <= np.quantile(field_, coverage)) * 255).astype(np.uint8))
    image = Image.composite(water, land, water_mask)
    regions = Image.composite(new_region_map(image.size, WATER), new_region_map(image.size), water_mask)
    draw = RegionDraw(image, regions)
    for _ in range(int(rng.integers(1, 5))):  # houses, then water over part of them
        x, y = random_point(rng, width, height)
        size, angle = rng.uniform(25, 55), rng.uniform(0, math.pi)
        draw_house(draw, rng, x, y, size, angle)
        cut = rect(x + rng.normal(0, size * 0.3), y + size * rng.uniform(0.1, 0.5), size * 1.6, size * 0.8, angle)
        image.paste(water, (0, 0), polygon_mask(image.size, cut))
        ImageDraw.Draw(regions).polygon(cut, fill=WATER)
    for _ in range(int(rng.integers(2, 8))):
        draw_tree(draw, rng, *random_point(rng, width, height, 0.0), rng.uniform(5, 12))
    with draw.region(RUBBLE):  # floating debris
        draw_debris(draw, rng, width, height, int(rng.integers(8, 25)))
    return Scene(image, regions, partial(_water_occluder, water), 0.55)


def _paint_traffic_incident(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Road with lane markings, crashed / rotated cars, debris, skid marks, maybe smoke."""
    image = _ground(rng, width, height, _ground_palette(rng, "traffic_incident", difficulty))
    regions = new_region_map(image.size)
    draw = RegionDraw(image, regions)
    if rng.random() < 0.2 + 0.4 * difficulty:
        for _ in range(int(rng.integers(1, 3))):
            draw_house(draw, rng, *random_point(rng, width, height), rng.uniform(25, 45), rng.uniform(0, math.pi))
    road = draw_road(draw, rng, width, height)
    if rng.random() < 0.35:  # a crossing road through the crash site
        draw_road(draw, rng, width, height, angle=road[2] + math.pi / 2 + rng.normal(0, 0.2), centre=road[:2])
    cars_along_road(draw, rng, road, int(rng.integers(0, 4)), width, height)
    crash = _draw_crash(draw, rng, road, width, height)
    overlays = []
    if rng.random() < 0.15 + 0.5 * difficulty:
        grey = int(rng.integers(70, 160))
        overlays.append(((grey, grey, grey), smoke_mask(rng, width, height, [crash], rng.uniform(0.35, 0.65)),
                         FIRE_SMOKE))
        if rng.random() < 0.3 * difficulty:
            with draw.region(FIRE_SMOKE):
                draw_flames(draw, rng, crash[0], crash[1], rng.uniform(6, 12))
    return Scene(image, regions, _car_occluder, 0.2, overlays)


def _draw_crash(draw: RegionDraw, rng: np.random.Generator, road, width: int, height: int) -> tuple[float, float]:
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
        draw_car(draw, rng, x, y, length, angle + rng.uniform(0.5, 2.6) * pick(rng, (-1, 1)),
                  flipped=rng.random() < 0.2)
    with draw.region(RUBBLE):
        for _ in range(int(rng.integers(10, 30))):  # glass and plastic fragments
            x, y = px + rng.normal(0, length * 0.7), py + rng.normal(0, length * 0.7)
            colour = jitter(rng, pick(rng, ((210, 225, 235), (60, 60, 60), (200, 40, 30), (230, 150, 30))), 15)
            draw.rectangle([x, y, x + rng.uniform(1, 3), y + rng.uniform(1, 3)], fill=colour)
    return px, py


def _paint_normal(rng: np.random.Generator, width: int, height: int, difficulty: float) -> Scene:
    """Green fields, trees, intact houses, a road with normally aligned cars."""
    image = _ground(rng, width, height, _ground_palette(rng, "normal", difficulty))
    regions = new_region_map(image.size)
    draw = RegionDraw(image, regions)
    for _ in range(int(rng.integers(2, 7))):  # field patchwork
        colour = pick(rng, ((70, 130, 50), (120, 150, 70), (160, 150, 90), (95, 110, 55), (130, 105, 70)))
        draw.polygon(rect(*random_point(rng, width, height, 0.0), rng.uniform(40, 140), rng.uniform(30, 100),
                           rng.uniform(0, math.pi)), fill=jitter(rng, colour, 15))
    if rng.random() < 0.3 * difficulty:  # a pond
        pond = blob(rng, *random_point(rng, width, height), rng.uniform(15, 35), 10, 0.3)
        with draw.region(WATER):
            draw.polygon(pond, fill=jitter(rng, (70, 100, 120), 15))
    if rng.random() < 0.7:
        road = draw_road(draw, rng, width, height)
        cars_along_road(draw, rng, road, int(rng.integers(0, 5)), width, height)
    for _ in range(int(rng.integers(1, 6))):
        draw_house(draw, rng, *random_point(rng, width, height), rng.uniform(22, 50), rng.uniform(0, math.pi))
    for _ in range(int(rng.integers(4, 16))):
        draw_tree(draw, rng, *random_point(rng, width, height, 0.0), rng.uniform(5, 14))
    overlays = []
    if rng.random() < 0.3 * difficulty:  # chimney / bonfire smoke, light
        overlays.append(((200, 200, 200), smoke_mask(rng, width, height, [random_point(rng, width, height)], 0.3),
                         FIRE_SMOKE))
    bush = ((45, 95, 40), (60, 115, 45), (35, 80, 35))
    return Scene(image, regions, partial(_blob_occluder, bush, BACKGROUND), 0.2, overlays)


SCENE_PAINTERS: dict[str, Callable[[np.random.Generator, int, int, float], Scene]] = {
    "collapsed_building": _paint_collapsed_building,
    "fire": _paint_fire,
    "flooded_areas": _paint_flooded_areas,
    "traffic_incident": _paint_traffic_incident,
    "normal": _paint_normal,
}
