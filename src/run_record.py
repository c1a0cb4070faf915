"""Where a result comes from: the `run` block of a run's JSON (date, commit, command, machine).

A number in docs/results/ is only worth quoting with the code, the command and the
machine that produced it; every run writes them beside its numbers.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent  # the repository root
# set by the Makefile's targets to the make command line as typed (`make simulate ROUNDS=3`)
MAKE_COMMAND = "MAKE_COMMAND"


def run_record(module: str, argv: Sequence[str]) -> dict:
    """{date (UTC), commit (+ "-dirty" with uncommitted changes), command, machine} of this
    process, started as `python -m module *argv` (or by make, see MAKE_COMMAND)."""
    python_command = shlex.join(["python", "-m", module, *argv])
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": git_commit(REPO),
              "command": os.environ.get(MAKE_COMMAND) or python_command,
              "machine": machine()}
    if os.environ.get(MAKE_COMMAND):
        record["python_command"] = python_command
    return record


def git_commit(repo: Path) -> str | None:
    """HEAD's commit, "-dirty" appended when the working tree differs from it; None outside git."""
    def git(*args: str) -> str:
        # --no-optional-locks: reading the state never rewrites the index
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def machine() -> dict:
    """CPU count, memory, operating system and Python of this machine."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"cpus": os.cpu_count(), "memory_gib": None if memory is None else round(memory, 1),
            "platform": platform.platform(), "python": platform.python_version()}
