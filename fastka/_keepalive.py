"""The public keepalive API, written once over a backend's primitives.

A backend's keepalive module (fastka/_keepalive_c.pyx, or fastka/_keepalive_py.py, the
readable specification) provides six primitives over validated fds (or members) and planned options:

- ``apply(fds, options) -> [(position, errno, option index)]``: setsockopt every
  ``(level, option, value)`` on each fd, in order, each fd stopping at its first failure;
- ``match(fd, options) -> 1 / 0 / -errno``: whether fd reads back those values;
- ``read(fd, [(level, option)]) -> (errno or 0, values read)``;
- ``dead_states(socks, label) -> [(position, fd, 1 dead / -errno)]``, the live members
  left out, from one zero-timeout poll; the members are taken as
  ``fd_of(closed_ok=True)`` takes them (None or a closed socket, fd -1, is dead), an
  error naming ``label.format(position)``; nothing is formatted unless one is raised;
- ``tcp_info(fd) -> (errno or 0, fields in the kernel's units)``;
- ``fds(members, label, closed_ok) -> [fd]``: fastka._fd.fd_of of each member, the
  compiled one taking int fds and socket.socket objects without a Python call.

:class:`Keepalive` holds the public functions, one method each, over one backend's
primitives; arguments, validation, the option plan (fastka/_platform.py), unit
conversions and error wording all live here or in the modules this one imports, so the
two backends cannot differ in them.
"""
from __future__ import annotations

import errno
import functools
import socket
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar, overload

from . import _platform
from ._config import KeepaliveConfig, Seconds, ms_to_seconds, native, resolve, update_fields
from ._errors import keepalive_error
from ._fd import borrow_socket, fd_of
from ._types import TCP_STATES, KeepaliveState, SocketLike, TcpInfo

_S = TypeVar("_S", bound=Optional[SocketLike])  # find_dead's members: sockets (None is dead)
_T = TypeVar("_T")  # find_dead's members with a key

PUBLIC = (
    "set_keepalive",
    "update_keepalive",
    "disable_keepalive",
    "get_keepalive",
    "set_keepalive_many",
    "tcp_info",
    "is_alive",
    "find_dead",
    "create_server",
)
"""The public functions, the methods of :class:`Keepalive`: what every backend offers."""

Failure = Tuple[int, int, str]  # (position in fds, errno, option name)
Triples = List[Tuple[int, int, int]]


def snapshot(socks: Iterable[Any], name: str) -> List[Any]:
    """A new list of the members of ``socks``, taken before any system call (another
    thread may change the caller's list meanwhile). TypeError for a non-iterable."""
    if isinstance(socks, (str, bytes)) or not hasattr(socks, "__iter__"):
        raise TypeError(f"{name} must be an iterable of sockets, objects with fileno() or int fds, not {type(socks).__name__}")
    return list(socks)


def _triples(steps: List[_platform.Step]) -> Optional[Triples]:
    """The (level, option, value) of ``steps``; None when one of them is an ioctl."""
    if any(level == "ioctl" for _, level, _, _ in steps):
        return None
    return [(level, number, value) for _, level, number, value in steps]  # type: ignore[misc]


def _ioctl(fd: int, value: object) -> int:
    """SIO_KEEPALIVE_VALS on ``fd`` (Windows before 10 1709) through Python's socket.ioctl:
    0, or the errno."""
    try:
        s = borrow_socket(fd)
    except OSError as exc:
        return exc.errno or errno.EIO
    try:
        s.ioctl(_platform.SIO_KEEPALIVE_VALS, value)  # type: ignore[attr-defined]
    except OSError as exc:
        return exc.errno or errno.EIO
    finally:
        s.detach()
    return 0


def apply_steps(prim: Any, fds: List[int], steps: List[_platform.Step], triples: Optional[Triples] = None) -> List[Failure]:
    """Make the option calls of ``steps`` (whose triples, when already known, are
    ``triples``) on each of ``fds``; the failures, each fd stopping at its first. Socket
    options go to the backend in one batch; an ioctl step (Windows before 10 1709) is made
    here, per fd, in its place in the order."""
    if triples is None:
        triples = _triples(steps)
    if triples is not None:
        fails = prim.apply(fds, triples)
        return [(pos, err, steps[i][0]) for pos, err, i in fails] if fails else []
    failures: List[Failure] = []
    for pos, fd in enumerate(fds):
        for name, level, number, value in steps:
            if level == "ioctl":
                err = _ioctl(fd, value)
            else:
                err = next((e for _, e, _ in prim.apply([fd], [(level, number, value)])), 0)
            if err:
                failures.append((pos, err, name))
                break
    return failures


_DISABLE_TRIPLES = _triples(_platform.DISABLE)


@functools.lru_cache(maxsize=64)
def _config_plan(platform: int, cfg: KeepaliveConfig) -> Tuple[List[_platform.Step], Optional[Triples]]:
    """The option calls that apply ``cfg`` on the current platform (``platform`` is its
    table's id, the cache key) and their triples: on per-option platforms the same for
    every fd, so made once per config."""
    steps = _platform.steps_for(-1, *native(cfg))
    return steps, _triples(steps)


