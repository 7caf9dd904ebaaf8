"""The pure-Python KeepaliveManager: the readable specification of the compiled one.

One readiness poller (``select.epoll`` on Linux, ``selectors.DefaultSelector`` elsewhere)
watches every connection; an OrderedDict and a heap keep the timers:

* ``_idle``: fds by last activity (``move_to_end`` on touch / READABLE), so the head is
  always the next idle expiry;
* ``_life``: a heap of (deadline, add order, fd), so the head is always the next
  ``max_lifetime`` expiry (each connection has its own lifetime when ``jitter`` spreads
  it); entries of connections removed meanwhile are skipped, and the heap is compacted
  once they outnumber the connections.

Time is integer milliseconds of a monotonic clock (``_set_clock`` swaps the clock, for
tests). A deadline has passed when ``now_ms >= deadline_ms``. Timeouts round UP to whole
milliseconds (``fastka._manager``), the clock reading rounds down.

Event order within one ``poll``: MAX_REQUESTS (in the order the limit was reached by
``touch``), then I/O events (in the kernel's order), then expiries by deadline; among
equal idle deadlines in order of last activity, among equal lifetimes in order of ``add``,
an idle and a lifetime expiry at the same millisecond by order of ``add``. A connection
past both limits reports MAX_LIFETIME.

An event source: ``fileno()`` is readable whenever ``poll()`` has work. I/O readiness
shows through it directly; a queued MAX_REQUESTS writes a byte to a wake-up socket that
the poller watches; deadlines are rung on the same socket by an alarm thread (one per
manager, started on the first deadline, asleep until the earliest one). The compiled
backend uses an eventfd and a timerfd instead of the socket and the thread. Where the
selector has no fd of its own (select and poll: Windows, some Unixes) ``fileno()`` raises
io.UnsupportedOperation and ``next_deadline()`` is the way to schedule ``poll()``.

Threads: one lock guards the manager's state; the user's code (an object's ``fileno()``
and ``close()``) never runs under it, so a ``close()`` that takes a connection pool's
lock cannot deadlock with a thread that holds that lock and calls ``add()``. After such a
call the slot is re-checked under the lock: another thread may have changed it.

fd reuse: before acting on a slot the manager checks that the object still has the fd it
was added with (``obj.fileno() == fd``; a closed ``socket.socket`` returns -1; a
``fileno()`` that raises fails the check). A slot that fails the check is stale: it is
dropped silently, never reported and never closed.

Sockets closed behind the manager's back while their file lives on (a ``dup()``, a forked
child, ``socket.fromfd``): epoll registers open files, not fd numbers, so such a socket
stays registered and its readiness is reported under its old fd number. The manager
recognises readiness that no live slot owns and rebuilds its epoll set from the live
slots (rare, O(n)); ``fileno()`` stays the same (it is an epoll set holding the rebuilt
one). Where a stale registration may share its number with a live socket (the number was
reused after its removal failed), that socket's readiness is confirmed by a peek before
it is reported. Users who dup() a tracked socket should remove() it before closing it.
"""
from __future__ import annotations

import errno
import heapq
import io
import math
import os
import select
import selectors
import socket
import sys
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, cast

from . import _manager as common
from ._config import KeepaliveConfig
from ._fd import fd_of
from ._liveness_py import PEEK_DATA, PEEK_EMPTY, PEEK_EOF, error_event, peek, pending_error
from ._types import Event

__all__ = ["KeepaliveManager"]

# Readiness bits our poller reports (independent of epoll/selectors constants).
_IN, _RDHUP, _HUP, _ERR = 1, 2, 4, 8


