"""Is the peer of a connected stream socket still there? (pure Python; mirrors src/liveness.c)"""
from __future__ import annotations

import errno
import select
import socket
from typing import Dict, Iterable, List

from ._fd import borrow_socket
from ._types import Event

# POLLRDHUP (the peer shut its writing side) is Linux's; elsewhere a FIN is an empty peek.
POLLRDHUP = getattr(select, "POLLRDHUP", 0)
PEEK_EMPTY, PEEK_DATA, PEEK_EOF = 0, 1, 2


def error_event(err: int) -> Event:
    """ETIMEDOUT -> TIMED_OUT, ECONNRESET/EPIPE -> RESET, anything else -> ERROR."""
    if err == errno.ETIMEDOUT:
        return Event.TIMED_OUT
    if err in (errno.ECONNRESET, errno.EPIPE):
        return Event.RESET
    return Event.ERROR


def pending_error(fd: int) -> int:
    """SO_ERROR of ``fd`` (reading clears it), or the errno of the getsockopt itself."""
    try:
        s = borrow_socket(fd)
    except OSError as exc:
        return exc.errno or errno.EBADF
    try:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as exc:
        return exc.errno or errno.EIO
    finally:
        s.detach()


def peek(fd: int) -> int:
    """PEEK_EMPTY / PEEK_DATA / PEEK_EOF for a one-byte MSG_PEEK, or -errno on failure."""
    s = borrow_socket(fd)
    try:
        data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return PEEK_EMPTY
    except OSError as exc:
        return -(exc.errno or errno.EIO)
    finally:
        s.detach()
    return PEEK_DATA if data else PEEK_EOF


# poll(2) reports POLLHUP, POLLERR and POLLNVAL whatever is asked; POLLIN is asked only
# where a FIN must be found by a peek.
_HAVE_POLL = hasattr(select, "poll")  # not on Windows
_POLL_EVENTS = (POLLRDHUP or select.POLLIN) if _HAVE_POLL else 0
_GONE = (select.POLLERR | select.POLLHUP | POLLRDHUP) if _HAVE_POLL else 0


def dead_fds(fds: List[int]) -> Dict[int, int]:
    """``{fd: state}`` for each fd of ``fds`` (0..INT_MAX: poll's register raises
    ValueError/OverflowError/TypeError for anything else) that is dead (state 1) or not
    open (state -EBADF), from one zero-timeout poll; the live ones are left out.

    Dead is what fastka.is_alive calls dead: the peer sent FIN or RST, a keepalive or
    user timeout fired, or an error is pending (POLLRDHUP, POLLHUP or POLLERR; where
    there is no POLLRDHUP, a readable socket whose peek is empty). Neither data nor the
    pending error is consumed. Mirrors fk_find_dead in src/liveness.c.
    """
    if not _HAVE_POLL:  # select() in chunks under its FD_SETSIZE
        return _dead_fds_select(fds)
    p = select.poll()
    register = p.register
    for fd in fds:
        register(fd, _POLL_EVENTS)
    states = {}
    for fd, revents in p.poll(0):
        if revents & select.POLLNVAL:
            states[fd] = -errno.EBADF
        elif revents & _GONE:
            states[fd] = 1
        elif not POLLRDHUP and revents & select.POLLIN and peek(fd) == PEEK_EOF:
            states[fd] = 1
    return states


def _dead_fds_select(fds: Iterable[int]) -> Dict[int, int]:
    """dead_fds through select() (no poll): a readable socket whose peek is not data is dead."""
    states = dict.fromkeys(fds, 0)
    todo = list(states)
    for base in range(0, len(todo), 500):
        chunk = todo[base : base + 500]
        try:
            readable, _, broken = select.select(chunk, [], chunk, 0)
        except OSError:  # one of them is not an open socket: find which, one at a time
            readable, broken = [], []
            for fd in chunk:
                try:
                    r, _, x = select.select([fd], [], [fd], 0)
                except OSError:
                    states[fd] = -errno.EBADF
                    continue
                readable += r
                broken += x
        for fd in broken:
            states[fd] = 1
        for fd in readable:
            if peek(fd) != PEEK_DATA:
                states[fd] = 1
    return {fd: state for fd, state in states.items() if state}
