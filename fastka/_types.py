"""Value types shared by both backends: events, kernel read-backs, TCP_INFO, and the
type of a "sock" argument."""
from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from typing import Optional, Protocol, Union


class HasFileno(Protocol):
    """Any object with a ``fileno()`` method returning its file descriptor."""

    def fileno(self) -> int: ...


SocketLike = Union[socket.socket, HasFileno, int]
"""What every "sock" argument accepts: a socket, any object with fileno(), or an int fd >= 0."""


class Event(enum.IntEnum):
    """What a KeepaliveManager reports for a connection. The values are the FK_EV_* codes
    of src/events.h's FK_EVENTS table (tests/library/test_manager_edge_cases.py compares
    them with the compiled module's EVENT_CODES, built from that table)."""

    READABLE = 1
    IDLE = 2
    PEER_CLOSED = 3
    RESET = 4
    TIMED_OUT = 5
    MAX_REQUESTS = 6
    MAX_LIFETIME = 7
    ERROR = 8


@dataclass(frozen=True)
class KeepaliveState:
    """Keepalive settings as the kernel reports them for one socket.

    Times are seconds; ``user_timeout`` is ``None`` when TCP_USER_TIMEOUT is 0 (unset).
    """

    enabled: bool
    idle: int
    interval: int
    count: int
    user_timeout: Optional[float]


@dataclass(frozen=True)
class TcpInfo:
    """A subset of Linux TCP_INFO; times in seconds (float)."""

    state: str
    retransmits: int
    probes: int
    backoff: int
    rtt: float
    rttvar: float
    last_data_recv: float
    last_data_sent: float
    last_ack_recv: float
    unacked: int
    lost: int
    total_retrans: int


# Linux TCP states, indexed by tcpi_state (include/net/tcp_states.h).
TCP_STATES = (
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
    "BOUND_INACTIVE",
)
