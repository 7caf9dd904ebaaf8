"""Argument types for the subcommands' numeric options.

Each factory returns a function for argparse's ``type=``: it converts the text or raises
``argparse.ArgumentTypeError`` naming the value and the allowed range, which argparse
prints as ``fastka demo: error: argument --x: ...`` with exit status 2 (never a
traceback, never a value the kernel or the run would refuse later).
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Callable, List


def integer(low: int, high: int, why: str = "", *, unit: str = "") -> Callable[[str], int]:
    """An int in low..high, in ``unit`` (e.g. "bytes"; none for a count). ``why`` names what
    sets ``high`` (e.g. "the open-file limit"), for a bound that depends on the machine."""
    allowed = f"{low}..{high}" + (f" {unit}" if unit else "") + (f" (set by {why})" if why else "")

    def convert(text: str) -> int:
        if high < low:
            raise argparse.ArgumentTypeError(
                f"no value can run here: {why or 'the upper bound'} allows at most {high}, fewer than {low}")
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: {allowed}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: {allowed}")
        return value

    return convert


def number(low: float, high: float, unit: str) -> Callable[[str], float]:
    """A finite number of ``unit`` in low..high (float; never nan or inf)."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}; allowed: {low:g}..{high:g}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {low:g}..{high:g} {unit}")
        return value

    return convert


def seconds(low: float, high: float) -> Callable[[str], float]:
    """A finite number of seconds in low..high (float)."""
    return number(low, high, "seconds")


def integers(low: int, high: int, why: str = "") -> Callable[[str], List[int]]:
    """Comma-separated ints, each in low..high (at least one, no empty item), in ascending
    order without repeats."""
    one = integer(low, high, why)

    def convert(text: str) -> List[int]:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError(f"{text!r} holds no number; give N or N,N,... each in {low}..{high}")
        if not all(parts):
            raise argparse.ArgumentTypeError(
                f"{text!r} has an empty item between commas; give N or N,N,... each in {low}..{high}")
        return sorted({one(p) for p in parts})

    return convert


def output_file(text: str) -> str:
    """A path a file can be written to: an existing writable file (not truncated now) or a
    new name in an existing writable directory. The caller opens it when it has something
    to write, so that a run that fails leaves an existing file as it was."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"can't write {text!r}: it is a directory")
    if os.path.exists(text):
        if not os.access(text, os.W_OK):
            raise argparse.ArgumentTypeError(f"can't write {text!r}: permission denied")
        return text
    folder = os.path.dirname(text) or "."
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"can't write {text!r}: no directory {folder!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"can't write {text!r}: directory {folder!r} is not writable")
    return text
