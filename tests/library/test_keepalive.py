"""set_keepalive / update_keepalive / disable_keepalive / get_keepalive /
set_keepalive_many on both backends, every value read back from the kernel with plain
socket.getsockopt (never by asking fastka)."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

from fastka import Event, KeepaliveConfig
from fastka._config import DEFAULT
from repo import ROOT

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="reads the values back with Linux's option names (TCP_KEEPIDLE, TCP_USER_TIMEOUT); other platforms are covered by test_platform.py's tables",
)

TCP = socket.IPPROTO_TCP


def kernel(sock: socket.socket) -> tuple:
    """(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT ms)."""
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(TCP, socket.TCP_KEEPCNT),
        sock.getsockopt(TCP, socket.TCP_USER_TIMEOUT),
    )


@pytest.fixture
def tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    yield s
    s.close()


class FilenoOnly:
    """Any object with fileno(): the API takes those too."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()


# -- backend selection -------------------------------------------------------------


def _implementation(env_value):
    env = dict(os.environ)
    env.pop("FASTKA_NO_EXTENSIONS", None)
    if env_value is not None:
        env["FASTKA_NO_EXTENSIONS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", "import fastka; print(fastka.IMPLEMENTATION)"],
        cwd=ROOT,
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.strip()


def _compiled_available() -> bool:
    """Whether the compiled modules fastka/__init__.py needs all import."""
    try:
        import fastka._keepalive_c  # noqa: F401

        if sys.platform.startswith("linux"):
            import fastka._manager_c  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_no_extensions_forces_python(value):
    assert _implementation(value) == "python"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_compiled_backend_used_when_it_imports(value):
    expected = "c" if _compiled_available() else "python"
    assert _implementation(value) == expected


# -- set_keepalive ---------------------------------------------------------------------


def test_defaults_reach_the_kernel(backend, tcp):
    applied = backend.set_keepalive(tcp)
    assert applied == KeepaliveConfig() == DEFAULT
    assert kernel(tcp) == (1, 60, 10, 5, 0)


def test_config_and_overrides(backend, tcp):
    cfg = KeepaliveConfig(idle=30, interval=3, count=4)
    applied = backend.set_keepalive(tcp, cfg, count=7, user_timeout=2.5)
    assert applied == KeepaliveConfig(idle=30, interval=3, count=7, user_timeout=2.5)
    assert kernel(tcp) == (1, 30, 3, 7, 2500)


def test_fractions_round_up_to_whole_seconds(backend, tcp):
    applied = backend.set_keepalive(tcp, idle=1.2, interval=0.001, user_timeout=0.0001)
    assert (applied.idle, applied.interval, applied.user_timeout) == (2, 1, 0.001)
    assert kernel(tcp)[1:] == (2, 1, 5, 1)


def test_linux_maximum_values(backend, tcp):
    backend.set_keepalive(tcp, idle=32767, interval=32767, count=127, user_timeout=2**31 // 1000)
    assert kernel(tcp) == (1, 32767, 32767, 127, (2**31 // 1000) * 1000)


def test_user_timeout_none_leaves_the_kernel_value(backend, tcp):
    tcp.setsockopt(TCP, socket.TCP_USER_TIMEOUT, 1234)
    backend.set_keepalive(tcp, idle=5)
    assert kernel(tcp)[4] == 1234
    backend.set_keepalive(tcp, user_timeout=0)  # 0: back to the kernel default
    assert kernel(tcp)[4] == 0


@pytest.mark.parametrize("kind", ["socket", "fd", "fileno"])
def test_every_kind_of_sock_argument(backend, tcp, kind):
    arg = {"socket": tcp, "fd": tcp.fileno(), "fileno": FilenoOnly(tcp)}[kind]
    backend.set_keepalive(arg, idle=11, interval=2, count=3)
    assert kernel(tcp)[:4] == (1, 11, 2, 3)
    assert backend.get_keepalive(arg).idle == 11


def test_connected_socket_and_ipv6(backend, tcp_pair):
    client, server = tcp_pair
    backend.set_keepalive(client, idle=9)
    backend.set_keepalive(server, idle=8)
    assert kernel(client)[1] == 9 and kernel(server)[1] == 8
    try:
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("no IPv6")
    with s6:
        backend.set_keepalive(s6, idle=7)
        assert kernel(s6)[:2] == (1, 7)


def test_listener_values_are_inherited_by_accepted_connections(backend, listener):
    backend.set_keepalive(listener, idle=42, interval=6, count=3, user_timeout=9)
    with socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert kernel(accepted) == (1, 42, 6, 3, 9000)
            state = backend.get_keepalive(accepted)
            assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout) == (True, 42, 6, 3, 9.0)
        assert kernel(client)[0] == 0  # the connecting side was never configured


# -- get / update / disable ----------------------------------------------------------


def test_get_keepalive_reads_what_the_kernel_has(backend, tcp):
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    tcp.setsockopt(TCP, socket.TCP_KEEPIDLE, 123)
    tcp.setsockopt(TCP, socket.TCP_KEEPINTVL, 4)
    tcp.setsockopt(TCP, socket.TCP_KEEPCNT, 6)
    state = backend.get_keepalive(tcp)
    assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout) == (True, 123, 4, 6, None)
    tcp.setsockopt(TCP, socket.TCP_USER_TIMEOUT, 1500)
    assert backend.get_keepalive(tcp).user_timeout == 1.5


def test_get_keepalive_of_a_fresh_socket_is_the_system_default(backend, tcp):
    from fastka import system_defaults

    d = system_defaults()
    state = backend.get_keepalive(tcp)
    assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout) == (
        False, d.idle, d.interval, d.count, None)


