"""Distractors: person-sized things that are not people (the detector's hard negatives).

Poles, barrels, bushes, round signs, hydrants, crates and cones, at the same
sizes as the victims, so size alone does not find a person.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from src.data.synthetic.drawing import FIGURE_LENGTH_PX, jitter, loguniform, pick, random_point, shade
from src.data.synthetic.regions import BACKGROUND, RegionDraw


def paint_distractors(rng: np.random.Generator, image: Image.Image, regions: Image.Image, difficulty: float) -> None:
    """Poles, barrels, bushes, round signs, hydrants, crates, cones (hard negatives); background on the region map."""
    draw = RegionDraw(image, regions, BACKGROUND)
    width, height = image.size
    kinds = (_draw_pole, _draw_barrel, _draw_bush, _draw_round_sign, _draw_hydrant, _draw_crate, _draw_cone)
    for _ in range(int(rng.integers(0, 3 + round(4 * difficulty)))):
        size = loguniform(rng, *FIGURE_LENGTH_PX)
        x, y = random_point(rng, width, height, 0.03)
        pick(rng, kinds)(draw, rng, x, y, size)


def _draw_pole(draw, rng, x, y, size):
    colour = jitter(rng, pick(rng, ((120, 120, 125), (110, 80, 50), (200, 200, 200))), 12)
    draw.line([(x, y - size / 2), (x, y + size / 2)], fill=colour, width=max(1, round(size * 0.07)))
    if rng.random() < 0.5:  # lamp arm or cross bar
        draw.line([(x - size * 0.2, y - size * 0.45), (x + size * 0.2, y - size * 0.45)], fill=colour,
                  width=max(1, round(size * 0.05)))


def _draw_barrel(draw, rng, x, y, size):
    colour = jitter(rng, pick(rng, ((40, 80, 160), (220, 110, 30), (140, 70, 40), (90, 100, 90))), 15)
    w, h = size * 0.28, size * 0.38
    draw.rectangle([x - w, y - h, x + w, y + h], fill=colour)
    for t in (-0.4, 0.4):
        draw.line([(x - w, y + h * t), (x + w, y + h * t)], fill=shade(colour, 0.6), width=max(1, round(size * 0.04)))
    draw.ellipse([x - w, y - h - w * 0.4, x + w, y - h + w * 0.4], fill=shade(colour, 1.25))


def _draw_bush(draw, rng, x, y, size):
    for _ in range(int(rng.integers(3, 7))):
        bx, by, r = x + rng.normal(0, size * 0.15), y + rng.normal(0, size * 0.15), size * rng.uniform(0.15, 0.3)
        draw.ellipse([bx - r, by - r, bx + r, by + r], fill=jitter(rng, (55, 105, 45), 20))


def _draw_round_sign(draw, rng, x, y, size):
    """Round sign on a post: head-on-a-body shape, the hardest negative."""
    draw.line([(x, y - size * 0.3), (x, y + size / 2)], fill=(150, 150, 155), width=max(1, round(size * 0.06)))
    r = size * rng.uniform(0.14, 0.22)
    outer, inner = pick(rng, (((200, 30, 30), (240, 240, 240)), ((30, 70, 170), (40, 90, 200)),
                               ((230, 200, 40), (30, 30, 30))))
    draw.ellipse([x - r, y - size * 0.3 - r, x + r, y - size * 0.3 + r], fill=outer)
    draw.ellipse([x - r * 0.6, y - size * 0.3 - r * 0.6, x + r * 0.6, y - size * 0.3 + r * 0.6], fill=inner)


def _draw_hydrant(draw, rng, x, y, size):
    colour = jitter(rng, pick(rng, ((200, 30, 25), (230, 200, 40))), 12)
    w, h = size * 0.14, size * 0.28
    draw.rectangle([x - w, y - h, x + w, y + h], fill=colour)
    draw.ellipse([x - w, y - h - w, x + w, y - h + w], fill=shade(colour, 0.85))
    draw.line([(x - w * 2, y - h * 0.3), (x + w * 2, y - h * 0.3)], fill=colour, width=max(1, round(w)))


def _draw_crate(draw, rng, x, y, size):
    colour = jitter(rng, (150, 110, 65), 20)
    s = size * rng.uniform(0.25, 0.4)
    draw.rectangle([x - s, y - s, x + s, y + s], fill=colour)
    draw.line([(x - s, y - s), (x + s, y + s)], fill=shade(colour, 0.6), width=max(1, round(s * 0.12)))
    draw.line([(x - s, y + s), (x + s, y - s)], fill=shade(colour, 0.6), width=max(1, round(s * 0.12)))


def _draw_cone(draw, rng, x, y, size):
    h, w = size * 0.4, size * 0.18
    draw.polygon([(x, y - h), (x + w, y + h), (x - w, y + h)], fill=jitter(rng, (240, 110, 20), 10))
    draw.line([(x - w * 0.5, y), (x + w * 0.5, y)], fill=(240, 240, 240), width=max(1, round(size * 0.05)))
