"""Segmentation masks: one PNG label map per image, each pixel's value its class.

Index images (8-bit grey ``L``, palette ``P``, 16-bit ``I;16``) store a value per
pixel; the value is the label, a palette only colours it for viewers. Colour
masks (``RGB``, and palette images read by colour) store a colour per class.
A ``class_map`` maps file values (integers) or colours (``'#rrggbb'``) to our
mask class names, like the other readers' class maps; without one, the file's
values are our class indices. ``IGNORE_INDEX`` (255) marks unlabeled pixels:
a file's 255 is read as such unless the map names it, and with
``unmapped='ignore'`` every value the map does not name becomes 255 too
(otherwise such values are an error naming the file, the values and where).

A mask is checked like every label, so a bad one is found at load time with
its file named: readable, lossless (a JPEG mask is refused: compression
invents values along every edge), the size of its image, every value known.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from src.data.formats.errors import UNREADABLE, UNSUPPORTED, DataError
from src.data.formats.images import open_image
from src.data.formats.labels import read_text_file

IGNORE_INDEX = 255  # unlabeled pixels: no loss, no score
MASK_FORMATS = frozenset({"PNG", "BMP"})  # lossless formats PIL reads value for value
INDEX_MODES = frozenset({"L", "P", "I;16", "I"})
UNMAPPED_POLICIES = ("error", "ignore")


@dataclass(frozen=True)
class MaskClassMap:
    """How file values become our class indices.

    table: file code -> our index (or IGNORE_INDEX); colours: the codes are
    colours (0xRRGGBB) rather than index values; unmapped: 'error' or 'ignore'
    for a code the table does not hold; known: the table, readable, for messages.
    """

    table: Mapping[int, int]
    colours: bool
    unmapped: str
    known: str


def _colour_code(text: str, where: str) -> int:
    digits = text[1:] if text.startswith("#") else ""
    if len(digits) != 6 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise DataError(f"{where}: {text!r} is neither a mask value (an integer) nor a colour '#rrggbb'")
    return int(digits, 16)


def _file_code(key, where: str) -> tuple[int, bool]:
    """A class_map key as (code, is a colour)."""
    if isinstance(key, bool):
        raise DataError(f"{where}: {key!r} is not a mask value or colour")
    if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
        value = int(key)
        if not 0 <= value <= 0xFFFF:
            raise DataError(f"{where}: mask value {value} outside 0..65535")
        return value, False
    if isinstance(key, str):
        return _colour_code(key.strip(), where), True
    raise DataError(f"{where}: {key!r} is not a mask value (an integer) or a colour '#rrggbb'")


def mask_class_map(mask_classes: Sequence[str], class_map: Mapping | None = None, unmapped: str = "error",
                   where: str = "class_map.mask") -> MaskClassMap:
    """The lookup for masks of `mask_classes` (our names, in model order).

    class_map: file value or '#rrggbb' colour -> our class name; None: the file's
    values are our indices (0 .. len - 1). 255 reads as unlabeled unless mapped.
    """
    if unmapped not in UNMAPPED_POLICIES:
        raise DataError(f"{where}: unmapped must be one of {list(UNMAPPED_POLICIES)}, got {unmapped!r}")
    names = list(mask_classes)
    if not names or len(names) > IGNORE_INDEX or len(set(names)) != len(names):
        raise DataError(f"{where}: mask classes must be 1 to {IGNORE_INDEX} unique names, got {names}")
    if not class_map:
        table = {i: i for i in range(len(names))}
        table[IGNORE_INDEX] = IGNORE_INDEX
        known = f"0..{len(names) - 1} = {names}, {IGNORE_INDEX} = unlabeled"
        return MaskClassMap(table, False, unmapped, known)
    table, kinds = {}, set()
    for key, ours in class_map.items():
        code, colour = _file_code(key, f"{where}.{key}")
        kinds.add(colour)
        if ours not in names:
            raise DataError(f"{where}.{key}: {ours!r} is not a mask class {names}")
        table[code] = names.index(ours)
    if len(kinds) > 1:
        raise DataError(f"{where}: mixes mask values and colours; a mask file holds one or the other")
    colours = kinds == {True}
    if not colours:
        table.setdefault(IGNORE_INDEX, IGNORE_INDEX)
    known = ", ".join(f"{f'#{code:06x}' if colours else code} = {names[i] if i < len(names) else 'unlabeled'}"
                      for code, i in sorted(table.items()))
    return MaskClassMap(table, colours, unmapped, known)


def _codes(im: Image.Image, path: Path, colours: bool) -> np.ndarray:
    """The file's per-pixel codes: index values, or colours packed as 0xRRGGBB."""
    if colours:
        if im.mode not in ("RGB", "P", "L"):
            raise DataError(f"{path}: mode {im.mode} cannot be read as a colour mask (class_map names colours); "
                            "save it as RGB or palette PNG", UNSUPPORTED)
        rgb = np.asarray(im.convert("RGB"), np.uint32)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if im.mode not in INDEX_MODES:
        raise DataError(f"{path}: mode {im.mode} is not an index mask (8-bit grey or palette, or 16-bit); "
                        "a colour mask needs a class_map from '#rrggbb' colours to classes", UNSUPPORTED)
    return np.asarray(im).astype(np.int64)


