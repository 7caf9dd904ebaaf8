"""KeepaliveManager behaviour over both backends, with real loopback connections."""
from __future__ import annotations

import os
import re
import random
import socket
import struct
import threading
import time

import pytest

import netns
from conftest import pair
from fastka import Event, KeepaliveConfig


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_touched_survives_untouched_idles(mgr_factory, listener):
    m = mgr_factory(10)
    clock = FakeClock()
    m._set_clock(clock)
    c1, s1 = pair(listener)
    c2, s2 = pair(listener)
    try:
        m.add(s1)
        m.add(s2)
        assert len(m) == 2 and s1 in m
        clock.t += 6
        m.touch(s1)
        clock.t += 5
        assert m.poll(0) == [(s2, Event.IDLE)]
        assert s2.fileno() == -1  # closed by the manager
        c2.settimeout(2)
        assert c2.recv(10) == b""  # the peer sees a FIN
        assert s1 in m and s2 not in m
        assert m.next_deadline() == pytest.approx(5.001)  # deadlines carry one clock ms
    finally:
        for s in (c1, s1, c2, s2):
            s.close()


def test_idle_never_expires_early_within_a_clock_millisecond(mgr_factory, listener):
    """The clock counts whole milliseconds rounded down: a touch at 0.9 ms past a
    millisecond must not expire 0.5 ms before idle_timeout has passed."""
    m = mgr_factory(1.0)
    clock = FakeClock()
    clock.t = 1000.0009
    m._set_clock(clock)
    c, s = pair(listener)
    try:
        m.add(s)
        clock.t = 1000.0009 + 1.0 - 0.0005
        assert m.poll(0) == []
        clock.t = 1000.0009 + 1.0 + 0.0011
        assert m.poll(0) == [(s, Event.IDLE)]
    finally:
        c.close()
        s.close()


def test_max_requests_reported_on_next_poll(mgr_factory, listener):
    m = mgr_factory(None, max_requests=2)
    c, s = pair(listener)
    try:
        m.add(s)
        m.touch(s)
        assert m.poll(0) == []
        m.touch(s)
        assert m.next_deadline() == 0.0
        assert m.poll(0) == [(s, Event.MAX_REQUESTS)]
        c.settimeout(2)
        assert c.recv(10) == b""
    finally:
        c.close()
        s.close()


def test_max_lifetime(mgr_factory, listener):
    m = mgr_factory(None, max_lifetime=5)
    clock = FakeClock()
    m._set_clock(clock)
    c, s = pair(listener)
    try:
        m.add(s)
        clock.t += 4
        m.touch(s)
        assert m.poll(0) == []
        clock.t += 1  # exactly max_lifetime: not yet, a deadline carries one clock ms
        assert m.poll(0) == []
        clock.t += 0.001
        assert m.poll(0) == [(s, Event.MAX_LIFETIME)]
    finally:
        c.close()
        s.close()


def test_peer_fin(mgr_factory, listener):
    m = mgr_factory()
    c, s = pair(listener)
    try:
        m.add(s)
        c.close()
        assert m.poll(2) == [(s, Event.PEER_CLOSED)]
        assert len(m) == 0
    finally:
        s.close()


def test_peer_reset(mgr_factory, listener):
    m = mgr_factory()
    c, s = pair(listener)
    try:
        m.add(s)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        assert m.poll(2) == [(s, Event.RESET)]
    finally:
        s.close()


def test_data_then_fin(mgr_factory, listener):
    m = mgr_factory()
    c, s = pair(listener)
    try:
        m.add(s)
        c.sendall(b"hello")
        c.close()
        time.sleep(0.05)
        assert m.poll(2) == [(s, Event.READABLE)]
        assert m.poll(0) == [(s, Event.READABLE)]  # level-triggered: still unread
        assert s.recv(10) == b"hello"
        assert m.poll(2) == [(s, Event.PEER_CLOSED)]
    finally:
        s.close()


