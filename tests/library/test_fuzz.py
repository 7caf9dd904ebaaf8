"""Fuzzing of every public entry point with hypothesis, each input run on both backends.

Allowed outcomes: success, TypeError/ValueError/OSError with a non-empty message (KeyError
where the manager documents it), or the very exception the caller's own ``fileno()`` or
iterable raised, propagated unchanged (as ``select.select`` and ``os.fstat`` do: it is the
caller's bug and keeps its traceback). Never a crash, a hang (a watchdog ends the process
after 60 s), or a different outcome between the backends: same result, or same exception
type, errno and message.

Closed fds: the number used is 512 above every fd open when the test starts; the kernel
hands out the lowest free number, so nothing can reuse it during the call.

FASTKA_FUZZ_EXAMPLES sets the examples per test (default 100, sized for the default run;
tests/system/test_fuzz_deep.py runs this module and the manager's differential test with
1,000; tools/valgrind uses fewer).
"""
from __future__ import annotations

import errno
import faulthandler
import fractions
import os
import select
import socket
import tempfile
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import Backend

import fastka

EXAMPLES = int(os.environ.get("FASTKA_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
C, PY = Backend("c"), Backend("python")


class UserBug(Exception):
    """An exception the caller's code raises (not one fastka may raise itself)."""


class Fileno:
    """An object whose fileno() returns ``ret`` or raises ``exc``."""

    def __init__(self, ret=None, exc=None):
        self.ret, self.exc = ret, exc

    def fileno(self):
        if self.exc is not None:
            raise self.exc
        return self.ret

    def __repr__(self):
        return f"Fileno(ret={self.ret!r}, exc={self.exc!r})"


class MyInt(int):
    pass


def _raising_iter(items, after):
    """A generator that yields ``after`` items of ``items`` and then raises UserBug."""
    for i, x in enumerate(items):
        if i == after:
            raise UserBug(f"the iterable failed after {after} items")
        yield x


@pytest.fixture(autouse=True)
def watchdog():
    """A hang is a failure: dump every thread's stack and exit after 60 s."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def pool():
    """Named things to pass as ``sock``: every kind of fd and non-fd the API may meet."""
    owned = []

    def keep(x):
        owned.append(x)
        return x

    lst = keep(socket.socket())
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    client = keep(socket.create_connection(lst.getsockname()))
    server = keep(lst.accept()[0])
    udp = keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    unix_a, unix_b = socket.socketpair()
    keep(unix_a), keep(unix_b)
    tcp6 = None
    try:
        tcp6 = keep(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
    except OSError:
        pass
    r, w = os.pipe()
    tmp = keep(tempfile.TemporaryFile())
    ep = keep(select.epoll())
    efd = os.eventfd(0) if hasattr(os, "eventfd") else None
    devnull = os.open(os.devnull, os.O_RDONLY)
    closed_sock = socket.socket()
    closed_sock.close()
    open_fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    closed_fd = max(open_fds) + 512
    things = {
        "tcp client": client,
        "tcp server": server,
        "tcp server fd": server.fileno(),
        "tcp server MyInt": MyInt(server.fileno()),
        "tcp server Fileno": Fileno(server.fileno()),
        "listener": lst,
        "unbound tcp6": tcp6,
        "udp": udp,
        "unix": unix_a,
        "pipe fd": r,
        "file fd": tmp.fileno(),
        "file object": tmp,
        "epoll": ep,
        "eventfd": efd,
        "/dev/null fd": devnull,
        "closed socket object": closed_sock,
        "closed fd": closed_fd,
        "Fileno(closed fd)": Fileno(closed_fd),
        "fd -1": -1,
        "fd 2**31": 2**31,
        "fd 2**31-1": 2**31 - 1,
        "fd 2**64": 2**64,
        "fd -2**70": -(2**70),
        "True": True,
        "False": False,
        "None": None,
        "str": "3",
        "float": 3.0,
        "bytes": b"\x03",
        "object": object(),
        "fileno attr not callable": type("NotCallable", (), {"fileno": 3})(),
        "fileno -> str": Fileno("3"),
        "fileno -> float": Fileno(3.0),
        "fileno -> -1": Fileno(-1),
        "fileno -> -5": Fileno(-5),
        "fileno -> 2**40": Fileno(2**40),
        "fileno -> True": Fileno(True),
        "fileno -> None": Fileno(None),
        "fileno raises OSError": Fileno(exc=OSError(errno.EBADF, "fileno says EBADF")),
        "fileno raises ValueError": Fileno(exc=ValueError("I/O operation on closed file")),
        "fileno raises TypeError": Fileno(exc=TypeError("fileno type trouble")),
        "fileno raises RuntimeError": Fileno(exc=RuntimeError("fileno() exploded")),
        "fileno raises KeyError": Fileno(exc=KeyError("fileno-key")),
        "fileno raises ZeroDivisionError": Fileno(exc=ZeroDivisionError("fileno divided by zero")),
        "fileno raises UserBug": Fileno(exc=UserBug("fileno user bug")),
    }
    things = {k: v for k, v in things.items() if v is not None or k == "None"}
    yield things
    for x in owned:
        x.close()
    for fd in (r, w, devnull) + ((efd,) if efd is not None else ()):
        os.close(fd)


_ALL_SOCK_NAMES = (
    [
        "tcp client", "tcp server", "tcp server fd", "tcp server MyInt", "tcp server Fileno",
        "listener", "unbound tcp6", "udp", "unix", "pipe fd", "file fd", "file object", "epoll",
        "eventfd", "/dev/null fd", "closed socket object", "closed fd", "Fileno(closed fd)",
        "fd -1", "fd 2**31", "fd 2**31-1", "fd 2**64", "fd -2**70", "True", "False", "None",
        "str", "float", "bytes", "object", "fileno attr not callable", "fileno -> str",
        "fileno -> float", "fileno -> -1", "fileno -> -5", "fileno -> 2**40", "fileno -> True",
        "fileno -> None", "fileno raises OSError", "fileno raises ValueError",
        "fileno raises TypeError", "fileno raises RuntimeError", "fileno raises KeyError",
        "fileno raises ZeroDivisionError", "fileno raises UserBug",
    ]
)
# What this interpreter and host can make: os.eventfd is Python 3.10+, IPv6 may be missing.
SOCK_NAMES = st.sampled_from(
    [
        name
        for name in _ALL_SOCK_NAMES
        if (name != "eventfd" or hasattr(os, "eventfd")) and (name != "unbound tcp6" or socket.has_ipv6)
    ]
)
USER_ERRORS = (RuntimeError, KeyError, ZeroDivisionError, UserBug)

# Numbers and non-numbers for every numeric parameter.
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-2, max_value=200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1, max_value=40000),
    st.sampled_from(
        [0, 1, 2, 127, 128, 32767, 32768, 2**31 - 1, 2**31, 2**32, 2**63, 2**64, -1, -0.0, 0.0005,
         0.001, 0.0015, 1e-12, 2147483.647, 2147483.648, 1e308, float("nan"), float("inf"),
         float("-inf"), fractions.Fraction(7, 3), Decimal("1.5"), MyInt(5), 3 + 0j]
    ),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.just([1]),
)
OPTIONAL_KW = st.dictionaries(st.sampled_from(["idle", "interval", "count", "user_timeout"]), NUMBERS, max_size=4)
CONFIGS = st.one_of(
    st.none(),
    st.builds(fastka.KeepaliveConfig, idle=st.integers(1, 32767), interval=st.integers(1, 32767),
              count=st.integers(1, 127), user_timeout=st.one_of(st.none(), st.floats(0, 1000))),
    st.sampled_from([{"idle": 5}, (5, 1, 3), "config", 5]),
)


def _norm(value, pool):
    """A backend-independent form of a result."""
    if isinstance(value, dict):
        return {k: (type(v).__name__, v.errno, str(v)) for k, v in value.items()}
    if isinstance(value, list):
        ids = {id(v): name for name, v in pool.items()}
        return [ids.get(id(v), repr(v)) for v in value]
    if isinstance(value, fastka.TcpInfo):
        return value.state
    return value


def outcome(call, pool, allowed=(TypeError, ValueError, OSError)):
    """("ok", result) or (exception type, errno, message); fails on any other exception
    unless it is a UserBug-like exception the caller's own code raised."""
    try:
        return ("ok", _norm(call(), pool))
    except allowed as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return (type(exc), getattr(exc, "errno", None), str(exc))
    except USER_ERRORS as exc:
        return ("propagated", type(exc), str(exc))


def _binding_error(o):
    """The interpreter's own message for a call with too many or unknown arguments, which
    a compiled function words differently from a Python one."""
    return o[0] is TypeError and any(w in o[2] for w in ("positional argument", "keyword argument", "multiple values"))


def same(fn_c, fn_py, pool, allowed=(TypeError, ValueError, OSError)):
    oc = outcome(fn_c, pool, allowed)
    op = outcome(fn_py, pool, allowed)
    if _binding_error(oc) and _binding_error(op):
        return oc
    assert oc == op, f"backends differ:\n  c:      {oc}\n  python: {op}"
    return oc


@FUZZ
@given(name=SOCK_NAMES, config=CONFIGS, kw=OPTIONAL_KW)
def test_set_keepalive(pool, name, config, kw):
    s = pool[name]
    same(lambda: C.set_keepalive(s, config, **kw), lambda: PY.set_keepalive(s, config, **kw), pool)


@FUZZ
@given(name=SOCK_NAMES, kw=OPTIONAL_KW)
def test_update_keepalive(pool, name, kw):
    s = pool[name]
    same(lambda: C.update_keepalive(s, **kw), lambda: PY.update_keepalive(s, **kw), pool)


@FUZZ
@given(name=SOCK_NAMES, fn=st.sampled_from(["disable_keepalive", "get_keepalive", "tcp_info", "is_alive"]))
def test_one_socket_functions(pool, name, fn):
    s = pool[name]
    same(lambda: getattr(C, fn)(s), lambda: getattr(PY, fn)(s), pool)


def _iterables(pool_names):
    """Lists, tuples, sets of names, generators, and generators that raise midway."""
    return st.tuples(
        st.lists(pool_names, max_size=8),
        st.sampled_from(["list", "tuple", "generator", "raising generator", "dict keys", "str", "int", "None"]),
        st.integers(0, 8),
    )


def _make_iterable(pool, names, kind, after):
    items = [pool[n] for n in names]
    if kind == "list":
        return lambda: items
    if kind == "tuple":
        return lambda: tuple(items)
    if kind == "generator":
        return lambda: (x for x in items)
    if kind == "raising generator":
        return lambda: _raising_iter(items, after)
    if kind == "dict keys":
        return lambda: {n: None for n in names if isinstance(pool[n], int) and not isinstance(pool[n], bool)}.keys()
    return lambda: {"str": "abc", "int": 5, "None": None}[kind]


@FUZZ
@given(spec=_iterables(SOCK_NAMES), config=CONFIGS, kw=OPTIONAL_KW)
def test_set_keepalive_many(pool, spec, config, kw):
    make = _make_iterable(pool, *spec)
    same(
        lambda: C.set_keepalive_many(make(), config, **kw),
        lambda: PY.set_keepalive_many(make(), config, **kw),
        pool,
    )


@FUZZ
@given(spec=_iterables(SOCK_NAMES))
def test_find_dead(pool, spec):
    make = _make_iterable(pool, *spec)
    same(lambda: C.find_dead(make()), lambda: PY.find_dead(make()), pool)


@FUZZ
@given(kw=OPTIONAL_KW)
@example(kw={"user_timeout": 2**1030})
@example(kw={"user_timeout": 1e308})
@example(kw={"idle": 2**1030, "interval": 1e308})
def test_keepalive_config(kw):
    o = outcome(lambda: fastka.KeepaliveConfig(**kw), {})
    if o[0] == "ok":
        cfg = o[1]
        assert hash(cfg) == hash(fastka.KeepaliveConfig(**kw))
        assert cfg.detection_time >= cfg.idle + cfg.interval
        assert eval(repr(cfg), {"KeepaliveConfig": fastka.KeepaliveConfig}) == cfg


@FUZZ
@given(t=NUMBERS, count=NUMBERS, ut=NUMBERS)
@example(t=2**1030, count=5, ut=None)
def test_within(t, count, ut):
    o = outcome(lambda: fastka.KeepaliveConfig.within(t, count=count, user_timeout=ut), {})
    if o[0] == "ok":
        assert o[1].idle + o[1].interval < float(t)


# -- the compiled primitives against the Python ones (fastka/_keepalive.py's interface) --
#
# The public functions are written once over five primitives per backend; here the
# compiled primitives meet the Python specification directly, on every kind of fd and on
# option lists the plan never makes (unknown levels and options, out-of-range values).
# Only harmless options are used: the keepalive ones and SO_RCVBUF.

OPT_LEVELS = st.sampled_from([socket.SOL_SOCKET, socket.IPPROTO_TCP, socket.IPPROTO_IP, 9999, -1])
OPT_NAMES = st.sampled_from([socket.SO_KEEPALIVE, socket.SO_RCVBUF, socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL,
                             socket.TCP_KEEPCNT, getattr(socket, "TCP_USER_TIMEOUT", 18), 0, 9999, -5])
OPT_VALUES = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 2, 127, 128, 32767, 32768, -1]))
OPTIONS = st.lists(st.tuples(OPT_LEVELS, OPT_NAMES, OPT_VALUES), max_size=6)
FD_KINDS = st.lists(st.sampled_from(["tcp", "udp", "unix", "pipe", "closed", "listener"]), max_size=6)
POOL_FDS = st.lists(
    st.sampled_from(["tcp client", "tcp server", "listener", "udp", "unix", "pipe fd", "file fd", "epoll",
                     "/dev/null fd", "closed fd"]),
    max_size=8,
)


