"""What both KeepaliveManager backends share: the constructor's signature and docstring
(``settings``, ``SIGNATURE``, ``DOC``: the one place), argument checks, unit conversion
and the closing of dropped objects. Each unit conversion is written once, here:

* ``timeout_ms``: idle_timeout / max_lifetime seconds -> a span of the managers' clock
  (``span_ms`` once checked);
* ``poll_timeout_ms``: poll()'s timeout seconds -> whole milliseconds, rounded up.

The keepalive config's own units (user_timeout) belong to ``fastka._config``; the
managers apply a config through the same plan as ``set_keepalive``.
"""
from __future__ import annotations

import inspect
import math
import os
import numbers
import socket
import sys
from typing import Any, Callable, Concatenate, NamedTuple, Optional, ParamSpec, cast

from . import _jitter
from ._config import KeepaliveConfig, Seconds
from ._fd import borrow_socket
from ._types import GRACEFUL, Event

MAX_TIMEOUT = 1e9  # seconds (~31.7 years): the largest idle_timeout / max_lifetime
MAX_REQUESTS = 2**29 - 1  # the largest max_requests (FK_MAX_REQUESTS: the C slot keeps a 29-bit count)
MAX_WAIT_MS = 2**31 - 1  # the longest single poller wait; longer waits loop
DRAIN_CHECK_MS = 100  # how often a half-closed, unread, unwatched connection is re-checked


def timeout_ms(name: str, value: object) -> Optional[int]:
    """A timeout in seconds (0 < value <= MAX_TIMEOUT, or None) as a span of the managers'
    clock, which counts whole milliseconds rounded down: the seconds rounded up to whole
    milliseconds, plus the one millisecond that a reading rounded down can hide, so that a
    deadline is never early (at most 1 ms late). TypeError for a non-number, ValueError
    outside the range."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds (int or float) or None, not {type(value).__name__}: {value!r}")
    seconds = cast(float, value)  # a numbers.Real: compared as it is, no float() of a huge int
    if not (seconds > 0 and seconds <= MAX_TIMEOUT):  # also rejects NaN
        raise ValueError(f"{name}={value!r} must be seconds > 0 and <= {MAX_TIMEOUT:.0e} (about 31 years), or None for never")
    return span_ms(float(seconds))


def span_ms(seconds: float) -> int:
    """Checked seconds as a span of the managers' clock (see timeout_ms)."""
    return math.ceil(seconds * 1000) + 1


def poll_timeout_ms(timeout: object) -> Optional[int]:
    """poll()'s timeout: None (wait for an event), or seconds >= 0 rounded up to ms.
    A timeout above MAX_TIMEOUT seconds (infinity included) waits with no limit, as None."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds (int or float) or None, not {type(timeout).__name__}: {timeout!r}")
    seconds = cast(float, timeout)  # a numbers.Real, compared as it is
    if not seconds >= 0:  # negative or NaN
        raise ValueError(f"timeout={timeout!r} must be >= 0 seconds, or None to wait for an event")
    if seconds > MAX_TIMEOUT:
        return None
    return math.ceil(float(seconds) * 1000)


def requests(value: object) -> Optional[int]:
    """max_requests: an int in 1..MAX_REQUESTS (536870911), or None for unlimited."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"max_requests must be an int >= 1 or None, not {type(value).__name__}: {value!r}")
    count = cast(int, value)  # a numbers.Integral
    if not 1 <= count <= MAX_REQUESTS:
        raise ValueError(f"max_requests={value!r} must be an int in 1..{MAX_REQUESTS}, or None for unlimited")
    return int(count)


