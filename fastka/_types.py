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


# The one table of events: each member's name, code and documentation here, and GRACEFUL /
# DEAD below (how each is closed). setup.py writes the C core's codes from it at build time
# (enum fk_event in tables.h: FK_EV_<name>).
class Event(enum.IntEnum):
    """What a KeepaliveManager reports for a connection. ``READABLE`` leaves the connection
    registered; every other event removes it from the manager (and closes it when the
    manager was made with ``close=True``)."""

    READABLE = 1
    """Data waits to be read (also data followed by a FIN: unread data is never
    discarded); the idle clock restarts."""

    IDLE = 2
    """No activity for ``idle_timeout`` seconds; closed gracefully (the peer sees a FIN)."""

    PEER_CLOSED = 3
    """The peer sent a FIN and no unread data remains."""

    RESET = 4
    """The peer reset the connection (``ECONNRESET`` or ``EPIPE``)."""

    TIMED_OUT = 5
    """TCP keepalive or ``user_timeout`` gave up on the peer (``ETIMEDOUT``)."""

    MAX_REQUESTS = 6
    """The ``touch`` that reached ``max_requests``; closed gracefully."""

    MAX_LIFETIME = 7
    """The connection reached ``max_lifetime`` seconds; closed gracefully."""

    ERROR = 8
    """Any other pending socket error."""


GRACEFUL = frozenset((Event.IDLE, Event.MAX_REQUESTS, Event.MAX_LIFETIME))
"""The events of a live peer that a limit ends: closed with a FIN first (the manager shuts
down writing, fastka.aio's reaper closes the transport after flushing it)."""

DEAD = frozenset((Event.RESET, Event.TIMED_OUT, Event.ERROR))
"""The events of a peer that is gone: closed at once (fastka.aio's reaper aborts the
transport)."""


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
