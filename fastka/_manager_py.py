"""The pure-Python KeepaliveManager: the readable specification of the compiled one.

One readiness poller (``select.epoll`` on Linux, ``selectors.DefaultSelector`` elsewhere)
watches every connection; two OrderedDicts keep the timers:

* ``_idle``: fds by last activity (``move_to_end`` on touch / READABLE), so the head is
  always the next idle expiry;
* ``_life``: fds by insertion, so the head is always the next ``max_lifetime`` expiry.

Time is integer milliseconds of a monotonic clock (``_set_clock`` swaps the clock, for
tests). A deadline has passed when ``now_ms >= deadline_ms``. Timeouts round UP to whole
milliseconds, the clock reading rounds down.

Event order within one ``poll``: MAX_REQUESTS (in the order the limit was reached by
``touch``), then I/O events (in the kernel's order), then expiries by deadline; among
equal idle deadlines in order of last activity, among equal lifetimes in order of ``add``,
an idle and a lifetime expiry at the same millisecond by order of ``add``. A connection
past both limits reports MAX_LIFETIME.

fd reuse: before acting on a slot the manager checks that the object still has the fd it
was added with (``obj.fileno() == fd``; a closed ``socket.socket`` returns -1). A slot that
fails the check is stale: it is dropped silently, never reported and never closed.
"""
from __future__ import annotations

import errno
import math
import numbers
import os
import select
import selectors
import socket
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._config import KeepaliveConfig
from ._fd import fd_of
from ._liveness_py import PEEK_DATA, PEEK_EOF, error_event, peek, pending_error
from ._types import Event

__all__ = ["KeepaliveManager"]

# Readiness bits our poller reports (independent of epoll/selectors constants).
_IN, _RDHUP, _HUP, _ERR = 1, 2, 4, 8
_GRACEFUL = (Event.IDLE, Event.MAX_REQUESTS, Event.MAX_LIFETIME)
_DRAIN_CHECK_MS = 100  # how often a half-closed, unread, unwatched connection is re-checked


MAX_TIMEOUT = 1e9  # seconds (~31.7 years): the largest idle_timeout / max_lifetime
MAX_REQUESTS = 2**29 - 1  # the largest max_requests (the C slot keeps a 29-bit count)
_MAX_WAIT_MS = 2**31 - 1  # the longest single epoll wait; longer waits loop


def _seconds_ms(name: str, value: object) -> Optional[int]:
    """A timeout in seconds (0 < value <= MAX_TIMEOUT, or None) as whole milliseconds,
    rounded up. TypeError for a non-number, ValueError outside the range."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds (int or float) or None, not {type(value).__name__}: {value!r}")
    if not (value > 0 and value <= MAX_TIMEOUT):  # also rejects NaN; no float() of a huge int
        raise ValueError(f"{name}={value!r} must be seconds > 0 and <= {MAX_TIMEOUT:.0e} (about 31 years), or None for never")
    return max(1, math.ceil(float(value) * 1000))


def _requests(value: object) -> Optional[int]:
    """max_requests: an int in 1..MAX_REQUESTS (536870911), or None for unlimited."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"max_requests must be an int >= 1 or None, not {type(value).__name__}: {value!r}")
    if not 1 <= value <= MAX_REQUESTS:
        raise ValueError(f"max_requests={value!r} must be an int in 1..{MAX_REQUESTS}, or None for unlimited")
    return int(value)


