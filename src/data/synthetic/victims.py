"""Victims: person figures in a few poses, how scenes hide part of them, and their visible boxes.

A label box is the tight box of what is actually visible: an owner map
records which figure each pixel shows, occluders overwrite it, and a figure
mostly hidden loses its label, as an annotator would leave it out.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, ImageDraw

from src.data.synthetic.drawing import (CLOTHING, FIGURE_LENGTH_PX, SKIN_TONES, TROUSERS, Box, Colour, jitter,
                                        loguniform, pick, random_point)
from src.data.synthetic.regions import BACKGROUND
from src.data.synthetic.scenes import Scene

if TYPE_CHECKING:
    from src.data.synthetic.options import SceneOptions

MIN_VISIBLE_FRACTION = 0.4  # drop a victim label below this visible share
MIN_BOX_PX = 2
NO_VICTIM_PROBABILITY = 0.13  # plus occlusion drops: about 15% empty images
MAX_OVERLAP = 0.25  # intersection over the smaller full figure box

# A primitive is (kind, geometry, line width, colour); kind is "circle"
# (geometry = (centre, radius)), "polygon" (points) or "line" (points).
Primitive = tuple[str, object, int, Colour]
POSES = ("standing", "lying", "sitting")
POSE_PROBABILITIES = (0.4, 0.35, 0.25)


def _person_colours(rng: np.random.Generator) -> dict[str, Colour]:
    top = jitter(rng, pick(rng, CLOTHING), 20)
    skin = jitter(rng, pick(rng, SKIN_TONES), 10)
    return {"skin": skin, "top": top, "bottom": jitter(rng, pick(rng, TROUSERS), 15),
            "sleeve": top if rng.random() < 0.7 else skin}


def _person_upper_body(rng: np.random.Generator, length: float, colours: dict) -> tuple[list[Primitive], float]:
    """Head, torso and arms of an upright figure of `length`, centred on 0; returns hip y too."""
    r = max(1.0, 0.09 * length)
    top_y = -0.5 * length
    shoulder_y, hip_y = top_y + 2 * r + 0.01 * length, 0.03 * length
    shoulder, hip = 0.12 * length, 0.09 * length
    torso = [(-shoulder, shoulder_y), (shoulder, shoulder_y), (hip, hip_y), (-hip, hip_y)]
    arm_width = max(1, round(0.065 * length))
    arm_pose = pick(rng, ("down", "down", "raised", "out"))
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
        facing = pick(rng, (-1, 1))
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
    return _transform(figure, pick(rng, (-1, 1)) * (90 + rng.uniform(-25, 25)), 0, 0)


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
        figure = painter(rng, loguniform(rng, *FIGURE_LENGTH_PX))
        figure = _transform(figure, 0, *random_point(rng, width, height, 0.02))
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


def paint_victims(rng: np.random.Generator, occluder_rng: np.random.Generator, scene: Scene,
                   options: SceneOptions) -> tuple[np.ndarray, np.ndarray]:
    """Draw 0..max_victims figures, occlude some, return visible boxes and classes.

    An owner map (figure id per pixel, 0 = background) is drawn alongside the
    image; later figures and occluders overwrite it, so each label box is the
    tight box of what is actually visible. A figure's pixels are background on
    the scene's region map; an occluder paints its own region there.
    """
    image = scene.image
    width, height = image.size
    count = 0
    if options.max_victims > 0 and rng.random() >= NO_VICTIM_PROBABILITY:
        count = int(rng.integers(1, options.max_victims + 1))
    owner = Image.new("L", image.size, 0)
    draw_rgb, draw_owner = ImageDraw.Draw(image), ImageDraw.Draw(owner)
    draw_regions = ImageDraw.Draw(scene.regions)
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
        _draw_primitives(draw_regions, figure, fill=BACKGROUND)
        placed.append((figure, box, victim_class))
    for _, box, _ in placed:
        if occluder_rng.random() < scene.occlusion_probability:
            scene.occlude(occluder_rng, image, owner, scene.regions, box)
    owner_pixels = np.asarray(owner)
    boxes, classes = [], []
    for figure_id, (figure, box, victim_class) in enumerate(placed, start=1):
        visible = _visible_box(owner_pixels, figure, box, figure_id)
        if visible is not None:
            boxes.append(visible)
            classes.append(victim_class)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int32)
