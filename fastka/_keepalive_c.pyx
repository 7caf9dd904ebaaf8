# cython: language_level=3
"""The compiled backend: the public keepalive API over src/keepalive.c and src/liveness.c.

Same arguments, system calls, errors and messages as the pure-Python reference
(fastka/_keepalive_py.py). Batch calls gather the fds into a C array and make every
system call in one C loop with the GIL released.

set_keepalive_many has two batch paths with identical results and per-fd errors: the
plain setsockopt loop, and io_uring socket commands (src/uring.c, Linux 6.7+). "auto"
uses io_uring where this process can (detected once); set_batch_path() or the
FASTKA_BATCH_PATH environment variable ("auto", "uring", "loop", read at import) forces
one. The pure-Python fallback always loops (it has no io_uring).
"""
import errno
import os
import socket

from libc.stdlib cimport free, malloc

from fastka._ckeepalive cimport (
    FK_COUNT_MAX, FK_COUNT_MIN, FK_IDLE_MAX, FK_IDLE_MIN, FK_INTERVAL_MAX, FK_INTERVAL_MIN,
    FK_PLATFORM, FK_TCP_KEEPCNT, FK_TCP_KEEPIDLE, FK_TCP_KEEPIDLE_NAME, FK_TCP_KEEPINTVL,
    FK_USER_TIMEOUT_MS_MAX, fk_find_dead, fk_keepalive, fk_keepalive_apply,
    fk_keepalive_apply_many_opt, fk_keepalive_disable, fk_keepalive_get, fk_keepalive_state,
    fk_keepalive_update, fk_get_tcp_info, fk_tcp_info,
)

cdef extern from "uring.h" nogil:
    const char *fk_uring_status()
    int fk_uring_available()
    long fk_uring_apply_many(const int *fds, size_t n, const fk_keepalive *cfg, int *errs,
                             const char **fails)

from . import _platform
from ._config import native, resolve, update_fields
from ._errors import keepalive_error
from ._fd import fd_of
from ._keepalive import create_server_over, find_dead_over, snapshot
from ._types import TCP_STATES, KeepaliveState, TcpInfo

__all__ = [
    "create_server",
    "disable_keepalive",
    "find_dead",
    "get_keepalive",
    "is_alive",
    "set_keepalive",
    "set_keepalive_many",
    "tcp_info",
    "update_keepalive",
]

# The batch path of set_keepalive_many (see the module docstring).
cdef enum:
    _AUTO, _URING, _LOOP
_PATHS = ("auto", "uring", "loop")
cdef int _batch_path = _AUTO
# "auto" takes io_uring from this many sockets on: each call sets up its own ring (about
# 35 us), which fewer sockets do not win back (measured crossover near 600 on Linux 6.18).
cdef Py_ssize_t _URING_MIN = 1024


def uring_status():
    """One line: "available" when set_keepalive_many can use io_uring in this process,
    else "unavailable: <why>" (io_uring disabled or blocked, kernel older than 6.7...)."""
    return fk_uring_status().decode()


def batch_path():
    """The batch path of set_keepalive_many: "auto", "uring" or "loop"."""
    return _PATHS[_batch_path]


def set_batch_path(path):
    """Choose how set_keepalive_many makes its system calls: "auto" (io_uring where
    available, else the plain loop), "uring" (OSError where io_uring is unavailable) or
    "loop" (one setsockopt per option). Results and errors are the same on every path."""
    global _batch_path
    if path not in _PATHS:
        raise ValueError(f"batch path must be one of 'auto', 'uring', 'loop', not {path!r}")
    if path == "uring" and not fk_uring_available():
        raise OSError(errno.EOPNOTSUPP, f"the io_uring batch path is {uring_status()}")
    _batch_path = _PATHS.index(path)


def _path_from_environment():
    value = os.environ.get("FASTKA_BATCH_PATH", "")
    if value:
        if value not in _PATHS:
            raise ValueError(f"FASTKA_BATCH_PATH must be one of 'auto', 'uring', 'loop', not {value!r}")
        set_batch_path(value)


_path_from_environment()

# What src/platform.h compiled in, for tests/test_platform.py to compare with _platform.
PLATFORM = {
    "name": FK_PLATFORM.decode(),
    "idle_option": (FK_TCP_KEEPIDLE_NAME.decode(), FK_TCP_KEEPIDLE),
    "interval_option": FK_TCP_KEEPINTVL,
    "count_option": FK_TCP_KEEPCNT,
    "idle": (FK_IDLE_MIN, FK_IDLE_MAX),
    "interval": (FK_INTERVAL_MIN, FK_INTERVAL_MAX),
    "count": (FK_COUNT_MIN, FK_COUNT_MAX),
    "user_timeout_ms_max": FK_USER_TIMEOUT_MS_MAX,
}

