"""The OSError every backend raises when the kernel refuses a keepalive option.

One function builds it so that the compiled core, the fallback and the manager word
their errors identically. The kind of socket is looked up only after a failure, never
on the success path.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Dict, Union

from ._fd import borrow_socket

# Errors that a TCP-level option gives on a socket of another protocol: Linux answers
# ENOPROTOOPT for UDP and raw sockets and EOPNOTSUPP for Unix sockets.
_NOT_TCP = {errno.ENOPROTOOPT, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}

_FAMILIES = {
    socket.AF_INET: "IPv4",
    getattr(socket, "AF_INET6", -1): "IPv6",
    getattr(socket, "AF_UNIX", -2): "Unix",
}


def socket_kind(fd: int) -> str:
    """What ``fd`` is, in words: "TCP/IPv4", "UDP/IPv6", "Unix stream", "a pipe"...

    Asks the kernel (the family and protocol through Python's socket autodetection, the
    type by SO_TYPE, or fstat for what is not a socket). For error messages only.
    """
    try:
        s = borrow_socket(fd, family=-1, proto=-1)
    except OSError:
        return _file_kind(fd)
    try:
        family, type_, proto = s.family, _socket_type(s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)), s.proto
    finally:
        s.detach()
    fam = _FAMILIES.get(family, getattr(family, "name", str(family)))
    if family == getattr(socket, "AF_UNIX", -2):
        unix: Dict[int, str] = {socket.SOCK_STREAM: "Unix stream", socket.SOCK_DGRAM: "Unix datagram"}
        return unix.get(type_, f"Unix ({getattr(type_, 'name', type_)})")
    if type_ == socket.SOCK_STREAM and proto in (0, socket.IPPROTO_TCP):
        return f"TCP/{fam}"
    if type_ == socket.SOCK_DGRAM:
        return f"UDP/{fam}"
    if type_ == socket.SOCK_STREAM and proto == getattr(socket, "IPPROTO_SCTP", -1):
        return f"SCTP/{fam}"
    if type_ == getattr(socket, "SOCK_RAW", -1):
        return f"raw/{fam}"
    return f"{fam} {getattr(type_, 'name', type_)} protocol {proto}"


def _socket_type(number: int) -> Union[socket.SocketKind, int]:
    """SO_TYPE's number as socket.SocketKind where Python knows it (for its name)."""
    try:
        return socket.SocketKind(number)
    except ValueError:
        return number


def _file_kind(fd: int) -> str:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "not an open file descriptor"
    for test, name in (
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a socket"


def keepalive_error(err: int, fd: int, option: str) -> OSError:
    """The OSError for ``option`` failing on ``fd`` with errno ``err``.

    ``.errno == err``; the message names the fd and the option, and says what the fd
    is when it is not a TCP socket (UDP, Unix, a pipe, ...) or not open at all.
    """
    reason = os.strerror(err)
    if err == errno.EBADF:
        msg = f"fd {fd} is not an open file descriptor; {option}: {reason}"
    elif err == errno.ENOTSOCK:
        msg = f"fd {fd} is not a socket (it is {_file_kind(fd)}); {option}: {reason}"
    elif err in _NOT_TCP:
        kind = socket_kind(fd)
        if kind.startswith("TCP"):
            msg = f"fd {fd}: {option} is not supported on this system ({reason})"
        else:
            msg = f"fd {fd} is not a TCP socket (it is {kind}); {option}: {reason}"
    else:
        msg = f"fd {fd}: {option} failed: {reason}"
    return OSError(err, msg)
