"""Turn a "sock" argument (socket, object with fileno(), or int fd) into an fd, and an fd
into a socket object for one call (``borrow_socket``)."""
from __future__ import annotations

import os
import socket
from typing import Optional

_FD_MAX = 0x7FFFFFFF  # INT_MAX: the C core takes fds as int


def fd_of(sock: object, name: str = "sock", *, closed_ok: bool = False, index: Optional[int] = None) -> int:
    """Return the file descriptor of ``sock``.

    Raises TypeError for anything that is not an int fd or has no usable ``fileno()``,
    ValueError for a negative fd; the message calls it ``name``, or
    ``name.format(index)`` when ``index`` is given (formatted only then). With
    ``closed_ok``, None and an object whose fileno() is -1 (a closed socket) give -1
    instead.
    """
    if type(sock) is int and 0 <= sock <= _FD_MAX:  # the common cases first
        return sock
    if type(sock) is socket.socket and sock.fileno() >= 0:
        return sock.fileno()
    if closed_ok and sock is None:
        return -1
    if isinstance(sock, bool):
        raise TypeError(f"{_named(name, index)} must be a socket, an object with fileno() or an int fd, not bool")
    if isinstance(sock, int):
        fd = sock
    else:
        fileno = getattr(sock, "fileno", None)
        if fileno is None or not callable(fileno):
            raise TypeError(
                f"{_named(name, index)} must be a socket, an object with fileno() or an int fd, "
                f"not {type(sock).__name__}"
            )
        fd = fileno()
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"{_named(name, index)}.fileno() must return an int, not {type(fd).__name__}")
        if closed_ok and fd == -1:
            return -1
    if fd < 0:
        raise ValueError(f"{_named(name, index)} is a negative fd ({fd}); a closed socket has fileno() -1")
    if fd > _FD_MAX:
        raise ValueError(f"{_named(name, index)} fd {fd} is out of range (0..{_FD_MAX})")
    return fd


def _named(name: str, index: Optional[int]) -> str:
    return name if index is None else name.format(index)


# Given SOCK_NONBLOCK in the type, Python takes the socket as non-blocking as it is and
# leaves the fd's mode alone; otherwise a process-wide socket.setdefaulttimeout() makes
# it switch the fd to non-blocking.
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)


def borrow_socket(fd: int, family: int = socket.AF_INET, proto: int = 0) -> socket.socket:
    """A socket object over ``fd`` for the fallback's socket calls (setsockopt, getsockopt,
    recv): the caller must ``detach()`` it, never close it. The fd is left as it is (its
    blocking mode too, whatever socket.setdefaulttimeout() says).

    ``family``/``proto`` -1 ask the kernel for them (error messages only); otherwise
    Python asks the kernel nothing beyond the getsockname that checks ``fd`` is an open
    socket: OSError (EBADF, ENOTSOCK) when it is not.
    """
    if _SOCK_NONBLOCK or socket.getdefaulttimeout() is None or os.name != "posix":
        return socket.socket(family, socket.SOCK_STREAM | _SOCK_NONBLOCK, proto, fileno=fd)
    blocking = os.get_blocking(fd)
    s = socket.socket(family, socket.SOCK_STREAM, proto, fileno=fd)
    s.setblocking(blocking)  # Python made it non-blocking for the default timeout
    return s