cdef object _TABLE = _platform.CURRENT
cdef object _SOCKET = socket.socket
# Windows before 10 1709 (SIO_KEEPALIVE_VALS): idle and interval are always written
# together, so update_keepalive fills the missing one (see _platform.windows_fill).
cdef bint _LEGACY = not _platform.windows_per_option()
cdef int _FD_MAX = 0x7FFFFFFF


cdef int _fd(object sock, str name, Py_ssize_t index=-1) except -1:
    """The fd of ``sock`` (fd_of's rules, fast for int and socket.socket). Errors name
    the argument, as ``name[index]`` for a member of a batch."""
    cdef object r
    if type(sock) is int:
        r = sock
    elif type(sock) is _SOCKET:
        r = sock.fileno()
    else:
        return fd_of(sock, name if index < 0 else f"{name}[{index}]")
    if 0 <= r <= _FD_MAX:
        return r
    return fd_of(sock, name if index < 0 else f"{name}[{index}]")  # raises as fd_of words it


cdef str _opt(const char *name):
    return name.decode() if name != NULL else "?"


cdef int _fill(fk_keepalive *c, tuple values) except -1:
    """(idle s, interval s, count, user_timeout ms or -1) into the C struct."""
    c.idle, c.interval, c.count, c.user_timeout_ms = values
    return 0


def set_keepalive(sock, config=None, *, idle=None, interval=None, count=None, user_timeout=None):
    """Enable SO_KEEPALIVE on ``sock`` and apply ``config`` (default ``KeepaliveConfig()``)
    with the keyword overrides; returns the config applied.

    Times in seconds. Raises TypeError/ValueError for bad arguments (before any system
    call) and OSError naming the fd and the option when the kernel refuses.
    """
    cfg = resolve(config, idle, interval, count, user_timeout)
    cdef int fd = _fd(sock, "sock")
    cdef fk_keepalive c
    cdef const char *failed = NULL
    cdef int rc
    _fill(&c, native(cfg))
    if _LEGACY:
        _platform.windows_remember(fd, c.idle, c.interval)
    with nogil:
        rc = fk_keepalive_apply(fd, &c, &failed)
    if rc < 0:
        raise keepalive_error(-rc, fd, _opt(failed))
    return cfg


def update_keepalive(sock, *, idle=None, interval=None, count=None, user_timeout=None):
    """Enable keepalive on ``sock`` and change only the fields given (seconds); the others
    stay as the kernel has them. Returns the state read back afterwards.

    On Windows before 10 1709, whose SIO_KEEPALIVE_VALS always writes idle and interval,
    a missing one comes from what fastka last set on this socket, else from the system
    defaults.
    """
    fields = update_fields(idle, interval, count, user_timeout)
    cdef int fd = _fd(sock, "sock")
    cdef fk_keepalive c
    cdef const char *failed = NULL
    cdef int rc
    _fill(&c, fields)
    if _LEGACY:
        c.idle, c.interval = _platform.windows_fill(fd, c.idle, c.interval)
        _platform.windows_remember(fd, c.idle, c.interval)
    rc = fk_keepalive_update(fd, &c, &failed)
    if rc < 0:
        raise keepalive_error(-rc, fd, _opt(failed))
    return _get(fd)


def disable_keepalive(sock):
    """Turn SO_KEEPALIVE off on ``sock`` (the other values stay as they are)."""
    cdef int fd = _fd(sock, "sock")
    cdef const char *failed = NULL
    cdef int rc = fk_keepalive_disable(fd, &failed)
    if rc < 0:
        raise keepalive_error(-rc, fd, _opt(failed))


cdef object _get(int fd):
    cdef fk_keepalive_state st
    cdef const char *failed = NULL
    cdef int rc = fk_keepalive_get(fd, &st, &failed)
    if rc < 0:
        raise keepalive_error(-rc, fd, _opt(failed))
    return KeepaliveState(
        bool(st.enabled), st.idle, st.interval, st.count,
        st.user_timeout_ms / 1000 if st.user_timeout_ms else None,
    )


def get_keepalive(sock):
    """Keepalive settings of ``sock`` as the kernel reports them (seconds; user_timeout
    None when unset)."""
    return _get(_fd(sock, "sock"))


cdef int *_fd_array(list members, str name) except NULL:
    """A malloc'ed array of the members' fds (at least one slot); TypeError/ValueError
    naming the position for a member that has none."""
    cdef Py_ssize_t i, n = len(members)
    cdef int *fds = <int *>malloc((n if n else 1) * sizeof(int))
    if fds == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            fds[i] = _fd(members[i], name, i)
    except BaseException:
        free(fds)
        raise
    return fds