def test_update_changes_only_the_given_fields(backend, tcp):
    backend.set_keepalive(tcp, idle=100, interval=20, count=8, user_timeout=7)
    state = backend.update_keepalive(tcp, interval=3)
    assert kernel(tcp) == (1, 100, 3, 8, 7000)
    assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout) == (True, 100, 3, 8, 7.0)
    backend.update_keepalive(tcp, count=2, user_timeout=0.25)
    assert kernel(tcp) == (1, 100, 3, 2, 250)


def test_update_enables_keepalive_and_keeps_kernel_values(backend, tcp):
    before = kernel(tcp)
    assert before[0] == 0
    backend.update_keepalive(tcp, idle=77)
    assert kernel(tcp) == (1, 77) + before[2:]
    backend.disable_keepalive(tcp)
    backend.update_keepalive(tcp)  # no fields: just enable
    assert kernel(tcp) == (1, 77) + before[2:]


def test_update_rounds_and_validates_like_config(backend, tcp):
    backend.update_keepalive(tcp, idle=2.1)
    assert kernel(tcp)[1] == 3
    with pytest.raises(ValueError, match="idle=0"):
        backend.update_keepalive(tcp, idle=0)
    with pytest.raises(TypeError, match="count must be an int"):
        backend.update_keepalive(tcp, count=1.5)
    assert kernel(tcp)[1] == 3


def test_disable_keeps_the_values(backend, tcp):
    backend.set_keepalive(tcp, idle=15)
    assert backend.disable_keepalive(tcp) is None
    assert kernel(tcp)[:2] == (0, 15)
    assert backend.get_keepalive(tcp).enabled is False


# -- set_keepalive_many ----------------------------------------------------------------


def unused_fd() -> int:
    """An fd number that is closed and that nothing opened later takes: the kernel hands
    out the lowest free number, and this one is 500 above every open fd."""
    fd = max(int(n) for n in os.listdir("/proc/self/fd")) + 500
    with pytest.raises(OSError):
        os.fstat(fd)
    return fd


def test_many_configures_every_good_socket_and_reports_exactly_the_bad(backend):
    good = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(1000)]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed_fd = unused_fd()
    try:
        members = good[:400] + [closed_fd] + good[400:700] + [udp] + good[700:]
        failed = backend.set_keepalive_many(members, KeepaliveConfig(idle=13, interval=2, count=3), user_timeout=4)
        assert set(failed) == {closed_fd, udp.fileno()}
        assert failed[closed_fd].errno == errno.EBADF
        assert f"fd {closed_fd}" in str(failed[closed_fd])
        assert failed[udp.fileno()].errno == errno.ENOPROTOOPT
        assert "is not a TCP socket (it is UDP" in str(failed[udp.fileno()])
        assert all(kernel(s) == (1, 13, 2, 3, 4000) for s in good)
    finally:
        for s in good + [udp]:
            s.close()


def test_many_failure_is_the_error_set_keepalive_raises(backend):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        failed = backend.set_keepalive_many([unix])
        with pytest.raises(OSError) as single:
            backend.set_keepalive(unix)
        error = failed[unix.fileno()]
    assert len(failed) == 1
    assert type(error) is type(single.value)
    assert error.errno == single.value.errno == errno.EOPNOTSUPP
    assert str(error) == str(single.value)
    assert "is not a TCP socket (it is Unix stream)" in str(error)