class Limits:
    """A manager's per-connection limits: ``max_lifetime`` (seconds) and ``max_requests``,
    spread by ``jitter`` (fastka._jitter) with one draw each per connection, made by
    ``draw()`` when add() registers it. Both backends draw here, so a seeded ``random``
    gives both the same limits. Checks the three values (TypeError/ValueError naming the
    argument, the value and the range)."""

    __slots__ = ("lifetime", "requests", "jitter", "random")

    def __init__(self, max_lifetime: object, max_requests: object, jitter: object, random: object) -> None:
        timeout_ms("max_lifetime", max_lifetime)
        self.lifetime: Optional[float] = None if max_lifetime is None else float(cast(float, max_lifetime))
        self.requests = requests(max_requests)
        self.jitter = _jitter.check(jitter)
        if random is not None and not callable(random):
            raise TypeError(f"_random must be a callable returning a float in [0, 1), not {type(random).__name__}: {random!r}")
        self.random: _jitter.Source = _jitter.default_source if random is None else cast(_jitter.Source, random)

    def draw(self) -> "tuple[Optional[int], Optional[int]]":
        """One connection's (lifetime in ms of the managers' clock, max_requests), None for
        no limit; a spread limit is clamped to the largest allowed (MAX_TIMEOUT,
        MAX_REQUESTS). Draws the lifetime first, then the request count."""
        life = _jitter.seconds(self.lifetime, self.jitter, self.random)
        count = _jitter.count(self.requests, self.jitter, self.random)
        return (
            None if life is None else span_ms(min(life, MAX_TIMEOUT)),
            None if count is None else min(count, MAX_REQUESTS),
        )


class Settings(NamedTuple):
    """A manager's checked constructor arguments."""

    idle_ms: Optional[int]  # a span of the managers' clock; None: never
    limits: Limits
    keepalive: Optional[KeepaliveConfig]
    close: bool
    watch_readable: bool

    def c_options(self) -> "tuple[int, ...]":
        """The fields named in C_OPTIONS, in that order, as the C core takes them: None
        as -1, a bool as 0 or 1."""
        return tuple(-1 if value is None else int(value) for value in (getattr(self, name) for name in C_OPTIONS))


C_OPTIONS = ("idle_ms", "watch_readable")
"""The Settings the compiled manager's C core reads: setup.py reads this tuple (from the
source) into tables.h's ``union fk_options``, where src/manager.c finds each by name
(``m->opt.idle_ms``) and the binding fills them in this order."""


def settings(
    idle_timeout: Optional[Seconds] = 75.0,
    *,
    max_requests: Optional[int] = None,
    max_lifetime: Optional[Seconds] = None,
    keepalive: Optional[KeepaliveConfig] = None,
    close: bool = True,
    watch_readable: bool = True,
    jitter: float = 0.0,
    _random: Optional[Callable[[], float]] = None,
) -> Settings:
    """The KeepaliveManager constructor's arguments, checked (see DOC); both backends'
    ``__init__`` take theirs through this one signature. ``_random`` (private, for tests):
    the jitter's source of draws in [0, 1)."""
    return Settings(
        timeout_ms("idle_timeout", idle_timeout),
        Limits(max_lifetime, max_requests, jitter, _random),
        keepalive_config(keepalive),
        bool(close),
        bool(watch_readable),
    )


def public_signature(sig: inspect.Signature) -> inspect.Signature:
    """``sig`` without its private parameters (``_random``, ``_backend``: test hooks) and return."""
    params = [p for p in sig.parameters.values() if not p.name.startswith("_")]
    return sig.replace(parameters=params, return_annotation=inspect.Signature.empty)


SIGNATURE = public_signature(inspect.signature(settings))
"""``KeepaliveManager.__signature__`` on both backends (what inspect.signature and help show)."""

_P = ParamSpec("_P")


def parameters_of(source: Callable[_P, Any]) -> Callable[[Callable[..., None]], Callable[Concatenate[Any, _P], None]]:
    """A decorator giving an ``__init__(self, *args, **kwargs)`` the parameters of
    ``source`` (``settings``) for type checkers; at run time it returns the method as it is."""
    return lambda init: init

DOC = """Track many keep-alive connections on one poller (epoll on Linux): idle timeouts,
request and lifetime limits, and peer close / reset / keepalive-timeout detection.

``idle_timeout``: seconds without activity before a connection is dropped (IDLE);
``max_requests``: ``touch()`` calls allowed per connection (MAX_REQUESTS);
``max_lifetime``: seconds a connection may live at all (MAX_LIFETIME). Seconds are
0 < t <= 1e9, or None for never; ``max_requests`` 1..536870911, or None for unlimited.
``jitter`` (a fraction 0..0.5) spreads each connection's ``max_lifetime`` and
``max_requests`` uniformly within +-jitter, drawn once when it is added (at least one
request, at most the largest limits); ``idle_timeout`` is never spread.
``keepalive``: a KeepaliveConfig applied on add() (skipped where the socket carries it
already). ``close``: close what is dropped (a FIN first for IDLE and the limits; at once
for a dead peer). ``watch_readable=False``: monitor only (peer close, reset, timeouts),
for sockets whose reads belong to someone else, such as an asyncio transport.
Bad values: ValueError / TypeError naming the argument, the value and the range.

poll(timeout) returns [(obj, Event)] for the objects that were added; READABLE leaves the
connection registered, every other event removes it. fileno() is readable whenever poll()
has work, for nesting in selectors or an event loop; next_deadline() gives the seconds to
the next expiry. Every method may be called from any thread (one poll() at a time)."""


