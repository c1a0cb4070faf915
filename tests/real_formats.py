"""Small data sets in real formats (C2A-style COCO, AIDER folders, TSV, YOLO), written to a folder.

Shared by tests: the readers' tests, the site-split builder and the
federation use the same fixtures. Images are 96-128 px scenes from the
built-in generator (``synthetic.render_scene``), so victims are drawn person
figures a model could learn, and the classes are balanced: image i of a
writer has the generator's balanced class draw for (seed, i). Every writer
returns what it wrote (a ``FixtureSource``) so tests can compare a reader's
output with the truth.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from src.data.synthetic import SceneOptions, render_scene

VICTIM_CLASSES = ("person",)
DISASTER_CLASSES = ("collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal")
POSES = ("lying", "sitting", "standing", "bending", "kneeling")  # C2A-style categories
POSE_MAP = {pose: "person" for pose in POSES}
SCENES = SceneOptions(min_size=96, max_size=128, difficulty=0.3, max_victims=4,
                      disaster_classes=DISASTER_CLASSES, victim_classes=VICTIM_CLASSES)
NO_VICTIMS = replace(SCENES, max_victims=0)
JPEG_QUALITY = 90


@dataclass
class FixtureImage:
    key: str  # path relative to the source root
    disaster: str
    size: tuple[int, int]  # width, height
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # xyxy px
    crowd: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    poses: list = field(default_factory=list)


@dataclass
class FixtureSource:
    root: Path
    label_file: Path | None
    images: list[FixtureImage]

    def by_key(self) -> dict[str, FixtureImage]:
        return {image.key: image for image in self.images}


def _scene(seed: int, index: int, empty: bool = False):
    """(image, boxes rounded to 0.01 px as written, disaster class name)."""
    image, boxes, _, disaster = render_scene(seed, index, NO_VICTIMS if empty else SCENES)
    return image, np.round(boxes.astype(np.float64), 2).astype(np.float32), DISASTER_CLASSES[disaster]


def pose_of(box, index: int) -> str:
    """A pose category from the box shape (wide: lying, tall: standing), some renamed for variety."""
    width, height = box[2] - box[0], box[3] - box[1]
    if width > 1.3 * height:
        return "lying"
    if height > 1.8 * width:
        return "bending" if index % 5 == 4 else "standing"
    return "kneeling" if index % 4 == 3 else "sitting"


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=JPEG_QUALITY)


# --------------------------------------------------------------------------- writers


def _coco_annotation(ann_id: int, image_id: int, category_id: int, box, is_crowd: int) -> dict:
    x0, y0, x1, y1 = (round(float(v), 2) for v in box)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)], "area": round((x1 - x0) * (y1 - y0), 2),
            "iscrowd": is_crowd, "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}


def write_c2a_coco(folder, num_images: int = 20, seed: int = 0, class_folders: bool = True,
                   json_name: str = "annotations.json", prefix: str = "c2a",
                   names_under_images: bool = False) -> FixtureSource:
    """Images plus a COCO instances json with pose categories.

    class_folders: images go to ``<class>/`` (AIDER-style, so the same root
    also works as a class-folder source), else all in ``images/``.
    names_under_images: the C2A layout, ``annotations.json`` next to
    ``images/`` with file names relative to ``images/`` (keys stay relative
    to the root). Image 0 has no annotations (annotated, no victims); the
    first image with two or more victims has its last two merged into one
    iscrowd=1 region.
    """
    folder = Path(folder)
    categories = [{"id": i + 1, "name": pose, "supercategory": "person"} for i, pose in enumerate(POSES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations, written = [], [], []
    crowd_done = False
    for i in range(num_images):
        image, boxes, disaster = _scene(seed, i, empty=i == 0)
        key = f"{disaster if class_folders and not names_under_images else 'images'}/{prefix}_{i:03d}.jpg"
        _save(image, folder / key)
        crowd = np.zeros((0, 4), np.float32)
        if not crowd_done and len(boxes) >= 2:
            crowd = np.concatenate([boxes[-2:, :2].min(0), boxes[-2:, 2:].max(0)])[None]
            boxes, crowd_done = boxes[:-2], True
        poses = [pose_of(b, i + j) for j, b in enumerate(boxes)]
        fixture = FixtureImage(key, disaster, image.size, boxes, crowd, poses)
        file_name = key.removeprefix("images/") if names_under_images else key
        images.append({"id": i + 1, "file_name": file_name, "width": image.size[0], "height": image.size[1]})
        labelled = [(b, p, 0) for b, p in zip(boxes, fixture.poses)] + [(b, "lying", 1) for b in crowd]
        for box, pose, is_crowd in labelled:
            annotations.append(_coco_annotation(len(annotations) + 1, i + 1, cat_id[pose], box, is_crowd))
        written.append(fixture)
    label_file = folder / json_name
    label_file.write_text(json.dumps({"info": {"description": "C2A-style fixture"}, "images": images,
                                      "annotations": annotations, "categories": categories}, indent=1))
    return FixtureSource(folder, label_file, written)


def write_aider_folders(folder, num_images: int = 10, seed: int = 1, prefix: str = "aider") -> FixtureSource:
    """AIDER-style ``<class>/<prefix>_NNN.jpg`` class folders, no boxes."""
    folder = Path(folder)
    written = []
    for i in range(num_images):
        image, _, disaster = _scene(seed, i)
        key = f"{disaster}/{prefix}_{i:03d}.jpg"
        _save(image, folder / key)
        written.append(FixtureImage(key, disaster, image.size))
    return FixtureSource(folder, None, written)


def write_tsv_source(folder, num_images: int = 10, seed: int = 2, file_name: str = "labels.tsv",
                     delimiter: str = "\t", image_column: str = "image", class_column: str = "label",
                     class_names: dict[str, str] | None = None, prefix: str = "crisis") -> FixtureSource:
    """CrisisIBD/MEDIC-style table: ``images/<prefix>_NNN.jpg`` plus a table with extra columns.

    class_names: our class name -> the name the table writes (to exercise class_map).
    """
    folder = Path(folder)
    rows, written = [], []
    for i in range(num_images):
        image, _, disaster = _scene(seed, i)
        key = f"images/{prefix}_{i:03d}.jpg"
        _save(image, folder / key)
        rows.append([f"event_{i % 3}", key, (class_names or {}).get(disaster, disaster), "informative"])
        written.append(FixtureImage(key, disaster, image.size))
    header = ["event_name", image_column, class_column, "informative"]
    label_file = folder / file_name
    label_file.write_text("".join(delimiter.join(r) + "\n" for r in [header, *rows]), encoding="utf-8")
    return FixtureSource(folder, label_file, written)


def write_yolo_source(folder, num_images: int = 10, seed: int = 3, names: tuple[str, ...] | None = None,
                      prefix: str = "drone") -> FixtureSource:
    """YOLO layout ``images/`` + ``labels/``; class ids index ``names`` (poses) or are all 0."""
    folder = Path(folder)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(num_images):
        image, boxes, disaster = _scene(seed, i)
        key = f"images/{prefix}_{i:03d}.jpg"
        _save(image, folder / key)
        poses = [pose_of(b, i + j) for j, b in enumerate(boxes)]
        width, height = image.size
        lines = [f"{names.index(p) if names else 0} {(b[0] + b[2]) / 2 / width:.6f} "
                 f"{(b[1] + b[3]) / 2 / height:.6f} {(b[2] - b[0]) / width:.6f} {(b[3] - b[1]) / height:.6f}\n"
                 for b, p in zip(boxes, poses)]
        (folder / "labels" / f"{prefix}_{i:03d}.txt").write_text("".join(lines))
        written.append(FixtureImage(key, disaster, image.size, boxes, poses=poses))
    return FixtureSource(folder, None, written)


def write_sources_spec(folder, coco_images: int = 50, tsv_images: int = 15, seed: int = 0) -> Path:
    """A combined fixture and its sources.yaml; returns the spec path.

    ``c2a``: COCO boxes (pose categories mapped onto person) plus class
    folders over the same images; ``crisis``: class labels only, from a TSV.
    With the defaults: 65 images, 13 per disaster class, 50 box-annotated
    (one with none, one with a crowd region).
    """
    folder = Path(folder)
    write_c2a_coco(folder / "c2a", coco_images, seed)
    write_tsv_source(folder / "crisis", tsv_images, seed + 1)
    spec = {
        "classes": {"victim": list(VICTIM_CLASSES), "disaster": list(DISASTER_CLASSES)},
        "class_map": {"victim": dict(POSE_MAP), "disaster": {}},
        "sources": [
            {"name": "c2a", "root": "c2a", "boxes": {"format": "coco", "file": "annotations.json"},
             "classes": {"format": "folders"}},
            {"name": "crisis", "root": "crisis",
             "classes": {"format": "tsv", "file": "labels.tsv", "image_column": "image",
                         "class_column": "label", "delimiter": "\t"}},
        ],
    }
    path = folder / "sources.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


CRISIS_NAMES = {"collapsed_building": "earthquake", "flooded_areas": "flood", "normal": "not_disaster",
                "traffic_incident": "other_disaster"}  # CrisisIBD disaster types; fire is fire


def write_c2a_aider_crisis(folder, c2a_images: int = 40, aider_images: int = 30, copies: int = 15,
                           crisis_images: int = 25) -> tuple[Path, dict]:
    """The data guide's worked example (docs/data.md): three public sets in their own layouts.

    ``c2a/``: annotations.json + images/ (file names relative to images/, five pose
    categories); ``aider/``: class folders, holding its own pictures and byte copies of
    the first `copies` C2A pictures under other names (C2A is built on AIDER
    backgrounds, and users keep both); ``crisis/``: a CrisisIBD-style disaster-types
    table with its own class names. Returns the sources.yaml path and
    {aider key of a copy: c2a key of the original}.
    """
    folder = Path(folder)
    c2a = write_c2a_coco(folder / "c2a", c2a_images, seed=10, names_under_images=True)
    write_aider_folders(folder / "aider", aider_images, seed=11)
    same = {}
    for i, image in enumerate(c2a.images[:copies]):
        copy = f"{image.disaster}/aider_{500 + i:03d}.jpg"
        (folder / "aider" / copy).parent.mkdir(parents=True, exist_ok=True)
        (folder / "aider" / copy).write_bytes((c2a.root / image.key).read_bytes())
        same[f"aider/{copy}"] = f"c2a/{image.key}"
    write_tsv_source(folder / "crisis", crisis_images, seed=12, file_name="disaster_types.tsv",
                     image_column="image_path", class_column="class_label", class_names=CRISIS_NAMES)
    path = folder / "sources.yaml"
    path.write_text(C2A_AIDER_CRISIS_SPEC)
    return path, same


C2A_AIDER_CRISIS_SPEC = """\
classes:
  victim: [person]
  disaster: [collapsed_building, fire, flooded_areas, traffic_incident, normal]