def _decode(path: Path, colours: bool, image_size: tuple[int, int] | None, image: str) -> np.ndarray:
    """The file's codes, after the checks that need no class map (format, size, intact pixels)."""
    with open_image(path, "mask") as im:
        if im.format not in MASK_FORMATS:
            raise DataError(f"{path}: a {im.format} mask; masks must be lossless (PNG or BMP): "
                            "lossy compression invents class values along every edge", UNSUPPORTED)
        if image_size is not None and im.size != tuple(image_size):
            raise DataError(f"{path}: mask is {im.size[0]}x{im.size[1]} but its image {image} is "
                            f"{image_size[0]}x{image_size[1]}; a mask must label the image pixel for pixel")
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: corrupt mask ({e})", UNREADABLE) from e
        return _codes(im, path, colours)


def read_mask(path: str | Path, lookup: MaskClassMap, image_size: tuple[int, int] | None = None,
              image: str | Path = "") -> np.ndarray:
    """The mask at `path` as (height, width) uint8 class indices, IGNORE_INDEX where unlabeled.

    image_size: (width, height) of the image the mask labels (checked when given);
    image: that image's path, for messages. Every problem is a DataError naming the file.
    """
    path = Path(path)
    codes = _decode(path, lookup.colours, image_size, str(image) or "image")
    if lookup.colours:  # few distinct colours among up to 2^24: sort them out
        values, inverse = np.unique(codes, return_inverse=True)
    else:  # index values: counting is faster than sorting
        values, inverse = np.flatnonzero(np.bincount(codes.ravel())), None
    default = IGNORE_INDEX if lookup.unmapped == "ignore" else -1
    mapped = np.array([lookup.table.get(int(v), default) for v in values], np.int64)
    if (mapped < 0).any():
        unknown = values[mapped < 0]
        pixels = np.isin(codes, unknown)
        y, x = (int(v[0]) for v in np.nonzero(pixels))
        shown = [f"#{int(v):06x}" if lookup.colours else int(v) for v in unknown[:8]]
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise DataError(f"{path}: {'colours' if lookup.colours else 'values'} {shown}{more} "
                        f"({int(pixels.sum())} pixels, the first at x={x}, y={y}) name no mask class "
                        f"(known: {lookup.known}); map them in class_map.mask, or read them as unlabeled "
                        "with unmapped: ignore")
    if inverse is not None:
        return mapped[inverse].reshape(codes.shape).astype(np.uint8)
    table = np.zeros(int(values[-1]) + 1, np.uint8)
    table[values] = mapped
    return table[codes]


