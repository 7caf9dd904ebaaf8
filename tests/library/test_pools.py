"""fastka.pools on urllib3 and requests, against a small real keep-alive server on
loopback (tests/pool_servers.py), on both backends: the checkout rule (idle timeout, the
server's hint minus the margin, max_age with a seeded jitter, dead by find_dead with one
call for the whole idle set), keepalive on new sockets, proxies, HTTPS, and bad arguments.

The time rules run on a fake clock (the pools read ``monotonic`` from their module); the
dead check on real FINs.
"""
from __future__ import annotations

import random
import socket
import time

import pytest
from conftest import FakeClock
from pool_servers import connect_proxy, fill, pool_test_server

import fastka
from fastka import _jitter

urllib3 = pytest.importorskip("urllib3", reason="urllib3 is not installed (pip install -e '.[test]')")
pools_urllib3 = pytest.importorskip("fastka.pools._urllib3")
from fastka.pools import HTTPAdapter, PoolManager, ProxyManager  # noqa: E402
from fastka.pools._rule import CheckoutRule  # noqa: E402


class Spy:
    """Counts the calls of a fastka function and records their arguments."""

    def __init__(self, func) -> None:
        self.func = func
        self.calls: list = []

    def __call__(self, *args, **kwargs):
        self.calls.append([list(a) if isinstance(a, list) else a for a in args])
        return self.func(*args, **kwargs)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(pools_urllib3, "monotonic", c)
    return c


@pytest.fixture
def server():
    with pool_test_server() as srv:
        yield srv


def port_of(response) -> int:
    return int(response.data if hasattr(response, "data") else response.text)


def get(pm, url: str) -> int:
    return port_of(pm.request("GET", url))


def wait_for_fin(socks, timeout: float = 10.0) -> None:
    """Until every socket has seen its peer's FIN (the server's close reached the client)."""
    deadline = time.monotonic() + timeout
    while fastka.find_dead(socks) != list(socks):
        assert time.monotonic() < deadline, "the server's FIN never arrived"
        time.sleep(0.01)


def test_reuses_a_pooled_connection(on_backend, server):
    pm = PoolManager(idle_timeout=30)
    try:
        assert get(pm, server.url) == get(pm, server.url)
        assert server.accepted == 1
    finally:
        pm.clear()


def test_idle_timeout(on_backend, server, clock):
    pm = PoolManager(idle_timeout=5)
    try:
        first = get(pm, server.url)
        clock.now += 4.99
        assert get(pm, server.url) == first
        clock.now += 5.0
        assert get(pm, server.url) != first  # discarded and replaced, no error
        assert server.accepted == 2
    finally:
        pm.clear()


def test_server_hint_minus_margin(on_backend, server, clock):
    pm = PoolManager(idle_timeout=30, margin=1.0)
    url = server.url + "?ka=5"
    try:
        first = get(pm, url)
        clock.now += 3.99
        assert get(pm, url) == first
        clock.now += 4.0  # the hint (5 s) minus the margin: never reused from here on
        second = get(pm, url)
        assert second != first
        clock.now += 1.0  # a response without the hint: idle_timeout rules again
        assert get(pm, server.url) == second
        clock.now += 20.0
        assert get(pm, server.url) == second
    finally:
        pm.clear()


def test_hint_within_the_margin_is_never_reused(on_backend, server, clock):
    pm = PoolManager(margin=1.0)
    url = server.url + "?ka=1"
    try:
        ports = {get(pm, url) for _ in range(3)}
        assert len(ports) == 3 and server.accepted == 3
    finally:
        pm.clear()


def test_max_age_spread_by_seeded_jitter(on_backend, server, clock):
    pm = PoolManager(max_age=10, jitter=0.3)
    pm.fastka_rule.source = random.Random(7).random
    spread = 10 * _jitter.factor(0.3, random.Random(7).random)
    assert spread != 10
    try:
        start = clock.now
        first = get(pm, server.url)
        while clock.now + 1 < start + spread:  # busy all along: only the age counts
            clock.now += 1
            assert get(pm, server.url) == first
        clock.now = start + spread - 0.01
        assert get(pm, server.url) == first
        clock.now = start + spread
        assert get(pm, server.url) != first
    finally:
        pm.clear()


def test_jitter_draws_a_limit_per_connection(on_backend, server):
    rule = CheckoutRule(None, None, 100, 0.5, 1.0, source=random.Random(1).random)
    deadlines = {rule.age_deadline(0.0) for _ in range(20)}
    assert len(deadlines) == 20 and all(50 <= d <= 150 for d in deadlines)


def test_dead_connections_one_find_dead_for_the_idle_set(on_backend, server, monkeypatch):
    pm = PoolManager(maxsize=4)
    try:
        conns = fill(pm, server.url, 3)
        assert server.accepted == 3
        socks = [c.sock for c in conns]
        server.drop_all()
        wait_for_fin(socks)
        is_alive, find_dead = Spy(fastka.is_alive), Spy(fastka.find_dead)
        monkeypatch.setattr(fastka, "is_alive", is_alive)
        monkeypatch.setattr(fastka, "find_dead", find_dead)
        port = get(pm, server.url)  # no error: the dead ones are closed and replaced
        assert server.accepted == 4 and port not in {s.getsockname()[1] for s in socks if s.fileno() != -1}
        assert len(is_alive.calls) == 1  # the connection that was about to be handed out
        assert len(find_dead.calls) == 1 and len(find_dead.calls[0][0]) == 2  # the rest: one call
        assert all(s.fileno() == -1 for s in socks)  # every dead one closed
        for _ in range(3):
            get(pm, server.url)
        assert server.accepted == 4 and len(find_dead.calls) == 1
    finally:
        pm.clear()


