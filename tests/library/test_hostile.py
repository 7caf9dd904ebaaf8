"""Hostile input on both backends: a clear error naming the argument, the value and what
is allowed; never a crash, a raw EINVAL or a leaked fd (the autouse guard checks fds).
The two backends must raise the same type with the same message."""
from __future__ import annotations

import errno
import math
import os
import socket
import sys

import pytest

from conftest import Backend

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="the hostile-fd cases use /proc/self/fd and Linux's errno for pipes and Unix sockets; other platforms are covered by test_platform.py's tables",
)

TCP = socket.IPPROTO_TCP

# (keyword arguments, exception, words the message must contain)
BAD_VALUES = [
    ({"idle": 0}, ValueError, ["idle=0", "1..32767"]),
    ({"idle": -1}, ValueError, ["idle=-1", "1..32767"]),
    ({"idle": 32768}, ValueError, ["idle=32768", "1..32767"]),
    ({"idle": math.nan}, ValueError, ["idle=nan", "1..32767"]),
    ({"idle": math.inf}, ValueError, ["idle=inf", "1..32767"]),
    ({"idle": "5"}, TypeError, ["idle must be a number", "'5'"]),
    ({"idle": True}, TypeError, ["idle must be a number", "bool"]),
    ({"interval": 0}, ValueError, ["interval=0", "1..32767"]),
    ({"interval": 10**30}, ValueError, ["interval=" + str(10**30), "1..32767"]),
    ({"interval": [1]}, TypeError, ["interval must be a number", "list"]),
    ({"count": 0}, ValueError, ["count=0", "1..127"]),
    ({"count": 128}, ValueError, ["count=128", "1..127"]),
    ({"count": 2.5}, TypeError, ["count must be an int", "2.5"]),
    ({"count": False}, TypeError, ["count must be an int", "bool"]),
    ({"user_timeout": -1}, ValueError, ["user_timeout=-1", "None, or 0.."]),
    ({"user_timeout": math.nan}, ValueError, ["user_timeout=nan"]),
    ({"user_timeout": 2**31}, ValueError, ["user_timeout=" + str(2**31)]),
    ({"user_timeout": "3"}, TypeError, ["user_timeout must be None or a number"]),
]


@pytest.fixture
def tcp():
    s = socket.socket()
    yield s
    s.close()


def _kernel_untouched(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


@pytest.mark.parametrize("kwargs, exc, words", BAD_VALUES, ids=[repr(b[0]) for b in BAD_VALUES])
def test_bad_values_set_keepalive(backend, tcp, kwargs, exc, words):
    with pytest.raises(exc) as info:
        backend.set_keepalive(tcp, **kwargs)
    for w in words:
        assert w in str(info.value)
    assert _kernel_untouched(tcp)


@pytest.mark.parametrize("kwargs, exc, words", BAD_VALUES, ids=[repr(b[0]) for b in BAD_VALUES])
def test_bad_values_update_and_many(backend, tcp, kwargs, exc, words):
    with pytest.raises(exc) as info:
        backend.update_keepalive(tcp, **kwargs)
    assert words[0] in str(info.value)
    with pytest.raises(exc) as info:
        backend.set_keepalive_many([tcp], **kwargs)
    assert words[0] in str(info.value)
    assert _kernel_untouched(tcp)


@pytest.fixture
def closed_fd():
    """A closed fd number nothing will reuse (500 above every open fd; the kernel hands
    out the lowest free number)."""
    fd = max(int(n) for n in os.listdir("/proc/self/fd")) + 500
    with pytest.raises(OSError):
        os.fstat(fd)
    return fd


@pytest.fixture
def pipe_fd():
    r, w = os.pipe()
    yield r
    os.close(r)
    os.close(w)


@pytest.fixture
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield s
    s.close()


@pytest.fixture
def unix():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    yield s
    s.close()


# The functions that take one "sock"; each must word bad socks the same way.
ONE_SOCK = {
    "set_keepalive": lambda b, s: b.set_keepalive(s),
    "update_keepalive": lambda b, s: b.update_keepalive(s, idle=5),
    "disable_keepalive": lambda b, s: b.disable_keepalive(s),
    "get_keepalive": lambda b, s: b.get_keepalive(s),
    "tcp_info": lambda b, s: b.tcp_info(s),
}


@pytest.mark.parametrize("kind, code, words", [
    ("closed_fd", errno.EBADF, "fd {} is not an open file descriptor"),  # EBADF, naming fd and option
    ("pipe_fd", errno.ENOTSOCK, "fd {} is not a socket (it is a pipe)"),  # ENOTSOCK, naming what it is
])
@pytest.mark.parametrize("call", sorted(ONE_SOCK))
def test_fd_that_is_no_socket_is_named_with_what_it_is(backend, call, kind, code, words, request):
    fd = request.getfixturevalue(kind)
    with pytest.raises(OSError) as info:
        ONE_SOCK[call](backend, fd)
    assert info.value.errno == code
    assert words.format(fd) in str(info.value)
    if kind == "closed_fd":
        assert any(opt in str(info.value) for opt in ("TCP_KEEPIDLE", "SO_KEEPALIVE", "TCP_INFO"))


@pytest.mark.parametrize("call", ["set_keepalive", "update_keepalive", "get_keepalive", "tcp_info"])
def test_udp_socket_says_it_is_not_tcp(backend, call, udp):
    with pytest.raises(OSError) as info:
        ONE_SOCK[call](backend, udp)
    # Linux: ENOPROTOOPT from setsockopt, EOPNOTSUPP from getsockopt
    assert info.value.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP)
    assert f"fd {udp.fileno()} is not a TCP socket (it is UDP/IPv4)" in str(info.value)
    # SO_KEEPALIVE goes first (the one order of _platform.plan, socket_options() and the
    # manager), which UDP accepts; the first TCP option is the one that fails
    if call in ("set_keepalive", "update_keepalive"):
        assert "TCP_KEEPIDLE" in str(info.value)
        assert udp.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


