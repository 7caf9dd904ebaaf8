"""Jitter: spreading each connection's lifetime limits so that connections opened together
(a deploy, a reconnect storm) do not reach them together and reconnect together.

One rule, used by KeepaliveManager (both backends), fastka.aio.KeepaliveReaper,
fastka.pools and ``fastka serve --jitter``: a limit is multiplied by a factor drawn
uniformly from ``[1 - jitter, 1 + jitter]``, once per connection, when the connection is
added. ``max_lifetime`` (seconds) and ``max_requests`` (a count, at least 1) are spread;
an idle timeout never is: that one is a promise to the client.

The random source is a ``random.Random``-like object (``.random() -> [0, 1)``); the
managers take a private one so that tests can seed it and compare the backends.
"""
from __future__ import annotations

import math
import numbers
import random as _random
from typing import Callable, Optional, cast

MAX_JITTER = 0.5
"""The largest jitter: a limit is never spread by more than half of itself."""

Source = Callable[[], float]
"""A draw in [0, 1): ``random.random`` or a seeded ``random.Random(seed).random``."""

default_source: Source = _random.random


def check(value: object, name: str = "jitter") -> float:
    """``value`` as a fraction 0 <= jitter <= 0.5 (int or float). TypeError for a non-number
    (or bool), ValueError outside the range (NaN included), both naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a fraction (int or float) from 0 to {MAX_JITTER}, not {type(value).__name__}: {value!r}")
    fraction = cast(float, value)
    if not 0 <= fraction <= MAX_JITTER:  # also rejects NaN
        raise ValueError(f"{name}={value!r} must be a fraction from 0 to {MAX_JITTER} (0.1 spreads a limit by ±10%)")
    return float(fraction)


def factor(jitter: float, source: Source = default_source) -> float:
    """One draw of the spreading factor, uniform in [1 - jitter, 1 + jitter); exactly 1.0
    (no draw) when jitter is 0."""
    if not jitter:
        return 1.0
    return 1.0 + jitter * (2.0 * source() - 1.0)


def seconds(limit: Optional[float], jitter: float, source: Source = default_source) -> Optional[float]:
    """A limit in seconds spread by ``jitter`` (None stays None)."""
    if limit is None or not jitter:
        return limit
    return limit * factor(jitter, source)


def count(limit: Optional[int], jitter: float, source: Source = default_source) -> Optional[int]:
    """A limit on a count spread by ``jitter``, rounded to the nearest whole number and at
    least 1 (None stays None)."""
    if limit is None or not jitter:
        return limit
    return max(1, int(math.floor(limit * factor(jitter, source) + 0.5)))
