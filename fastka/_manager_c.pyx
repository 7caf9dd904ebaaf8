# cython: language_level=3
"""The compiled KeepaliveManager: src/manager.c (epoll, flat slots, intrusive lists) under
a thin binding. Behaviour, messages and event order are those of the pure-Python
specification, fastka/_manager_py.py.

The only Python object per connection is the user's own, held by one strong reference in
``_objs``, a Python list indexed by fd (8 bytes a slot; the C slot is 48 bytes). Both
grow to the next multiple of FK_SLOT_STEP (1,024) above the highest fd, not by doubling.
Calls that may run Python code (``obj.fileno()``, ``obj.close()``, a test clock) happen
before or after C state changes, never in the middle, and the slot (and whether the
manager is still open) is re-checked afterwards: another thread may have run meanwhile.

``fileno()`` is an event source (see src/manager.h): readable for I/O, for a deadline
that has passed (a timerfd) and for a queued MAX_REQUESTS (an eventfd). The fd-reuse
check of a plain ``socket.socket`` reads its fd in C (src/pysocket.h); anything else is
asked through ``fileno()``.
"""
import errno
import math
import os
import socket

from libc.errno cimport errno as c_errno
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint32_t
from libc.stdlib cimport free, malloc
from posix.stat cimport fstat, struct_stat

from fastka._keepalive_c cimport fk_sockopt, fk_sockopt_apply, fk_sockopt_match

from . import _manager as common
from ._errors import keepalive_error
from ._fd import fd_of
from ._types import Event

__all__ = ["KeepaliveManager"]

MAX_REQUESTS_C = FK_MAX_REQUESTS  # the C slot's limit (tests tie it to the shared one)
cdef tuple EVENTS = tuple(map({int(e): e for e in Event}.get, range(max(Event) + 1)))  # by C code (tables.h is written from Event)
cdef object SOCKET = socket.socket
cdef object READABLE = Event.READABLE
cdef object MAX_REQUESTS = Event.MAX_REQUESTS
cdef int64_t DRAIN_CHECK_MS = common.DRAIN_CHECK_MS
cdef int MAX_WAIT_MS = common.MAX_WAIT_MS


