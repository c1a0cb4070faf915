"""Image files: their size from the header, and whether the pipeline can decode them.

Images are checked here, not in the tf.data pipeline, because a decode error
there names no file. ``check_image`` rejects what the pipeline's decoder
(``tf.io.decode_image``) would get wrong or choke on:

* EXIF orientation other than 1: TensorFlow decodes the stored pixels and
  ignores the tag, while viewers and most annotation tools show (and box) the
  rotated image, so the boxes would not fit the pixels the model sees.
  Rotating in both reader and pipeline would fix only the tools that honour
  the tag, so such images are rejected with a message asking to bake the
  rotation in (``PIL.ImageOps.exif_transpose(im).save(...)``).
* formats TensorFlow cannot decode (TIFF, ...) and palette / 1-bit BMPs,
  which it silently misreads as grey levels.
* decompression bombs: more than ``MAX_IMAGE_PIXELS`` pixels declared in the
  header; rejected from the header, before any pixel is decoded.
* truncated JPEGs (no end-of-image marker after the image data): found by
  reading the file's tail, not by decoding; TensorFlow refuses them.
Grey, RGBA, palette and 16-bit PNGs are fine: the pipeline decodes them to
3-channel float in [0, 1].
"""
from __future__ import annotations

import mmap
import warnings
from pathlib import Path

from PIL import Image

from src.data.formats.errors import MISSING, TOO_LARGE, UNREADABLE, UNSUPPORTED, DataError

# Largest image accepted, in pixels (header width x height). The pipeline
# decodes an image whole before resizing it: 3 bytes a pixel, then 12 as
# float32, so 50 MP is ~750 MB per image in flight. Real photos stay below
# (drone 12-20 MP, phones up to 48 MP); a bigger file is more likely a
# decompression bomb. Read at call time, so a site with bigger images can
# raise it (PIL itself refuses more than 2 x PIL.Image.MAX_IMAGE_PIXELS).
MAX_IMAGE_PIXELS = 50_000_000
# Formats tf.io.decode_image reads (PIL names); MPO is a multi-picture JPEG.
DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP"})
# TensorFlow reads 8-bit BMPs as grey levels, right only for a grey palette.
DECODABLE_BMP_MODES = frozenset({"RGB", "RGBA", "L"})
EXIF_ORIENTATION = 0x0112


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """PIL image (header only), with file-named errors; more than MAX_IMAGE_PIXELS rejected.
    what: the kind of file, for messages (an image, a mask)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            im = Image.open(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: {what} file not found", MISSING) from e
    except Image.DecompressionBombError as e:  # PIL's hard stop, far above ours
        raise DataError(f"{path}: rejected as a possible decompression bomb, not decoded: {e} "
                        f"(limit {MAX_IMAGE_PIXELS:,} pixels, src.data.formats.images.MAX_IMAGE_PIXELS)",
                        TOO_LARGE) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable {what} ({e})", UNREADABLE) from e
    width, height = im.size
    if width * height > MAX_IMAGE_PIXELS:
        im.close()
        raise DataError(f"{path}: rejected as a possible decompression bomb, not decoded: the header "
                        f"declares {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{MAX_IMAGE_PIXELS:,} (src.data.formats.images.MAX_IMAGE_PIXELS); downscale the image, "
                        "or raise the limit if such images are intended", TOO_LARGE)
    return im


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding pixels.

    YOLO labels are relative to the original size, so we need it for every
    image; reading only the header keeps a dataset scan cheap.
    """
    with open_image(path) as im:
        return im.size


def _check_decodable(im: Image.Image, path: str | Path) -> None:
    """Reject what the tf.data pipeline would fail on or misread (see module docstring)."""
    if im.format not in DECODABLE_FORMATS:
        raise DataError(f"{path}: {im.format} images cannot be decoded by the pipeline; "
                        f"convert to JPEG or PNG (readable: {sorted(DECODABLE_FORMATS)})", UNSUPPORTED)
    if im.format == "BMP" and im.mode not in DECODABLE_BMP_MODES:
        raise DataError(f"{path}: BMP with mode {im.mode} (palette or 1-bit) would be misread "
                        "by the pipeline; convert it to PNG", UNSUPPORTED)
    orientation = _exif_orientation(im)
    if orientation not in (None, 0, 1):
        raise DataError(
            f"{path}: EXIF orientation {orientation} (rotated/mirrored): the pipeline decodes the "
            "stored pixels and ignores EXIF, so boxes drawn on the displayed image would not "
            "match; bake the rotation in (PIL: ImageOps.exif_transpose(im).save(...)) and "
            "re-check the boxes", UNSUPPORTED)


def _exif_orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag, None when absent or unreadable (TF ignores EXIF too)."""
    if "exif" not in im.info:  # also keeps PNG's getexif() from decoding pixels
        return None
    try:
        return im.getexif().get(EXIF_ORIENTATION)
    except Exception:  # PIL's EXIF parser raises many types on malformed blocks
        return None


def _jpeg_cut_short(path: str | Path, scan_start: int) -> bool:
    """True when no end-of-image marker (FF D9) follows the start of the image data.

    Inside JPEG scan data every FF byte is escaped, so the marker cannot
    occur before the real end: a file cut anywhere in its pixels lacks it
    (TensorFlow then fails the decode). Searched backwards from the end of a
    memory map, so an intact file costs a page read, not a decode.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.rfind(b"\xff\xd9", scan_start) < 0


def check_image(path: str | Path, full_decode: bool = False) -> tuple[int, int]:
    """Like ``image_size`` but also checks the file is intact and decodable.

    ``verify()`` catches broken or truncated PNG chunks cheaply; it does not
    decode JPEG scan data, so a cut-off JPEG is found by its missing
    end-of-image marker instead. Corrupt bytes inside otherwise complete
    JPEG data only show up with ``full_decode=True`` (TensorFlow decodes some
    of those to noisy pixels and fails on others). Better to find problems
    here, with a file name, than as an anonymous decode error deep inside a
    tf.data pipeline (which drops such an image, see ``pipeline``).
    """
    with open_image(path) as im:  # file-not-found / not-an-image / too-large errors
        # PIL's JPEG header parser stops right after the start-of-scan header
        scan_start = im.fp.tell() if im.format == "JPEG" else None
        size = im.size
        _check_decodable(im, path)
        try:
            im.verify()
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: corrupt image ({e})", UNREADABLE) from e
    if scan_start is not None and _jpeg_cut_short(path, scan_start):
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker after the image data; "
                        "cut short in a copy or download?): the pipeline cannot decode it", UNREADABLE)
    if full_decode:
        with open_image(path) as im:
            try:
                im.load()
            except (OSError, SyntaxError, ValueError) as e:
                raise DataError(f"{path}: corrupt image ({e})", UNREADABLE) from e
    return size