def keepalive_config(value: object) -> Optional[KeepaliveConfig]:
    """The manager's ``keepalive`` argument: a KeepaliveConfig or None (TypeError otherwise)."""
    if value is not None and not isinstance(value, KeepaliveConfig):
        raise TypeError(f"keepalive must be a fastka.KeepaliveConfig or None, not {type(value).__name__}: {value!r}")
    return value


# The sockets event loops hand out for their transports (module, type): the loop owns
# their fds. asyncio's has no close(); uvloop's has one that raises TypeError.
_LOOP_SOCKETS = (("asyncio.trsock", "TransportSocket"), ("uvloop.loop", "PseudoSocket"))


def _loop_owned(sock: object) -> bool:
    for module, name in _LOOP_SOCKETS:
        cls = getattr(sys.modules.get(module), name, None)  # imported if sock is one
        if cls is not None and isinstance(sock, cls):
            return True
    return False


def check_closable(sock: object) -> None:
    """With close=True the manager closes what it drops: through ``close()``, or
    ``os.close`` for an int fd. An object without close(), or an event loop's transport
    socket (its fd belongs to the loop), is a TypeError."""
    if isinstance(sock, int):
        return
    if not callable(getattr(sock, "close", None)) or _loop_owned(sock):
        raise TypeError(
            f"sock ({type(sock).__name__}) has no close() of its own, so a manager with close=True cannot close it "
            "safely: use KeepaliveManager(close=False) and close it yourself, or fastka.aio.KeepaliveReaper "
            "for asyncio transports"
        )


def socket_type(sock: object, fd: int) -> Optional[int]:
    """The SO_TYPE of ``sock`` (whose fd is ``fd``), or None when it is not a socket (a
    pipe, say) or cannot be asked (closed: add() then fails on the fd itself)."""
    if isinstance(sock, socket.socket):
        return sock.type
    try:
        s = borrow_socket(fd)
    except OSError:
        return None
    try:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    finally:
        s.detach()


def check_stream(fd: int, kind: Optional[int]) -> None:
    """The manager tracks connections: a socket whose type is not SOCK_STREAM (UDP, a
    datagram or seqpacket Unix socket) has no FIN, reset or keepalive to watch, and is a
    TypeError. ``kind`` None (not a socket: a pipe, a tty) is allowed."""
    if kind is not None and kind != socket.SOCK_STREAM:
        try:
            name = socket.SocketKind(kind).name
        except ValueError:
            name = str(kind)
        raise TypeError(f"fd {fd} is a socket of type {name}: the manager tracks stream (TCP) connections only")


def reinit_error() -> RuntimeError:
    """__init__ called again on an open manager (it would forget every connection)."""
    return RuntimeError("KeepaliveManager.__init__ called on a manager that is already open; make a new one")


def busy_error(call: str) -> RuntimeError:
    """``call`` ("poll" or "close") while another thread is inside poll(): one poll() at a
    time, and the manager's state stays until it returns."""
    if call == "poll":
        return RuntimeError("KeepaliveManager.poll() is already running in another thread")
    return RuntimeError("cannot close a KeepaliveManager while another thread is inside poll()")


def close_dropped(obj: Any, fd: int, event: Event) -> None:
    """Close what the manager drops: FIN first for idle/limits, at once for dead. An object
    with close() is closed through it (so it cannot later close a reused fd number). An
    exception from the object's shutdown() or close() is swallowed: the event is still
    reported and the manager stays consistent."""
    if event in GRACEFUL:
        try:
            if isinstance(obj, socket.socket):
                obj.shutdown(socket.SHUT_WR)
            else:
                s = borrow_socket(fd)
                try:
                    s.shutdown(socket.SHUT_WR)
                finally:
                    s.detach()
        except Exception:  # already reset, not connected, or not a socket: close anyway
            pass
    try:
        if isinstance(obj, int):
            os.close(fd)
        else:
            obj.close()
    except Exception:  # the object's own close failed: nothing more the manager can do
        pass
