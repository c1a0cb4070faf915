"""Run several `fx` command lines, in order, in one Python process.

Each `fx` process spends ~5 s importing OpenFL before a setup command that
itself takes well under a second; `make simulate`'s 13 setup commands cost
~75 s that way. This calls OpenFL's own `fx` entry point
(`openfl.interface.cli.entry`, what the `fx` script runs) once per command
line, so the commands, their arguments and their effects are exactly those of
the `fx` calls of docs/deployment.md. It stops at the first failing command
with its exit code.

Usage (from the workspace folder, like fx):
    python PATH/TO/fx_batch.py "plan initialize -a localhost" "workspace certify" ...
"""
from __future__ import annotations

import shlex
import sys
import traceback


def run(command_lines: list[str]) -> int:
    from openfl.interface.cli import entry

    for i, line in enumerate(command_lines, 1):
        args = shlex.split(line)
        print(f"\n$ fx {line}", flush=True)
        sys.argv = ["fx", *args]
        try:
            entry()
            code = 0
        except SystemExit as stop:  # click ends every command with sys.exit
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception:  # noqa: BLE001 - reported with the command that raised it
            traceback.print_exc()
            code = 1
        if code != 0:
            print(f"fx_batch: command {i}/{len(command_lines)} `fx {line}` failed (exit {code})", flush=True)
            return code
    return 0


if __name__ == "__main__":
    # Python put this script's folder first on sys.path: its modules (data,
    # events, ...) must not shadow anything the commands import
    sys.path.pop(0)
    sys.exit(run(sys.argv[1:]))
