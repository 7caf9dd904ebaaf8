# cython: language_level=3
"""The compiled KeepaliveManager: src/manager.c (epoll, flat slots, intrusive lists) under
a thin binding. Behaviour, messages and event order are those of the pure-Python
specification, fastka/_manager_py.py.

The only Python object per connection is the user's own, held by one strong reference in
``_objs``, a Python list indexed by fd (8 bytes a slot; the C slot is 48 bytes). Both
grow to the next multiple of 1,024 above the highest fd, not by doubling. Calls that
may run Python code (``obj.fileno()``, ``obj.close()``, a test clock) happen before or
after C state changes, never in the middle, and the slot is re-checked afterwards.
"""
import errno
import math
import os

from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint32_t
from libc.stdlib cimport free, malloc

from fastka._ckeepalive cimport fk_sockopt, fk_sockopt_apply, fk_sockopt_match
from fastka._cmanager cimport (
    epoll_event, fk_manager, fk_mgr_add, fk_mgr_classify, fk_mgr_destroy, fk_mgr_drain_wake,
    fk_mgr_draining, fk_mgr_earliest, fk_mgr_has, fk_mgr_init, fk_mgr_next_expired, fk_mgr_now,
    fk_mgr_queued, fk_mgr_remove, fk_mgr_touch, fk_mgr_wait, fk_mgr_wake,
)

from ._config import KeepaliveConfig
from ._errors import keepalive_error
from ._fd import fd_of
from ._manager_py import _requests, _seconds_ms, close_dropped, poll_timeout_ms
from ._types import Event

__all__ = ["KeepaliveManager"]

DEF NEVENTS = 1024
DEF DRAIN_CHECK_MS = 100
DEF SLOT_STEP = 1024  # FK_SLOT_STEP in src/manager.h
DEF MAX_WAIT_MS = 0x7FFFFFFF  # the longest single epoll_wait; longer waits loop
# Event members indexed by their value (the FK_EV_* codes of src/events.h); 0 is "none".
cdef tuple EVENTS = (None,) + tuple(sorted(Event, key=int))
cdef object READABLE = Event.READABLE
cdef object MAX_REQUESTS = Event.MAX_REQUESTS