class_map:
  victim: {lying: person, sitting: person, standing: person, bending: person, kneeling: person}
sources:
  - name: c2a                 # annotations.json + images/: file names relative to images/
    root: c2a
    boxes: {format: coco, file: annotations.json, images: images}
  - name: aider               # aider/<class>/*.jpg
    root: aider
    classes: {format: folders}
  - name: crisis              # a CrisisIBD disaster-types table, its own class names
    root: crisis
    classes: {format: tsv, file: disaster_types.tsv, image_column: image_path,
              class_column: class_label, drop_unmapped: true}
    class_map:
      disaster: {earthquake: collapsed_building, flood: flooded_areas, not_disaster: normal}
"""


# --------------------------------------------------------------------------- odd image files

ODD_IMAGE_KINDS = ("grey", "rgba", "palette", "png16", "png16_rgb", "exif_rotated", "truncated_jpeg",
                   "truncated_png", "corrupt_jpeg", "not_an_image", "bomb", "bomb_header", "tiff", "palette_bmp")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG from raw filtered scanlines (PIL cannot write 16-bit RGB or lie about its size)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def write_png_bomb(path, width: int, height: int) -> Path:
    """A complete, valid black grey-level PNG of width x height: a few KB per 10 MP on disk.

    Compressed row by row, so writing it never holds the pixels in memory.
    """
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + one byte a pixel
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))
    return path


def gradient16(size: tuple[int, int]) -> np.ndarray:
    """A (h, w) uint16 ramp over the full 16-bit range: the png16 kinds' pixels."""
    width, height = size
    return np.linspace(0, 65535, width * height).reshape(height, width).astype(np.uint16)