def test_unwatched_data_then_fin_waits_for_reader(mgr_factory, listener):
    m = mgr_factory(watch_readable=False)
    c, s = pair(listener)
    try:
        m.add(s)
        c.sendall(b"hello")
        assert m.poll(0.1) == []
        c.close()
        assert m.poll(0.2) == []
        assert s.recv(10) == b"hello"
        assert m.poll(2) == [(s, Event.PEER_CLOSED)]
    finally:
        s.close()


def test_remove_does_not_close(mgr_factory, tcp_pair):
    m = mgr_factory(0.01)
    c, s = tcp_pair
    m.add(s)
    m.remove(s)
    assert s not in m and len(m) == 0
    time.sleep(0.02)
    assert m.poll(0) == []
    assert s.fileno() != -1
    with pytest.raises(KeyError):
        m.remove(s)
    with pytest.raises(KeyError):
        m.touch(s)


def test_double_add(mgr_factory, tcp_pair):
    m = mgr_factory()
    m.add(tcp_pair[1])
    with pytest.raises(ValueError, match="already"):
        m.add(tcp_pair[1])


def test_poll_zero_returns_at_once(mgr_factory, tcp_pair):
    m = mgr_factory()
    m.add(tcp_pair[1])
    t = time.monotonic()
    assert m.poll(0) == []
    assert time.monotonic() - t < 0.5


def test_poll_none_wakes_on_expiry(mgr_factory, listener):
    m = mgr_factory(0.2)
    c, s = pair(listener)
    try:
        m.add(s)
        t = time.monotonic()
        assert m.poll(None) == [(s, Event.IDLE)]
        assert 0.15 <= time.monotonic() - t < 5
    finally:
        c.close()
        s.close()


def blocked_poll(m, wake) -> list:
    """What m.poll(None) in another thread returns once ``wake()`` (called while that poll
    waits; then a second poll is refused) has given it something to report."""
    result = []
    th = threading.Thread(target=lambda: result.append(m.poll(None)))
    th.start()
    time.sleep(0.1)  # the poll is in epoll_wait now
    try:
        with pytest.raises(RuntimeError, match="already running"):
            m.poll(0)
        wake()
    finally:
        th.join(5)
    assert not th.is_alive()
    return result


def test_poll_none_woken_by_add_from_other_thread(mgr_factory, listener):
    m = mgr_factory(0.2)
    c, s = pair(listener)

    def close_refused_then_add():
        with pytest.raises(RuntimeError):
            m.close()
        m.add(s)

    try:
        assert blocked_poll(m, close_refused_then_add) == [[(s, Event.IDLE)]]
    finally:
        c.close()
        s.close()


def test_fd_reuse(mgr_factory, listener):
    m = mgr_factory(10, close=False)
    clock = FakeClock()
    m._set_clock(clock)
    c1, s1 = pair(listener)
    m.add(s1)
    fd = s1.fileno()
    s1.close()
    c2, s2 = pair(listener)
    c3, s3 = None, None
    try:
        if s2.fileno() != fd:  # the client took the number: swap roles
            c2, s2 = s2, c2
        assert s2.fileno() == fd
        assert s2 not in m
        c2.sendall(b"x")
        clock.t += 20
        assert m.poll(0.1) == []  # the stale slot yields nothing, acts on nothing
        assert len(m) == 0
        # the new socket on the reused number can be added, and then works
        c3, s3 = pair(listener)
        m.add(s3)
        s3.close()
        c4, s4 = pair(listener)
        try:
            fd4 = s4 if s4.fileno() == fd else c4
            m.add(fd4)  # replaces the stale slot
            assert fd4 in m
            m.remove(fd4)
        finally:
            c4.close()
            s4.close()
    finally:
        for s in (c1, c2, s2, c3):
            if s is not None:
                s.close()


def test_keepalive_applied_on_add(mgr_factory, backend, tcp_pair):
    cfg = KeepaliveConfig(idle=30, interval=5, count=3)
    m = mgr_factory(keepalive=cfg)
    m.add(tcp_pair[1])
    st = backend.get_keepalive(tcp_pair[1])
    assert (st.enabled, st.idle, st.interval, st.count) == (True, 30, 5, 3)