def _fd(x):
    return x if isinstance(x, int) else x.fileno()


def _fresh(kinds, owned):
    """One fresh fd per kind; ``owned`` collects what to close."""
    fds = []
    for kind in kinds:
        if kind == "pipe":
            r, w = os.pipe()
            owned.extend([r, w])
            fds.append(r)
        elif kind == "closed":
            fds.append(max(int(fd) for fd in os.listdir("/proc/self/fd")) + 512)
        else:
            s = {"tcp": lambda: socket.socket(), "udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
                 "unix": lambda: socket.socket(socket.AF_UNIX), "listener": lambda: socket.create_server(("127.0.0.1", 0))}[kind]()
            owned.append(s)
            fds.append(s.fileno())
    return fds


def _close(owned):
    for x in owned:
        os.close(x) if isinstance(x, int) else x.close()


@FUZZ
@given(kinds=FD_KINDS, options=OPTIONS)
def test_primitive_apply_and_read(kinds, options):
    """apply on two identical sets of fresh fds gives the same failures, and the options
    read back the same, whichever backend reads."""
    prim_c, prim_py = C.keepalive, PY.keepalive
    owned = []
    try:
        fds_c, fds_py = _fresh(kinds, owned), _fresh(kinds, owned)
        fails_c, fails_py = prim_c.apply(fds_c, options), prim_py.apply(fds_py, options)
        assert fails_c == fails_py
        reads = [(level, name) for level, name, _ in options]
        for fd_c, fd_py in zip(fds_c, fds_py):
            assert prim_c.read(fd_c, reads) == prim_py.read(fd_py, reads) == prim_py.read(fd_c, reads)
            assert prim_c.match(fd_c, options) == prim_py.match(fd_py, options) == prim_py.match(fd_c, options)
    finally:
        _close(owned)


