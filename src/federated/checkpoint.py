"""Saved models: OpenFL model-state files (`save/best.pbuf`, ...) as Keras weights, and `.keras` files."""
from __future__ import annotations

import zipfile
from pathlib import Path


def load_pbuf_weights(path: Path) -> tuple[dict, int]:
    """Tensor dict (keyed by variable path) and round number of an OpenFL model state file."""
    from openfl.pipelines import NoCompressionPipeline
    from openfl.protocols import utils

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such OpenFL model state file")
    proto = utils.load_proto(str(path))
    return utils.deconstruct_model_proto(proto, NoCompressionPipeline())


def assign_weights(model, weights: dict) -> None:
    """Copy a tensor dict keyed by `variable.path` into the model (names checked first)."""
    missing = [v.path for v in model.weights if v.path not in weights]
    if missing:
        raise KeyError(f"tensor dict lacks {len(missing)} model tensors, e.g. {missing[:3]}")
    for v in model.weights:
        v.assign(weights[v.path].reshape(v.shape))


def load_keras_file(path: Path):
    """The model in a `.keras` file; a file Keras cannot read is a ValueError saying so.

    Keras reports a file that is not a zip archive as "File not found", and a
    damaged archive with whatever its reader trips on."""
    import keras

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable model file (a .keras file is a zip archive; this is not one)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - any failure inside the archive means the same to the user
        raise ValueError(f"{path}: not a readable model file ({type(err).__name__}: {err})") from err


def load_trained_model(path: Path, cfg: dict):
    """A Keras model from a `.keras` file or an OpenFL `.pbuf` state (architecture from cfg)."""
    from src.settings import model_config
    from src.model import build_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix == ".keras":
        return load_keras_file(path)
    if path.suffix == ".pbuf":
        model = build_model(model_config(cfg))
        try:
            weights, _ = load_pbuf_weights(path)
        except Exception as err:  # noqa: BLE001 - protobuf raises its own types for a damaged file
            raise ValueError(f"{path}: not a readable OpenFL model state ({type(err).__name__}: {err})") from err
        try:
            assign_weights(model, weights)
        except (KeyError, ValueError) as err:
            reason = err.args[0] if err.args else err  # a KeyError's str() adds quotes
            raise ValueError(f"{path}: does not fit the model the settings describe ({reason}); pass the "
                             "settings it was trained with (--config, --set)") from err
        return model
    raise ValueError(f"{path}: expected a .keras file or an OpenFL .pbuf state file")