class _Poller:
    """Level-triggered readiness for many fds: epoll where there is one, else selectors.

    With epoll, ``fileno()`` is an outer epoll set holding the one that holds the fds, so
    that set can be rebuilt (``rebuild``) without changing the number users nest.
    """

    def __init__(self) -> None:
        # Either _ep and _src (epoll) or _sel (a selector), as the platform has epoll.
        self._ep: Any = select.epoll() if hasattr(select, "epoll") else None
        self._src: Any = None
        self._sel: Any = None
        if self._ep is not None:
            self._src = select.epoll()
            self._src.register(self._ep.fileno(), select.EPOLLIN)
        else:
            self._sel = selectors.DefaultSelector()
        # epoll reports a FIN apart from data, and registers open files, not fd numbers.
        self.reports_rdhup = self.tracks_files = self._ep is not None

    def fileno(self) -> int:
        poller = self._src if self._src is not None else self._sel
        fileno: Optional[Callable[[], int]] = getattr(poller, "fileno", None)  # epoll, kqueue, devpoll have one
        if fileno is None:
            raise io.UnsupportedOperation(
                f"{type(self._sel).__name__} has no fd to nest in an event loop on {sys.platform}: use next_deadline()"
            )
        return fileno()

    @staticmethod
    def _mask(readable: bool) -> int:
        return (select.EPOLLIN if readable else 0) | select.EPOLLRDHUP

    def register(self, fd: int, readable: bool) -> None:
        if self._ep is not None:
            self._ep.register(fd, self._mask(readable))
        else:  # without RDHUP, a peer close is seen only as readability
            self._sel.register(fd, selectors.EVENT_READ)

    def mute(self, fd: int) -> None:
        """Stop watching ``fd`` for now (its owner re-checks it on a timer). Not even the
        implicit error/hang-up interest may stay: once both directions are shut, epoll
        reports EPOLLHUP for as long as the socket lives."""
        self.unregister(fd)

    def unregister(self, fd: int) -> bool:
        """Forget ``fd``. False when the kernel no longer knows it under that number
        (closed, or the number reused): with epoll its registration may live on."""
        try:
            if self._ep is not None:
                self._ep.unregister(fd)
            else:
                self._sel.unregister(fd)
        except (OSError, KeyError, ValueError):
            return False
        return True

    def rebuild(self, fds: Iterable[Tuple[int, bool]]) -> None:
        """Replace the epoll set by one holding ``fds``: (fd, readable)."""
        ep = select.epoll()
        for fd, readable in fds:
            try:
                ep.register(fd, self._mask(readable))
            except OSError:
                pass  # closed behind our back: its slot is found stale later
        self._src.register(ep.fileno(), select.EPOLLIN)
        self._src.unregister(self._ep.fileno())
        self._ep.close()
        self._ep = ep

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
        if self._ep is not None:
            self._ep.close()
            self._src.close()
        else:
            self._sel.close()


class _Alarm:
    """Calls ``ring()`` on its owner once a monotonic time has come: one daemon thread,
    started on first use, asleep in between. Holds its owner weakly, and its thread ends
    as soon as the owner is gone (dropped without close()). In a child forked while it
    ran, the thread (which fork does not copy) is started again for the pending time."""

    def __init__(self, owner: "KeepaliveManager") -> None:
        self._owner = weakref.ref(owner, self._owner_gone)
        self._cond = threading.Condition()
        self._at: Optional[float] = None  # time.monotonic() seconds
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        _ALARMS.add(self)

    def set(self, at: float) -> None:
        with self._cond:
            self._at = at
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="fastka-manager-alarm", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                left = None if self._at is None else self._at - time.monotonic()
                if left is None or left > 0:
                    self._cond.wait(left)
                    continue
                self._at = None
                owner = self._owner()
                if owner is None:
                    return
                owner._ring()
                del owner

    def _owner_gone(self, _ref: object) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    def _after_fork(self) -> None:
        """In the child: new lock, and the thread again if an alarm is pending."""
        self._cond = threading.Condition()
        self._thread = None
        if self._at is not None and not self._stop:
            self.set(self._at)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        _ALARMS.discard(self)


_ALARMS: "weakref.WeakSet[_Alarm]" = weakref.WeakSet()  # of managers not yet closed