@pytest.mark.parametrize(
    "kw, exc",
    [
        ({"idle_timeout": 0}, ValueError),
        ({"idle_timeout": -1}, ValueError),
        ({"idle_timeout": float("nan")}, ValueError),
        ({"idle_timeout": float("inf")}, ValueError),
        ({"idle_timeout": True}, TypeError),
        ({"idle_timeout": "5"}, TypeError),
        ({"max_requests": 0}, ValueError),
        ({"max_requests": 1.5}, TypeError),
        ({"max_lifetime": 0}, ValueError),
        ({"keepalive": 5}, TypeError),
        # the documented ranges: seconds in (0, 1e9], max_requests in 1..2**29-1
        ({"idle_timeout": 1e9 + 1}, ValueError),
        ({"idle_timeout": 1e20}, ValueError),
        ({"idle_timeout": 1e306}, ValueError),
        ({"idle_timeout": 2**1030}, ValueError),
        ({"max_lifetime": 1e17}, ValueError),
        ({"max_lifetime": 1e306}, ValueError),
        ({"max_lifetime": 2**1030}, ValueError),
        ({"max_requests": 2**29}, ValueError),
        ({"max_requests": 2**70}, ValueError),
    ],
)
def test_bad_arguments(backend, kw, exc):
    with pytest.raises(exc, match=next(iter(kw))):
        backend.KeepaliveManager(**kw)


def test_range_boundaries_accepted(mgr_factory, listener):
    """The largest allowed values work, including a poll with such a connection."""
    m = mgr_factory(1e9, max_lifetime=10**9, max_requests=2**29 - 1)
    c, s = pair(listener)
    m.add(s)
    assert 1e9 - 5 < m.next_deadline() <= 1e9 + 0.001
    assert m.poll(0) == []
    m.touch(s)
    c.send(b"x")
    assert m.poll(2) == [(s, Event.READABLE)]
    m.remove(s)
    c.close()
    s.close()


@pytest.mark.parametrize("timeout", [1e9 + 1, 1e306, 2**1030, float("inf")])
def test_poll_timeout_beyond_range_waits_without_limit(mgr_factory, listener, timeout):
    """A timeout above 1e9 s behaves as None: it returns on the first event."""
    m = mgr_factory(None)
    c, s = pair(listener)
    m.add(s)
    c.send(b"x")
    assert m.poll(timeout) == [(s, Event.READABLE)]
    m.remove(s)
    c.close()
    s.close()


def test_poll_timeout_at_range_limit_returns_on_event(mgr_factory, listener):
    m = mgr_factory(None)
    c, s = pair(listener)
    m.add(s)
    c.send(b"x")
    assert m.poll(1e9) == [(s, Event.READABLE)]
    m.remove(s)
    c.close()
    s.close()


def test_bad_add_and_poll_arguments(mgr_factory):
    m = mgr_factory()
    with pytest.raises(TypeError):
        m.add("nope")
    with pytest.raises(ValueError):
        m.add(-1)
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError):
        m.add(s)
    with pytest.raises(ValueError, match="timeout"):
        m.poll(-1)
    with pytest.raises(TypeError, match="timeout"):
        m.poll("1")


def test_closed_manager(backend):
    m = backend.KeepaliveManager()
    with m:
        pass
    m.close()
    with pytest.raises(ValueError, match="closed manager"):
        m.poll(0)
    with pytest.raises(ValueError, match="closed manager"):
        m.fileno()
    assert len(m) == 0


@pytest.mark.netns
def test_timed_out_dead_peer(mgr_factory, dead_peer_link):
    m = mgr_factory(None)
    netns.pin_neighbours(dead_peer_link)
    client, server = dead_peer_link.connect()
    try:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 500)
        m.add(client)
        dead_peer_link.cut()
        client.send(b"x")
        deadline = time.monotonic() + 10
        got = []
        while not got and time.monotonic() < deadline:
            got = m.poll(1)
        assert got == [(client, Event.TIMED_OUT)]
    finally:
        client.close()
        server.close()


