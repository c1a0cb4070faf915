"""Darknet weights files: header, exact expected sizes, identification by size."""
from __future__ import annotations

import struct
from pathlib import Path

from tools.darknet.layout import layout_floats

OFFICIAL_SOURCE = ("the official Darknet release of YOLOv3: https://pjreddie.com/darknet/yolo/ "
                   "(file https://pjreddie.com/media/files/yolov3.weights, 248,007,048 bytes)")
DEFAULT_WEIGHTS_PATH = Path("data/pretrained/yolov3.weights")


class DarknetFileError(ValueError):
    """The file is not a Darknet weights file of a layout this module reads."""


# yolov3-tiny.cfg's convs as (in, filters, size, batch_normalize): only to recognise its file.
_YOLOV3_TINY_CONVS = (
    (3, 16, 3, True), (16, 32, 3, True), (32, 64, 3, True), (64, 128, 3, True),
    (128, 256, 3, True), (256, 512, 3, True), (512, 1024, 3, True), (1024, 256, 1, True),
    (256, 512, 3, True), (512, 255, 1, False), (256, 128, 1, True), (384, 256, 3, True),
    (256, 255, 1, False),
)


def expected_file_bytes(layout_name: str = "yolov3", num_classes: int = 80,
                        header_bytes: int = 20) -> int:
    """Exact size of a file of this layout (yolov3.weights: 248,007,048)."""
    return header_bytes + 4 * layout_floats(layout_name, num_classes)


def _tiny_file_bytes(header_bytes: int) -> int:
    floats = sum(f * (4 if bn else 1) + f * c * k * k for c, f, k, bn in _YOLOV3_TINY_CONVS)
    return header_bytes + 4 * floats


# --------------------------------------------------------------------------- file header

def read_header(f) -> tuple[dict, int]:
    """Darknet header -> ({major, minor, revision, seen}, header bytes)."""
    raw = f.read(12)
    if len(raw) < 12:
        raise DarknetFileError("file ends inside the 12-byte version header")
    major, minor, revision = struct.unpack("<3i", raw)
    if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000:
        raw, fmt = f.read(8), "<q"
    else:
        raw, fmt = f.read(4), "<i"
    if len(raw) < struct.calcsize(fmt):
        raise DarknetFileError("file ends inside the `seen` header field")
    (seen,) = struct.unpack(fmt, raw)
    return dict(major=major, minor=minor, revision=revision, seen=seen), 12 + len(raw)


def _missing_file_message(path: Path) -> str:
    return (f"Darknet weights file not found: {path}. Nothing is downloaded here: get "
            f"yolov3.weights from {OFFICIAL_SOURCE} and put it at {path} (conventionally "
            f"{DEFAULT_WEIGHTS_PATH}, git-ignored), or pass its path with --weights.")


def inspect_darknet_file(path, num_file_classes: int = 80) -> dict:
    """Header and layout of a weights file, identified by its exact size (no model needed).

    Raises FileNotFoundError (saying where the official file comes from) or
    DarknetFileError naming the file and expected vs actual bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(_missing_file_message(path))
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            header, header_bytes = read_header(f)
        except DarknetFileError as e:
            raise DarknetFileError(
                f"{path}: {size} bytes is not a Darknet weights file ({e}); expected exactly "
                f"{expected_file_bytes('yolov3', num_file_classes)} bytes for yolov3.weights"
            ) from None
    expected = {name: expected_file_bytes(name, num_file_classes, header_bytes)
                for name in ("yolov3", "darknet53.conv.74")}
    for name, nbytes in expected.items():
        if size == nbytes:
            return dict(file=str(path), file_bytes=size, header=header,
                        header_bytes=header_bytes, layout=name,
                        floats=layout_floats(name, num_file_classes))
    if size == _tiny_file_bytes(header_bytes):
        raise DarknetFileError(
            f"{path}: {size} bytes is the size of yolov3-tiny.weights. yolov3-tiny (13 convs, "
            f"max-pool downsampling, 2 scales) matches no variant of this model (the `small` "
            f"variant is a scaled Darknet-53, not yolov3-tiny); use yolov3.weights with the "
            f"`full` variant")
    header_text = f"{header_bytes}-byte header (version {header['major']}.{header['minor']})"
    raise DarknetFileError(
        f"{path}: size mismatch: expected exactly {expected['yolov3']} bytes for the YOLOv3 layout "
        f"({header_text} + {layout_floats('yolov3', num_file_classes)} float32, 75 convs, "
        f"{num_file_classes} classes) or {expected['darknet53.conv.74']} bytes for a Darknet-53 "
        f"backbone file (darknet53.conv.74, 52 convs), actual {size} bytes "
        f"({size - expected['yolov3']:+d} vs YOLOv3). The file is truncated or oversized, or "
        f"belongs to another network (yolov3-spp, yolov4, a cfg with classes != "
        f"{num_file_classes}).")
