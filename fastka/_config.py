"""KeepaliveConfig: one validated set of TCP keepalive values, and the system defaults."""
from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, replace
from typing import Optional, Union

from ._platform import LIMITS

Seconds = Union[int, float]


def _whole_seconds(field: str, value: object, lo: int, hi: int) -> int:
    """Validate a time in seconds and round it UP to whole seconds (kernel granularity)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{field} must be a number of seconds (int or float), not {type(value).__name__}: {value!r}")
    value = float(value) if not isinstance(value, int) else value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field}={value!r} is not a finite number of seconds; allowed: {lo}..{hi}")
    if value <= 0:
        raise ValueError(f"{field}={value!r} must be > 0 seconds; allowed: {lo}..{hi}")
    whole = math.ceil(value)
    if not lo <= whole <= hi:
        raise ValueError(f"{field}={value!r} is out of range; allowed: {lo}..{hi} seconds")
    return int(whole)


def _count(value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"count must be an int, not {type(value).__name__}: {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"count={value!r} is out of range; allowed: {lo}..{hi} probes")
    return value


def _user_timeout(value: object, lo_ms: int, hi_ms: int) -> Optional[float]:
    """Validate TCP_USER_TIMEOUT in seconds; round UP to whole milliseconds."""
    if value is None:
        return None
    hi = hi_ms / 1000
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"user_timeout must be None or a number of seconds, not {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"user_timeout={value!r} is out of range; allowed: None, or 0..{hi} seconds (0 = kernel default)")
    ms = math.ceil(round(value * 1000, 6))
    if not lo_ms <= ms <= hi_ms:
        raise ValueError(f"user_timeout={value!r} is out of range; allowed: None, or 0..{hi} seconds (0 = kernel default)")
    return ms / 1000


@dataclass(frozen=True)
class KeepaliveConfig:
    """TCP keepalive settings: frozen, hashable, validated on construction.

    idle: seconds of silence before the first probe; interval: seconds between probes
    (fractions round up to whole seconds). count: unanswered probes before the peer is
    declared dead. user_timeout: seconds sent data may stay unacknowledged before the
    connection is dropped (TCP_USER_TIMEOUT, millisecond precision); None leaves the
    kernel's setting alone, 0 restores the kernel default.

    Raises ValueError (field, value and allowed range) or TypeError for a wrong type.
    """

    idle: Seconds = 60
    interval: Seconds = 10
    count: int = 5
    user_timeout: Optional[Seconds] = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "idle", _whole_seconds("idle", self.idle, *LIMITS.idle))
        set_(self, "interval", _whole_seconds("interval", self.interval, *LIMITS.interval))
        set_(self, "count", _count(self.count, *LIMITS.count))
        set_(self, "user_timeout", _user_timeout(self.user_timeout, *LIMITS.user_timeout_ms))

    @property
    def detection_time(self) -> float:
        """Worst-case seconds before a silent peer is declared dead.

        Without user_timeout: idle + interval * count. With TCP_USER_TIMEOUT set (> 0),
        Linux ignores count: at each probe tick after the first probe it drops the
        connection once the time since the peer was last heard from reaches
        user_timeout, so detection is idle + interval * max(1, ceil((user_timeout - idle) / interval)).
        """
        if self.user_timeout:
            ticks = max(1, math.ceil(round((self.user_timeout - self.idle) / self.interval, 9)))
            return float(self.idle + self.interval * ticks)
        return float(self.idle + self.interval * self.count)

    def replace(self, **changes: object) -> "KeepaliveConfig":
        """A copy with the given fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def within(
        cls, idle_timeout: Seconds, *, count: int = 5, user_timeout: Optional[Seconds] = None
    ) -> "KeepaliveConfig":
        """A config whose probes keep a NAT or load balancer with ``idle_timeout`` seconds
        of idle allowance from dropping the connection, and that still detects a dead peer.

        The first probe goes out at about 3/4 of ``idle_timeout`` minus one interval, so
        that even when the first probe is lost the second still arrives before the
        middlebox gives up. Raises ValueError when ``idle_timeout`` is too short (< 2.5 s).
        """
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, numbers.Real):
            raise TypeError(f"idle_timeout must be a number of seconds, not {type(idle_timeout).__name__}: {idle_timeout!r}")
        t = float(idle_timeout)
        if not math.isfinite(t) or t < 2.5:
            raise ValueError(f"idle_timeout={idle_timeout!r} is too short; allowed: >= 2.5 seconds")
        interval = max(1, min(10, int(t // 10)))
        idle = max(1, min(LIMITS.idle[1], int(t * 0.75) - interval))
        if idle + interval >= t:  # pragma: no cover - guarded by the 2.5 s minimum
            raise ValueError(f"idle_timeout={idle_timeout!r} leaves no room for two probes")
        return cls(idle=idle, interval=interval, count=count, user_timeout=user_timeout)


def system_defaults() -> KeepaliveConfig:
    """The operating system's keepalive defaults (Linux: net.ipv4.tcp_keepalive_*)."""
    from ._platform import read_system_defaults

    idle, interval, count = read_system_defaults()
    cfg = object.__new__(KeepaliveConfig)  # the system's own values are taken as they are
    for name, value in (("idle", idle), ("interval", interval), ("count", count), ("user_timeout", None)):
        object.__setattr__(cfg, name, value)
    return cfg