def test_keepalive_on_every_new_socket_next_to_urllib3s_options(on_backend, server):
    cfg = fastka.KeepaliveConfig(idle=7, interval=3, count=4, user_timeout=9)
    pm = PoolManager(keepalive=cfg)
    try:
        (conn,) = fill(pm, server.url, 1)
        state = fastka.get_keepalive(conn.sock)
        assert (state.enabled, state.idle, state.interval, state.count, state.user_timeout) == (True, 7, 3, 4, 9)
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # urllib3's default kept
    finally:
        pm.clear()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_https(on_backend, clock):
    with pool_test_server(tls=True) as srv:
        pm = PoolManager(cert_reqs="CERT_NONE", idle_timeout=30)
        url = srv.url + "?ka=5"
        try:
            first = get(pm, url)
            assert type(pm.connection_from_url(srv.url)).__name__ == "HTTPSConnectionPool"
            assert isinstance(pm.connection_from_url(srv.url), pools_urllib3.HTTPSConnectionPool)
            clock.now += 3.5
            assert get(pm, url) == first
            clock.now += 4.5
            second = get(pm, url)
            assert second != first
            conns = fill(pm, srv.url, 2)
            socks = [c.sock for c in conns]
            srv.drop_all()
            wait_for_fin(socks)
            get(pm, srv.url)
            assert srv.accepted == 4
        finally:
            pm.clear()


def test_proxy_manager(on_backend, server, clock):
    # The test server answers absolute-form requests itself, as a forwarding proxy would.
    pm = ProxyManager(server.url, idle_timeout=5)
    try:
        first = get(pm, "http://example.invalid/?ka=30")
        pool = pm.connection_from_host(server.server_address[0], server.server_address[1], scheme="http")
        assert isinstance(pool, pools_urllib3.HTTPConnectionPool) and pool.fastka_rule is pm.fastka_rule
        clock.now += 4
        assert get(pm, "http://example.invalid/") == first
        clock.now += 6
        assert get(pm, "http://example.invalid/") != first
    finally:
        pm.clear()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_proxy_manager_https_tunnel(on_backend, clock):
    with pool_test_server(tls=True) as srv, connect_proxy() as proxy:
        pm = ProxyManager(proxy.url, cert_reqs="CERT_NONE", idle_timeout=5)
        url = srv.url + "?ka=30"
        try:
            first = get(pm, url)
            clock.now += 4
            assert get(pm, url) == first and proxy.tunnels == 1
            clock.now += 6
            second = get(pm, url)
            assert second != first and proxy.tunnels == 2
            (conn,) = fill(pm, url, 1)
            srv.drop_all()  # the server's FIN comes back through the tunnel
            wait_for_fin([conn.sock])
            assert get(pm, url) not in (first, second) and proxy.tunnels == 3
        finally:
            pm.clear()


def test_requests_adapter(on_backend, server, clock):
    requests = pytest.importorskip("requests")
    cfg = fastka.KeepaliveConfig(idle=11, interval=2, count=3)
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(keepalive=cfg, idle_timeout=5, pool_maxsize=3))
        url = server.url + "?ka=3"
        first = port_of(session.get(url))
        clock.now += 1.9
        assert port_of(session.get(url)) == first
        clock.now += 2.0  # past the hint (3 s) minus the margin (1 s)
        second = port_of(session.get(url))
        assert second != first
        assert port_of(session.get(server.url)) == second  # a response without the hint
        clock.now += 4.0
        assert port_of(session.get(server.url)) == second  # idle_timeout (5 s) rules again
        clock.now += 5.0
        assert port_of(session.get(server.url)) != second
        adapter = session.get_adapter(server.url)
        (key,) = adapter.poolmanager.pools.keys()
        pool = adapter.poolmanager.pools[key]
        assert pool.fastka_rule is adapter.fastka_rule
        (sock,) = [c.sock for c in pool.pool.queue if c is not None and c.sock is not None]
        assert fastka.get_keepalive(sock).idle == 11


def test_requests_adapter_pickles_with_its_rule():
    import pickle

    adapter = pickle.loads(pickle.dumps(HTTPAdapter(idle_timeout=3, max_age=9, margin=0.5)))
    try:
        rule = adapter.fastka_rule
        assert (rule.idle_timeout, rule.max_age, rule.margin) == (3, 9, 0.5)
        assert isinstance(adapter.poolmanager, PoolManager) and adapter.poolmanager.fastka_rule is rule
    finally:
        adapter.close()


def test_requests_adapter_proxy(on_backend, server):
    requests = pytest.importorskip("requests")
    adapter = HTTPAdapter(idle_timeout=5)
    manager = adapter.proxy_manager_for(server.url)
    try:
        assert isinstance(manager, ProxyManager) and manager.fastka_rule is adapter.fastka_rule
        assert adapter.proxy_manager_for(server.url) is manager
        assert requests  # the session-level proxy path is requests' own
    finally:
        adapter.close()


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"idle_timeout": 0}, ValueError, "idle_timeout=0"),
        ({"idle_timeout": "5"}, TypeError, "idle_timeout"),
        ({"max_age": -1}, ValueError, "max_age=-1"),
        ({"max_age": float("nan")}, ValueError, "max_age=nan"),
        ({"jitter": 0.6}, ValueError, "jitter=0.6"),
        ({"jitter": True}, TypeError, "jitter"),
        ({"margin": -0.5}, ValueError, "margin=-0.5"),
        ({"margin": None}, TypeError, "margin"),
        ({"keepalive": 60}, TypeError, "keepalive"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    for cls in (PoolManager, HTTPAdapter):
        with pytest.raises(error, match=words.replace("(", r"\(")):
            cls(**kwargs)
