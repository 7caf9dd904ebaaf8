"""Argument types for the subcommands' numeric options.

Each factory returns a function for argparse's ``type=``: it converts the text or raises
``argparse.ArgumentTypeError`` naming the value and the allowed range, which argparse
prints as ``fastka demo: error: argument --x: ...`` with exit status 2 (never a
traceback, never a value the kernel or the run would refuse later).
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, List


def integer(low: int, high: int, why: str = "") -> Callable[[str], int]:
    """An int in low..high; ``why`` explains the bound (e.g. the open-file limit)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: {low}..{high}{why}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: {low}..{high}{why}")
        return value

    return convert


def seconds(low: float, high: float) -> Callable[[str], float]:
    """A finite number of seconds in low..high (float)."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds; allowed: {low:g}..{high:g}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {low:g}..{high:g} seconds")
        return value

    return convert


def integers(low: int, high: int, why: str = "") -> Callable[[str], List[int]]:
    """Comma-separated ints, each in low..high (at least one)."""
    one = integer(low, high, why)

    def convert(text: str) -> List[int]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{text!r} holds no number; give N or N,N,... each in {low}..{high}")
        return [one(p) for p in parts]

    return convert