def _plan(fd: int, cfg: KeepaliveConfig) -> Tuple[List[_platform.Step], Optional[Triples]]:
    """(steps, triples) that apply ``cfg`` to ``fd`` (-1: to any fd)."""
    if _platform.windows_per_option():
        return _config_plan(id(_platform.CURRENT), cfg)
    return _platform.steps_for(fd, *native(cfg)), None


@functools.lru_cache(maxsize=8)
def _reads(platform: int) -> Tuple[List[str], List[Tuple[int, int]]]:
    """The option names and (level, option) pairs get_keepalive reads on the current
    platform (``platform``: its table's id, the cache key)."""
    options = _platform.read_options(_platform.CURRENT)
    return [name for name, _, _ in options], [(level, number) for _, level, number in options]


def carry(prim: Any, fd: int, cfg: KeepaliveConfig) -> None:
    """What KeepaliveManager.add does with its ``keepalive`` config: apply it to ``fd``
    unless ``fd`` already carries it (inherited from a configured listener). A socket that
    cannot be read back is given the config, so a failure is the error set_keepalive
    raises, naming the same option. SIO_KEEPALIVE_VALS cannot be read back: always set."""
    steps, triples = _plan(fd, cfg)
    if triples is not None and prim.match(fd, triples) == 1:
        return
    for _, err, name in apply_steps(prim, [fd], steps, triples):
        raise keepalive_error(err, fd, name)


