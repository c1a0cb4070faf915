"""Region maps: what each pixel of a synthetic image shows (water, fire or smoke, rubble, else background).

Every painter that draws a region onto the image draws the same shape onto an
8-bit region map, with the region's code instead of a colour (``RegionDraw``),
so the segmentation label is exact and costs no random number: the image of a
seed stays byte-identical whether or not its mask is written. The writer turns
the codes into indices of the configured mask class list (``classes.mask``)
by name (``region_lookup``).

What each region covers: water: flood water, the water over submerged houses and
wading victims, ponds; fire_smoke: flames and smoke denser than
SMOKE_REGION_ALPHA; rubble: collapsed building blocks, rubble piles, debris
(in collapsed and flooded scenes, crash fragments); background: everything
else, victims, hard negatives, houses, roads, cars and dust clouds included.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND, WATER, FIRE_SMOKE, RUBBLE = 0, 1, 2, 3
REGION_NAMES = ("background", "water", "fire_smoke", "rubble")  # the region code is the position
DEFAULT_MASK_CLASSES = REGION_NAMES
# Smoke denser than this opacity is labelled fire_smoke; thinner haze shows the ground beneath.
SMOKE_REGION_ALPHA = 0.2
# Colours of the written PNG palette, per mask class index (the file stores indices; the palette is for viewers).
PALETTE = ((0, 0, 0), (40, 110, 230), (240, 90, 20), (150, 140, 120), (200, 40, 160), (60, 180, 75),
           (230, 200, 40), (70, 200, 220))


def new_region_map(size: tuple[int, int], code: int = BACKGROUND) -> Image.Image:
    """A region map of `size` (width, height), every pixel `code`."""
    return Image.new("L", size, code)


class RegionDraw:
    """Draws each shape twice: with its colour on the image, with the current region code on the map.

    Painters (and the element helpers they call) use it where they would use
    ``ImageDraw.Draw(image)``: it has the four shapes they draw. The shapes and their
    arguments are the painter's own, so no extra random number is drawn.
    """

    def __init__(self, image: Image.Image, regions: Image.Image, code: int = BACKGROUND):
        self.image_draw, self.region_draw, self.code = ImageDraw.Draw(image), ImageDraw.Draw(regions), code

    @contextmanager
    def region(self, code: int):
        """Shapes drawn inside the block label their pixels `code`."""
        previous, self.code = self.code, code
        try:
            yield self
        finally:
            self.code = previous

    def _both(self, shape: str, xy, fill, kwargs: dict) -> None:
        """The shape with the painter's own arguments on the image, with the region code on the map."""
        getattr(self.image_draw, shape)(xy, fill=fill, **kwargs)
        if kwargs.get("outline") is not None:
            kwargs = {**kwargs, "outline": self.code}
        getattr(self.region_draw, shape)(xy, fill=self.code, **kwargs)

    def polygon(self, xy, fill=None, **kwargs) -> None:
        self._both("polygon", xy, fill, kwargs)

    def ellipse(self, xy, fill=None, **kwargs) -> None:
        self._both("ellipse", xy, fill, kwargs)

    def rectangle(self, xy, fill=None, **kwargs) -> None:
        self._both("rectangle", xy, fill, kwargs)

    def line(self, xy, fill=None, **kwargs) -> None:
        self._both("line", xy, fill, kwargs)


def paint_overlay_regions(regions: Image.Image, alpha: Image.Image, code: int | None) -> Image.Image:
    """The map after a translucent overlay (smoke): pixels denser than SMOKE_REGION_ALPHA become `code`;
    code None (glow, dust) leaves the map as it is."""
    if code is None:
        return regions
    dense = np.asarray(alpha) >= round(255 * SMOKE_REGION_ALPHA)
    pixels = np.asarray(regions).copy()
    pixels[dense] = code
    return Image.fromarray(pixels)


def region_lookup(mask_classes: Sequence[str]) -> np.ndarray:
    """uint8 table: region code -> index of its name in `mask_classes`; a region the list does not
    name counts as background. The list must name 'background' (every unpainted pixel is)."""
    names = list(mask_classes)
    if "background" not in names:
        raise ValueError(f"mask classes {names} must include 'background' (the synthetic generator labels every "
                         "pixel that shows no water, fire/smoke or rubble with it)")
    if len(set(names)) != len(names) or len(names) > 255:
        raise ValueError(f"mask classes must be unique names, at most 255 (255 marks unlabeled pixels); got {names}")
    background = names.index("background")
    return np.array([names.index(n) if n in names else background for n in REGION_NAMES], np.uint8)


def mask_image(regions: Image.Image, mask_classes: Sequence[str]) -> Image.Image:
    """The region map as the PNG label map the writer stores: a palette image whose pixel values are
    indices into `mask_classes`."""
    indices = region_lookup(mask_classes)[np.asarray(regions)]
    out = Image.fromarray(indices, "L").convert("P")
    colours = [c for i in range(256) for c in (PALETTE[i] if i < len(PALETTE) else (i, i, i))]
    out.putpalette(colours)
    return out