def mask_palette(count: int) -> list[list[int]]:
    """A colour per mask class: the synthetic masks' PNG palette (the colours a viewer shows the
    label maps in), then evenly spread hues for classes beyond it."""
    import colorsys

    from src.data.synthetic.regions import PALETTE

    spread = [[int(255 * v) for v in colorsys.hsv_to_rgb(i / max(count, 1), 0.8, 0.9)] for i in range(count)]
    return [list(PALETTE[i]) if i < len(PALETTE) else spread[i] for i in range(count)]


def write_mask(mask: np.ndarray, path: str | Path, palette: Sequence[Sequence[int]]) -> None:
    """A class map (height, width) as an index PNG: each pixel's value is its class (IGNORE_INDEX:
    unlabeled), and the palette colours the classes for viewers."""
    image = Image.fromarray(np.asarray(mask, np.uint8), "L")
    colours = [list(palette[i]) if i < len(palette) else [0, 0, 0] for i in range(256)]  # 256: 8 bits a pixel
    image.putpalette([v for colour in colours for v in colour])  # L -> P, values kept
    image.save(path, format="PNG")


def mask_file(root: Path, image: Path) -> Path | None:
    """The mask of a YOLO-layout image: root/masks/<stem>.png, None when it has none (never annotated)."""
    path = root / "masks" / f"{image.stem}.png"
    return path if path.is_file() else None


def yolo_mask_lookup(root: Path, mask_classes: Sequence[str] | None = None) -> MaskClassMap | None:
    """How to read the masks of a YOLO-layout folder (root/masks/<stem>.png); None when it has no masks/.

    Their values are indices of a class list: the caller's (the model's ``classes.mask``),
    else the one the folder's dataset.yaml records (``mask_classes``, the synthetic
    generator writes it). When both are given they must agree: the same index would
    otherwise mean another class.
    """
    if not (root / "masks").is_dir():
        return None
    manifest = root / "dataset.yaml"
    recorded = None
    if manifest.is_file():
        try:
            recorded = (yaml.safe_load(read_text_file(manifest)) or {}).get("mask_classes")
        except (yaml.YAMLError, AttributeError) as e:
            raise DataError(f"{manifest}: not a YAML mapping ({e})") from e
    if mask_classes is not None and recorded is not None and list(mask_classes) != list(recorded):
        raise DataError(f"{manifest}: mask_classes {list(recorded)} differ from the model's classes.mask "
                        f"{list(mask_classes)}; the masks' values index the former: use the same names in the "
                        "same order, or regenerate the data set with the model's list")
    classes = mask_classes if mask_classes is not None else recorded
    if classes is None:
        raise DataError(f"{root / 'masks'}: holds masks but no class list says what their values mean: set "
                        f"classes.mask in the settings, or mask_classes in {manifest}")
    return mask_class_map(classes, where=str(manifest) if mask_classes is None else "classes.mask")


def mask_in_image(mask, image_hw, scale: float, offset_xy) -> np.ndarray:
    """A letterboxed (size, size) mask back on the original image's (h, w) pixels: the bars
    cut off, then nearest-neighbour to the image's size (the inverse of
    `src.data.pipeline.letterbox_mask`). numpy only, so the exported runtimes' post-processing
    maps masks back exactly as evaluation does, without TensorFlow."""
    h, w = (int(v) for v in image_hw)
    new_h, new_w = int(round(h * float(scale))), int(round(w * float(scale)))
    x0, y0 = (int(round(float(v))) for v in offset_xy)
    inner = np.asarray(mask)[y0:y0 + new_h, x0:x0 + new_w]
    rows = np.minimum(((np.arange(h) + 0.5) * new_h / h).astype(np.int64), new_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * new_w / w).astype(np.int64), new_w - 1)
    return inner[rows[:, None], cols[None, :]]
