"""What every command line here shares: its settings, and how it ends on input it cannot use.

Bad input (a missing or unreadable file, an impossible value, a malformed
`--set`) is the user's to fix: the command prints one `error: ...` line that
names it and exits with code 2, argparse's code for a bad command line, so
every refusal looks alike to a person and to a script. A traceback stays for
what is a bug: any exception that is not bad input.
"""
from __future__ import annotations

import argparse
import sys

import yaml

EXIT_BAD_INPUT = 2
# DataError (src.data.formats) is a ValueError; OSError covers missing files and folders.
BAD_INPUT = (OSError, ValueError, yaml.YAMLError)


def one_line(err: BaseException) -> str:
    """The error's message on one line; an OSError from the system names its file."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def run_command(action) -> int:
    """Call `action()`: exit code 0, or on bad input the `error:` line and exit code 2."""
    try:
        action()
    except BAD_INPUT as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def load_settings(config, assignments, overrides: dict | None = None) -> dict:
    """The settings from `--config` and the `--set key=value` strings (then `overrides`).

    Refuses a malformed `--set`, a settings file without a needed section and an
    impossible model setting before any work starts, naming what is wrong."""
    from src.settings import load_config, model_config, parse_assignments

    parsed = {}
    for item in assignments or ():
        try:
            parsed.update(parse_assignments([item]))
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or one_line(err)
            raise ValueError(f"--set {item!r}: the value is not YAML ({problem})") from None
    cfg = load_config(config, parsed | dict(overrides or {}))
    try:
        model_config(cfg)
    except KeyError as err:
        raise ValueError(f"settings {config or 'configs/default.yaml'}: missing key {err.args[0]!r}") from None
    return cfg


def _bounded_int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded_int(text, 0)


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is outside [0, 1]")
    return value
