"""A file write that stops partway, the way a full disk or a killed process leaves it.

- `writes_fail_beyond`: the operating system's file-size limit (RLIMIT_FSIZE) stops
  every write to a regular file at n bytes, whatever writes it (Python, Keras' zip
  writer, OpenFL's protobuf dump): the kernel writes up to the limit and refuses the
  rest with an OSError (EFBIG, "File too large"), as a disk filling up midway does.
- `die_in_the_middle_of_writing`: the process is SIGKILLed partway through writing one
  named file, as a crash or the OOM killer would.
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import resource
import signal
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path


@contextmanager
def writes_fail_beyond(n_bytes: int):
    """Within the block, a write that would grow a file past n_bytes raises OSError(EFBIG)
    after writing the bytes up to the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    action = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (Python ignores it anyway)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, action)


def die_in_the_middle_of_writing(name_pattern: str, n_bytes: int, nth: int = 1) -> None:
    """From now on this process is killed (SIGKILL) in the middle of writing the nth file it
    opens for writing whose name matches `name_pattern` (fnmatch), once n_bytes of it are
    written: a crash mid-write, wherever the code is then. Python-level (files opened with
    open/io.open/pathlib), so no other file a process writes on the way (TensorFlow's
    generated code, logs) can take the hit."""
    real_open, opened = io.open, 0

    def open_(file, mode="r", *args, **kwargs):
        nonlocal opened
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and "w" in mode and fnmatch(Path(file).name, name_pattern):
            opened += 1
            if opened == nth:
                return _DiesMidWrite(handle, n_bytes)
        return handle

    io.open = builtins.open = open_


class _DiesMidWrite:
    """A file that takes n_bytes, then kills the process writing it."""

    def __init__(self, handle, n_bytes: int):
        self._handle, self._left = handle, n_bytes

    def write(self, data):
        if len(data) > self._left:
            self._handle.write(data[:self._left])
            self._handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self._left -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def is_file_too_large(err: BaseException) -> bool:
    """Whether err, or an error it was raised from, is the EFBIG the limit causes."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.EFBIG:
            return True
        err = err.__cause__ or err.__context__
    return False
