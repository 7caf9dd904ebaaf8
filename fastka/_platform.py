"""Per-platform keepalive limits (first cut: H1 completes the option mapping tables)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Limits:
    """Inclusive ranges the platform accepts; seconds for idle/interval, ms for user_timeout."""

    idle: Tuple[int, int]
    interval: Tuple[int, int]
    count: Tuple[int, int]
    user_timeout_ms: Tuple[int, int]


LINUX = Limits(idle=(1, 32767), interval=(1, 32767), count=(1, 127), user_timeout_ms=(0, 2**31 - 1))

LIMITS = LINUX if sys.platform.startswith("linux") else LINUX


def read_system_defaults() -> Tuple[int, int, int]:
    """(idle, interval, count) the OS applies when a socket sets only SO_KEEPALIVE."""
    base = "/proc/sys/net/ipv4/tcp_keepalive_"
    with open(base + "time") as t, open(base + "intvl") as i, open(base + "probes") as p:
        return int(t.read()), int(i.read()), int(p.read())