class Keepalive:
    """The public keepalive functions over one backend's primitives.

    Each method is the public function of the same name (``fastka.set_keepalive`` is
    the default backend's bound ``set_keepalive``); fastka/_backends.py makes one per
    backend. ``primitives`` is the backend's primitives module (see this module's
    docstring).
    """

    def __init__(self, primitives: Any) -> None:
        self._prim = primitives

    def _apply_or_raise(self, fd: int, steps: List[_platform.Step], triples: Optional[Triples] = None) -> None:
        """Make the option calls of ``steps`` on ``fd``; OSError naming the option that failed."""
        if triples is not None:  # the common case, straight to the backend
            for _, err, i in self._prim.apply([fd], triples):
                raise keepalive_error(err, fd, steps[i][0])
            return
        for _, err, name in apply_steps(self._prim, [fd], steps):
            raise keepalive_error(err, fd, name)

    def _read_state(self, fd: int) -> KeepaliveState:
        """get_keepalive of ``fd``, an fd already validated."""
        table = _platform.CURRENT
        names, options = _reads(id(table))
        err, values = self._prim.read(fd, options)
        if err:
            raise keepalive_error(err, fd, names[len(values)])
        ut_ms = _platform.user_timeout_ms(values[4], table) if len(values) > 4 else 0
        return KeepaliveState(bool(values[0]), values[1], values[2], values[3], ms_to_seconds(ut_ms) if ut_ms else None)

    def set_keepalive(
        self,
        sock: SocketLike,
        config: Optional[KeepaliveConfig] = None,
        *,
        idle: Optional[Seconds] = None,
        interval: Optional[Seconds] = None,
        count: Optional[int] = None,
        user_timeout: Optional[Seconds] = None,
    ) -> KeepaliveConfig:
        """Enable SO_KEEPALIVE on ``sock`` and apply ``config`` (default ``KeepaliveConfig()``)
        with the keyword overrides; returns the config applied.

        ``sock`` is a socket, an object with ``fileno()`` or an int fd. ``idle``,
        ``interval`` and ``user_timeout`` are seconds, ``count`` probes, each checked as
        KeepaliveConfig checks it. Raises TypeError/ValueError for bad arguments (before
        any system call) and OSError (errno kept) naming the fd and the option when the
        kernel refuses.
        """
        cfg = resolve(config, idle, interval, count, user_timeout)
        fd = fd_of(sock)
        self._apply_or_raise(fd, *_plan(fd, cfg))
        return cfg

    def update_keepalive(
        self,
        sock: SocketLike,
        *,
        idle: Optional[Seconds] = None,
        interval: Optional[Seconds] = None,
        count: Optional[int] = None,
        user_timeout: Optional[Seconds] = None,
    ) -> KeepaliveState:
        """Enable keepalive on ``sock`` and change only the fields given (seconds; ``count``
        probes); the others stay as the kernel has them. Returns the state read back
        afterwards.

        Raises what set_keepalive raises. On Windows before 10 1709, whose
        SIO_KEEPALIVE_VALS always writes idle and interval, a missing one comes from what
        fastka last set on this socket, else from the system defaults.
        """
        fields = update_fields(idle, interval, count, user_timeout)
        fd = fd_of(sock)
        self._apply_or_raise(fd, _platform.steps_for(fd, *fields))
        return self._read_state(fd)

    def disable_keepalive(self, sock: SocketLike) -> None:
        """Turn SO_KEEPALIVE off on ``sock`` (the other values stay as they are).

        TypeError/ValueError for a ``sock`` with no usable fd; OSError (errno kept) naming
        the fd when the kernel refuses.
        """
        fd = fd_of(sock)
        self._apply_or_raise(fd, _platform.DISABLE, _DISABLE_TRIPLES)
        _platform.windows_forget(fd)

    def get_keepalive(self, sock: SocketLike) -> KeepaliveState:
        """Keepalive settings of ``sock`` as the kernel reports them: ``idle``, ``interval``
        and ``user_timeout`` in seconds (``user_timeout`` None when unset), ``count`` in
        probes.

        TypeError/ValueError for a ``sock`` with no usable fd; OSError (errno kept) naming
        the fd and the option when the kernel refuses (a pipe, a UDP socket, ...).
        """
        return self._read_state(fd_of(sock))

    def set_keepalive_many(
        self,
        socks: Iterable[SocketLike],
        config: Optional[KeepaliveConfig] = None,
        *,
        idle: Optional[Seconds] = None,
        interval: Optional[Seconds] = None,
        count: Optional[int] = None,
        user_timeout: Optional[Seconds] = None,
    ) -> Dict[int, OSError]:
        """Apply one config (as set_keepalive does, times in seconds) to every socket of
        ``socks``; returns {fd: OSError} for those the kernel refused (empty when all
        succeeded). A failing socket never stops the others.

        A member with no usable fd (no fileno(), a closed socket object, a negative fd)
        is a TypeError/ValueError, naming the member, raised before any socket is
        touched, as set_keepalive does.
        """
        cfg = resolve(config, idle, interval, count, user_timeout)
        fds = self._prim.fds(snapshot(socks, "socks"), "socks[{}]")
        if _platform.windows_per_option():
            failures = apply_steps(self._prim, fds, *_plan(-1, cfg))
        else:  # each fd has its own SIO_KEEPALIVE_VALS fill
            failures = [(pos, err, name) for pos, fd in enumerate(fds) for _, err, name in apply_steps(self._prim, [fd], *_plan(fd, cfg))]
        return {fds[pos]: keepalive_error(err, fds[pos], name) for pos, err, name in failures}

    def tcp_info(self, sock: SocketLike) -> TcpInfo:
        """Linux TCP_INFO of ``sock``: state, retransmission and probe counters, times in
        seconds.

        Raises NotImplementedError on other platforms, TypeError/ValueError for a ``sock``
        with no usable fd, OSError (errno kept) naming the fd from the kernel.
        """
        table = _platform.CURRENT
        if table is not _platform.LINUX:
            raise NotImplementedError(f"tcp_info reads Linux's TCP_INFO, which {table.title} does not have")
        fd = fd_of(sock)
        err, f = self._prim.tcp_info(fd)
        if err:
            raise keepalive_error(err, fd, "TCP_INFO")
        return TcpInfo(
            state=TCP_STATES[f[0]] if f[0] < len(TCP_STATES) else f"UNKNOWN({f[0]})",
            retransmits=f[1],
            probes=f[2],
            backoff=f[3],
            rtt=f[4] / 1e6,  # microseconds
            rttvar=f[5] / 1e6,
            last_data_recv=ms_to_seconds(f[6]),
            last_data_sent=ms_to_seconds(f[7]),
            last_ack_recv=ms_to_seconds(f[8]),
            unacked=f[9],
            lost=f[10],
            total_retrans=f[11],
        )

    def is_alive(self, sock: SocketLike) -> bool:
        """False once the peer sent FIN (even with data still unread) or RST, a keepalive
        or user timeout fired, or an error is pending; True otherwise. Non-blocking;
        consumes neither data nor the pending error.

        TypeError/ValueError for a ``sock`` with no usable fd; OSError(EBADF) for an fd
        that is not open.
        """
        fd = fd_of(sock)
        for _, _, state in self._prim.dead_states([fd]):
            if state < 0:
                raise keepalive_error(-state, fd, "poll")
            return False
        return True

    @overload
    def find_dead(self, socks: Iterable[_S], *, key: None = None) -> List[_S]: ...
    @overload
    def find_dead(self, socks: Iterable[_T], *, key: Callable[[_T], Optional[SocketLike]]) -> List[_T]: ...
    def find_dead(self, socks: Iterable[Any], *, key: Optional[Callable[[Any], Optional[SocketLike]]] = None) -> List[Any]:
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
        if key is None:
            states = self._prim.dead_states(members, "socks[{}]")
        else:
            states = self._prim.dead_states([key(m) for m in members], "key(socks[{}])")
        dead: List[Any] = []
        for i, fd, state in states:
            if state < 0:
                raise keepalive_error(-state, fd, "poll")
            dead.append(members[i])
        return dead

    def create_server(
        self,
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
            self.set_keepalive(sock, cfg)
        except BaseException:
            sock.close()
            raise
        return sock