@FUZZ
@given(names=POOL_FDS, options=OPTIONS)
def test_primitive_read_match_dead_states_tcp_info(pool, names, options):
    prim_c, prim_py = C.keepalive, PY.keepalive
    fds = [_fd(pool[n]) for n in names]
    reads = [(level, name) for level, name, _ in options]
    for fd in fds:
        assert prim_c.read(fd, reads) == prim_py.read(fd, reads)
        assert prim_c.match(fd, options) == prim_py.match(fd, options)
        (err_c, info_c), (err_py, info_py) = prim_c.tcp_info(fd), prim_py.tcp_info(fd)
        assert err_c == err_py and info_c[:4] == info_py[:4] and info_c[9:] == info_py[9:]  # not the clocks
    assert prim_c.dead_states(fds) == prim_py.dead_states(fds)


MANAGER_KW = st.dictionaries(
    st.sampled_from(["idle_timeout", "max_requests", "max_lifetime", "keepalive", "close", "watch_readable"]),
    st.one_of(NUMBERS, st.just(fastka.KeepaliveConfig()), st.just("config"), st.just(object())),
    max_size=6,
)


@FUZZ
@given(args=st.lists(NUMBERS, max_size=2), kw=MANAGER_KW)
@example(args=[1e306], kw={})
@example(args=[], kw={"max_lifetime": 1e306})
@example(args=[], kw={"max_requests": 2**70})
@example(args=[1e-300], kw={"max_lifetime": 5e-324})
@example(args=[1e20], kw={"max_lifetime": 1e17})
def test_manager_constructor(pool, args, kw):
    made = []

    def build(backend):
        def call():
            m = backend.KeepaliveManager(*args, **kw)
            made.append(m)
            return (len(m), m.next_deadline())

        return call

    try:
        same(build(C), build(PY), pool)
    finally:
        for m in made:
            m.close()


