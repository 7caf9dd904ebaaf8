"""The pure-Python backend: keepalive with socket.setsockopt / getsockopt.

This is the readable reference for the compiled backend (fastka/_keepalive_c.pyx over
src/keepalive.c and src/liveness.c): both take the same arguments, make the same system
calls in the same order and raise the same errors with the same messages.
"""
from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Dict, Iterable, List, Optional, cast

from . import _platform
from ._config import KeepaliveConfig, Seconds, native, resolve, update_fields
from ._errors import keepalive_error
from ._keepalive import create_server_over, find_dead_over, snapshot
from ._fd import fd_of
from ._liveness_py import dead_states
from ._types import TCP_STATES, KeepaliveState, TcpInfo

__all__ = [
    "create_server",
    "disable_keepalive",
    "find_dead",
    "get_keepalive",
    "is_alive",
    "set_keepalive",
    "set_keepalive_many",
    "tcp_info",
    "update_keepalive",
]

TABLE = _platform.CURRENT


def _borrow(fd: int, option: str) -> socket.socket:
    """A socket object over ``fd``, to be detach()ed, never closed.

    The family/type/proto are given so that Python asks the kernel nothing about a
    socket; a closed fd fails here, reported as the failure of ``option``, the first
    option call the C core would have made.
    """
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=fd)
    except OSError as exc:
        raise keepalive_error(exc.errno or errno.EBADF, fd, option) from None


def _socket_for(sock: object, fd: int, option: str) -> socket.socket:
    """``sock`` itself when it is a socket, else a borrowed socket object over ``fd``."""
    if isinstance(sock, socket.socket):
        return sock
    return _borrow(fd, option)


def _release(sock: object, s: socket.socket) -> None:
    if s is not sock:
        s.detach()


def _run(s: socket.socket, fd: int, steps: List[_platform.Step]) -> None:
    """Make the option calls of ``steps`` on ``s``; the first failure raises."""
    for name, level, number, value in steps:
        try:
            if level == "ioctl":
                s.ioctl(_platform.SIO_KEEPALIVE_VALS, value)  # type: ignore[attr-defined]
            else:
                s.setsockopt(cast(int, level), number, cast(int, value))
        except OSError as exc:
            raise keepalive_error(exc.errno or errno.EIO, fd, name) from None


def _steps(fd: int, idle: int, interval: int, count: int, ut_ms: int) -> List[_platform.Step]:
    """The option calls for ``fd`` (-1: for any fd, where nothing is remembered per fd)."""
    per_option = _platform.windows_per_option()
    if not per_option:  # Windows' SIO_KEEPALIVE_VALS writes idle and interval together
        idle, interval = _platform.windows_fill(fd, idle, interval)
        _platform.windows_remember(fd, idle, interval)
    try:
        return _platform.plan(TABLE, idle, interval, count, ut_ms, per_option=per_option)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror if fd < 0 else f"fd {fd}: {exc.strerror}") from None


def set_keepalive(
    sock: object,
    config: Optional[KeepaliveConfig] = None,
    *,
    idle: Optional[Seconds] = None,
    interval: Optional[Seconds] = None,
    count: Optional[int] = None,
    user_timeout: Optional[Seconds] = None,
) -> KeepaliveConfig:
    """Enable SO_KEEPALIVE on ``sock`` and apply ``config`` (default ``KeepaliveConfig()``)
    with the keyword overrides; returns the config applied.

    Times in seconds. Raises TypeError/ValueError for bad arguments (before any system
    call) and OSError naming the fd and the option when the kernel refuses.
    """
    cfg = resolve(config, idle, interval, count, user_timeout)
    fd = fd_of(sock)
    steps = _steps(fd, *native(cfg))
    s = _socket_for(sock, fd, steps[0][0])
    try:
        _run(s, fd, steps)
    finally:
        _release(sock, s)
    return cfg


def update_keepalive(
    sock: object,
    *,
    idle: Optional[Seconds] = None,
    interval: Optional[Seconds] = None,
    count: Optional[int] = None,
    user_timeout: Optional[Seconds] = None,
) -> KeepaliveState:
    """Enable keepalive on ``sock`` and change only the fields given (seconds); the others
    stay as the kernel has them. Returns the state read back afterwards.

    On Windows before 10 1709, whose SIO_KEEPALIVE_VALS always writes idle and interval,
    a missing one comes from what fastka last set on this socket, else from the system
    defaults.
    """
    fields = update_fields(idle, interval, count, user_timeout)
    fd = fd_of(sock)
    steps = _steps(fd, *fields)
    s = _socket_for(sock, fd, steps[0][0])
    try:
        _run(s, fd, steps)
        return _get(s, fd)
    finally:
        _release(sock, s)


def disable_keepalive(sock: object) -> None:
    """Turn SO_KEEPALIVE off on ``sock`` (the other values stay as they are)."""
    fd = fd_of(sock)
    s = _socket_for(sock, fd, "SO_KEEPALIVE")
    try:
        _run(s, fd, [("SO_KEEPALIVE", socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)])
    finally:
        _release(sock, s)


def _getopt(s: socket.socket, fd: int, name: str, level: int, number: int) -> int:
    try:
        return s.getsockopt(level, number)
    except OSError as exc:
        raise keepalive_error(exc.errno or errno.EIO, fd, name) from None


