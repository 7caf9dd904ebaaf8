# cython: language_level=3
"""The compiled backend's keepalive primitives: what needs C, over src/sockopt.c and
src/liveness.c. fastka/_keepalive.py builds the public API on them; fastka/_keepalive_py.py
is the same interface in Python, the readable specification.

Each function takes fds that are already validated (0..INT_MAX; ``fds`` and
``dead_states`` the members themselves) and option triples from fastka/_platform.plan(),
and reports kernel errors as errno numbers; it makes its system calls with the GIL
released.
"""
import array
import os
import socket

from cpython cimport array
from libc.stdlib cimport free, malloc

from ._fd import _FD_MAX as FD_MAX, fd_of

cdef object _SOCKET = socket.socket
cdef long _FD_MAX = FD_MAX


def fds(list members, label, bint closed_ok=False):
    """fd_of for every member (``label.format(i)`` names member i in an error), taking an
    int fd or a socket.socket without a Python call; fd_of decides everything else."""
    cdef Py_ssize_t i, n = len(members)
    cdef list out = [None] * n
    cdef long fd
    for i in range(n):
        s = members[i]
        if type(s) is int:
            if 0 <= s <= _FD_MAX:
                out[i] = s
                continue
        elif type(s) is _SOCKET:
            fd = s.fileno()
            if fd >= 0 or (closed_ok and fd == -1):
                out[i] = fd
                continue
        out[i] = fd_of(s, label, closed_ok=closed_ok, index=i)
    return out


cdef fk_sockopt *_options(list options, bint with_values) except NULL:
    """A malloc'ed array of ``options`` ((level, name, value) or (level, name)); at least
    one slot."""
    cdef Py_ssize_t i, n = len(options)
    cdef fk_sockopt *o = <fk_sockopt *>malloc((n if n else 1) * sizeof(fk_sockopt))
    if o == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            opt = options[i]
            o[i].level = opt[0]
            o[i].name = opt[1]
            o[i].value = opt[2] if with_values else 0
    except BaseException:
        free(o)
        raise
    return o


def apply(list fds, list options):
    """setsockopt every ``(level, name, value)`` of ``options`` on each of ``fds``, in
    order; an fd stops at its first failure, the others go on. Returns
    ``[(position in fds, errno, index of the failed option)]``, empty when all succeeded."""
    cdef Py_ssize_t i, n = len(fds)
    cdef size_t nopt = len(options)
    cdef array.array fd_array = array.array("i", fds)
    cdef int *a = fd_array.data.as_ints
    cdef fk_sockopt *o = _options(options, True)
    cdef int *errs = NULL
    cdef size_t *failed = NULL
    try:
        errs = <int *>malloc((n if n else 1) * sizeof(int))
        failed = <size_t *>malloc((n if n else 1) * sizeof(size_t))
        if errs == NULL or failed == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n):
                errs[i] = -fk_sockopt_apply(a[i], o, nopt, &failed[i])
        return [(i, errs[i], failed[i]) for i in range(n) if errs[i]]
    finally:
        free(o)
        free(errs)
        free(failed)


def match(int fd, list options):
    """1 when ``fd`` reads back every ``(level, name, value)`` of ``options``
    (SO_KEEPALIVE as on/off), 0 when one differs, -errno when a read fails."""
    cdef size_t nopt = len(options)
    cdef fk_sockopt *o = _options(options, True)
    cdef int rc
    try:
        with nogil:
            rc = fk_sockopt_match(fd, o, nopt)
        return rc
    finally:
        free(o)


def read(int fd, list options):
    """getsockopt each ``(level, name)`` of ``options`` on ``fd`` as an int, in order:
    ``(0, values)``, or ``(errno, the values read before the failing one)``."""
    cdef size_t i, nopt = len(options)
    cdef size_t failed = 0
    cdef fk_sockopt *o = _options(options, False)
    cdef int rc
    try:
        with nogil:
            rc = fk_sockopt_read(fd, o, nopt, &failed)
        return (-rc, [o[i].value for i in range(failed if rc < 0 else nopt)])
    finally:
        free(o)


def dead_states(list socks, label="socks[{}]"):
    """``[(position, fd, state)]`` for each member of ``socks`` that is dead (state 1: what
    is_alive calls dead, or None / a closed socket, fd -1) or cannot be polled (state
    -errno), in order, from one zero-timeout poll (src/liveness.h); the live ones are left
    out. The members are taken as :func:`fds` takes them with ``closed_ok``. OSError when
    poll itself fails."""
    cdef list numbers = fds(socks, label, True)
    cdef Py_ssize_t i, n = len(numbers)
    cdef long rc
    cdef array.array fd_array = array.array("i", numbers)
    cdef int *a = fd_array.data.as_ints
    cdef int *states = <int *>malloc((n if n else 1) * sizeof(int))
    try:
        if states == NULL:
            raise MemoryError()
        with nogil:
            rc = fk_find_dead(a, <size_t>n, states)  # poll(2) skips a negative fd
        if rc < 0:
            raise OSError(<int>-rc, f"poll over {n} fds failed: {os.strerror(<int>-rc)}")
        return [(i, a[i], 1 if a[i] < 0 else states[i]) for i in range(n) if states[i] or a[i] < 0]
    finally:
        free(states)


def tcp_info(int fd):
    """Linux TCP_INFO of ``fd`` in the kernel's units: ``(0, (state, retransmits, probes,
    backoff, rtt us, rttvar us, last_data_recv ms, last_data_sent ms, last_ack_recv ms,
    unacked, lost, total_retrans))``, or ``(errno, ())``."""
    cdef fk_tcp_info t
    cdef int rc
    with nogil:
        rc = fk_get_tcp_info(fd, &t)
    if rc < 0:
        return (-rc, ())
    return (0, (t.state, t.retransmits, t.probes, t.backoff, t.rtt, t.rttvar, t.last_data_recv,
                t.last_data_sent, t.last_ack_recv, t.unacked, t.lost, t.total_retrans))