def test_touch_reaching_limit_wakes_blocked_poll(mgr_factory, listener):
    m = mgr_factory(None, max_requests=1)
    c, s = pair(listener)
    try:
        m.add(s)
        assert blocked_poll(m, lambda: m.touch(s)) == [[(s, Event.MAX_REQUESTS)]]
    finally:
        c.close()
        s.close()


def test_int_fd_closed_with_close2(mgr_factory, listener):
    m = mgr_factory(None, max_requests=1)
    c, s = pair(listener)
    fd = s.detach()
    try:
        m.add(fd)
        assert fd in m and s not in m
        m.touch(fd)
        assert m.poll(0) == [(fd, Event.MAX_REQUESTS)]
        c.settimeout(2)
        assert c.recv(1) == b""
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        c.close()


def test_keepalive_inherited_from_listener_is_kept(mgr_factory, backend, monkeypatch):
    cfg = KeepaliveConfig(idle=40, interval=7, count=4)
    lst = socket.create_server(("127.0.0.1", 0))
    backend.set_keepalive(lst, cfg)
    c = socket.create_connection(lst.getsockname())
    s, _ = lst.accept()
    try:
        if backend.name == "python":  # the fallback must not set what is already there
            from fastka import _keepalive_py

            def refuse(*a, **k):
                raise AssertionError("keepalive applied over an inherited config")

            monkeypatch.setattr(_keepalive_py, "apply", refuse)
        m = mgr_factory(keepalive=cfg)
        m.add(s)
        st = backend.get_keepalive(s)
        assert (st.enabled, st.idle, st.interval, st.count) == (True, 40, 7, 4)
    finally:
        c.close()
        s.close()
        lst.close()


def test_readable_without_fin_is_not_peeked(mgr_factory, listener):
    """EPOLLIN without EPOLLRDHUP/HUP/ERR is READABLE without a peek: a pipe (which recv()
    would reject with ENOTSOCK) and a listener with a pending connection are READABLE."""
    m = mgr_factory(None, close=False)
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        m.add(r)
        assert m.poll(2) == [(r, Event.READABLE)]
        m.remove(r)
        client = socket.create_connection(listener.getsockname())
        m.add(listener)
        assert m.poll(2) == [(listener, Event.READABLE)]
        m.remove(listener)
        client.close()
    finally:
        os.close(r)
        os.close(w)


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _jitter_run(cls, listener, seed):
    """Events of a seeded jitter run with a test clock: 40 connections, all added at
    once, touched once per simulated second; (connection index, event, second)."""
    clock = _Clock()
    m = cls(None, max_requests=20, max_lifetime=30.0, jitter=0.3, _random=random.Random(seed).random, close=False)
    m._set_clock(clock)
    pairs = [pair(listener) for _ in range(40)]
    index = {s: i for i, (_, s) in enumerate(pairs)}
    out = []
    try:
        for _, s in pairs:
            m.add(s)
        for second in range(1, 45):
            clock.t += 1.0
            for _, s in pairs:
                if s in m:
                    m.touch(s)
            out += [(index[s], ev.name, second) for s, ev in m.poll(0)]
        assert len(m) == 0
    finally:
        m.close()
        for c, s in pairs:
            c.close()
            s.close()
    return out