def test_many_accepts_any_iterable_and_returns_empty_on_success(backend):
    socks = [socket.socket() for _ in range(5)]
    try:
        assert backend.set_keepalive_many(s for s in socks) == {}
        assert backend.set_keepalive_many((FilenoOnly(socks[0]), socks[1].fileno()), idle=99) == {}
        assert kernel(socks[0])[1] == kernel(socks[1])[1] == 99
        assert all(kernel(s)[:2] == (1, 60) for s in socks[2:])
        assert backend.set_keepalive_many([]) == {}
        assert backend.set_keepalive_many([socks[2], socks[2]], count=9) == {}
        assert kernel(socks[2])[3] == 9
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (object(), TypeError, "socks[1] must be a socket"),
        (-3, ValueError, "socks[1] is a negative fd (-3)"),
        ("7", TypeError, "socks[1] must be a socket"),
        (None, TypeError, "socks[1] must be a socket"),
    ],
)
def test_many_rejects_a_member_without_an_fd_before_any_call(backend, tcp, bad, exc, words):
    with pytest.raises(exc) as info:
        backend.set_keepalive_many([tcp, bad], idle=21)
    assert words in str(info.value)
    assert kernel(tcp)[0] == 0  # nothing was applied


def test_many_rejects_a_closed_socket_object_up_front(backend, tcp):
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match=r"socks\[1\] is a negative fd \(-1\)"):
        backend.set_keepalive_many([tcp, closed])
    assert kernel(tcp)[0] == 0


@pytest.mark.parametrize("socks", [None, 5, "abc", b"abc"])
def test_many_rejects_a_non_iterable(backend, socks):
    with pytest.raises(TypeError, match="socks must be an iterable"):
        backend.set_keepalive_many(socks)


def test_many_validates_the_config_before_any_call(backend, tcp):
    with pytest.raises(ValueError, match="count=0"):
        backend.set_keepalive_many([tcp], count=0)
    with pytest.raises(TypeError, match="config must be a KeepaliveConfig"):
        backend.set_keepalive_many([tcp], {"idle": 5})
    with pytest.raises(TypeError, match="unexpected keyword|got an unexpected"):
        backend.set_keepalive_many([tcp], idel=5)
    assert kernel(tcp)[0] == 0


# -- the fd is left as it is ---------------------------------------------------------------


def test_every_call_leaves_the_fd_blocking_under_a_default_timeout(backend, tcp_pair):
    """socket.setdefaulttimeout() set by the application must not make fastka switch a
    blocking fd to non-blocking (Python does so to any socket object it builds over an
    fd, which the fallback borrows for its socket calls)."""
    client, server = tcp_pair
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = server.fileno()
    try:
        socket.setdefaulttimeout(5)
        backend.set_keepalive(fd, idle=30)
        backend.update_keepalive(fd, count=3)
        backend.get_keepalive(fd)
        backend.tcp_info(fd)
        assert backend.set_keepalive_many([fd]) == {}
        assert backend.is_alive(fd) and backend.find_dead([fd]) == []
        backend.disable_keepalive(fd)
        with pytest.raises(OSError, match="not a TCP socket"):  # the error names the kind of socket
            backend.set_keepalive(udp.fileno())
        with backend.KeepaliveManager(None, close=False) as mgr:  # peeks at a readable socket
            mgr.add(fd)
            client.sendall(b"x")
            assert [ev for _, ev in mgr.poll(5)] == [Event.READABLE]
    finally:
        socket.setdefaulttimeout(None)
        udp_blocking = os.get_blocking(udp.fileno())
        udp.close()
    assert os.get_blocking(fd) and udp_blocking


# -- the primitives' contract with the manager -------------------------------------------


def test_match_reports_what_the_kernel_carries(backend, tcp, listener):
    """match (fk_sockopt_match in src/sockopt.h for the compiled backend), which
    KeepaliveManager.add uses over its config's plan to skip sockets that already carry
    it (e.g. inherited from the listener)."""
    match = backend.keepalive.match
    cfg = KeepaliveConfig(idle=42, interval=6, count=3, user_timeout=9)
    opts = cfg.socket_options()
    assert match(tcp.fileno(), opts) == 0  # keepalive off
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    tcp.setsockopt(TCP, socket.TCP_KEEPIDLE, 42)
    tcp.setsockopt(TCP, socket.TCP_KEEPINTVL, 6)
    tcp.setsockopt(TCP, socket.TCP_KEEPCNT, 3)
    assert match(tcp.fileno(), opts) == 0  # user timeout differs
    tcp.setsockopt(TCP, socket.TCP_USER_TIMEOUT, 9000)
    assert match(tcp.fileno(), opts) == 1
    assert match(tcp.fileno(), cfg.replace(user_timeout=None).socket_options()) == 1  # None: not compared
    assert match(tcp.fileno(), cfg.replace(user_timeout=None, count=4).socket_options()) == 0
    assert match(tcp.fileno(), [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 8)]) == 1  # on/off, as the BSDs read back
    assert match(tcp.fileno(), []) == 1
    # an accepted connection inherits the listener's values: the manager need not touch it
    backend.set_keepalive(listener, cfg)
    with socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            assert match(accepted.fileno(), opts) == 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert match(udp.fileno(), opts) == 0  # SO_KEEPALIVE reads back off: differs first
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        assert match(udp.fileno(), opts) == -errno.EOPNOTSUPP  # then a TCP option cannot be read


