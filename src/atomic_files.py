"""Write a file so that a crash mid-write leaves the previous version intact.

A process killed while writing `best.pbuf` or `model.keras` in place leaves a
truncated file that no longer loads; the previous good checkpoint is gone
with it. Writing to a temporary file next to the target, flushing it to disk
and renaming it over the target (atomic on POSIX within one file system)
means a reader only ever sees the old file or the complete new one.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path):
    """Yield a temporary path to write; on success it replaces `path` in one step.

    The temporary name keeps the suffix (Keras insists on `.keras`). On an
    error the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path, data: bytes):
    with replaced_atomically(path) as tmp:
        Path(tmp).write_bytes(data)


def dump_proto_atomically(model_proto, fpath):
    """Drop-in for openfl.protocols.utils.dump_proto (which writes in place)."""
    write_bytes_atomically(fpath, model_proto.SerializeToString())


def save_model_atomically(model, path):
    """keras Model.save, atomically."""
    with replaced_atomically(path) as tmp:
        model.save(tmp)
