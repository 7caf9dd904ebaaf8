"""KeepaliveConfig: one validated set of TCP keepalive values, and the system defaults."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple, Union, cast

from . import _platform

Seconds = Union[int, float]


def _where() -> str:
    return _platform.CURRENT.title


def _whole_seconds(field: str, value: object, lo: int, hi: int) -> int:
    """Validate a time in seconds and round it UP to whole seconds (kernel granularity)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{field} must be a number of seconds (int or float), not {type(value).__name__}: {value!r}")
    value = float(value) if not isinstance(value, int) else value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field}={value!r} is not a finite number of seconds; allowed: {lo}..{hi} on {_where()}")
    if value <= 0:
        raise ValueError(f"{field}={value!r} must be > 0 seconds; allowed: {lo}..{hi} on {_where()}")
    whole = math.ceil(value)
    if not lo <= whole <= hi:
        raise ValueError(f"{field}={value!r} is out of range; allowed: {lo}..{hi} seconds on {_where()}")
    return int(whole)


def _count(value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"count must be an int, not {type(value).__name__}: {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"count={value!r} is out of range; allowed: {lo}..{hi} probes on {_where()}")
    return value


def seconds_to_ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded UP (never time out sooner than asked); a value
    that is already whole milliseconds, such as KeepaliveConfig.user_timeout, comes back
    exactly (2.007 gives 2007, although 2.007 * 1000 is 2006.9999... in binary).
    The one seconds-to-milliseconds conversion: every user timeout reaches the kernel
    through it."""
    return math.ceil(round(seconds * 1000, 6))


def ms_to_seconds(ms: int) -> float:
    """Milliseconds as seconds: the one conversion back (KeepaliveConfig.user_timeout,
    get_keepalive's user_timeout)."""
    return ms / 1000


def _user_timeout(value: object, limits: Optional[Tuple[int, int]]) -> Optional[float]:
    """Validate TCP_USER_TIMEOUT in seconds; round UP to whole milliseconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"user_timeout must be None or a number of seconds, not {type(value).__name__}: {value!r}")
    if limits is None:
        raise ValueError(
            f"user_timeout={value!r} cannot be set on {_where()}: it has no per-socket user timeout; allowed: None"
        )
    lo_ms, hi_ms = limits
    allowed = f"allowed: None, or 0..{ms_to_seconds(hi_ms)} seconds (0 = kernel default) on {_where()}"
    try:
        as_float = float(value)
    except OverflowError:
        raise ValueError(f"user_timeout={value!r} is out of range; {allowed}") from None
    if not math.isfinite(as_float) or as_float < 0 or as_float > ms_to_seconds(hi_ms):
        raise ValueError(f"user_timeout={value!r} is out of range; {allowed}")
    ms = seconds_to_ms(as_float)
    if not lo_ms <= ms <= hi_ms:
        raise ValueError(f"user_timeout={value!r} is out of range; {allowed}")
    return ms_to_seconds(ms)


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
        limits = _platform.CURRENT.limits
        set_ = object.__setattr__
        set_(self, "idle", _whole_seconds("idle", self.idle, *limits.idle))
        set_(self, "interval", _whole_seconds("interval", self.interval, *limits.interval))
        set_(self, "count", _count(self.count, *limits.count))
        set_(self, "user_timeout", _user_timeout(self.user_timeout, limits.user_timeout_ms))

    @property
    def detection_time(self) -> float:
        """Worst-case seconds before a silent peer is declared dead.

        Without user_timeout: idle + interval * count. With TCP_USER_TIMEOUT set (> 0),
        Linux ignores count (tcp_keepalive_timer in net/ipv4/tcp_timer.c): at each probe
        tick after the first probe it drops the connection once the time since the peer
        was last heard from reaches user_timeout, so detection is
        idle + interval * max(1, ceil((user_timeout - idle) / interval)): never before the
        first probe's tick, and later than the count rule when user_timeout is longer.
        That rule is Linux's; elsewhere the count rule is given.
        """
        if self.user_timeout and _platform.CURRENT is _platform.LINUX:
            ticks = max(1, math.ceil(round((self.user_timeout - self.idle) / self.interval, 9)))
            return float(self.idle + self.interval * ticks)
        return float(self.idle + self.interval * self.count)

    def socket_options(self) -> List[Tuple[int, int, int]]:
        """``(level, option, value)`` triples that apply this config on this platform, in
        the order set_keepalive makes the calls: ``(SOL_SOCKET, SO_KEEPALIVE, 1)`` first,
        then the IPPROTO_TCP options, the user timeout only when it is not None.

        What urllib3, requests and httpx take as ``socket_options``; ``sock.setsockopt(*t)``
        applies one. Raises ValueError where the platform needs an ioctl instead (Windows
        before 10 1709: SIO_KEEPALIVE_VALS).
        """
        return [(cast(int, level), number, cast(int, value)) for _, level, number, value in self._plan()]

    def tcp_options(self) -> Dict[int, int]:
        """The IPPROTO_TCP options of :meth:`socket_options` as ``{option: value}`` (what
        redis-py takes as ``socket_keepalive_options``). Raises as socket_options does."""
        return {number: value for level, number, value in self.socket_options() if level == _platform.IPPROTO_TCP}

    def libpq_params(self) -> Dict[str, str]:
        """This config as libpq connection parameters (psycopg, psycopg2, SQLAlchemy
        ``connect_args``, a conninfo string): ``keepalives``,
        ``keepalives_idle``, ``keepalives_interval``, ``keepalives_count`` (seconds and
        probes, as strings) and, when ``user_timeout`` is set, ``tcp_user_timeout`` in
        milliseconds. libpq applies them on every connection it opens."""
        idle, interval, count, user_timeout_ms = native(self)
        params = {
            "keepalives": "1",
            "keepalives_idle": str(idle),
            "keepalives_interval": str(interval),
            "keepalives_count": str(count),
        }
        if user_timeout_ms >= 0:
            params["tcp_user_timeout"] = str(user_timeout_ms)
        return params

    def _plan(self) -> List[_platform.Step]:
        """The option calls of set_keepalive for this config on this platform (from
        _platform.plan); ValueError where one of them is an ioctl."""
        steps = _platform.steps_for(-1, *native(self))
        for name, level, _, _ in steps:
            if level == "ioctl":
                raise ValueError(
                    f"{self!r} needs the {name} ioctl on {_where()} before 10 1709, which socket options "
                    f"cannot express; apply it with fastka.set_keepalive(sock, config) instead"
                )
        return steps

    def replace(self, **changes: Any) -> "KeepaliveConfig":
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
        middlebox gives up. The interval is a twentieth of ``idle_timeout`` (1..10 s), so
        that with the default 5 probes a dead peer is found within one ``idle_timeout``
        from 60 s up. Raises ValueError when
        ``idle_timeout`` is too short (< 2.5 s, or too short for the platform's minimum
        idle time) and TypeError when it is not a number.
        """
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, numbers.Real):
            raise TypeError(f"idle_timeout must be a number of seconds, not {type(idle_timeout).__name__}: {idle_timeout!r}")
        try:
            t = float(idle_timeout)
        except OverflowError:  # larger than any float: as long as forever
            t = math.inf
        if not math.isfinite(t):
            raise ValueError(f"idle_timeout={idle_timeout!r} is not a finite number of seconds; allowed: >= 2.5 seconds")
        if t < 2.5:
            raise ValueError(f"idle_timeout={idle_timeout!r} is too short; allowed: >= 2.5 seconds")
        limits = _platform.CURRENT.limits
        interval = max(limits.interval[0], min(10, int(t // 20)))
        idle = max(limits.idle[0], min(limits.idle[1], int(t * 0.75) - interval))
        if idle + interval >= t:  # e.g. Solaris, whose idle time is at least 10 s
            raise ValueError(
                f"idle_timeout={idle_timeout!r} leaves no room for two probes on {_where()} "
                f"(idle >= {limits.idle[0]} s); allowed: > {idle + interval} seconds"
            )
        return cls(idle=idle, interval=interval, count=count, user_timeout=user_timeout)


DEFAULT = KeepaliveConfig()

# Idle timeouts after which common middleboxes silently drop a TCP flow (seconds): a
# keepalive idle time longer than these loses the connection. See KeepaliveConfig.within.
MIDDLEBOX_IDLE_TIMEOUTS = {
    "AWS Network Load Balancer": 350,
    "Azure Load Balancer (default)": 240,
    "Google Cloud VPC connection tracking": 600,
}


def resolve(
    config: Optional[KeepaliveConfig],
    idle: Optional[Seconds] = None,
    interval: Optional[Seconds] = None,
    count: Optional[int] = None,
    user_timeout: Optional[Seconds] = None,
) -> KeepaliveConfig:
    """``config`` (default ``KeepaliveConfig()``) with the keyword overrides that are not None.

    Raises TypeError when ``config`` is not a KeepaliveConfig, and what KeepaliveConfig
    raises for an invalid override.
    """
    if config is None:
        config = DEFAULT
    elif not isinstance(config, KeepaliveConfig):
        raise TypeError(f"config must be a KeepaliveConfig or None, not {type(config).__name__}: {config!r}")
    if idle is None and interval is None and count is None and user_timeout is None:
        return config
    changes: Dict[str, Any] = {
        name: value
        for name, value in (("idle", idle), ("interval", interval), ("count", count), ("user_timeout", user_timeout))
        if value is not None
    }
    return replace(config, **changes)


def native(config: KeepaliveConfig) -> Tuple[int, int, int, int]:
    """(idle s, interval s, count, user_timeout ms or -1 for None): the fields
    _platform.plan takes."""
    ut = config.user_timeout
    return int(config.idle), int(config.interval), config.count, -1 if ut is None else seconds_to_ms(ut)


def update_fields(
    idle: Optional[Seconds], interval: Optional[Seconds], count: Optional[int], user_timeout: Optional[Seconds]
) -> Tuple[int, int, int, int]:
    """Validate the fields update_keepalive was given, each as KeepaliveConfig would, as
    (idle, interval, count, user_timeout ms) with -1 for "leave as the kernel has it"."""
    limits = _platform.CURRENT.limits
    i = -1 if idle is None else _whole_seconds("idle", idle, *limits.idle)
    v = -1 if interval is None else _whole_seconds("interval", interval, *limits.interval)
    c = -1 if count is None else _count(count, *limits.count)
    ut = _user_timeout(user_timeout, limits.user_timeout_ms)
    return i, v, c, -1 if ut is None else seconds_to_ms(ut)


def system_defaults() -> KeepaliveConfig:
    """The operating system's keepalive defaults (Linux: net.ipv4.tcp_keepalive_*)."""
    from ._platform import read_system_defaults

    idle, interval, count = read_system_defaults()
    cfg = object.__new__(KeepaliveConfig)  # the system's own values are taken as they are
    for name, value in (("idle", idle), ("interval", interval), ("count", count), ("user_timeout", None)):
        object.__setattr__(cfg, name, value)
    return cfg
