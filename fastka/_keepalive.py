"""Public keepalive functions written once, over what a backend provides.

Each backend module builds its functions here from its own primitives, so both word
arguments, results and errors identically.
"""
from __future__ import annotations

import socket
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

from ._config import KeepaliveConfig, resolve
from ._errors import keepalive_error
from ._fd import fd_of

# What fd_of(..., closed_ok=True) gives for a member with no open socket.
_CLOSED = -1


def snapshot(socks: Iterable[Any], name: str) -> List[Any]:
    """A new list of the members of ``socks``, taken before any system call (another
    thread may change the caller's list meanwhile). TypeError for a non-iterable."""
    if isinstance(socks, (str, bytes)) or not hasattr(socks, "__iter__"):
        raise TypeError(f"{name} must be an iterable of sockets, objects with fileno() or int fds, not {type(socks).__name__}")
    return list(socks)


def find_dead_over(dead_states: Callable[[List[int]], Sequence[int]]) -> Callable[..., List[Any]]:
    """find_dead over a backend's ``dead_states(fds) -> [1 dead / 0 alive / -errno]``."""

    def find_dead(socks: Iterable[Any], *, key: Optional[Callable[[Any], Any]] = None) -> List[Any]:
        """The members of ``socks`` whose connection is dead as is_alive says, in their
        order, from one poll over all of them. ``key(member)`` gives the socket to check
        (default: the member itself); a member whose socket is None or closed
        (``fileno() == -1``) is dead. The members are read once, before any system call.

        TypeError/ValueError (naming the member) for one with no usable fd, OSError
        (EBADF) for an int fd that is not open.
        """
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable or None, not {type(key).__name__}: {key!r}")
        members = snapshot(socks, "socks")
        label = "socks[{}]" if key is None else "key(socks[{}])"
        fds = [
            fd_of(m if key is None else key(m), label.format(i), closed_ok=True) for i, m in enumerate(members)
        ]
        states = iter(dead_states([fd for fd in fds if fd != _CLOSED]))
        dead: List[Any] = []
        for member, fd in zip(members, fds):
            state = 1 if fd == _CLOSED else next(states)
            if state < 0:
                raise keepalive_error(-state, fd, "poll")
            if state:
                dead.append(member)
        return dead

    return find_dead


def create_server_over(set_keepalive: Callable[..., KeepaliveConfig]) -> Callable[..., socket.socket]:
    """create_server over a backend's set_keepalive."""

    def create_server(
        address: Tuple[Any, ...],
        config: Optional[KeepaliveConfig] = None,
        *,
        family: int = socket.AF_INET,
        backlog: Optional[int] = None,
        reuse_port: bool = False,
        dualstack_ipv6: bool = False,
    ) -> socket.socket:
        """A listening TCP socket (``socket.create_server`` with the same arguments) with
        keepalive ``config`` (default ``KeepaliveConfig()``) set on it: on Linux every
        accepted connection inherits it with no system call of its own.

        Raises what KeepaliveConfig and socket.create_server raise; the socket is closed
        when set_keepalive fails.
        """
        cfg = resolve(config)
        sock = socket.create_server(
            address, family=family, backlog=backlog, reuse_port=reuse_port, dualstack_ipv6=dualstack_ipv6
        )
        try:
            set_keepalive(sock, cfg)
        except BaseException:
            sock.close()
            raise
        return sock

    return create_server