def _after_fork_in_child() -> None:
    """fork() copies only the calling thread: the alarms start theirs again, and the
    managers' locks, which another thread may have held at the fork, are new."""
    for alarm in list(_ALARMS):
        owner = alarm._owner()
        if owner is not None:
            owner._lock = threading.RLock()
        alarm._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Conn:
    """One registered connection: the user's object and its counters (times in ms)."""

    __slots__ = ("obj", "fd", "seq", "last", "dies", "requests", "limit")

    def __init__(self, obj: Any, fd: int, seq: int, now: int, life_ms: Optional[int], limit: Optional[int]) -> None:
        self.obj = obj
        self.fd = fd
        self.seq = seq
        self.last = now
        self.dies = None if life_ms is None else now + life_ms  # the max_lifetime deadline
        self.requests = 0
        self.limit = limit  # this connection's max_requests


class KeepaliveManager:
    # The docstring and signature: fastka._manager (one text for both backends). See the
    # module docstring for event order, threads and fd-reuse handling.
    __doc__ = common.DOC
    __signature__ = common.SIGNATURE

    @common.parameters_of(common.settings)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Arguments as ``fastka._manager.settings`` takes them (see the class)."""
        if getattr(self, "_closed", True) is False:
            raise common.reinit_error()
        s = common.settings(*args, **kwargs)
        self._idle_ms = s.idle_ms
        self._limits = s.limits
        self._keepalive = s.keepalive
        self._close = s.close
        self._watch = s.watch_readable
        self._clock: Callable[[], float] = time.monotonic
        self._conns: Dict[int, _Conn] = {}
        self._idle: "OrderedDict[int, None]" = OrderedDict()
        self._life: List[Tuple[int, int, int]] = []  # heap of (dies, seq, fd)
        self._life_stale = 0  # entries in _life of connections forgotten
        self._limit: "OrderedDict[int, None]" = OrderedDict()  # MAX_REQUESTS awaiting poll
        self._draining: "OrderedDict[int, None]" = OrderedDict()  # FIN behind unread, unwatched data
        self._suspect: Set[int] = set()  # numbers a stale registration may still carry
        self._seq = 0
        self._lock = threading.RLock()
        self._polling = False
        self._armed: Optional[int] = None  # the alarm's deadline (ms)
        self._poller = _Poller()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller.register(self._wake_r.fileno(), True)
        self._alarm = _Alarm(self)
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

    @staticmethod
    def _owns(obj: Any, fd: int) -> bool:
        """Does ``obj`` still own the fd it was added with? (fd-reuse safety). Asks the
        user's ``fileno()``: never called under the manager's lock."""
        if isinstance(obj, int):
            return True
        try:
            return bool(obj.fileno() == fd)
        except Exception:
            return False

    def _earliest(self) -> Optional[int]:
        """The next timer deadline in ms (now for a pending MAX_REQUESTS), or None."""
        if self._limit:
            return -1
        best = None
        if self._idle_ms is not None and self._idle:
            best = self._conns[next(iter(self._idle))].last + self._idle_ms
        head = self._life_head()
        if head is not None:
            d = cast(int, head.dies)
            best = d if best is None else min(best, d)
        return best

    def _life_head(self) -> Optional[_Conn]:
        """The connection with the earliest max_lifetime deadline (dropping the heap's
        entries of forgotten connections on the way), or None."""
        life = self._life
        while life:
            _, seq, fd = life[0]
            c = self._conns.get(fd)
            if c is not None and c.seq == seq:
                return c
            heapq.heappop(life)
            self._life_stale -= 1
        return None

    def _ring(self) -> None:
        """Make the poller readable (a pending byte is enough)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # a wake-up is already pending, or the manager is closing

    def _arm(self, now: int) -> None:
        """Ring at the earliest deadline (or the next drain check) when that is sooner
        than the alarm already set, or when the alarm has gone off."""
        d = self._earliest()
        if d == -1:
            self._ring()
            return
        if self._draining:
            d = now + common.DRAIN_CHECK_MS if d is None else min(d, now + common.DRAIN_CHECK_MS)
        if d is None or (self._armed is not None and self._armed <= d and self._armed > now):
            return
        self._armed = d
        self._alarm.set(time.monotonic() + max(0, d - now) / 1000.0)

    def _forget(self, c: _Conn) -> None:
        del self._conns[c.fd]
        self._idle.pop(c.fd, None)
        if c.dies is not None:  # its heap entry is skipped from now on
            self._life_stale += 1
            if self._life_stale > len(self._conns) + 64:
                live = self._conns
                self._life = [e for e in self._life if e[2] in live and live[e[2]].seq == e[1]]
                heapq.heapify(self._life)
                self._life_stale = 0
        self._limit.pop(c.fd, None)
        if c.fd in self._draining:  # muted: not in the poller
            del self._draining[c.fd]
        elif not self._poller.unregister(c.fd) and self._poller.tracks_files:
            self._suspect.add(c.fd)

    def _rebuild(self) -> None:
        """A fresh epoll set from the live slots: drops registrations no slot owns."""
        fds = [(self._wake_r.fileno(), True)]
        fds += [(fd, self._watch) for fd in self._conns if fd not in self._draining]
        self._poller.rebuild(fds)
        self._suspect.clear()

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
            # FIN behind data someone else will read: wait for the reads (muted, re-peeked
            # every DRAIN_CHECK_MS).
            if bits & (_RDHUP | _HUP) and c.fd not in self._draining:
                self._draining[c.fd] = None
                self._poller.mute(c.fd)
            return None
        if bits & (_ERR | _HUP):
            return Event.ERROR if bits & _ERR else Event.PEER_CLOSED
        return None

    def _phantom(self, c: _Conn) -> bool:
        """Readiness on a suspect number that the socket itself does not show: it came
        from a stale registration of an older file."""
        return pending_error(c.fd) == 0 and peek(c.fd) == PEEK_EMPTY

    # -- public API ----------------------------------------------------------------------

    def add(self, sock: Any) -> None:
        """Start tracking ``sock`` (a socket, object with fileno(), or int fd).

        Raises ValueError when it is already tracked, TypeError/ValueError for a bad
        argument (TypeError for a socket that is not a stream socket; with close=True,
        for an object without close()), OSError when
        the fd cannot be watched (closed, not pollable).
        """
        fd = fd_of(sock)
        self._check_open()
        if self._close:
            common.check_closable(sock)
        kind = common.socket_type(sock, fd)
        with self._lock:
            old = self._conns.get(fd)
        if old is not None:
            if old.obj is sock or (isinstance(sock, int) and isinstance(old.obj, int)) or self._owns(old.obj, fd):
                raise ValueError(f"fd {fd} is already in this manager")
        with self._lock:
            self._check_open()
            if old is not None and self._conns.get(fd) is old:
                self._forget(old)  # stale: its socket was closed and the fd number reused
            if fd in self._conns:  # added by another thread meanwhile
                raise ValueError(f"fd {fd} is already in this manager")
            try:
                os.fstat(fd)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot add fd {fd}: {os.strerror(exc.errno or errno.EBADF)}") from None
            common.check_stream(fd, kind)
            if self._keepalive is not None:
                self._apply_keepalive(fd, self._keepalive)
            life_ms, limit = self._limits.draw()
            try:
                self._poller.register(fd, self._watch)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot watch fd {fd}: {os.strerror(exc.errno or errno.EINVAL)}") from None
            self._seq += 1
            now = self._now()
            c = _Conn(sock, fd, self._seq, now, life_ms, limit)
            self._conns[fd] = c
            self._idle[fd] = None
            if c.dies is not None:
                heapq.heappush(self._life, (c.dies, c.seq, fd))
            self._arm(now)

    def _apply_keepalive(self, fd: int, config: KeepaliveConfig) -> None:
        """set_keepalive's plan, skipped where the socket carries the config already
        (inherited from a listener)."""
        from . import _keepalive, _keepalive_py

        _keepalive.carry(_keepalive_py, fd, config)

    def _find(self, sock: Any) -> _Conn:
        """The slot of tracked ``sock``, or KeyError. Called without the lock (it asks
        the user's fileno()); the caller re-checks under the lock that the slot is still
        the one tracked (``_held``)."""
        fd = fd_of(sock)
        with self._lock:
            self._check_open()
            c = self._conns.get(fd)
        if c is None or not (c.obj is sock or isinstance(sock, int)):
            raise KeyError(sock)
        if c.obj is not sock and not self._owns(c.obj, fd):  # sock's own fileno() said fd
            raise KeyError(sock)
        return c

    def _held(self, c: _Conn, sock: Any) -> _Conn:
        """``c`` when it is still tracked (under the lock), else KeyError."""
        self._check_open()
        if self._conns.get(c.fd) is not c:
            raise KeyError(sock)
        return c

    def remove(self, sock: Any) -> None:
        """Stop tracking ``sock``; never closes it. KeyError when it is not tracked."""
        c = self._find(sock)
        with self._lock:
            self._forget(self._held(c, sock))

    def discard(self, sock: Any) -> None:
        """Stop tracking ``sock`` if it is tracked; never an error for an unknown or
        closed socket, or a closed manager (TypeError only for what is not a socket)."""
        try:
            c = self._find(sock)
            with self._lock:
                self._forget(self._held(c, sock))
        except (KeyError, ValueError):
            return

    def touch(self, sock: Any) -> None:
        """Restart the idle clock of ``sock`` and count one request. KeyError if unknown.

        Reaching ``max_requests`` queues MAX_REQUESTS for the next poll() (and makes
        ``fileno()`` readable).
        """
        c = self._find(sock)
        with self._lock:
            self._held(c, sock)
            c.last = self._now()
            self._idle.move_to_end(c.fd)
            c.requests += 1
            if c.limit is not None and c.requests >= c.limit and c.fd not in self._limit:
                self._limit[c.fd] = None
                self._ring()

    def next_deadline(self) -> Optional[float]:
        """Seconds until the next timer expiry (0.0 when one is due), or None."""
        with self._lock:
            self._check_open()
            d = self._earliest()
            return None if d is None else max(0, d - self._now()) / 1000.0

    def fileno(self) -> int:
        """An fd that is readable when poll() has work: I/O, a passed deadline, a queued
        MAX_REQUESTS. Stays the same for the manager's life."""
        self._check_open()
        return self._poller.fileno()

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, sock: Any) -> bool:
        try:
            c = self._find(sock)
            with self._lock:
                self._held(c, sock)
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def poll(self, timeout: Optional[float] = None) -> List[Tuple[Any, Event]]:
        """Wait up to ``timeout`` seconds (None: until there is something) and return
        [(obj, Event)]. ``poll(0)`` never blocks. Negative or NaN timeouts are ValueError;
        one above 1e9 seconds (or infinite) waits with no limit, like None.
        """
        limit_ms = common.poll_timeout_ms(timeout)
        with self._lock:
            self._check_open()
            if self._polling:
                raise common.busy_error("poll")
            self._polling = True
        try:
            return self._poll(limit_ms)
        finally:
            with self._lock:
                self._polling = False

    def _poll(self, limit_ms: Optional[int]) -> List[Tuple[Any, Event]]:
        end = None if limit_ms is None else time.monotonic() + limit_ms / 1000.0
        while True:
            with self._lock:
                now = self._now()
                d = self._earliest()
                wait = None if d is None else max(0, d - now)
                if self._draining:
                    wait = common.DRAIN_CHECK_MS if wait is None else min(wait, common.DRAIN_CHECK_MS)
                if end is not None:
                    left = max(0, math.ceil((end - time.monotonic()) * 1000))
                    wait = left if wait is None else min(wait, left)
                if wait is not None:
                    wait = min(wait, common.MAX_WAIT_MS)
            # The lock is free while we sleep; a deadline that moves sooner meanwhile
            # rings the wake-up socket through the alarm.
            ready = self._poller.wait(wait)
            events = self._collect(ready)
            if events or (end is not None and time.monotonic() >= end):
                return events

    def _collect(self, ready: List[Tuple[int, int]]) -> List[Tuple[Any, Event]]:
        """The events of one tick. User code (an object's fileno() and close()) runs
        without the lock, one connection at a time, and every slot is re-checked after
        it: another thread, or that very close(), may have changed the manager."""
        events: List[Tuple[Any, Event]] = []
        while True:  # MAX_REQUESTS, in the order the limit was reached
            with self._lock:
                if not self._limit:
                    break
                c = self._conns[next(iter(self._limit))]
                self._forget(c)
            self._settle(c, Event.MAX_REQUESTS, events)
        stale = False
        with self._lock:
            # Each readiness with the slot it was reported for, taken before any user code
            # runs: a number removed and reused meanwhile is not taken for the old one.
            wake_fd = self._wake_r.fileno()
            todo = [(fd, bits, self._conns.get(fd)) for fd, bits in ready]
            # the draining: re-checked on the drain timer (SO_ERROR, then a peek)
            todo += [(fd, _RDHUP | _HUP, self._conns[fd]) for fd in self._draining]
        for fd, bits, found in todo:
            with self._lock:
                if fd == wake_fd:
                    self._drain_wake()
                    continue
                if found is None:
                    stale = stale or self._poller.tracks_files  # readiness no slot owns
                    continue
                c = found
                if self._conns.get(fd) is not c:  # removed meanwhile
                    continue
            owns = self._owns(c.obj, fd)
            with self._lock:
                if self._conns.get(fd) is not c:  # removed meanwhile
                    continue
                if not owns:
                    self._forget(c)
                    continue
                if fd in self._suspect and self._phantom(c):
                    stale = True
                    continue
                ev = self._classify(c, bits)
                if ev is Event.READABLE:
                    c.last = self._now()
                    self._idle.move_to_end(fd)
                    events.append((c.obj, ev))
                    continue
                if ev is None:
                    continue
                self._forget(c)
            events.append((c.obj, ev))
            if self._close:
                common.close_dropped(c.obj, c.fd, ev)
        with self._lock:
            # Rebuilt here only, in the polling thread (never under a wait on the old set);
            # also once the suspects outnumber the connections: amortised O(1) per suspect.
            if stale or len(self._suspect) > len(self._conns):
                self._rebuild()
            now = self._now()
        while True:
            with self._lock:
                due = self._next_expired(now)
                if due is None:
                    self._arm(now)
                    break
                c, ev = due
                self._forget(c)
            self._settle(c, ev, events)
        return events

    def _settle(self, c: _Conn, ev: Event, events: List[Tuple[Any, Event]]) -> None:
        """Report (and close) a connection already forgotten, unless its object no longer
        owns its fd (stale: dropped silently). Runs user code: never under the lock."""
        if self._owns(c.obj, c.fd):
            events.append((c.obj, ev))
            if self._close:
                common.close_dropped(c.obj, c.fd, ev)

    def _drain_wake(self) -> None:
        """Empty the wake-up socket; the alarm is to be set again."""
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._armed = None

    def _next_expired(self, now: int) -> Optional[Tuple[_Conn, Event]]:
        """The next connection whose time is up at ``now``, merging the two lists.

        Candidates: the head of the lifetime list, and the first idle-expired connection
        whose lifetime is not also over (that one is reported as MAX_LIFETIME). The earlier
        deadline wins; a tie goes to the connection added first (then MAX_LIFETIME).
        """
        best = None
        c = self._life_head()
        if c is not None and cast(int, c.dies) <= now:
            best = (cast(int, c.dies), c.seq, 0, c)
        if self._idle_ms is not None:
            for fd in self._idle:
                c = self._conns[fd]
                if c.last + self._idle_ms > now:
                    break
                if c.dies is not None and c.dies <= now:
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
                raise common.busy_error("close")
            self._closed = True
            self._alarm.close()
            self._conns.clear()
            self._idle.clear()
            self._life.clear()
            self._life_stale = 0
            self._limit.clear()
            self._draining.clear()
            self._suspect.clear()
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

