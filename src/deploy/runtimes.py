"""One interface over every runtime an exported model runs on.

`open_runtime(kind, path)` returns an object whose `raw(images)` maps a
float32 batch (B, S, S, 3) of letterboxed images to the raw heads
(det_s8, det_s16, det_s32, disaster, and a segmenting model's per-pixel
`segmentation` logits) as numpy arrays; `src.deploy.postprocess`
turns those into detections the same way for all of them, so a difference
between runtimes is the runtime's, never the post-processing's.

Each runtime imports only its own library: the TFLite path needs
`ai-edge-litert` (LiteRT), the OpenVINO path `openvino`; neither needs
TensorFlow. A file its runtime cannot read is a ValueError that names it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from src.deploy.postprocess import DISASTER_NAME, HEAD_NAMES, SEGMENTATION_NAME

OUTPUT_NAMES = HEAD_NAMES + (DISASTER_NAME,)
OPTIONAL_OUTPUT_NAMES = (SEGMENTATION_NAME,)  # the outputs of heads a model may not have
RUNTIMES = ("keras", "savedmodel", "tflite", "openvino")


def default_threads() -> int:
    return os.cpu_count() or 1


@contextmanager
def reading(path, kind: str):
    """Turn whatever a runtime raises on a damaged or foreign file into one ValueError naming it."""
    try:
        yield
    except ImportError:
        raise  # a missing runtime package is not the file's fault
    except Exception as err:  # noqa: BLE001 - each runtime has its own exception types
        raise ValueError(f"{path}: not a readable {kind} model ({' '.join(str(err).split())})") from err


class KerasRuntime:
    """A `.keras` file through Keras 3 (TensorFlow backend): the reference."""

    name = "keras"

    def __init__(self, path: Path, threads: int | None = None):
        import tensorflow as tf

        from src.federated.checkpoint import load_keras_file

        self.model = load_keras_file(path)
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def raw(self, images: np.ndarray) -> dict:
        return {k: np.asarray(v) for k, v in self._call(images).items()}


class SavedModelRuntime:
    """A TF SavedModel folder, its `serve` endpoint (raw heads)."""

    name = "savedmodel"

    def __init__(self, path: Path, threads: int | None = None):
        import tensorflow as tf

        with reading(path, self.name):
            self.module = tf.saved_model.load(str(path))

    def raw(self, images: np.ndarray) -> dict:
        return {k: np.asarray(v) for k, v in self.module.serve(images).items()}


class TFLiteRuntime:
    """A `.tflite` file through LiteRT (XNNPACK on CPU), one image per invoke."""

    name = "tflite"

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        with reading(path, self.name):
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or default_threads())
            self.runner = self.interpreter.get_signature_runner("serve")

    def raw(self, images: np.ndarray) -> dict:
        outs = [self.runner(images=images[i:i + 1]) for i in range(len(images))]
        return {k: np.concatenate([o[k] for o in outs]) for k in _model_outputs(outs[0])}


class OpenVINORuntime:
    """An OpenVINO IR (`model.xml` + `.bin`) compiled for the CPU."""

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or default_threads(),
                  # f32 execution: the CPU plugin would otherwise pick bf16 where
                  # the processor has it, and FP16 IR means fp16 *weights* here.
                  "INFERENCE_PRECISION_HINT": "f32"}
        with reading(path, self.name):
            self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def raw(self, images: np.ndarray) -> dict:
        result = self.request.infer({0: images})
        by_name = {out.get_any_name(): result[out] for out in self.compiled.outputs}
        return {k: np.array(by_name[k]) for k in _model_outputs(by_name)}


def _model_outputs(available) -> tuple[str, ...]:
    """The output names a runtime returns: every head output, and the optional ones the model has."""
    return OUTPUT_NAMES + tuple(k for k in OPTIONAL_OUTPUT_NAMES if k in available)


_BY_KIND = {"keras": KerasRuntime, "savedmodel": SavedModelRuntime,
            "tflite": TFLiteRuntime, "openvino": OpenVINORuntime}


def open_runtime(kind: str, path, threads: int | None = None):
    """The runtime `kind` (one of RUNTIMES) on the exported file or folder `path`."""
    if kind not in _BY_KIND:
        raise ValueError(f"unknown runtime {kind!r}; choose one of {RUNTIMES}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such exported model (run `python -m src.deploy.export`)")
    return _BY_KIND[kind](path, threads)


def runtime_for_file(path) -> str:
    """Guess the runtime from an exported artefact's name."""
    path = Path(path)
    if path.suffix == ".keras":
        return "keras"
    if path.suffix == ".tflite":
        return "tflite"
    if path.suffix == ".xml":
        return "openvino"
    if path.is_dir() and (path / "saved_model.pb").exists():
        return "savedmodel"
    raise ValueError(f"{path}: cannot tell the runtime (expected .keras, .tflite, .xml or a SavedModel folder)")
