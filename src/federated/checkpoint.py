"""Saved models: OpenFL model-state files (`save/best.pbuf`, ...) as Keras weights, and `.keras` files."""
from __future__ import annotations

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


def load_trained_model(path: Path, cfg: dict):
    """A Keras model from a `.keras` file or an OpenFL `.pbuf` state (architecture from cfg)."""
    import keras

    from src.settings import model_config
    from src.model import build_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix == ".keras":
        return keras.saving.load_model(path, compile=False)
    if path.suffix == ".pbuf":
        model = build_model(model_config(cfg))
        weights, _ = load_pbuf_weights(path)
        assign_weights(model, weights)
        return model
    raise ValueError(f"{path}: expected a .keras file or an OpenFL .pbuf state file")