def write_odd_image(path, kind: str, size: tuple[int, int] = (64, 48)) -> Path:
    """An image file of an awkward kind (see ODD_IMAGE_KINDS) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rgb = Image.fromarray((np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8))
    if kind == "grey":
        rgb.convert("L").save(path)
    elif kind == "rgba":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(path, format="PNG")
    elif kind == "palette":
        palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        palette.save(path, format="PNG", transparency=0)
    elif kind == "png16":
        Image.fromarray(gradient16(size)).save(path, format="PNG")
    elif kind == "png16_rgb":
        ramp = gradient16(size)
        pixels = np.stack([ramp, ramp // 2, 65535 - ramp], -1).astype(">u2")
        path.write_bytes(_raw_png(width, height, 16, 2, b"".join(b"\x00" + row.tobytes() for row in pixels)))
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        rgb.save(path, format="JPEG", exif=exif)
    elif kind in ("truncated_jpeg", "truncated_png"):  # a valid file cut in half
        rgb.save(path, format="JPEG" if kind == "truncated_jpeg" else "PNG")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "corrupt_jpeg":  # complete, but a bogus marker in the scan data: only a decode fails
        rgb.save(path, format="JPEG", quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] + b"\xff\xc8" * 10 + data[len(data) // 2:])
    elif kind == "not_an_image":
        path.write_bytes(b"this is a text file, not an image\n" * 5)
    elif kind == "bomb":  # a real one: 10000 x 10000 (100 MP, 300 MB as RGB) in ~100 KB
        write_png_bomb(path, 10_000, 10_000)
    elif kind == "bomb_header":  # header says 30000 x 30000 (0.9 Gpixel), beyond PIL's own limit
        path.write_bytes(_raw_png(30000, 30000, 8, 0, b"\x00" * 30001))
    elif kind == "tiff":
        rgb.save(path, format="TIFF")
    elif kind == "palette_bmp":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path, format="BMP")
    else:
        raise ValueError(f"unknown kind {kind!r}; one of {ODD_IMAGE_KINDS}")
    return path
