"""Run an exported model on images, folders or a video; write annotated copies and detections.

python -m src.deploy.predict --model workspace/runs/export/models/model_int8.tflite \
    INPUT [INPUT ...] [--out workspace/runs/predict] [--runtime keras|savedmodel|tflite|openvino] \
    [--score 0.25] [--iou 0.45] [--max-detections 100] [--threads N] [--no-annotate]

INPUT is an image, a folder of images (searched recursively) or a video
(.mp4/.avi/.mov/.mkv). The runtime is guessed from the model's file name
unless given; `deploy.json` (written by the export) must sit beside the model.
Writes into --out: an annotated copy of every image (same relative path) or
video (`NAME.annotated.mp4`), and `detections.json` + `detections.csv` (one
row per box; videos get a `frame` number). Boxes are in original pixels, xyxy.
A model with a segmentation head (deploy.json names its mask classes) also
paints each pixel's predicted class over the annotated copies and frames, a
translucent colour per class (deploy.json's `mask_palette`; background is left
clear), writes each image's class map as `NAME.mask.png` (pixel value = mask
class index, palette coloured) and gives every image and frame the share of
its pixels per mask class in detections.json (`mask_fractions`).
Input it cannot use ends the command with one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from src.cli.command import fraction, positive_int, run_command
from src.deploy.postprocess import METADATA_FILE, ModelMetadata, Thresholds, detections, letterbox, read_image
from src.deploy.runtimes import RUNTIMES, open_runtime, runtime_for_file

log = logging.getLogger("predict")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}
BOX_COLOUR = (255, 40, 40)
MASK_ALPHA = 0.45  # overlay opacity: the scene stays readable under the colours
BACKGROUND_CLASS = "background"  # the mask class the overlay leaves clear


def metadata_folder(model_path: Path) -> Path:
    """The export folder holding deploy.json: beside the file, or one up (SavedModel, OpenVINO IR)."""
    for folder in (model_path.parent, model_path.parent.parent):
        if (folder / METADATA_FILE).exists():
            return folder
    return model_path.parent


class Detector:
    """An exported model + its metadata: RGB uint8 images in, detections in original pixels out."""

    def __init__(self, model_path, runtime: str | None = None, thresholds: Thresholds = Thresholds(),
                 threads: int | None = None):
        model_path = Path(model_path)
        self.runtime = open_runtime(runtime or runtime_for_file(model_path), model_path, threads)
        self.meta = ModelMetadata.load(metadata_folder(model_path))
        self.thresholds = thresholds

    def __call__(self, images: list[np.ndarray]) -> list[dict]:
        boxed = [letterbox(image, self.meta.input_size) for image in images]
        batch = np.stack([b[0] for b in boxed])
        raw = self.runtime.raw(batch)
        return detections(raw, self.meta, self.thresholds, scales=[b[1] for b in boxed],
                          offsets=[b[2] for b in boxed], image_hws=[image.shape[:2] for image in images])


def mask_overlay(image: np.ndarray, mask: np.ndarray, meta: ModelMetadata, alpha: float = MASK_ALPHA) -> np.ndarray:
    """`image` with each pixel of a mask class but background blended with that class's colour."""
    colours = np.asarray(meta.mask_palette, np.float32).reshape(-1, 3)
    painted = np.ones(len(colours), bool)
    if BACKGROUND_CLASS in meta.mask_classes:
        painted[meta.mask_classes.index(BACKGROUND_CLASS)] = False
    where = painted[mask][..., None]
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours[mask]
    return np.where(where, np.round(blended), image).astype(np.uint8)


def mask_fractions(mask: np.ndarray, meta: ModelMetadata) -> dict:
    """{mask class: share of the image's pixels predicted as it}."""
    counts = np.bincount(mask.ravel(), minlength=len(meta.mask_classes))
    return {name: round(float(n) / mask.size, 6) for name, n in zip(meta.mask_classes, counts)}


def write_mask(mask: np.ndarray, meta: ModelMetadata, path: Path) -> None:
    """The class map as an index PNG whose palette is the overlay's colours."""
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette([v for colour in meta.mask_palette for v in colour])  # L -> P, values kept
    image.save(path)


def annotate(image: np.ndarray, result: dict, meta: ModelMetadata) -> np.ndarray:
    """The mask overlay (a segmenting model's), boxes with scores, and the disaster class with
    its probability in the top-left corner."""
    canvas = Image.fromarray(mask_overlay(image, result["mask"], meta) if "mask" in result else image)
    draw = ImageDraw.Draw(canvas)
    for (x1, y1, x2, y2), score, cls in zip(result["boxes"], result["scores"], result["classes"]):
        draw.rectangle([x1, y1, x2, y2], outline=BOX_COLOUR, width=2)
        draw.text((x1 + 2, max(0, y1 - 11)), f"{meta.victim_classes[cls]} {score:.2f}", fill=BOX_COLOUR)
    best = int(np.argmax(result["disaster_probs"]))
    label = f"{meta.disaster_classes[best]} {result['disaster_probs'][best]:.2f}"
    draw.rectangle([0, 0, 7 * len(label) + 6, 13], fill=(0, 0, 0))
    draw.text((3, 1), label, fill=(255, 255, 255))
    return np.asarray(canvas)


