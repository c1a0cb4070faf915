"""Export a trained model to the runtimes rescue teams deploy on.

python -m src.deploy.export --model workspace/runs/central/model.keras \
    [--out workspace/runs/export/models] [--formats keras savedmodel tflite-fp32 ...] \
    [--calibration-images 300] [--config configs/default.yaml]

`--model` is a `.keras` file or an OpenFL state file (`save/best.pbuf`; the
architecture then comes from the config). Formats:

| format | file | precision |
|---|---|---|
| keras | model.keras | float32 |
| savedmodel | saved_model/ | float32; endpoints `serve` (raw heads) and `detect` (decode + NMS in the graph, and a segmenting model's per-pixel class `mask`) |
| tflite-fp32 / -fp16 / -int8 | model_{fp32,fp16,int8}.tflite | int8: weights and activations, float32 in/out, calibrated |
| openvino-fp32 / -fp16 / -int8 | openvino_{fp32,fp16,int8}/model.xml | int8: NNCF post-training quantization, calibrated |

TFLite and OpenVINO graphs end at the raw heads; decode and NMS run in
numpy (`src.deploy.postprocess`), which keeps box decoding (an exp of the
regressed size) in float32 under int8, and needs no TensorFlow on the device.
Calibration uses letterboxed images from the training split, never the test split.
`deploy.json` beside the files holds the input size, anchors, class names and the
heads' centre decoding (`centre_range`: the one a `.keras` model records, else the
settings'); every runtime decodes with it. A model with a segmentation head carries
its `segmentation` logits through every format, and deploy.json its mask classes
(`classes.mask`) with an overlay colour each (`mask_palette`). Input it cannot use ends the command
with one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from src.cli.command import load_settings, positive_int, run_command
from src.deploy.postprocess import ModelMetadata, letterbox, read_image

log = logging.getLogger("export")

FORMATS = ("keras", "savedmodel", "tflite-fp32", "tflite-fp16", "tflite-int8",
           "openvino-fp32", "openvino-fp16", "openvino-int8")
DEFAULT_FORMATS = FORMATS
DEFAULT_CALIBRATION_IMAGES = 300
HEAD_OUTPUT_PATTERN = ".*det_head_s[0-9]+_out.*"  # src.model.det_head names them det_head_<scale>_out
SEG_OUTPUT_PATTERN = ".*seg_head_logits.*"  # src.model.seg_head's logits and their upsampling


def artefact_path(out_dir: Path, fmt: str) -> Path:
    """Where `fmt` lives inside an export folder (what `open_runtime` takes)."""
    if fmt == "keras":
        return out_dir / "model.keras"
    if fmt == "savedmodel":
        return out_dir / "saved_model"
    family, precision = fmt.split("-")
    if family == "tflite":
        return out_dir / f"model_{precision}.tflite"
    return out_dir / f"openvino_{precision}" / "model.xml"


def runtime_of(fmt: str) -> str:
    return fmt.split("-")[0]


def size_bytes(path: Path) -> int:
    """File size, or the sum over a folder (SavedModel) / an IR's .xml + .bin."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if path.suffix == ".xml":
        return path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return path.stat().st_size


def metadata_for(mcfg, cfg: dict) -> ModelMetadata:
    """deploy.json for a model decoded as `mcfg` says, with the class names of the settings `cfg`."""
    from src.data.formats.masks import mask_palette

    mask_classes = list(cfg["classes"]["mask"]) if mcfg.num_mask_classes else []
    return ModelMetadata(input_size=mcfg.input_size, anchors=[list(map(float, a)) for a in mcfg.anchors],
                         victim_classes=list(cfg["classes"]["victim"]),
                         disaster_classes=list(cfg["classes"]["disaster"]), centre_range=mcfg.centre_range,
                         mask_classes=mask_classes, mask_palette=mask_palette(len(mask_classes)))


def calibration_images(cfg: dict, count: int, size: int, train=None) -> np.ndarray:
    """`count` letterboxed training-split images (seeded), float32 (N, S, S, 3).

    train: the training-split records when the caller has them already (else read here)."""
    if train is None:
        from src.data.datasets import load_data

        train = load_data(cfg)["train"]
    rng = np.random.default_rng(cfg["seed"])
    chosen = rng.choice(len(train), size=min(count, len(train)), replace=False)
    return np.stack([letterbox(read_image(train[i].image_path), size)[0] for i in chosen])