cdef class KeepaliveManager:
    """Track many keep-alive connections on one epoll set; see fastka/_manager_py.py."""

    cdef fk_manager m
    cdef bint _open, _polling, _close
    cdef list _objs
    cdef object _clock, _keepalive
    cdef fk_sockopt _ka[5]  # the keepalive config's plan: SO_KEEPALIVE and at most four TCP options
    cdef size_t _ka_n
    cdef list _ka_names
    cdef int64_t _wait_until
    cdef epoll_event *_evs

    def __cinit__(self):
        self._open = False
        self._evs = NULL

    def __init__(self, idle_timeout=75.0, *, max_requests=None, max_lifetime=None,
                 keepalive=None, close=True, watch_readable=True):
        idle_ms = _seconds_ms("idle_timeout", idle_timeout)
        life_ms = _seconds_ms("max_lifetime", max_lifetime)
        maxreq = _requests(max_requests)
        if keepalive is not None and not isinstance(keepalive, KeepaliveConfig):
            raise TypeError(f"keepalive must be a fastka.KeepaliveConfig or None, not {type(keepalive).__name__}: {keepalive!r}")
        if self._open:
            raise RuntimeError("KeepaliveManager.__init__ called twice")
        self._keepalive = keepalive
        if keepalive is not None:  # the option calls of set_keepalive, from fastka/_platform.py
            steps = keepalive._plan()
            if len(steps) > 5:
                raise RuntimeError(f"a keepalive plan of {len(steps)} options does not fit the manager")
            self._ka_names = [name for name, _, _, _ in steps]
            self._ka_n = len(steps)
            for i, (_, level, number, value) in enumerate(steps):
                self._ka[i].level, self._ka[i].name, self._ka[i].value = level, number, value
        self._close = bool(close)
        self._clock = None
        self._objs = []
        self._evs = <epoll_event *>malloc(NEVENTS * sizeof(epoll_event))
        if self._evs == NULL:
            raise MemoryError()
        r = fk_mgr_init(&self.m, -1 if idle_ms is None else idle_ms, -1 if life_ms is None else life_ms,
                        0 if maxreq is None else maxreq, 1 if watch_readable else 0)
        if r < 0:
            raise OSError(-r, f"cannot create the manager's epoll set: {os.strerror(-r)}")
        self._open = True
        self._polling = False
        self._wait_until = INT64_MAX

    def __dealloc__(self):
        if self._open:
            fk_mgr_destroy(&self.m)
        free(self._evs)

    # -- helpers ---------------------------------------------------------------------

    def _set_clock(self, clock):
        """Replace the monotonic clock (a callable returning seconds); for tests."""
        self._clock = clock

    cdef int64_t _now(self) except? -1:
        if self._clock is None:
            return fk_mgr_now()
        return math.floor(self._clock() * 1000)

    cdef _check_open(self):
        if not self._open:
            raise ValueError("I/O operation on closed manager")

    cdef bint _fresh(self, object obj, int fd):
        if isinstance(obj, int):
            return True
        try:
            return obj.fileno() == fd
        except (OSError, ValueError):
            return False

    cdef _wake_if_sooner(self):
        if self._polling and fk_mgr_earliest(&self.m) < self._wait_until:
            fk_mgr_wake(&self.m)

    cdef _forget(self, int fd):
        fk_mgr_remove(&self.m, fd)
        self._objs[fd] = None

    cdef _shut(self, obj, int fd, ev):
        close_dropped(obj, fd, ev)

    cdef object _lookup(self, sock):
        fd = fd_of(sock)
        if not fk_mgr_has(&self.m, fd):
            raise KeyError(sock)
        obj = self._objs[fd]
        if not (obj is sock or isinstance(sock, int)) or not self._fresh(obj, fd):
            raise KeyError(sock)
        if self._objs[fd] is not obj:  # changed by another thread meanwhile
            raise KeyError(sock)
        return fd

    # -- public API ------------------------------------------------------------------

    def add(self, sock):
        """Start tracking ``sock``. ValueError when already tracked; OSError when the fd
        cannot be watched."""
        cdef int fd = fd_of(sock)
        cdef int r
        cdef size_t failed = 0
        self._check_open()
        if fk_mgr_has(&self.m, fd):
            old = self._objs[fd]
            if old is sock or (isinstance(sock, int) and isinstance(old, int)) or self._fresh(old, fd):
                raise ValueError(f"fd {fd} is already in this manager")
            if self._objs[fd] is old and fk_mgr_has(&self.m, fd):
                self._forget(fd)  # stale: its socket was closed and the fd number reused
            self._check_open()
        if fk_mgr_has(&self.m, fd):
            raise ValueError(f"fd {fd} is already in this manager")
        try:
            os.fstat(fd)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot add fd {fd}: {os.strerror(exc.errno or errno.EBADF)}") from None
        if self._keepalive is not None and fk_sockopt_match(fd, self._ka, self._ka_n) != 1:
            r = fk_sockopt_apply(fd, self._ka, self._ka_n, &failed)  # names the option a read could not
            if r < 0:
                raise keepalive_error(-r, fd, self._ka_names[failed])
        now = self._now()
        if fk_mgr_has(&self.m, fd):
            raise ValueError(f"fd {fd} is already in this manager")
        if fd >= len(self._objs):  # a new list of the exact size: no over-allocation
            self._objs = self._objs + [None] * ((fd // SLOT_STEP + 1) * SLOT_STEP - len(self._objs))
        r = fk_mgr_add(&self.m, fd, now)
        if r == -errno.ENOMEM:
            raise MemoryError()
        if r < 0:
            raise OSError(-r, f"cannot watch fd {fd}: {os.strerror(-r)}")
        self._objs[fd] = sock
        self._wake_if_sooner()

    def remove(self, sock):
        """Stop tracking ``sock``; never closes it. KeyError when it is not tracked."""
        self._check_open()
        fd = self._lookup(sock)
        self._forget(fd)

    def touch(self, sock):
        """Restart the idle clock of ``sock`` and count one request. KeyError if unknown."""
        self._check_open()
        fd = self._lookup(sock)
        now = self._now()
        if fk_mgr_has(&self.m, fd) and fk_mgr_touch(&self.m, fd, now) == 1:
            self._wake_if_sooner()

    def next_deadline(self):
        """Seconds until the next timer expiry (0.0 when one is due), or None."""
        self._check_open()
        now = self._now()
        d = fk_mgr_earliest(&self.m)
        if d == INT64_MAX:
            return None
        if d == INT64_MIN:
            return 0.0
        return max(0, d - now) / 1000.0

    def fileno(self):
        """The epoll fd (readable when poll() has I/O to report)."""
        self._check_open()
        return self.m.epfd

    def __len__(self):
        return self.m.count if self._open else 0

    def __contains__(self, sock):
        if not self._open:
            return False
        try:
            self._lookup(sock)
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def poll(self, timeout=None):
        """Wait up to ``timeout`` seconds (None: until there is something) and return
        [(obj, Event)]. The GIL is released while waiting."""
        limit_ms = poll_timeout_ms(timeout)
        self._check_open()
        if self._polling:
            raise RuntimeError("KeepaliveManager.poll() is already running in another thread")
        self._polling = True
        try:
            return self._poll(limit_ms)
        finally:
            self._polling = False
            self._wait_until = INT64_MAX

    cdef list _poll(self, limit_ms):
        cdef int n, wait
        cdef int64_t d, now
        cdef double end = -1.0
        import time
        if limit_ms is not None:
            end = time.monotonic() + limit_ms / 1000.0
        while True:
            now = self._now()
            d = fk_mgr_earliest(&self.m)
            if d == INT64_MAX:
                wait = -1
            elif d <= now:
                wait = 0
            else:
                wait = <int>min(d - now, 0x7FFFFFFF)
            if self.m.ndraining:
                wait = DRAIN_CHECK_MS if wait < 0 else min(wait, DRAIN_CHECK_MS)
            if end >= 0:
                left = max(0, math.ceil((end - time.monotonic()) * 1000))
                left = min(left, MAX_WAIT_MS)
                wait = left if wait < 0 else min(wait, left)
            self._wait_until = d
            with nogil:
                n = fk_mgr_wait(&self.m, self._evs, NEVENTS, wait)
            if n == -errno.EINTR:
                n = 0
            elif n < 0:
                raise OSError(-n, f"epoll_wait: {os.strerror(-n)}")
            events = self._collect(n)
            if events or (end >= 0 and time.monotonic() >= end):
                return events

    cdef list _collect(self, int n):
        cdef list events = []
        cdef int fd, i, ev, k
        cdef uint32_t bits
        cdef int drain[64]
        k = fk_mgr_draining(&self.m, drain, 64)  # before any event changes the draining set
        while True:
            fd = fk_mgr_queued(&self.m)
            if fd < 0:
                break
            self._settle(fd, MAX_REQUESTS, events)
        for i in range(n + k):
            if i < n:
                fd = self._evs[i].data.fd
                bits = self._evs[i].events
            else:
                fd = drain[i - n]
                bits = 0x2000  # EPOLLRDHUP
            if fd == self.m.wakefd:
                fk_mgr_drain_wake(&self.m)
                continue
            if not fk_mgr_has(&self.m, fd):
                continue
            obj = self._objs[fd]
            if not self._fresh(obj, fd):
                if self._objs[fd] is obj and fk_mgr_has(&self.m, fd):
                    self._forget(fd)
                continue
            if self._objs[fd] is not obj or not fk_mgr_has(&self.m, fd):
                continue
            ev = fk_mgr_classify(&self.m, fd, bits, self._now())
            if ev == 1:  # FK_EV_READABLE
                events.append((obj, READABLE))
            elif ev != 0:
                self._forget(fd)
                events.append((obj, EVENTS[ev]))
                if self._close:
                    self._shut(obj, fd, EVENTS[ev])
        now = self._now()
        while True:
            fd = fk_mgr_next_expired(&self.m, now, &ev)
            if fd < 0:
                break
            self._settle(fd, EVENTS[ev], events)
        return events

    cdef _settle(self, int fd, ev, list events):
        """Report and drop fd with ev, or drop it silently when its slot is stale."""
        obj = self._objs[fd]
        self._forget(fd)  # C state first: the checks below may run Python code
        if self._fresh(obj, fd):
            events.append((obj, ev))
            if self._close:
                self._shut(obj, fd, ev)

    def close(self):
        """Release the epoll set; tracked sockets are left open. Idempotent.
        RuntimeError while another thread is inside poll()."""
        if not self._open:
            return
        if self._polling:
            raise RuntimeError("cannot close a KeepaliveManager while another thread is inside poll()")
        self._open = False
        fk_mgr_destroy(&self.m)
        self._objs = []

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = f"{self.m.count} connections" if self._open else "closed"
        return f"<fastka.KeepaliveManager (c) {state}>"
