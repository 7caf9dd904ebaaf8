"""The checkout rule every fastka pool follows, whatever its client library.

A pooled connection is handed out again only while it is

- not idle for longer than its idle limit: ``idle_timeout``, or the server's advertised
  ``Keep-Alive: timeout=N`` minus ``margin`` when the server sent one and that is shorter;
- not older than its own ``max_age`` (``max_age`` spread once per connection by
  ``jitter``, the fastka._jitter rule);
- alive by ``fastka.find_dead`` / ``fastka.is_alive`` (peer FIN or RST, keepalive or user
  timeout, pending error).

The times become one deadline per pooled connection (the earlier of its age deadline and
the time it was put back plus its idle limit), computed when it goes back into the pool,
so that checkout costs one comparison; the liveness check costs one poll for the
connection about to be handed out and, when that one is found dead or expired, one poll for
the whole idle set (a restarted server costs two polls, not one per connection).
"""
from __future__ import annotations

import math
import numbers
import time
from typing import Any, Optional

from .. import _jitter
from .._config import KeepaliveConfig

monotonic = time.monotonic

FOREVER = math.inf


def _seconds(name: str, value: object, *, allow_zero: bool) -> Optional[float]:
    """``value`` as float seconds (None stays None); TypeError/ValueError naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be None or a number of seconds (int or float), not {type(value).__name__}: {value!r}")
    seconds = float(value)
    low_ok = seconds >= 0 if allow_zero else seconds > 0
    if not (math.isfinite(seconds) and low_ok):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be a finite number of seconds {allowed}, or None")
    return seconds


def keep_alive_timeout(header: Optional[str]) -> Optional[float]:
    """The ``timeout=N`` of a ``Keep-Alive`` response header value (``"timeout=5, max=100"``)
    in seconds, or None when there is none or it does not parse."""
    if not header:
        return None
    for part in header.split(","):
        name, _, value = part.partition("=")
        if name.strip().lower() == "timeout":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return None
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


class CheckoutRule:
    """The validated limits of one pool (see the module docstring).

    keepalive: KeepaliveConfig for every new socket, or None. idle_timeout, max_age: seconds
    (> 0) or None for no limit. jitter: fraction 0..0.5 spreading each connection's max_age.
    margin: seconds (>= 0) before the server's advertised keep-alive timeout at which a
    connection stops being reused. TypeError for a wrong type, ValueError for a bad value,
    each naming the argument.
    """

    __slots__ = ("keepalive", "idle_timeout", "max_age", "jitter", "margin", "source")

    def __init__(
        self,
        keepalive: Optional[KeepaliveConfig],
        idle_timeout: Optional[float],
        max_age: Optional[float],
        jitter: float,
        margin: float,
        *,
        source: _jitter.Source = _jitter.default_source,
    ) -> None:
        if keepalive is not None and not isinstance(keepalive, KeepaliveConfig):
            raise TypeError(f"keepalive must be a fastka.KeepaliveConfig or None, not {type(keepalive).__name__}: {keepalive!r}")
        self.keepalive = keepalive
        self.idle_timeout = _seconds("idle_timeout", idle_timeout, allow_zero=False)
        self.max_age = _seconds("max_age", max_age, allow_zero=False)
        self.jitter = _jitter.check(jitter)
        margin_ = _seconds("margin", margin, allow_zero=True)
        if margin_ is None:
            raise TypeError("margin must be a number of seconds (int or float), not None")
        self.margin = margin_
        self.source = source

    def __repr__(self) -> str:
        return (
            f"CheckoutRule(keepalive={self.keepalive!r}, idle_timeout={self.idle_timeout!r}, "
            f"max_age={self.max_age!r}, jitter={self.jitter!r}, margin={self.margin!r})"
        )

    def age_deadline(self, created: float) -> float:
        """The monotonic time at which a connection created at ``created`` is too old
        (its max_age drawn with jitter); FOREVER without max_age."""
        spread = _jitter.seconds(self.max_age, self.jitter, self.source)
        return FOREVER if spread is None else created + spread

    def idle_limit(self, idle_timeout: Optional[float], hint: Optional[float]) -> float:
        """Seconds a connection may sit idle: the shorter of ``idle_timeout`` and the
        server's ``hint`` minus the margin (0 or less: never reuse); FOREVER when neither."""
        limit = FOREVER if idle_timeout is None else idle_timeout
        if hint is not None:
            limit = min(limit, hint - self.margin)
        return limit


NO_LIMITS = CheckoutRule(None, None, None, 0.0, 1.0)
"""The rule of a pool made outside a fastka manager: only the liveness check."""


class RuleOptions:
    """The keyword arguments of the urllib3 and requests pool classes, declared once here
    (help() and editors show this ``__init__`` on each of them): they become the class's
    ``fastka_rule``, the rest go to the client library's class through ``_start``."""

    fastka_rule: CheckoutRule

    def __init__(
        self,
        *args: Any,
        keepalive: Optional[KeepaliveConfig] = None,
        idle_timeout: Optional[float] = None,
        max_age: Optional[float] = None,
        jitter: float = 0.1,
        margin: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """Validate the keyword arguments into ``fastka_rule`` (TypeError / ValueError naming
        the argument), then start the client library's class with the rest."""
        self.fastka_rule = CheckoutRule(keepalive, idle_timeout, max_age, jitter, margin)
        self._start(*args, **kwargs)

    def _start(self, *args: Any, **kwargs: Any) -> None:
        """The client library's ``__init__`` (the next class in the MRO), with ``fastka_rule`` set."""
        super().__init__(*args, **kwargs)
