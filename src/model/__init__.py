"""The multi-task model family, laid out like keras-cv's model folders.

config (variants), layers (building blocks), backbone (Darknet), neck (FPN),
det_head (YOLO heads), cls_head (disaster head), assembly (one functional
model), targets (label encoder), decode (boxes + NMS), loss.

Every layer name starts with its task group, so the group of any weight reads
off its name in any process: see `task_group_of`.
"""
from src.model.config import ModelConfig, TASK_GROUPS, task_group_of

__all__ = ["build_model", "ModelConfig", "TASK_GROUPS", "task_group_of"]


def __getattr__(name):
    """`build_model` imports Keras on first use, so `src.model.config` stays TensorFlow-free."""
    if name == "build_model":
        from src.model.assembly import build_model
        return build_model
    raise AttributeError(f"module 'src.model' has no attribute {name!r}")