def write_savedmodel(model, mcfg, cfg: dict, path: Path, size: int):
    """SavedModel with `serve` (raw heads, the default signature) and `detect` (decode as `mcfg`
    says, and NMS, in the graph; a segmenting model's per-pixel class `mask` besides)."""
    import keras
    import tensorflow as tf

    from src.evaluation import with_mask
    from src.model.decode import detect

    spec = [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
    evaluation = cfg.get("evaluation", {})
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda images: model(images, training=False), input_signature=spec)

    def detect_with_mask(images):
        outputs = model(images, training=False)
        return with_mask(detect(outputs, mcfg, **evaluation), outputs)
    archive.add_endpoint("detect", detect_with_mask, input_signature=spec)
    archive.write_out(str(path), verbose=False)


def write_tflite(saved_model: Path, path: Path, precision: str, calibration: np.ndarray):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serve"])
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    path.write_bytes(converter.convert())


def write_openvino(saved_model: Path, path: Path, precision: str, calibration: np.ndarray):
    import openvino as ov

    model = ov.convert_model(str(saved_model))
    if precision == "int8":
        import nncf

        dataset = nncf.Dataset(list(calibration), lambda image: image[None])
        # The 1x1 output convs of the YOLO heads emit box offsets, log sizes and
        # logits in one tensor; one int8 scale over all of them loses detection
        # quality, so they stay in float; so do the segmentation logits, whose argmax
        # flips wherever two classes are close.
        float_outputs = nncf.IgnoredScope(patterns=[HEAD_OUTPUT_PATTERN, SEG_OUTPUT_PATTERN], validate=False)
        model = nncf.quantize(model, dataset, subset_size=len(calibration),
                              preset=nncf.QuantizationPreset.MIXED, ignored_scope=float_outputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=precision == "fp16")


def export(model_path: Path, cfg: dict, out_dir: Path, formats=DEFAULT_FORMATS,
           calibration_count: int = DEFAULT_CALIBRATION_IMAGES, train_records=None) -> dict:
    """Write every requested format into out_dir; returns {format: {path, bytes, seconds}}.

    train_records: the training split for int8 calibration, if the caller has read it."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from src.evaluation import check_model_fits
    from src.federated.checkpoint import load_trained_model
    from src.model.config import record_decode, with_recorded_decode
    from src.settings import model_config

    model = load_trained_model(model_path, cfg)
    mcfg = with_recorded_decode(model_config(cfg), model_path)
    check_model_fits(model, mcfg, str(model_path))
    meta = metadata_for(mcfg, cfg)
    meta.save(out_dir)
    saved_model = artefact_path(out_dir, "savedmodel")
    needs_savedmodel = any(f != "keras" for f in formats)
    calibration = None
    if any(f.endswith("int8") for f in formats):
        log.info("calibration: %d letterboxed training images", calibration_count)
        calibration = calibration_images(cfg, calibration_count, meta.input_size, train_records)
    ordered = [f for f in FORMATS if f in formats or (f == "savedmodel" and needs_savedmodel)]
    written = {}
    for fmt in tqdm(ordered, desc="export", unit="format"):
        path = artefact_path(out_dir, fmt)
        start = time.perf_counter()
        if fmt == "keras":
            model.save(path)
            record_decode(path, mcfg)
        elif fmt == "savedmodel":
            write_savedmodel(model, mcfg, cfg, path, meta.input_size)
        elif fmt.startswith("tflite"):
            write_tflite(saved_model, path, fmt.split("-")[1], calibration)
        else:
            write_openvino(saved_model, path, fmt.split("-")[1], calibration)
        if fmt in formats:
            written[fmt] = {"path": str(path), "runtime": runtime_of(fmt), "bytes": size_bytes(path),
                            "seconds": round(time.perf_counter() - start, 2)}
            log.info("%-14s %8.2f MB  %s", fmt, written[fmt]["bytes"] / 1e6, path)
    (out_dir / "export.json").write_text(json.dumps(
        {"source": str(model_path), "formats": written, "calibration_images": calibration_count}, indent=2))
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".keras file or OpenFL .pbuf state")
    p.add_argument("--out", default="workspace/runs/export/models", help="output folder")
    p.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS), choices=FORMATS)
    p.add_argument("--calibration-images", type=positive_int, default=DEFAULT_CALIBRATION_IMAGES,
                   help="training-split images for int8 calibration")
    p.add_argument("--config", default=None, help="YAML config the model was trained with")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_command(lambda: export(Path(args.model), load_settings(args.config, args.set), Path(args.out),
                                      args.formats, args.calibration_images))


if __name__ == "__main__":
    sys.exit(main())
