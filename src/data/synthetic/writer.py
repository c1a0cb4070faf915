"""Writing the synthetic data set to disk in the real formats the readers handle.

JPEG images, YOLO label files, PNG label maps (masks) and a class table, plus
``dataset.yaml`` (the options and class lists, written last), so a complete set
is recognised and not regenerated, and splits can tell which images are frames
of one burst (``scene_groups``).
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from src.data.synthetic.options import SceneOptions
from src.data.synthetic.regions import mask_image
from src.data.synthetic.render import render_labelled_scene

LOG = logging.getLogger(__name__)

GENERATOR = "src.data.synthetic"  # dataset.yaml's `generator`: marks a set this package wrote
GENERATOR_VERSION = 2  # 2: writes masks/ (a version-1 set is regenerated, to the same images and labels)
JPEG_QUALITY = 92


def yolo_lines(boxes: np.ndarray, classes: np.ndarray, image_size: tuple[int, int]) -> str:
    """YOLO txt: one 'class cx cy w h' line per box, normalized, 6 decimals."""
    width, height = image_size
    lines = []
    for (x1, y1, x2, y2), victim_class in zip(boxes.tolist(), classes.tolist()):
        lines.append(f"{victim_class} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return "".join(line + "\n" for line in lines)


def _write_example(job: tuple[str, int, int, SceneOptions]) -> tuple[int, str]:
    """Render image `index` and write its JPEG, label file and mask; returns (index, class name)."""
    out_dir, seed, index, options = job
    image, boxes, classes, disaster, regions = render_labelled_scene(seed, index, options)
    stem = f"{index:05d}"
    image.save(Path(out_dir, "images", f"{stem}.jpg"), "JPEG", quality=JPEG_QUALITY)
    Path(out_dir, "labels", f"{stem}.txt").write_text(yolo_lines(boxes, classes, image.size), encoding="utf-8")
    mask_image(regions, options.mask_classes).save(Path(out_dir, "masks", f"{stem}.png"), "PNG")
    return index, options.disaster_classes[disaster]


def _manifest(seed: int, num_images: int, options: SceneOptions) -> dict:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "options": {"seed": int(seed), "num_images": int(num_images), "min_size": int(options.min_size),
                    "max_size": int(options.max_size), "difficulty": float(options.difficulty),
                    "max_victims": int(options.max_victims), "burst_size": int(options.burst_size),
                    "class_weights": None if options.class_weights is None else list(options.class_weights)},
        "disaster_classes": list(options.disaster_classes),
        "victim_classes": list(options.victim_classes),
        "mask_classes": list(options.mask_classes),
    }


def _already_generated(out: Path, manifest: dict) -> bool:
    manifest_path = out / "dataset.yaml"
    if not manifest_path.is_file() or not (out / "classes.tsv").is_file():
        return False
    with open(manifest_path, encoding="utf-8") as handle:
        if yaml.safe_load(handle) != manifest:
            return False
    return len(list((out / "images").glob("*.jpg"))) == manifest["options"]["num_images"]


def scene_groups(root: str | Path, image_paths: Sequence[str | Path]) -> list[int] | None:
    """The scene (burst) of each image of a synthetic set generated with burst_size > 1, so
    splits keep a burst together; None for any other folder (every image its own group)."""
    manifest_path = Path(root) / "dataset.yaml"
    if not manifest_path.is_file():
        return None
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle) or {}
    burst = int(manifest.get("options", {}).get("burst_size", 1)) if manifest.get("generator") == GENERATOR else 1
    if burst == 1:
        return None
    return [int(Path(path).stem) // burst for path in image_paths]


def _render_all(out: Path, seed: int, num_images: int, options: SceneOptions, workers: int) -> dict[int, str]:
    from tqdm import tqdm

    jobs = [(str(out), seed, index, options) for index in range(num_images)]
    progress = dict(total=num_images, desc="synthetic", unit="img", disable=num_images < 200)
    if workers <= 1:
        return dict(tqdm(map(_write_example, jobs), **progress))
    # spawn, not fork: callers (trainers) may already have TensorFlow threads running.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return dict(tqdm(pool.imap_unordered(_write_example, jobs, chunksize=16), **progress))


def _remove_stale(out: Path, num_images: int) -> None:
    """Delete images / labels / masks left over from an earlier, larger generation."""
    for folder, suffix in (("images", ".jpg"), ("labels", ".txt"), ("masks", ".png")):
        for path in (out / folder).glob(f"*{suffix}"):
            if not path.stem.isdigit() or int(path.stem) >= num_images:
                path.unlink()


def generate_dataset(out_dir: str | Path, num_images: int = 3000, seed: int = 0, min_size: int = 192,
                     max_size: int = 256, difficulty: float = 0.5, max_victims: int = 6, workers: int = 2,
                     disaster_classes: Sequence[str] | None = None,
                     victim_classes: Sequence[str] | None = None, burst_size: int = 1,
                     class_weights: dict | Sequence[float] | None = None,
                     mask_classes: Sequence[str] | None = None) -> Path:
    """Write the synthetic data set to out_dir and return it.

    Layout: images/{i:05d}.jpg, labels/{i:05d}.txt (YOLO, empty = no
    victims), masks/{i:05d}.png (8-bit palette image, each pixel the index of
    its class in ``mask_classes``), classes.tsv (image, disaster_class name),
    dataset.yaml (the options and class names, ``mask_classes`` included;
    written last, so it marks a complete set).
    Skips the work if dataset.yaml already records identical options.
    """
    out = Path(out_dir)
    options = SceneOptions(min_size, max_size, difficulty, max_victims,
                           tuple(disaster_classes or ()), tuple(victim_classes or ()), burst_size, class_weights,
                           tuple(mask_classes or ()))
    manifest = _manifest(seed, num_images, options)
    if _already_generated(out, manifest):
        LOG.info("%s already holds this synthetic data set (seed=%d, %d images); not regenerating",
                 out, seed, num_images)
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "dataset.yaml").unlink(missing_ok=True)
    LOG.info("generating %d synthetic images into %s (seed=%d, difficulty=%.2f, %d image(s) per scene, "
             "workers=%d)", num_images, out, seed, difficulty, options.burst_size, workers)
    started = time.perf_counter()
    class_names = _render_all(out, seed, num_images, options, workers)
    rows = [f"images/{index:05d}.jpg\t{class_names[index]}\n" for index in range(num_images)]
    (out / "classes.tsv").write_text("image\tdisaster_class\n" + "".join(rows), encoding="utf-8")
    _remove_stale(out, num_images)
    with open(out / "dataset.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump(manifest, handle, sort_keys=False)
    LOG.info("wrote %d images in %.1f s", num_images, time.perf_counter() - started)
    return out


def generate_from_config(cfg: dict, root=None) -> Path:
    """The built-in data set as a loaded config (configs/default.yaml) describes it."""
    d = cfg["data"]
    return generate_dataset(root or d["root"], num_images=d["num_images"], seed=cfg["seed"],
                            min_size=d["min_size"], max_size=d["max_size"],
                            difficulty=d["difficulty"], max_victims=d["max_victims"],
                            disaster_classes=cfg["classes"]["disaster"],
                            victim_classes=cfg["classes"]["victim"], mask_classes=cfg["classes"].get("mask"),
                            burst_size=d.get("burst_size", 1), class_weights=d.get("class_weights"))