cdef class KeepaliveManager:
    # Thread contract: every method may be called from any thread (one poll() at a time;
    # close() refuses while another thread polls). Calls into Python (a ``fileno()``, a
    # test clock) may let another thread run, so the manager is re-checked as open after
    # the last of them and before C state changes.
    __doc__ = common.DOC  # the docstring and signature: fastka._manager, one text for both backends
    __signature__ = common.SIGNATURE

    cdef fk_manager m
    cdef bint _open, _polling, _close
    cdef list _objs
    cdef object _clock, _keepalive, _limits
    cdef fk_sockopt _ka[5]  # the keepalive config's plan: SO_KEEPALIVE and at most four TCP options
    cdef size_t _ka_n
    cdef list _ka_names
    cdef epoll_event *_evs

    def __cinit__(self):
        self._open = False
        self._evs = NULL

    def __init__(self, *args, **kwargs):
        """Arguments as ``fastka._manager.settings`` takes them (see the class)."""
        cdef fk_options opt
        if self._open:
            raise common.reinit_error()
        s = common.settings(*args, **kwargs)
        self._limits = s.limits
        self._keepalive = keepalive = s.keepalive
        if keepalive is not None:  # the option calls of set_keepalive, from fastka/_platform.py
            steps = keepalive._plan()
            if len(steps) > 5:
                raise RuntimeError(f"a keepalive plan of {len(steps)} options does not fit the manager")
            self._ka_names = [name for name, _, _, _ in steps]
            self._ka_n = len(steps)
            for i, (_, level, number, value) in enumerate(steps):
                self._ka[i].level, self._ka[i].name, self._ka[i].value = level, number, value
        self._close = s.close
        self._clock = None
        self._objs = []
        if self._evs == NULL:
            self._evs = <epoll_event *>malloc(FK_NEVENTS * sizeof(epoll_event))
            if self._evs == NULL:
                raise MemoryError()
        options = s.c_options()
        if len(options) != FK_NOPTIONS:  # built from another fastka/_manager.py
            raise RuntimeError(f"the compiled manager takes {FK_NOPTIONS} options, fastka._manager gives {len(options)}: rebuild it")
        for i, value in enumerate(options):
            opt.at[i] = value
        r = fk_mgr_init(&self.m, &opt)
        if r < 0:
            raise OSError(-r, f"cannot create the manager's epoll set: {os.strerror(-r)}")
        self._open = True
        self._polling = False

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
        """Does obj still own fd? A fileno() that raises means it does not. A plain
        socket.socket is asked at C level (its fd field), anything else through fileno()."""
        if type(obj) is SOCKET:
            return fk_pysocket_fd(obj) == fd
        if isinstance(obj, int):
            return True
        try:
            return obj.fileno() == fd
        except Exception:
            return False

    cdef _arm(self, int64_t now):
        fk_mgr_arm(&self.m, now, DRAIN_CHECK_MS)

    cdef _forget(self, int fd):
        fk_mgr_remove(&self.m, fd)
        self._objs[fd] = None

    cdef _drop(self, int fd):
        """Forget a connection poll() reports as gone. When the manager closes it, closing
        takes it out of the epoll set: no epoll_ctl (a stale registration is rebuilt)."""
        if self._close:
            fk_mgr_forget(&self.m, fd)
        else:
            fk_mgr_remove(&self.m, fd)
        self._objs[fd] = None

    cdef object _lookup(self, sock):
        """The fd of tracked ``sock``, or KeyError (the manager is checked open after)."""
        fd = fd_of(sock)
        self._check_open()
        if not fk_mgr_has(&self.m, fd):
            raise KeyError(sock)
        obj = self._objs[fd]
        if not (obj is sock or isinstance(sock, int)) or not self._fresh(obj, fd):
            raise KeyError(sock)
        self._check_open()
        if not fk_mgr_has(&self.m, fd) or self._objs[fd] is not obj:  # changed meanwhile
            raise KeyError(sock)
        return fd

    # -- public API ------------------------------------------------------------------

    def add(self, sock):
        """Start tracking ``sock``. ValueError when already tracked; TypeError (close=True)
        for an object the manager cannot close; OSError when the fd cannot be watched."""
        cdef int fd = fd_of(sock)
        cdef int r
        cdef int64_t now, life_ms
        cdef uint32_t maxreq
        cdef struct_stat st
        cdef size_t failed = 0
        cdef int kind
        cdef socklen_t kind_len
        self._check_open()
        if self._close:
            common.check_closable(sock)
        if fk_mgr_has(&self.m, fd):
            old = self._objs[fd]
            if old is sock or (isinstance(sock, int) and isinstance(old, int)) or self._fresh(old, fd):
                raise ValueError(f"fd {fd} is already in this manager")
            self._check_open()
            if self._objs[fd] is old and fk_mgr_has(&self.m, fd):
                self._forget(fd)  # stale: its socket was closed and the fd number reused
        now = self._now()
        # No Python code runs from here on: another thread cannot close the manager.
        self._check_open()
        if fk_mgr_has(&self.m, fd):
            raise ValueError(f"fd {fd} is already in this manager")
        if fstat(fd, &st) < 0:  # in C: os.fstat would let other threads run
            r = c_errno
            raise OSError(r, f"cannot add fd {fd}: {os.strerror(r)}")
        kind_len = sizeof(kind)
        if getsockopt(fd, SOL_SOCKET, SO_TYPE, &kind, &kind_len) == 0 and kind != SOCK_STREAM:
            common.check_stream(fd, kind)  # raises; not a socket (a pipe) is allowed
        # Skipped where the socket carries the config already (inherited from a listener);
        # an unreadable socket is applied anyway, so it fails as set_keepalive fails.
        if self._keepalive is not None and fk_sockopt_match(fd, self._ka, self._ka_n) != 1:
            r = fk_sockopt_apply(fd, self._ka, self._ka_n, &failed)
            if r < 0:
                raise keepalive_error(-r, fd, self._ka_names[failed])
        if fd >= len(self._objs):  # a new list of the exact size: no over-allocation
            self._objs = self._objs + [None] * ((fd // FK_SLOT_STEP + 1) * FK_SLOT_STEP - len(self._objs))
        life, limit = self._limits.draw()  # Python code: the manager is re-checked below
        life_ms = -1 if life is None else life
        maxreq = 0 if limit is None else limit
        self._check_open()
        if fk_mgr_has(&self.m, fd):
            raise ValueError(f"fd {fd} is already in this manager")
        r = fk_mgr_add(&self.m, fd, now, life_ms, maxreq)
        if r == -errno.ENOMEM:
            raise MemoryError()
        if r < 0:
            raise OSError(-r, f"cannot watch fd {fd}: {os.strerror(-r)}")
        self._objs[fd] = sock
        self._arm(now)

    def remove(self, sock):
        """Stop tracking ``sock``; never closes it. KeyError when it is not tracked."""
        self._check_open()
        self._forget(self._lookup(sock))

    def discard(self, sock):
        """Stop tracking ``sock`` if it is tracked; never an error for an unknown or
        closed socket (TypeError only for what is not a socket at all)."""
        try:
            fd = self._lookup(sock)
        except (KeyError, ValueError):  # unknown, closed (fileno -1), or a closed manager
            return
        self._forget(fd)

    def touch(self, sock):
        """Restart the idle clock of ``sock`` and count one request. KeyError if unknown."""
        cdef int64_t now
        self._check_open()
        fd = self._lookup(sock)
        now = self._now()
        self._check_open()
        if not fk_mgr_has(&self.m, fd):
            raise KeyError(sock)
        if fk_mgr_touch(&self.m, fd, now) == 1:
            fk_mgr_wake(&self.m)

    def next_deadline(self):
        """Seconds until the next timer expiry (0.0 when one is due), or None."""
        self._check_open()
        now = self._now()
        self._check_open()
        d = fk_mgr_earliest(&self.m)
        if d == INT64_MAX:
            return None
        if d == INT64_MIN:
            return 0.0
        return max(0, d - now) / 1000.0

    def fileno(self):
        """An epoll fd that is readable when poll() has work: I/O, a passed deadline, a
        queued MAX_REQUESTS. Stays the same for the manager's life."""
        self._check_open()
        return self.m.srcfd

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
        limit_ms = common.poll_timeout_ms(timeout)
        self._check_open()
        if self._polling:
            raise common.busy_error("poll")
        self._polling = True
        try:
            return self._poll(limit_ms)
        finally:
            self._polling = False

    cdef list _poll(self, limit_ms):
        cdef int n, wait
        cdef int64_t d, now, left, end = -1  # end: CLOCK_MONOTONIC ms, whatever the clock
        if limit_ms is not None:
            end = fk_mgr_now() + <int64_t>limit_ms
        now = self._now()
        while True:
            d = fk_mgr_earliest(&self.m)
            if d == INT64_MAX:
                wait = -1
            elif d <= now:
                wait = 0
            else:
                wait = <int>min(d - now, MAX_WAIT_MS)
            if self.m.ndraining:
                wait = DRAIN_CHECK_MS if wait < 0 else min(wait, DRAIN_CHECK_MS)
            if end >= 0:
                left = min(max(0, end - fk_mgr_now()), MAX_WAIT_MS)
                wait = <int>left if wait < 0 else <int>min(wait, left)
            with nogil:  # deadlines that move sooner meanwhile fire the timerfd
                n = fk_mgr_wait(&self.m, self._evs, FK_NEVENTS, wait)
            if n == -errno.EINTR:
                n = 0
            elif n < 0:
                raise OSError(-n, f"epoll_wait: {os.strerror(-n)}")
            now = self._now()  # the one clock read of this tick
            events = self._collect(n, now)
            if events or (end >= 0 and fk_mgr_now() >= end):
                return events

    cdef list _collect(self, int n, int64_t now):
        cdef list events = []
        cdef int fd, i, ev, k = 0
        cdef uint32_t bits
        cdef int *drain = NULL
        cdef bint stale = False
        if self.m.ndraining:  # before any event changes the draining set
            drain = <int *>malloc(self.m.ndraining * sizeof(int))
            if drain == NULL:
                raise MemoryError()
            k = fk_mgr_draining(&self.m, drain, self.m.ndraining)
        try:
            while True:
                fd = fk_mgr_queued(&self.m)
                if fd < 0:
                    break
                self._settle(fd, MAX_REQUESTS, events)
            for i in range(n + k):
                if i < n:
                    fd = fk_mgr_owner(&self.m, self._evs[i].data.u64)
                    bits = self._evs[i].events
                    if fd == FK_OWN_STALE:
                        stale = True
                        continue
                    if fd == FK_OWN_CONTROL:
                        continue
                else:
                    fd = drain[i - n]
                    bits = EPOLLRDHUP | EPOLLHUP  # re-checked: SO_ERROR, then a peek
                    if not fk_mgr_is_draining(&self.m, fd):  # gone, or the number reused meanwhile
                        continue
                obj = self._objs[fd]
                if not self._fresh(obj, fd):
                    if self._objs[fd] is obj and fk_mgr_has(&self.m, fd):
                        self._forget(fd)
                    continue
                if self._objs[fd] is not obj or not fk_mgr_has(&self.m, fd):
                    continue
                ev = fk_mgr_classify(&self.m, fd, bits, now)
                if ev == FK_EV_READABLE:
                    events.append((obj, READABLE))
                elif ev != FK_EV_NONE:
                    self._drop(fd)
                    events.append((obj, EVENTS[ev]))
                    if self._close:
                        common.close_dropped(obj, fd, EVENTS[ev])
        finally:
            free(drain)
        if stale:
            r = fk_mgr_rebuild(&self.m)
            if r < 0:
                raise OSError(-r, f"cannot rebuild the manager's epoll set: {os.strerror(-r)}")
        while True:
            fd = fk_mgr_next_expired(&self.m, now, &ev)
            if fd < 0:
                break
            self._settle(fd, EVENTS[ev], events)
        self._arm(now)
        return events

    cdef _settle(self, int fd, ev, list events):
        """Report and drop fd with ev, or drop it silently when its slot is stale."""
        obj = self._objs[fd]
        self._drop(fd)  # C state first: the checks below may run Python code
        if self._fresh(obj, fd):
            events.append((obj, ev))
            if self._close:
                common.close_dropped(obj, fd, ev)

    def close(self):
        """Release the epoll set; tracked sockets are left open. Idempotent.
        RuntimeError while another thread is inside poll()."""
        if not self._open:
            return
        if self._polling:
            raise common.busy_error("close")
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