@pytest.fixture
def managers():
    made = [C.KeepaliveManager(), PY.KeepaliveManager()]
    yield made
    for m in made:
        m.close()


@FUZZ
@given(name=SOCK_NAMES, op=st.sampled_from(["add", "add twice", "remove", "touch", "contains"]))
def test_manager_add_remove_touch(pool, managers, name, op):
    s = pool[name]
    registered = pool["tcp server"]

    def run(m):
        def call():
            m.add(registered)
            try:
                if op == "add":
                    m.add(s)
                    m.remove(s)
                elif op == "add twice":
                    m.add(s)
                    try:
                        m.add(s)
                    finally:
                        m.remove(s)
                elif op == "remove":
                    m.remove(s)
                    return len(m)
                elif op == "touch":
                    m.touch(s)
                else:
                    return s in m
                return len(m)
            finally:
                if registered in m:
                    m.remove(registered)
                assert len(m) == 0

        return call

    same(run(managers[0]), run(managers[1]), pool, allowed=(TypeError, ValueError, OSError, KeyError))


@FUZZ
@given(timeout=NUMBERS)
@example(timeout=1e306)
@example(timeout=2**1030)
@example(timeout=float("inf"))
@example(timeout=5e-324)
def test_manager_poll_timeout(pool, managers, timeout):
    """Any timeout, including huge and infinite ones, with a readable socket registered so
    that a valid timeout returns at once."""
    client, server = pool["tcp client"], pool["tcp server"]
    client.send(b"x")
    try:
        def run(m):
            def call():
                m.add(server)
                try:
                    return [(obj is server, ev) for obj, ev in m.poll(timeout)]
                finally:
                    m.remove(server)

            return call

        same(run(managers[0]), run(managers[1]), pool)
    finally:
        server.recv(16)
