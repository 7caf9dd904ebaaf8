"""Turn a "sock" argument (socket, object with fileno(), or int fd) into an fd."""
from __future__ import annotations

import socket

_FD_MAX = 0x7FFFFFFF  # INT_MAX: the C core takes fds as int


def fd_of(sock: object, name: str = "sock", *, closed_ok: bool = False) -> int:
    """Return the file descriptor of ``sock``.

    Raises TypeError for anything that is not an int fd or has no usable ``fileno()``,
    ValueError for a negative fd. With ``closed_ok``, None and an object whose fileno()
    is -1 (a closed socket) give -1 instead.
    """
    if type(sock) is int and 0 <= sock <= _FD_MAX:  # the common cases first
        return sock
    if type(sock) is socket.socket and sock.fileno() >= 0:
        return sock.fileno()
    if closed_ok and sock is None:
        return -1
    if isinstance(sock, bool):
        raise TypeError(f"{name} must be a socket, an object with fileno() or an int fd, not bool")
    if isinstance(sock, int):
        fd = sock
    else:
        fileno = getattr(sock, "fileno", None)
        if fileno is None or not callable(fileno):
            raise TypeError(
                f"{name} must be a socket, an object with fileno() or an int fd, "
                f"not {type(sock).__name__}"
            )
        fd = fileno()
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"{name}.fileno() must return an int, not {type(fd).__name__}")
        if closed_ok and fd == -1:
            return -1
    if fd < 0:
        raise ValueError(f"{name} is a negative fd ({fd}); a closed socket has fileno() -1")
    if fd > _FD_MAX:
        raise ValueError(f"{name} fd {fd} is out of range (0..{_FD_MAX})")
    return fd