def poll_timeout_ms(timeout: object) -> Optional[int]:
    """poll()'s timeout: None (wait for an event), or seconds >= 0 rounded up to ms.
    A timeout above MAX_TIMEOUT seconds (infinity included) waits with no limit, as None."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds (int or float) or None, not {type(timeout).__name__}: {timeout!r}")
    if not timeout >= 0:  # negative or NaN
        raise ValueError(f"timeout={timeout!r} must be >= 0 seconds, or None to wait for an event")
    if timeout > MAX_TIMEOUT:
        return None
    return math.ceil(float(timeout) * 1000)


class _Poller:
    """Level-triggered readiness for many fds: epoll where there is one, else selectors."""

    def __init__(self) -> None:
        self._ep = select.epoll() if hasattr(select, "epoll") else None
        self._sel = None if self._ep is not None else selectors.DefaultSelector()
        self.reports_rdhup = self._ep is not None  # selectors reports a FIN as readable only

    def fileno(self) -> int:
        return self._ep.fileno() if self._ep is not None else self._sel.fileno()

    def register(self, fd: int, readable: bool) -> None:
        if self._ep is not None:
            self._ep.register(fd, (select.EPOLLIN if readable else 0) | select.EPOLLRDHUP)
        else:  # without RDHUP, a peer close is seen only as readability
            self._sel.register(fd, selectors.EVENT_READ)

    def mute(self, fd: int) -> None:
        """Keep only the implicit error/hang-up interest (epoll), or stop watching (selectors)."""
        if self._ep is not None:
            self._ep.modify(fd, 0)
        else:
            self.unregister(fd)

    def unregister(self, fd: int) -> None:
        """Forget ``fd``; an fd the kernel already dropped (closed, reused) is fine."""
        try:
            if self._ep is not None:
                self._ep.unregister(fd)
            else:
                self._sel.unregister(fd)
        except (OSError, KeyError, ValueError):
            pass

    def wait(self, timeout_ms: Optional[int]) -> List[Tuple[int, int]]:
        """[(fd, bits)] ready now or within ``timeout_ms`` (None: until something is)."""
        if self._ep is not None:
            out = []
            for fd, ev in self._ep.poll(-1 if timeout_ms is None else timeout_ms / 1000.0):
                bits = (_IN if ev & select.EPOLLIN else 0) | (_RDHUP if ev & select.EPOLLRDHUP else 0)
                bits |= (_HUP if ev & select.EPOLLHUP else 0) | (_ERR if ev & select.EPOLLERR else 0)
                out.append((fd, bits))
            return out
        ready = self._sel.select(None if timeout_ms is None else timeout_ms / 1000.0)
        return [(key.fd, _IN) for key, _ in ready]

    def close(self) -> None:
        (self._ep or self._sel).close()


class _Conn:
    """One registered connection: the user's object and its counters (times in ms)."""

    __slots__ = ("obj", "fd", "seq", "last", "born", "requests")

    def __init__(self, obj: Any, fd: int, seq: int, now: int) -> None:
        self.obj = obj
        self.fd = fd
        self.seq = seq
        self.last = now
        self.born = now
        self.requests = 0