def set_keepalive_many(socks, config=None, *, idle=None, interval=None, count=None, user_timeout=None):
    """Apply one config to every socket of ``socks``; returns {fd: OSError} for those the
    kernel refused (empty when all succeeded). A failing socket never stops the others.

    A member with no usable fd (no fileno(), a closed socket object, a negative fd) is a
    TypeError/ValueError raised before any socket is touched, as set_keepalive does.
    """
    cfg = resolve(config, idle, interval, count, user_timeout)
    cdef list members = snapshot(socks, "socks")
    cdef Py_ssize_t i, n = len(members)
    cdef fk_keepalive c
    cdef size_t nfail = 0
    cdef long rc
    cdef int *fds = _fd_array(members, "socks")
    cdef int *errs = <int *>malloc((n if n else 1) * sizeof(int))
    cdef const char **fails = <const char **>malloc((n if n else 1) * sizeof(char *))
    try:
        if errs == NULL or fails == NULL:
            raise MemoryError()
        _fill(&c, native(cfg))
        if _LEGACY:
            for i in range(n):
                _platform.windows_remember(fds[i], c.idle, c.interval)
        rc = -1
        with nogil:
            if _batch_path == _URING or (_batch_path == _AUTO and n >= _URING_MIN and fk_uring_available()):
                rc = fk_uring_apply_many(fds, <size_t>n, &c, errs, fails)
            if rc >= 0:
                nfail = <size_t>rc
            elif _batch_path != _URING:
                nfail = fk_keepalive_apply_many_opt(fds, <size_t>n, &c, errs, fails)
        if rc < 0 and _batch_path == _URING:
            raise OSError(<int>-rc, f"set_keepalive_many: the io_uring batch failed: {os.strerror(<int>-rc)}")
        if nfail == 0:
            return {}
        return {fds[i]: keepalive_error(errs[i], fds[i], _opt(fails[i])) for i in range(n) if errs[i]}
    finally:
        free(fds)
        free(errs)
        free(fails)


def tcp_info(sock):
    """Linux TCP_INFO of ``sock``: state, retransmission and probe counters, times in
    seconds. Raises NotImplementedError on other platforms, OSError from the kernel."""
    if _TABLE is not _platform.LINUX:
        raise NotImplementedError(f"tcp_info reads Linux's TCP_INFO, which {_TABLE.title} does not have")
    cdef int fd = _fd(sock, "sock")
    cdef fk_tcp_info ti
    cdef int rc = fk_get_tcp_info(fd, &ti)
    if rc < 0:
        raise keepalive_error(-rc, fd, "TCP_INFO")
    return TcpInfo(
        state=TCP_STATES[ti.state] if ti.state < len(TCP_STATES) else f"UNKNOWN({ti.state})",
        retransmits=ti.retransmits,
        probes=ti.probes,
        backoff=ti.backoff,
        rtt=ti.rtt_us / 1e6,
        rttvar=ti.rttvar_us / 1e6,
        last_data_recv=ti.last_data_recv_ms / 1e3,
        last_data_sent=ti.last_data_sent_ms / 1e3,
        last_ack_recv=ti.last_ack_recv_ms / 1e3,
        unacked=ti.unacked,
        lost=ti.lost,
        total_retrans=ti.total_retrans,
    )


def is_alive(sock):
    """False once the peer sent FIN (even with data still unread) or RST, a keepalive or
    user timeout fired, or an error is pending; True otherwise. Non-blocking; consumes
    neither data nor the pending error. OSError(EBADF) for an fd that is not open."""
    cdef int fd = _fd(sock, "sock")
    cdef int state = 0
    cdef long rc
    with nogil:
        rc = fk_find_dead(&fd, 1, &state)
    if rc < 0:
        raise keepalive_error(<int>-rc, fd, "poll")
    if state < 0:
        raise keepalive_error(-state, fd, "poll")
    return state == 0


def _dead_states(list fds):
    """For each of ``fds``: 1 dead, 0 alive, -errno not pollable (src/liveness.h), from
    one poll with the GIL released."""
    cdef Py_ssize_t i, n = len(fds)
    cdef long rc
    cdef int *cfds = <int *>malloc((n if n else 1) * sizeof(int))
    cdef int *states = <int *>malloc((n if n else 1) * sizeof(int))
    try:
        if cfds == NULL or states == NULL:
            raise MemoryError()
        for i in range(n):
            cfds[i] = fds[i]
        with nogil:
            rc = fk_find_dead(cfds, <size_t>n, states)
        if rc < 0:
            raise OSError(<int>-rc, f"poll over {n} fds failed: {os.strerror(<int>-rc)}")
        return [states[i] for i in range(n)]
    finally:
        free(cfds)
        free(states)


find_dead = find_dead_over(_dead_states)
create_server = create_server_over(set_keepalive)