def _rows(source: str, frame, result: dict, meta: ModelMetadata):
    best = int(np.argmax(result["disaster_probs"]))
    common = {"source": source, "frame": frame, "disaster_class": meta.disaster_classes[best],
              "disaster_prob": round(float(result["disaster_probs"][best]), 6)}
    boxes = [{**common, "x1": round(float(b[0]), 2), "y1": round(float(b[1]), 2),
              "x2": round(float(b[2]), 2), "y2": round(float(b[3]), 2), "score": round(float(s), 6),
              "class": meta.victim_classes[c]}
             for b, s, c in zip(result["boxes"], result["scores"], result["classes"])]
    return common, boxes


def expand_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image and video named or found."""
    found = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not files:
                raise ValueError(f"{path}: no images or videos inside")
            found += [(p, p.relative_to(path)) for p in files]
        elif path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            found.append((path, Path(path.name)))
        else:
            raise ValueError(f"{path}: not an image or video ({sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES)})")
    return found


def predict_video(detector: Detector, path: Path, out_path: Path | None, batch_size: int = 8):
    """Every frame through the detector; yields (frame index, result); writes an annotated mp4."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot open as a video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    index = 0
    try:
        with tqdm(total=total, desc=path.name, unit="frame", leave=False) as bar:
            while True:
                frames = []
                while len(frames) < batch_size:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                if not frames:
                    break
                for frame, result in zip(frames, detector(frames)):
                    if out_path is not None:
                        if writer is None:
                            h, w = frame.shape[:2]
                            writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                        writer.write(cv2.cvtColor(annotate(frame, result, detector.meta), cv2.COLOR_RGB2BGR))
                    yield index, result
                    index += 1
                bar.update(len(frames))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if index == 0:
        raise ValueError(f"{path}: no frame could be read")


def run(model, inputs: list[str], out_dir: Path, runtime: str | None = None,
        thresholds: Thresholds = Thresholds(), threads: int | None = None, annotate_output: bool = True,
        batch_size: int = 8) -> dict:
    """Detect on every input; returns {"images": [...], "boxes": [...]} as written to detections.json."""
    detector = Detector(model, runtime, thresholds, threads)
    files = expand_inputs(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries, boxes = [], []

    def record(source, frame, result):
        common, rows = _rows(source, frame, result, detector.meta)
        summary = {**common, "detections": len(rows)}
        if "mask" in result:
            summary["mask_fractions"] = mask_fractions(result["mask"], detector.meta)
        summaries.append(summary)
        boxes.extend(rows)

    images = [(f, rel) for f, rel in files if f.suffix.lower() in IMAGE_SUFFIXES]
    videos = [(f, rel) for f, rel in files if f.suffix.lower() in VIDEO_SUFFIXES]
    for start in tqdm(range(0, len(images), batch_size), desc="images", unit="batch",
                      disable=len(images) <= batch_size):
        chunk = images[start:start + batch_size]
        pixels = [read_image(f) for f, _ in chunk]
        for (f, rel), image, result in zip(chunk, pixels, detector(pixels)):
            record(str(f), None, result)
            target = out_dir / rel
            if annotate_output or "mask" in result:
                target.parent.mkdir(parents=True, exist_ok=True)
            if annotate_output:
                Image.fromarray(annotate(image, result, detector.meta)).save(target.with_suffix(".png"))
            if "mask" in result:
                write_mask(result["mask"], detector.meta, target.with_suffix(".mask.png"))
    for f, rel in videos:
        target = (out_dir / rel).with_suffix(".annotated.mp4") if annotate_output else None
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
        for frame, result in predict_video(detector, f, target, batch_size):
            record(str(f), frame, result)
    report = {"model": str(model), "runtime": detector.runtime.name,
              "thresholds": asdict(thresholds),
              "images": summaries, "boxes": boxes}
    (out_dir / "detections.json").write_text(json.dumps(report, indent=2))
    fields = ["source", "frame", "x1", "y1", "x2", "y2", "score", "class", "disaster_class", "disaster_prob"]
    with open(out_dir / "detections.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(boxes)
    log.info("%d images/frames, %d detections -> %s", len(summaries), len(boxes), out_dir)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="images, folders or videos")
    p.add_argument("--model", required=True, help="exported model (.keras, .tflite, model.xml, SavedModel folder)")
    p.add_argument("--runtime", choices=RUNTIMES, help="default: from the model's file name")
    p.add_argument("--out", default="workspace/runs/predict")
    p.add_argument("--score", type=fraction, default=Thresholds.score, help="minimum box score")
    p.add_argument("--iou", type=fraction, default=Thresholds.iou, help="NMS IoU threshold")
    p.add_argument("--max-detections", type=positive_int, default=Thresholds.max_detections)
    p.add_argument("--threads", type=positive_int, help="runtime threads (default: all cores)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--no-annotate", action="store_true",
                   help="only write detections.json/.csv (and a segmenting model's NAME.mask.png)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_command(lambda: run(args.model, args.inputs, Path(args.out), args.runtime,
                                   Thresholds(args.score, args.iou, args.max_detections), args.threads,
                                   not args.no_annotate, args.batch_size))


if __name__ == "__main__":
    sys.exit(main())