# -- any valid config reaches the kernel as validated ---------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

seconds = st.one_of(st.integers(1, 32767), st.floats(0.001, 32767, allow_nan=False))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(idle=seconds, interval=seconds, count=st.integers(1, 127),
       user_timeout=st.one_of(st.none(), st.floats(0, 2_000_000, allow_nan=False)))
def test_any_valid_config_round_trips_through_the_kernel(backend, idle, interval, count, user_timeout):
    with socket.socket() as s:
        s.setsockopt(TCP, socket.TCP_USER_TIMEOUT, 777)
        cfg = backend.set_keepalive(s, idle=idle, interval=interval, count=count, user_timeout=user_timeout)
        ut_ms = 777 if user_timeout is None else round(cfg.user_timeout * 1000)
        assert kernel(s) == (1, cfg.idle, cfg.interval, cfg.count, ut_ms)
        state = backend.get_keepalive(s)
        assert (state.idle, state.interval, state.count) == (cfg.idle, cfg.interval, cfg.count)
        assert state.user_timeout == (ut_ms / 1000 if ut_ms else None)


# -- socket_options(): the same calls as set_keepalive ----------------------------------


@pytest.mark.parametrize("cfg", [KeepaliveConfig(), KeepaliveConfig(idle=7, interval=3, count=2, user_timeout=2.007),
                                 KeepaliveConfig(idle=1.5, user_timeout=0)], ids=repr)
def test_socket_options_set_what_set_keepalive_sets(backend, cfg):
    with socket.socket() as by_fastka, socket.socket() as by_list, socket.socket() as by_dict:
        for s in (by_fastka, by_list, by_dict):
            s.setsockopt(TCP, socket.TCP_USER_TIMEOUT, 777)  # None must leave it alone
        backend.set_keepalive(by_fastka, cfg)
        for triple in cfg.socket_options():
            by_list.setsockopt(*triple)
        by_dict.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in cfg.tcp_options().items():
            by_dict.setsockopt(TCP, option, value)
        assert kernel(by_list) == kernel(by_dict) == kernel(by_fastka)


def test_user_timeout_is_converted_to_ms_once(backend, tcp):
    """2.007 s is 2006.9999... ms in binary floating point: every path must give 2007."""
    cfg = KeepaliveConfig(user_timeout=2.007)
    backend.set_keepalive(tcp, cfg)
    assert kernel(tcp)[4] == 2007
    assert dict(((level, opt), v) for level, opt, v in cfg.socket_options())[(TCP, socket.TCP_USER_TIMEOUT)] == 2007
    backend.update_keepalive(tcp, user_timeout=2.007)
    assert kernel(tcp)[4] == 2007
    with socket.socket() as other:
        assert backend.set_keepalive_many([other], cfg) == {}
        assert kernel(other)[4] == 2007
    with socket.socket() as added, backend.KeepaliveManager(keepalive=cfg, close=False) as manager:
        manager.add(added)  # the manager applies the same plan (2008 ms on the compiled one before)
        assert kernel(added)[4] == 2007
        manager.remove(added)


# -- create_server ---------------------------------------------------------------------


def test_create_server_configures_the_listener_and_connections_inherit(backend):
    cfg = KeepaliveConfig(idle=33, interval=4, count=2, user_timeout=5)
    with backend.create_server(("127.0.0.1", 0), cfg, backlog=8) as lst:
        assert lst.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert kernel(lst) == (1, 33, 4, 2, 5000)
        with socket.create_connection(lst.getsockname()):
            accepted, _ = lst.accept()
            with accepted:
                assert kernel(accepted) == (1, 33, 4, 2, 5000)
    with backend.create_server(("127.0.0.1", 0)) as lst:
        assert kernel(lst)[:4] == (1, 60, 10, 5)


def test_create_server_passes_the_socket_module_keywords(backend):
    try:
        lst = backend.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=socket.has_dualstack_ipv6(),
                                    reuse_port=True)
    except OSError as exc:
        pytest.skip(f"no IPv6 listener here: {exc}")
    with lst:
        assert lst.family == socket.AF_INET6
        assert lst.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert kernel(lst)[0] == 1


def test_create_server_checks_the_config_before_binding(backend):
    with pytest.raises(TypeError, match="config must be a KeepaliveConfig"):
        backend.create_server(("127.0.0.1", 0), {"idle": 5})


def test_create_server_closes_the_socket_when_keepalive_fails(backend, tmp_path):
    """A Unix listener has no TCP options: the error says so and no fd is left open (the
    autouse no_fd_leak fixture checks)."""
    with pytest.raises(OSError) as info:
        backend.create_server(str(tmp_path / "sock"), family=socket.AF_UNIX)
    assert "is not a TCP socket (it is Unix stream)" in str(info.value)