def _get(s: socket.socket, fd: int) -> KeepaliveState:
    t = TABLE
    enabled = _getopt(s, fd, "SO_KEEPALIVE", socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    values = [_getopt(s, fd, o.name, _platform.IPPROTO_TCP, o.number) for o in (t.idle, t.interval, t.count)]
    ut_ms = 0
    if t.user_timeout is not None:
        raw = _getopt(s, fd, t.user_timeout.name, _platform.IPPROTO_TCP, t.user_timeout.number)
        ut_ms = _platform.user_timeout_ms(raw, t)
    return KeepaliveState(bool(enabled), values[0], values[1], values[2], ut_ms / 1000 if ut_ms else None)


def get_keepalive(sock: object) -> KeepaliveState:
    """Keepalive settings of ``sock`` as the kernel reports them (seconds; user_timeout
    None when unset)."""
    fd = fd_of(sock)
    s = _socket_for(sock, fd, "SO_KEEPALIVE")
    try:
        return _get(s, fd)
    finally:
        _release(sock, s)


def _fds(members: List[Any], name: str) -> List[int]:
    """The fd of every member; TypeError/ValueError (naming the position) for a member
    that has none, before any system call."""
    return [fd_of(s, f"{name}[{i}]") for i, s in enumerate(members)]


def set_keepalive_many(
    socks: Iterable[object],
    config: Optional[KeepaliveConfig] = None,
    *,
    idle: Optional[Seconds] = None,
    interval: Optional[Seconds] = None,
    count: Optional[int] = None,
    user_timeout: Optional[Seconds] = None,
) -> Dict[int, OSError]:
    """Apply one config to every socket of ``socks``; returns {fd: OSError} for those the
    kernel refused (empty when all succeeded). A failing socket never stops the others.

    A member with no usable fd (no fileno(), a closed socket object, a negative fd) is a
    TypeError/ValueError raised before any socket is touched, as set_keepalive does.
    """
    cfg = resolve(config, idle, interval, count, user_timeout)
    fds = _fds(snapshot(socks, "socks"), "socks")
    values = native(cfg)
    per_option = _platform.windows_per_option()
    steps = _steps(-1, *values) if per_option else []
    failed: Dict[int, OSError] = {}
    for fd in fds:
        try:
            fd_steps = steps if per_option else _steps(fd, *values)
            s = _borrow(fd, fd_steps[0][0])
        except OSError as exc:
            failed[fd] = exc
            continue
        try:
            _run(s, fd, fd_steps)
        except OSError as exc:
            failed[fd] = exc
        finally:
            s.detach()
    return failed


# struct tcp_info of include/uapi/linux/tcp.h, up to tcpi_total_retrans (Linux 2.6.x on):
#   0 state, 1 ca_state, 2 retransmits, 3 probes, 4 backoff, 5 options, 6 wscales, 7 flags (u8)
#   8 rto, 12 ato, 16 snd_mss, 20 rcv_mss, 24 unacked, 28 sacked, 32 lost, 36 retrans,
#   40 fackets, 44 last_data_sent (ms), 48 last_ack_sent, 52 last_data_recv (ms),
#   56 last_ack_recv (ms), 60 pmtu, 64 rcv_ssthresh, 68 rtt (us), 72 rttvar (us),
#   76 snd_ssthresh, 80 snd_cwnd, 84 advmss, 88 reordering, 92 rcv_rtt, 96 rcv_space,
#   100 total_retrans (u32)
TCP_INFO_LAYOUT = struct.Struct("=8B24I")
TCP_INFO = 11


def parse_tcp_info(raw: bytes) -> TcpInfo:
    """TcpInfo from the bytes of getsockopt(TCP_INFO); a shorter struct (older kernel)
    leaves the fields it lacks at 0."""
    f = TCP_INFO_LAYOUT.unpack(raw[: TCP_INFO_LAYOUT.size].ljust(TCP_INFO_LAYOUT.size, b"\0"))
    u32 = f[8:]  # u32[k] is at byte offset 8 + 4k
    state = TCP_STATES[f[0]] if f[0] < len(TCP_STATES) else f"UNKNOWN({f[0]})"
    return TcpInfo(
        state=state,
        retransmits=f[2],
        probes=f[3],
        backoff=f[4],
        rtt=u32[15] / 1e6,
        rttvar=u32[16] / 1e6,
        last_data_recv=u32[11] / 1e3,
        last_data_sent=u32[9] / 1e3,
        last_ack_recv=u32[12] / 1e3,
        unacked=u32[4],
        lost=u32[6],
        total_retrans=u32[23],
    )


def tcp_info(sock: object) -> TcpInfo:
    """Linux TCP_INFO of ``sock``: state, retransmission and probe counters, times in
    seconds. Raises NotImplementedError on other platforms, OSError from the kernel."""
    if TABLE is not _platform.LINUX:
        raise NotImplementedError(f"tcp_info reads Linux's TCP_INFO, which {TABLE.title} does not have")
    fd = fd_of(sock)
    s = _socket_for(sock, fd, "TCP_INFO")
    try:
        raw = s.getsockopt(_platform.IPPROTO_TCP, TCP_INFO, TCP_INFO_LAYOUT.size)
    except OSError as exc:
        raise keepalive_error(exc.errno or errno.EIO, fd, "TCP_INFO") from None
    finally:
        _release(sock, s)
    return parse_tcp_info(raw)


def is_alive(sock: object) -> bool:
    """False once the peer sent FIN (even with data still unread) or RST, a keepalive or
    user timeout fired, or an error is pending; True otherwise. Non-blocking; consumes
    neither data nor the pending error. OSError(EBADF) for an fd that is not open."""
    fd = fd_of(sock)
    state = dead_states([fd])[0]
    if state < 0:
        raise keepalive_error(-state, fd, "poll")
    return not state


find_dead = find_dead_over(dead_states)
create_server = create_server_over(set_keepalive)
