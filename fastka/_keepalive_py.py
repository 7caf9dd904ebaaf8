"""The pure-Python backend's keepalive primitives: the readable specification of the
compiled ones (fastka/_keepalive_c.pyx over src/sockopt.c and src/liveness.c).

Same functions, arguments, results and errno numbers; fastka/_keepalive.py builds the
public API on either. Each function takes fds that are already validated (0..INT_MAX;
``fds`` and ``dead_states`` the members themselves) and option triples from
fastka/_platform.plan(), and reports kernel errors as errno numbers.
"""
from __future__ import annotations

import errno
import socket
import struct
from itertools import compress, count
from typing import List, Tuple

from . import _platform
from ._fd import borrow_socket, fd_of
from ._liveness_py import dead_fds

_SOCKET_ONLY = {socket.socket}
_SOCKET_FILENO = socket.socket.fileno  # the C method, called from C by map()

__all__ = ["apply", "dead_states", "fds", "match", "read", "tcp_info"]


def fds(members: List[object], label: str, closed_ok: bool = False) -> List[int]:
    """fd_of for every member (``label.format(i)`` names member i in an error)."""
    return [fd_of(m, label, closed_ok=closed_ok, index=i) for i, m in enumerate(members)]


def dead_states(socks: List[object], label: str = "socks[{}]") -> List[Tuple[int, int, int]]:
    """``[(position, fd, state)]`` for each member of ``socks`` that is dead (state 1:
    what fastka.is_alive calls dead, or None / a closed socket, fd -1) or not open (state
    -EBADF), in order, from one zero-timeout poll; the live ones are left out.

    The members are taken as fd_of(closed_ok=True) takes them; one with no usable fd is
    its TypeError/ValueError (``label.format(i)`` names member i). Plain socket.socket
    objects and int fds cost nothing beyond the poll; error messages, and the exact
    checks of fd_of for every member, come only when a member needs them.
    """
    try:
        if {*map(type, socks)} == _SOCKET_ONLY:  # a pool of plain sockets: no Python call per member
            numbers = list(map(_SOCKET_FILENO, socks))  # type: ignore[arg-type]
        else:
            numbers = [s if type(s) is int else fd_of(s, closed_ok=True) for s in socks]
        states = dead_fds(numbers)  # poll's register refuses a negative or out-of-range fd
    except Exception:  # None, closed, or bad: fd_of takes them in order and raises what is first
        numbers = fds(socks, label, closed_ok=True)
        states = dead_fds([fd for fd in numbers if fd >= 0])
        if -1 in numbers:
            states[-1] = 1
    if not states:
        return []
    return [(i, numbers[i], states[numbers[i]]) for i in compress(count(), map(states.__contains__, numbers))]


def _errno(exc: OSError) -> int:
    return exc.errno or errno.EIO


def _apply_one(fd: int, options: List[Tuple[int, int, int]]) -> Tuple[int, int]:
    """(0, 0), or (errno, index of the option whose setsockopt failed)."""
    if not options:
        return 0, 0
    try:
        s = borrow_socket(fd)
    except OSError as exc:  # the first call on a closed fd would fail the same way
        return _errno(exc), 0
    try:
        for i, (level, name, value) in enumerate(options):
            try:
                s.setsockopt(level, name, value)
            except OSError as exc:
                return _errno(exc), i
        return 0, 0
    finally:
        s.detach()


def apply(fds: List[int], options: List[Tuple[int, int, int]]) -> List[Tuple[int, int, int]]:
    """setsockopt every ``(level, name, value)`` of ``options`` on each of ``fds``, in
    order; an fd stops at its first failure, the others go on. Returns
    ``[(position in fds, errno, index of the failed option)]``, empty when all succeeded."""
    failures = []
    for position, fd in enumerate(fds):
        err, index = _apply_one(fd, options)
        if err:
            failures.append((position, err, index))
    return failures


def read(fd: int, options: List[Tuple[int, int]]) -> Tuple[int, List[int]]:
    """getsockopt each ``(level, name)`` of ``options`` on ``fd`` as an int, in order:
    ``(0, values)``, or ``(errno, the values read before the failing one)``."""
    values: List[int] = []
    if not options:
        return 0, values
    try:
        s = borrow_socket(fd)
    except OSError as exc:
        return _errno(exc), values
    try:
        for level, name in options:
            try:
                values.append(s.getsockopt(level, name))
            except OSError as exc:
                return _errno(exc), values
        return 0, values
    finally:
        s.detach()


def match(fd: int, options: List[Tuple[int, int, int]]) -> int:
    """1 when ``fd`` reads back every ``(level, name, value)`` of ``options``
    (SO_KEEPALIVE as on/off: the BSDs read back the option's flag bit), 0 when one
    differs, -errno when a read fails (at the first option that differs or fails)."""
    for level, name, value in options:
        err, got = read(fd, [(level, name)])
        if err:
            return -err
        if (level, name) == (socket.SOL_SOCKET, socket.SO_KEEPALIVE):
            if bool(got[0]) != bool(value):
                return 0
        elif got[0] != value:
            return 0
    return 1


# struct tcp_info of include/uapi/linux/tcp.h, up to tcpi_total_retrans (Linux 2.6.x on):
#   0 state, 1 ca_state, 2 retransmits, 3 probes, 4 backoff, 5 options, 6 wscales, 7 flags (u8)
#   8 rto, 12 ato, 16 snd_mss, 20 rcv_mss, 24 unacked, 28 sacked, 32 lost, 36 retrans,
#   40 fackets, 44 last_data_sent (ms), 48 last_ack_sent, 52 last_data_recv (ms),
#   56 last_ack_recv (ms), 60 pmtu, 64 rcv_ssthresh, 68 rtt (us), 72 rttvar (us),
#   76 snd_ssthresh, 80 snd_cwnd, 84 advmss, 88 reordering, 92 rcv_rtt, 96 rcv_space,
#   100 total_retrans (u32)
TCP_INFO_LAYOUT = struct.Struct("=8B24I")
TCP_INFO = 11


def parse_tcp_info(raw: bytes) -> Tuple[int, ...]:
    """The fields tcp_info() returns, from the bytes of getsockopt(TCP_INFO); a shorter
    struct (older kernel) leaves the fields it lacks at 0."""
    f = TCP_INFO_LAYOUT.unpack(raw[: TCP_INFO_LAYOUT.size].ljust(TCP_INFO_LAYOUT.size, b"\0"))
    u32 = f[8:]  # u32[k] is at byte offset 8 + 4k
    return (f[0], f[2], f[3], f[4], u32[15], u32[16], u32[11], u32[9], u32[12], u32[4], u32[6], u32[23])


def tcp_info(fd: int) -> Tuple[int, Tuple[int, ...]]:
    """Linux TCP_INFO of ``fd`` in the kernel's units: ``(0, (state, retransmits, probes,
    backoff, rtt us, rttvar us, last_data_recv ms, last_data_sent ms, last_ack_recv ms,
    unacked, lost, total_retrans))``, or ``(errno, ())``; ENOPROTOOPT off Linux."""
    if _platform.CURRENT is not _platform.LINUX:
        return errno.ENOPROTOOPT, ()
    try:
        s = borrow_socket(fd)
    except OSError as exc:
        return _errno(exc), ()
    try:
        raw = s.getsockopt(_platform.IPPROTO_TCP, TCP_INFO, TCP_INFO_LAYOUT.size)
    except OSError as exc:
        return _errno(exc), ()
    finally:
        s.detach()
    return 0, parse_tcp_info(raw)