@pytest.mark.parametrize("call", ["set_keepalive", "update_keepalive", "get_keepalive", "tcp_info"])
def test_unix_socket_says_it_is_not_tcp(backend, call, unix):
    with pytest.raises(OSError) as info:
        ONE_SOCK[call](backend, unix)
    assert info.value.errno == errno.EOPNOTSUPP
    assert f"fd {unix.fileno()} is not a TCP socket (it is Unix stream)" in str(info.value)


class NoFileno:
    pass


class BadFileno:
    def __init__(self, value):
        self.value = value

    def fileno(self):
        return self.value


class RaisingFileno:
    def fileno(self):
        raise RuntimeError("fileno exploded")


SOCK_ARGS = [
    (-1, ValueError, "sock is a negative fd (-1)"),
    (-(2**70), ValueError, "negative fd"),
    (2**40, ValueError, "out of range"),
    (NoFileno(), TypeError, "sock must be a socket, an object with fileno() or an int fd, not NoFileno"),
    (None, TypeError, "not NoneType"),
    (3.0, TypeError, "not float"),
    ("3", TypeError, "not str"),
    (True, TypeError, "not bool"),
    (BadFileno("3"), TypeError, "sock.fileno() must return an int, not str"),
    (BadFileno(-5), ValueError, "sock is a negative fd (-5)"),
]


@pytest.mark.parametrize("call", sorted(ONE_SOCK) + ["is_alive"])
@pytest.mark.parametrize("sock, exc, words", SOCK_ARGS, ids=[repr(a[0]) for a in SOCK_ARGS])
def test_bad_sock_arguments(backend, call, sock, exc, words):
    fn = ONE_SOCK.get(call, lambda b, s: b.is_alive(s))
    with pytest.raises(exc) as info:
        fn(backend, sock)
    assert words in str(info.value)


def test_closed_socket_object_is_a_value_error(backend):
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match=r"negative fd \(-1\); a closed socket has fileno\(\) -1"):
        backend.set_keepalive(s)


def test_fileno_that_raises_propagates(backend):
    with pytest.raises(RuntimeError, match="fileno exploded"):
        backend.set_keepalive(RaisingFileno())


def test_config_of_the_wrong_type(backend, tcp):
    for bad in ({"idle": 5}, 5, "KeepaliveConfig()", (60, 10, 5)):
        with pytest.raises(TypeError, match="config must be a KeepaliveConfig or None"):
            backend.set_keepalive(tcp, bad)
    assert _kernel_untouched(tcp)


def test_unknown_keyword_is_a_type_error(backend, tcp):
    with pytest.raises(TypeError):
        backend.set_keepalive(tcp, idel=5)
    with pytest.raises(TypeError):
        backend.update_keepalive(tcp, 5)


def test_liveness_of_a_closed_fd(backend, closed_fd):
    with pytest.raises(OSError) as info:
        backend.is_alive(closed_fd)
    assert info.value.errno == errno.EBADF and f"fd {closed_fd}" in str(info.value)
    with pytest.raises(OSError) as info:
        backend.find_dead([closed_fd])
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize("socks", [None, 3, "abc"])
def test_find_dead_rejects_non_iterables(backend, socks):
    with pytest.raises(TypeError, match="socks must be an iterable"):
        backend.find_dead(socks)


def test_find_dead_names_the_bad_member(backend, tcp):
    with pytest.raises(TypeError, match=r"socks\[2\] must be a socket"):
        backend.find_dead([tcp, tcp.fileno(), object()])


# -- both backends word every error identically ---------------------------------------

C, PY = Backend("c"), Backend("python")


def _error(exc):
    return (type(exc), getattr(exc, "errno", None), str(exc))


def _outcome(backend, fn):
    try:
        result = fn(backend)
    except Exception as exc:  # noqa: BLE001 - comparing whatever is raised
        return _error(exc)
    if isinstance(result, dict):  # set_keepalive_many's {fd: OSError}
        return {fd: _error(e) for fd, e in result.items()}
    return ("ok", result)


def test_backends_raise_identical_errors(closed_fd, pipe_fd, udp, unix, tcp):
    C.load()  # skips when the compiled backend is not built
    cases = [lambda b, kw=kw: b.set_keepalive(tcp, **kw) for kw, _, _ in BAD_VALUES]
    cases += [lambda b, kw=kw: b.update_keepalive(tcp, **kw) for kw, _, _ in BAD_VALUES]
    for sock in (closed_fd, pipe_fd, udp, unix, -1, NoFileno(), BadFileno("x"), True, 2**40):
        cases += [lambda b, s=sock, f=f: f(b, s) for f in ONE_SOCK.values()]
        cases.append(lambda b, s=sock: b.is_alive(s))
        cases.append(lambda b, s=sock: b.set_keepalive_many([tcp, s]))
        cases.append(lambda b, s=sock: b.find_dead([tcp, s]))
    for case in cases:
        assert _outcome(C, case) == _outcome(PY, case)