def test_jitter_spreads_lifetime_and_requests_the_same_on_both_backends(listener):
    """jitter spreads each connection's max_requests and max_lifetime within +-jitter,
    drawn once per connection at add(): for a seeded source both backends report the
    same events at the same times."""
    from fastka import _backends

    runs = []
    for name in _backends.NAMES:
        try:
            runs.append(_jitter_run(_backends.load(name).KeepaliveManager, listener, seed=3))
        except _backends.BackendUnavailable as exc:
            pytest.skip(str(exc))
    assert runs[0] == runs[1]
    events = runs[0]
    assert len(events) == 40 and len({i for i, _, _ in events}) == 40
    by_requests = [second for _, ev, second in events if ev == "MAX_REQUESTS"]
    by_lifetime = [second for _, ev, second in events if ev == "MAX_LIFETIME"]
    # max_requests 20 +-30%: 14..26 touches (one a second); max_lifetime 30 s +-30%: 21..39 s
    assert by_requests and all(14 <= s <= 26 for s in by_requests)
    assert all(21 <= s <= 39 for s in by_lifetime)
    assert len(set(by_requests)) > 3  # spread, not all at once


def test_jitter_zero_and_idle_timeout_never_spread(mgr_factory, listener):
    """jitter=0 (the default) draws nothing; idle_timeout is never spread."""
    calls = []

    def source():
        calls.append(1)
        return 0.999

    clock = _Clock()
    m = mgr_factory(2.0, jitter=0.5, _random=source, close=False)
    m._set_clock(clock)
    pairs = [pair(listener) for _ in range(3)]
    try:
        for _, s in pairs:
            m.add(s)
        assert calls == []  # no limit to spread: no draw
        clock.t += 2.002
        assert sorted(ev.name for _, ev in m.poll(0)) == ["IDLE"] * 3
        m2 = mgr_factory(None, max_requests=1, max_lifetime=5.0, jitter=0.5, _random=source, close=False)
        m2._set_clock(clock)
        m2.add(pairs[0][1])
        assert len(calls) == 2  # one draw per limit
        m2.touch(pairs[0][1])  # 1 * 1.4995 rounds to 1: at least 1, and never 0
        assert m2.poll(0) == [(pairs[0][1], Event.MAX_REQUESTS)]
        m3 = mgr_factory(None, max_requests=3, jitter=0.0, _random=source, close=False)
        m3.add(pairs[1][1])
        assert len(calls) == 2
    finally:
        for c, s in pairs:
            c.close()
            s.close()


@pytest.mark.parametrize(
    "jitter, exc",
    [(0.51, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (1, ValueError), ("0.1", TypeError), (True, TypeError), (None, TypeError)],
)
def test_jitter_bad_values(backend, jitter, exc):
    with pytest.raises(exc, match="jitter") as info:
        backend.KeepaliveManager(jitter=jitter)
    if exc is ValueError:
        assert repr(jitter) in str(info.value) and "0.5" in str(info.value)


def test_jitter_clamps_to_the_largest_limits(mgr_factory, listener):
    """A spread above the largest max_lifetime / max_requests is clamped, never an error."""
    from fastka import _manager

    m = mgr_factory(None, max_lifetime=_manager.MAX_TIMEOUT, max_requests=_manager.MAX_REQUESTS, jitter=0.5,
                    _random=lambda: 0.999999, close=False)
    c, s = pair(listener)
    try:
        m.add(s)
        assert 0 < m.next_deadline() <= _manager.MAX_TIMEOUT + 0.002
        m.remove(s)
    finally:
        c.close()
        s.close()


def test_signature_and_docstring_are_the_shared_ones(backend):
    """inspect.signature() and help() show the real constructor and its docstring on both
    backends, from the one place both take them (fastka._manager.settings)."""
    import inspect
    import pydoc

    from fastka import _manager

    cls = backend.KeepaliveManager
    sig = inspect.signature(cls)
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values())
    assert sig.parameters["idle_timeout"].default == 75.0 and sig.parameters["jitter"].default == 0.0
    assert sig == _manager.SIGNATURE and cls.__doc__ == _manager.DOC
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    flat = re.sub(r"\s+|\|", "", text)  # pydoc 3.13 and later break a long signature over lines
    assert "KeepaliveManager(idle_timeout" in flat and "jitter" in text and "Track many keep-alive" in text
    assert "see fastka/_manager_py.py" not in text and "*args,**kwargs)Track" not in flat