class KeepaliveManager:
    """Track many keep-alive connections: idle timeouts, request and lifetime limits, and
    peer close / reset / timeout detection, on one poller.

    ``idle_timeout`` and ``max_lifetime`` are seconds (0 < t <= 1e9, or None for never);
    ``max_requests`` counts ``touch`` calls (1..536870911, or None for unlimited); values
    outside these ranges are ValueError. See the module docstring for event order and
    fd-reuse handling.
    """

    def __init__(
        self,
        idle_timeout: Optional[float] = 75.0,
        *,
        max_requests: Optional[int] = None,
        max_lifetime: Optional[float] = None,
        keepalive: Optional[KeepaliveConfig] = None,
        close: bool = True,
        watch_readable: bool = True,
    ) -> None:
        self._idle_ms = _seconds_ms("idle_timeout", idle_timeout)
        self._life_ms = _seconds_ms("max_lifetime", max_lifetime)
        self._max_requests = _requests(max_requests)
        if keepalive is not None and not isinstance(keepalive, KeepaliveConfig):
            raise TypeError(f"keepalive must be a fastka.KeepaliveConfig or None, not {type(keepalive).__name__}: {keepalive!r}")
        self._keepalive = keepalive
        self._close = bool(close)
        self._watch = bool(watch_readable)
        self._clock: Callable[[], float] = time.monotonic
        self._conns: Dict[int, _Conn] = {}
        self._idle: "OrderedDict[int, None]" = OrderedDict()
        self._life: "OrderedDict[int, None]" = OrderedDict()
        self._limit: "OrderedDict[int, None]" = OrderedDict()  # MAX_REQUESTS awaiting poll
        self._draining: "OrderedDict[int, None]" = OrderedDict()  # FIN behind unread, unwatched data
        self._seq = 0
        self._lock = threading.RLock()
        self._polling = False
        self._wait_until: Optional[int] = None  # deadline the poller sleeps towards (ms)
        self._poller = _Poller()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller.register(self._wake_r.fileno(), True)
        self._closed = False

    # -- helpers -------------------------------------------------------------------------

    def _set_clock(self, clock: Callable[[], float]) -> None:
        """Replace the monotonic clock (a callable returning seconds); for tests."""
        self._clock = clock

    def _now(self) -> int:
        return math.floor(self._clock() * 1000)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed manager")

    def _fresh(self, c: _Conn) -> bool:
        """Does the object still own the fd it was added with? (fd-reuse safety)"""
        if isinstance(c.obj, int):
            return True
        try:
            return c.obj.fileno() == c.fd
        except (OSError, ValueError):
            return False

    def _earliest(self) -> Optional[int]:
        """The next timer deadline in ms (now for a pending MAX_REQUESTS), or None."""
        if self._limit:
            return -1
        best = None
        if self._idle_ms is not None and self._idle:
            best = self._conns[next(iter(self._idle))].last + self._idle_ms
        if self._life_ms is not None and self._life:
            d = self._conns[next(iter(self._life))].born + self._life_ms
            best = d if best is None else min(best, d)
        return best

    def _wake_if_sooner(self) -> None:
        """Wake a blocked poll() when the earliest deadline moved before its wake-up time."""
        if not self._polling:
            return
        d = self._earliest()
        if d is not None and (self._wait_until is None or d < self._wait_until):
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, InterruptedError):
                pass  # a wake-up is already pending

    def _forget(self, c: _Conn) -> None:
        del self._conns[c.fd]
        self._idle.pop(c.fd, None)
        self._life.pop(c.fd, None)
        self._limit.pop(c.fd, None)
        self._draining.pop(c.fd, None)
        self._poller.unregister(c.fd)

    def _shut(self, c: _Conn, event: Event) -> None:
        close_dropped(c.obj, c.fd, event)

    def _classify(self, c: _Conn, bits: int) -> Optional[Event]:
        """The event for a ready connection, or None when there is nothing to report.
        With epoll (registered with EPOLLRDHUP) readability alone means data and no FIN:
        READABLE without a peek. Otherwise the socket is peeked to tell data from EOF."""
        if self._watch and bits == _IN and self._poller.reports_rdhup:
            return Event.READABLE
        if bits & (_ERR | _HUP):
            err = pending_error(c.fd)
            if err:
                return error_event(err)
        p = peek(c.fd)
        if p < 0:
            return error_event(-p)
        if p == PEEK_EOF:
            return Event.PEER_CLOSED
        if p == PEEK_DATA:
            if self._watch:
                return Event.READABLE
            # FIN behind data someone else will read: wait for the reads (muted, re-peeked).
            if bits & (_RDHUP | _HUP) and c.fd not in self._draining:
                self._draining[c.fd] = None
                self._poller.mute(c.fd)
            return None
        if bits & (_ERR | _HUP):
            return Event.ERROR if bits & _ERR else Event.PEER_CLOSED
        return None

    # -- public API ----------------------------------------------------------------------

    def add(self, sock: Any) -> None:
        """Start tracking ``sock`` (a socket, object with fileno(), or int fd).

        Raises ValueError when it is already tracked, TypeError/ValueError for a bad
        argument, OSError when the fd cannot be watched (closed, not pollable).
        """
        fd = fd_of(sock)
        with self._lock:
            self._check_open()
            old = self._conns.get(fd)
            if old is not None:
                if old.obj is sock or (isinstance(sock, int) and isinstance(old.obj, int)) or self._fresh(old):
                    raise ValueError(f"fd {fd} is already in this manager")
                self._forget(old)  # stale: its socket was closed and the fd number reused
            try:
                os.fstat(fd)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot add fd {fd}: {os.strerror(exc.errno or errno.EBADF)}") from None
            if self._keepalive is not None:
                self._apply_keepalive(sock, fd)
            try:
                self._poller.register(fd, self._watch)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot watch fd {fd}: {os.strerror(exc.errno or errno.EINVAL)}") from None
            self._seq += 1
            c = _Conn(sock, fd, self._seq, self._now())
            self._conns[fd] = c
            self._idle[fd] = None
            self._life[fd] = None
            self._wake_if_sooner()

    def _apply_keepalive(self, sock: Any, fd: int) -> None:
        from . import _keepalive, _keepalive_py

        _keepalive.carry(_keepalive_py, fd, self._keepalive)

    def _lookup(self, sock: Any) -> _Conn:
        fd = fd_of(sock)
        c = self._conns.get(fd)
        if c is None or not self._fresh(c) or not (c.obj is sock or isinstance(sock, int)):
            raise KeyError(sock)
        return c

    def remove(self, sock: Any) -> None:
        """Stop tracking ``sock``; never closes it. KeyError when it is not tracked."""
        with self._lock:
            self._check_open()
            self._forget(self._lookup(sock))

    def touch(self, sock: Any) -> None:
        """Restart the idle clock of ``sock`` and count one request. KeyError if unknown.

        Reaching ``max_requests`` schedules MAX_REQUESTS for the next poll().
        """
        with self._lock:
            self._check_open()
            c = self._lookup(sock)
            c.last = self._now()
            self._idle.move_to_end(c.fd)
            c.requests += 1
            if self._max_requests is not None and c.requests >= self._max_requests and c.fd not in self._limit:
                self._limit[c.fd] = None
                self._wake_if_sooner()

    def next_deadline(self) -> Optional[float]:
        """Seconds until the next timer expiry (0.0 when one is due), or None."""
        with self._lock:
            self._check_open()
            d = self._earliest()
            return None if d is None else max(0, d - self._now()) / 1000.0

    def fileno(self) -> int:
        """The poller's fd (readable when poll() has I/O to report)."""
        self._check_open()
        return self._poller.fileno()

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, sock: Any) -> bool:
        with self._lock:
            if self._closed:
                return False
            try:
                self._lookup(sock)
            except (KeyError, TypeError, ValueError):
                return False
            return True

    def poll(self, timeout: Optional[float] = None) -> List[Tuple[Any, Event]]:
        """Wait up to ``timeout`` seconds (None: until there is something) and return
        [(obj, Event)]. ``poll(0)`` never blocks. Negative or NaN timeouts are ValueError;
        one above 1e9 seconds (or infinite) waits with no limit, like None.
        """
        limit_ms = poll_timeout_ms(timeout)
        with self._lock:
            self._check_open()
            if self._polling:
                raise RuntimeError("KeepaliveManager.poll() is already running in another thread")
            self._polling = True
        try:
            return self._poll(limit_ms)
        finally:
            with self._lock:
                self._polling = False
                self._wait_until = None

    def _poll(self, limit_ms: Optional[int]) -> List[Tuple[Any, Event]]:
        end = None if limit_ms is None else time.monotonic() + limit_ms / 1000.0
        while True:
            with self._lock:
                now = self._now()
                d = self._earliest()
                wait = None if d is None else max(0, d - now)
                if self._draining:
                    wait = _DRAIN_CHECK_MS if wait is None else min(wait, _DRAIN_CHECK_MS)
                if end is not None:
                    left = max(0, math.ceil((end - time.monotonic()) * 1000))
                    wait = left if wait is None else min(wait, left)
                if wait is not None:
                    wait = min(wait, _MAX_WAIT_MS)
                self._wait_until = None if d is None else d
            ready = self._poller.wait(wait)  # the lock is free while we sleep
            with self._lock:
                events = self._collect(ready)
            if events or (end is not None and time.monotonic() >= end):
                return events

    def _collect(self, ready: List[Tuple[int, int]]) -> List[Tuple[Any, Event]]:
        events: List[Tuple[Any, Event]] = []

        def drop(c: _Conn, ev: Event) -> None:
            self._forget(c)
            events.append((c.obj, ev))
            if self._close:
                self._shut(c, ev)

        for fd in list(self._limit):
            c = self._conns[fd]
            if self._fresh(c):
                drop(c, Event.MAX_REQUESTS)
            else:
                self._forget(c)
        wake_fd = self._wake_r.fileno()
        draining = [(fd, _RDHUP) for fd in self._draining]
        for fd, bits in ready + draining:
            if fd == wake_fd:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
                continue
            c = self._conns.get(fd)
            if c is None:
                continue
            if not self._fresh(c):
                self._forget(c)
                continue
            ev = self._classify(c, bits)
            if ev is Event.READABLE:
                c.last = self._now()
                self._idle.move_to_end(fd)
                events.append((c.obj, ev))
            elif ev is not None:
                drop(c, ev)
        now = self._now()
        while True:
            due = self._next_expired(now)
            if due is None:
                break
            c, ev = due
            if self._fresh(c):
                drop(c, ev)
            else:
                self._forget(c)
        return events

    def _next_expired(self, now: int) -> Optional[Tuple[_Conn, Event]]:
        """The next connection whose time is up at ``now``, merging the two lists.

        Candidates: the head of the lifetime list, and the first idle-expired connection
        whose lifetime is not also over (that one is reported as MAX_LIFETIME). The earlier
        deadline wins; a tie goes to the connection added first (then MAX_LIFETIME).
        """
        best = None
        if self._life_ms is not None and self._life:
            c = self._conns[next(iter(self._life))]
            if c.born + self._life_ms <= now:
                best = (c.born + self._life_ms, c.seq, 0, c)
        if self._idle_ms is not None:
            for fd in self._idle:
                c = self._conns[fd]
                if c.last + self._idle_ms > now:
                    break
                if self._life_ms is not None and c.born + self._life_ms <= now:
                    continue
                if best is None or (c.last + self._idle_ms, c.seq, 1) < best[:3]:
                    best = (c.last + self._idle_ms, c.seq, 1, c)
                break
        if best is None:
            return None
        return best[3], Event.IDLE if best[2] else Event.MAX_LIFETIME

    def close(self) -> None:
        """Release the poller; tracked sockets are left open (and forgotten). Idempotent.

        RuntimeError while another thread is inside poll().
        """
        with self._lock:
            if self._closed:
                return
            if self._polling:
                raise RuntimeError("cannot close a KeepaliveManager while another thread is inside poll()")
            self._closed = True
            self._conns.clear()
            self._idle.clear()
            self._life.clear()
            self._limit.clear()
            self._draining.clear()
            self._poller.close()
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> "KeepaliveManager":
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._conns)} connections"
        return f"<fastka.KeepaliveManager (python) {state}>"


def close_dropped(obj: object, fd: int, event: Event) -> None:
    """Close what the manager drops: FIN first for idle/limits, at once for dead. An object
    with close() is closed through it (so it cannot later close a reused fd number)."""
    if event in _GRACEFUL:
        try:
            if isinstance(obj, socket.socket):
                obj.shutdown(socket.SHUT_WR)
            else:
                s = socket.socket(fileno=fd)
                try:
                    s.shutdown(socket.SHUT_WR)
                finally:
                    s.detach()
        except OSError:
            pass  # already reset or not connected: close anyway
    close = getattr(obj, "close", None) if not isinstance(obj, int) else None
    try:
        if close is not None and callable(close):
            close()
        else:
            os.close(fd)
    except OSError:
        pass
