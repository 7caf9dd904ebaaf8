"""The manager under careless use, each on both backends: re-init, close() racing add(), dup()-ed
sockets closed behind it, exceptions from user close(), the event-source fileno()."""
from __future__ import annotations

import asyncio
import os
import random
import resource
import select
import selectors
import socket
import struct
import sys
import threading
import time

import pytest

from conftest import pair
from fastka import Event, KeepaliveConfig


# -- careless callers: re-init, raising fileno(), dup()-ed sockets, close() racing add() ------


def test_reinit_of_an_open_manager_is_runtime_error(mgr_factory, tcp_pair):
    m = mgr_factory(None, close=False)
    m.add(tcp_pair[1])
    with pytest.raises(RuntimeError, match="already open"):
        m.__init__(5)
    assert tcp_pair[1] in m and len(m) == 1


class RaisingFileno:
    """Wraps a socket; fileno() raises once armed (as a broken wrapper would)."""

    def __init__(self, sock):
        self.sock = sock
        self.broken = False

    def fileno(self):
        if self.broken:
            raise RuntimeError("broken wrapper")
        return self.sock.fileno()

    def close(self):
        self.sock.close()


def test_fileno_raising_inside_poll_loses_no_events(mgr_factory, listener):
    m = mgr_factory(None, max_requests=1, close=False)
    c1, s1 = pair(listener)
    c2, s2 = pair(listener)
    try:
        w = RaisingFileno(s2)
        m.add(s1)
        m.add(w)
        m.touch(s1)
        c2.send(b"x")
        w.broken = True
        got = m.poll(1.0)
        assert got == [(s1, Event.MAX_REQUESTS)]  # w is treated as stale: dropped silently
        assert len(m) == 0
    finally:
        for s in (c1, s1, c2, s2):
            s.close()


class ClosesOther:
    """An object whose close() also closes (and removes) another tracked connection."""

    def __init__(self, sock, mgr):
        self.sock = sock
        self.mgr = mgr
        self.other = None

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        if self.other is not None and self.other in self.mgr:
            self.mgr.remove(self.other)
        self.sock.close()


def test_close_removing_another_limited_connection(mgr_factory, listener):
    m = mgr_factory(None, max_requests=1)
    c1, s1 = pair(listener)
    c2, s2 = pair(listener)
    try:
        a = ClosesOther(s1, m)
        a.other = s2
        m.add(a)
        m.add(s2)
        m.touch(a)
        m.touch(s2)
        got = m.poll(0)
        assert got == [(a, Event.MAX_REQUESTS)]
        assert len(m) == 0
    finally:
        for s in (c1, s1, c2, s2):
            s.close()


def test_unwatched_draining_beyond_64_all_reported(mgr_factory, listener):
    """watch_readable=False: every half-closed connection with unread data is re-checked."""
    m = mgr_factory(None, watch_readable=False, close=False)
    pairs = [pair(listener) for _ in range(80)]
    try:
        for c, s in pairs:
            m.add(s)
            c.sendall(b"data")
            c.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # the FINs are seen, the connections drain-wait (re-checked every 100 ms)
            assert m.poll(0.05) == []
        pairs.sort(key=lambda p: p[1].fileno())
        for c, s in pairs[64:]:  # the owner reads the highest fds' data: only their FIN is left
            assert s.recv(10) == b"data"
        got = []
        deadline = time.monotonic() + 3
        while len(got) < len(pairs) - 64 and time.monotonic() < deadline:
            got += m.poll(0.2)
        assert sorted(s.fileno() for s, _ in got) == sorted(s.fileno() for _, s in pairs[64:])
        assert {e for _, e in got} == {Event.PEER_CLOSED}
        assert len(m) == 64
    finally:
        for c, s in pairs:
            c.close()
            s.close()


def test_dup_closed_behind_the_manager_never_spins_nor_misreports(mgr_factory, listener):
    """A socket closed while a dup() keeps its file open: its epoll registration
    outlives the fd number. The manager must not spin on it, and a new socket that
    reuses the number must not get its events."""
    m = mgr_factory(None, close=False)
    c1, s1 = pair(listener)
    dup = s1.dup()
    c2 = s2 = None
    try:
        m.add(s1)
        fd = s1.fileno()
        s1.close()  # behind the manager's back; the file lives on in `dup`
        c2, s2 = pair(listener)  # the lowest free number: the client end reuses fd
        new, peer = (c2, s2) if c2.fileno() == fd else (s2, c2)
        assert new.fileno() == fd
        m.add(new)
        c1.sendall(b"unread")  # level-triggered readiness of the old file, never consumed
        t0 = time.process_time()
        w0 = time.monotonic()
        got = m.poll(0.5)
        cpu = time.process_time() - t0
        assert got == [], "the old file's readiness was reported for the new socket"
        assert time.monotonic() - w0 >= 0.45
        assert cpu < 0.2, f"poll(0.5) burned {cpu:.2f} s of CPU on a stale registration"
        c1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c1.close()  # RST to the old file
        c1 = None
        assert m.poll(0.3) == []
        assert new in m and new.fileno() == fd
        peer.send(b"hello")
        assert m.poll(1.0) == [(new, Event.READABLE)]
    finally:
        for s in (c1, s1, c2, s2, dup):
            if s is not None:
                s.close()


def test_dup_closed_behind_the_manager_unused_number(mgr_factory, listener):
    """The same without reuse: no slot owns the readiness; poll sleeps, never spins."""
    m = mgr_factory(None, close=False)
    c1, s1 = pair(listener)
    dup = s1.dup()
    try:
        m.add(s1)
        s1.close()
        c1.sendall(b"unread")
        t0 = time.process_time()
        assert m.poll(0.5) == []
        assert time.process_time() - t0 < 0.2
        assert len(m) == 0
    finally:
        for s in (c1, s1, dup):
            s.close()


HIGH_FD = min(15000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1)


def _closer_racing_adder(backend, rounds):
    """Thread A adds a low-fd socket while the main thread closes the manager (which
    tracks a high fd) and makes a new one."""
    listener = socket.create_server(("127.0.0.1", 0))
    c, s = pair(listener)
    hc, hs = pair(listener)
    high = os.dup2(hs.fileno(), HIGH_FD)
    hsock = socket.socket(fileno=high)
    hs.close()
    errors = []
    stray = 0
    try:
        for _ in range(rounds):
            m = backend.KeepaliveManager(None, close=False)
            m.add(hsock)
            go = threading.Event()

            def adder():
                go.wait()
                try:
                    m.add(s)
                except ValueError:
                    pass  # closed manager: the documented error
                except BaseException as exc:
                    errors.append(exc)

            t = threading.Thread(target=adder)
            t.start()
            go.set()
            time.sleep(random.random() * 2e-4)
            m.close()
            m2 = backend.KeepaliveManager(None, close=False)
            t.join(5)
            c.send(b"x")
            select.select([s], [], [], 5)  # the byte has arrived: a socket in m2's set is ready now
            if m2.poll(0):
                stray += 1
            s.recv(10)
            m2.close()
            m.close()
    finally:
        for x in (c, s, hc, hsock, listener):
            x.close()
    return errors, stray


def test_close_racing_add_from_another_thread(backend):
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        errors, stray = _closer_racing_adder(backend, 300)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    assert stray == 0, f"{stray} sockets landed in a new manager's epoll set"


def test_closed_manager_is_unusable_everywhere(backend, tcp_pair):
    m = backend.KeepaliveManager(None)
    m.close()
    for call in (lambda: m.add(tcp_pair[1]), lambda: m.poll(0), lambda: m.touch(tcp_pair[1]),
                 lambda: m.remove(tcp_pair[1]), m.fileno, m.next_deadline):
        with pytest.raises(ValueError, match="closed manager"):
            call()
    m.discard(tcp_pair[1])  # never an error
    assert len(m) == 0 and tcp_pair[1] not in m


# -- the manager as an event source, discard, what close=True can close ---------------------


def _wait_readable(fd, timeout):
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def test_fileno_readable_when_idle_deadline_passes(mgr_factory, tcp_pair):
    m = mgr_factory(0.2, close=False)
    m.add(tcp_pair[1])
    assert not _wait_readable(m.fileno(), 0.05)
    start = time.monotonic()
    assert _wait_readable(m.fileno(), 2.0), "fileno() never became readable for an IDLE expiry"
    assert time.monotonic() - start >= 0.1
    assert m.poll(0) == [(tcp_pair[1], Event.IDLE)]
    assert not _wait_readable(m.fileno(), 0.05)


def test_fileno_readable_when_max_requests_queued(mgr_factory, tcp_pair):
    m = mgr_factory(None, max_requests=2, close=False)
    m.add(tcp_pair[1])
    m.touch(tcp_pair[1])
    assert not _wait_readable(m.fileno(), 0.05)
    m.touch(tcp_pair[1])
    assert _wait_readable(m.fileno(), 0.5), "fileno() not readable with a MAX_REQUESTS queued"
    assert m.poll(0) == [(tcp_pair[1], Event.MAX_REQUESTS)]
    assert not _wait_readable(m.fileno(), 0.05)


def test_fileno_readable_for_io(mgr_factory, tcp_pair):
    m = mgr_factory(None, close=False)
    m.add(tcp_pair[1])
    assert not _wait_readable(m.fileno(), 0.05)
    tcp_pair[0].send(b"x")
    assert _wait_readable(m.fileno(), 1.0)
    assert m.poll(0) == [(tcp_pair[1], Event.READABLE)]


def test_fileno_readable_for_deadline_moved_earlier_by_add(mgr_factory, listener):
    m = mgr_factory(0.3, max_lifetime=5, close=False)
    c1, s1 = pair(listener)
    try:
        assert not _wait_readable(m.fileno(), 0.05)
        m.add(s1)  # empty -> one deadline 0.3 s away
        assert _wait_readable(m.fileno(), 2.0)
        assert m.poll(0) == [(s1, Event.IDLE)]
    finally:
        c1.close()
        s1.close()


def test_discard(mgr_factory, tcp_pair):
    m = mgr_factory(None, close=False)
    s = tcp_pair[1]
    m.discard(s)  # unknown: fine
    m.add(s)
    m.discard(s)
    assert s not in m and len(m) == 0 and s.fileno() >= 0
    m.discard(s)
    m.discard(12345678)
    with pytest.raises(KeyError):
        m.remove(s)
    with pytest.raises(TypeError):
        m.discard("nope")


class NoClose:
    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()


def test_close_true_refuses_objects_it_cannot_close(mgr_factory, tcp_pair):
    m = mgr_factory(None)
    with pytest.raises(TypeError, match="close=False"):
        m.add(NoClose(tcp_pair[1]))
    assert len(m) == 0
    m2 = mgr_factory(None, close=False)
    m2.add(NoClose(tcp_pair[1]))
    assert len(m2) == 1


class BadClose:
    def __init__(self, sock, exc):
        self.sock = sock
        self.exc = exc

    def fileno(self):
        return self.sock.fileno()

    def shutdown(self, how):
        raise self.exc

    def close(self):
        self.sock.close()
        raise self.exc


@pytest.mark.parametrize("exc", [TypeError("no"), RuntimeError("boom"), OSError(9, "EBADF")])
def test_exception_from_close_never_escapes_poll(mgr_factory, listener, exc):
    m = mgr_factory(0.05)
    c1, s1 = pair(listener)
    c2, s2 = pair(listener)
    try:
        b = BadClose(s1, exc)
        m.add(b)
        m.add(s2)
        time.sleep(0.1)
        got = m.poll(0)
        assert (b, Event.IDLE) in got and (s2, Event.IDLE) in got
        assert len(m) == 0
    finally:
        for s in (c1, s1, c2, s2):
            s.close()


def test_the_c_slot_holds_the_largest_max_requests():
    """FK_MAX_REQUESTS (the C slot's 29-bit count) is the shared limit."""
    from fastka import _backends, _manager

    try:
        manager = _backends.load("c").manager
    except _backends.BackendUnavailable as exc:
        pytest.skip(str(exc))
    if not hasattr(manager, "MAX_REQUESTS_C"):
        pytest.skip("the compiled manager is not built on this platform")
    assert manager.MAX_REQUESTS_C == _manager.MAX_REQUESTS


# -- the manager under asyncio's loop and uvloop, fed transport sockets ---------------


def _loops():
    loops = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        loops.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip(reason="uvloop is not installed")))
    else:
        loops.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return loops


async def _transport_scenario(backend, n):
    """n connections whose transport sockets a close=False manager watches; every IDLE
    expiry is reported through poll() and closed by the loop's own transport.close()."""
    loop = asyncio.get_running_loop()
    mgr = backend.KeepaliveManager(0.2, close=False, watch_readable=False)
    transports = {}
    reported = []
    accepted = asyncio.Event()

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            with pytest.raises(TypeError, match="close=False"):
                closing.add(sock)  # the loop owns this fd: a closing manager refuses it
            transports[sock] = transport
            mgr.add(sock)
            if len(transports) == n:
                accepted.set()

    def reap():
        for sock, event in mgr.poll(0):
            reported.append(event)
            transports.pop(sock).close()

    closing = backend.KeepaliveManager(0.2)
    server = await loop.create_server(Proto, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop.add_reader(mgr.fileno(), reap)
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    try:
        await asyncio.wait_for(accepted.wait(), 5)
        for r, _ in clients:  # every client sees EOF: closed by the transport, with a FIN
            assert await asyncio.wait_for(r.read(), 5) == b""
        assert reported == [Event.IDLE] * n
        assert len(mgr) == 0
    finally:
        loop.remove_reader(mgr.fileno())
        for _, w in clients:
            w.close()
        server.close()
        await server.wait_closed()
        mgr.close()
        closing.close()


@pytest.fixture(scope="module")
def loops_warmed():
    """uvloop keeps a pipe open for the process from its first loop on: open it before
    the per-test fd-leak check."""
    for param in _loops():
        if param.values[0] is not None:
            param.values[0]().close()


@pytest.mark.parametrize("new_loop", _loops())
def test_transport_sockets_under_event_loops(loops_warmed, backend, new_loop):
    loop = new_loop()
    try:
        loop.run_until_complete(_transport_scenario(backend, 20))
    finally:
        loop.close()


def test_keepalive_on_a_unix_socket_same_error_on_both_backends():
    """The manager applies keepalive through set_keepalive's plan on both backends, so a
    socket that refuses it fails with the same error, naming the same option."""
    from fastka import _backends

    msgs = []
    for name in _backends.NAMES:
        try:
            backend = _backends.load(name)
        except _backends.BackendUnavailable as exc:
            pytest.skip(str(exc))
        m = backend.KeepaliveManager(None, keepalive=KeepaliveConfig(user_timeout=2.007))
        u, other = socket.socketpair()  # a stream socket that refuses TCP options
        try:
            with pytest.raises(OSError) as info:
                m.add(u)
            msgs.append((info.value.errno, str(info.value).replace(f"fd {u.fileno()}", "fd N")))
            with pytest.raises(OSError) as direct:
                backend.set_keepalive(u, KeepaliveConfig(user_timeout=2.007))
            assert str(direct.value) == str(info.value)
            assert len(m) == 0
        finally:
            u.close()
            other.close()
            m.close()
    assert msgs[0] == msgs[1]


def test_closed_on_expiry_while_a_dup_lives(mgr_factory, listener):
    """The compiled manager lets close() take an expired socket out of epoll (no
    EPOLL_CTL_DEL); with a dup() alive the registration stays, and its readiness must
    neither spin nor reach the socket that reuses the number."""
    m = mgr_factory(0.05)
    c1, s1 = pair(listener)
    dup = s1.dup()
    c2 = s2 = None
    try:
        m.add(s1)
        fd = s1.fileno()
        time.sleep(0.1)
        assert m.poll(0) == [(s1, Event.IDLE)] and s1.fileno() == -1
        c2, s2 = pair(listener)
        new, peer = (c2, s2) if c2.fileno() == fd else (s2, c2)
        m.add(new)
        c1.sendall(b"to the old file")
        t0 = time.process_time()
        assert m.poll(0.02) == []
        assert time.process_time() - t0 < 0.1
        peer.send(b"x")
        assert m.poll(1.0) == [(new, Event.READABLE)]
    finally:
        for s in (c1, s1, c2, s2, dup):
            if s is not None:
                s.close()


@pytest.mark.slow
def test_half_closed_with_unread_data_does_not_spin(mgr_factory, listener):
    """watch_readable=False: the peer sent data and FIN, nobody reads, and our side
    half-closes. Both directions are shut, so epoll reports a hang-up it cannot mute: the
    manager must not wake for it again and again (it re-checks on the drain timer)."""
    m = mgr_factory(None, watch_readable=False, close=False)
    c, s = pair(listener)
    try:
        m.add(s)
        c.sendall(b"unread")
        c.shutdown(socket.SHUT_WR)
        assert m.poll(0.2) == []  # the FIN is seen: the connection waits for its reader
        s.shutdown(socket.SHUT_WR)
        t0 = time.process_time()
        assert m.poll(0.5) == []
        assert time.process_time() - t0 < 0.15  # a spin costs ~0.5 s of CPU here
        wakes = 0  # nested in a selector: the event-source fd stays quiet too
        with selectors.DefaultSelector() as sel:
            sel.register(m.fileno(), selectors.EVENT_READ)
            t0 = time.process_time()
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                if sel.select(end - time.monotonic()):
                    wakes += 1
                    assert m.poll(0) == []
        assert time.process_time() - t0 < 0.15 and wakes < 50
        assert s.recv(100) == b"unread"  # the reader comes: the FIN is reported
        assert m.poll(2.0) == [(s, Event.PEER_CLOSED)]
    finally:
        c.close()
        s.close()


def test_reset_while_waiting_for_the_reader_is_reported(mgr_factory, listener):
    """A connection waiting for its reader (FIN behind unread data, out of the epoll set)
    still reports a reset from its peer, on the drain timer."""
    m = mgr_factory(None, watch_readable=False, close=False)
    c, s = pair(listener)
    try:
        m.add(s)
        c.sendall(b"unread")
        c.shutdown(socket.SHUT_WR)
        assert m.poll(0.2) == []
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # with linger 0: an RST
        assert m.poll(2.0) == [(s, Event.RESET)]
    finally:
        c.close()
        s.close()


def test_add_again_after_a_close_that_left_the_fd_open(mgr_factory, listener):
    """An IDLE close() while a makefile() holds the socket leaves its fd open: the socket
    can be added again, and is tracked as new."""
    m = mgr_factory(0.05)
    c, s = pair(listener)
    f = s.makefile("rb")
    try:
        m.add(s)
        time.sleep(0.1)
        assert m.poll(1.0) == [(s, Event.IDLE)]
        assert s.fileno() >= 0  # close() was deferred by the open file
        m.add(s)
        assert s in m and len(m) == 1
        c.sendall(b"x")
        assert m.poll(1.0) == [(s, Event.READABLE)]
        m.remove(s)
    finally:
        f.close()
        c.close()
        s.close()


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_add_refuses_a_socket_that_is_not_a_stream(mgr_factory, kind):
    """A datagram (or seqpacket) socket has no connection to keep alive and no FIN to
    report: add() refuses it as the reaper does, as a socket or as its int fd."""
    m = mgr_factory(None, close=False)
    family = socket.AF_INET if kind == socket.SOCK_DGRAM else socket.AF_UNIX
    u = socket.socket(family, kind)
    try:
        for arg in (u, u.fileno()):
            with pytest.raises(TypeError, match="stream"):
                m.add(arg)
        assert len(m) == 0
    finally:
        u.close()


@pytest.mark.parametrize("field", ["idle_timeout", "max_lifetime"])
def test_longest_timeouts_never_overflow_the_wait(mgr_factory, tcp_pair, field):
    """The largest timeouts (1e9 s) wait in slices the poller accepts."""
    c, s = tcp_pair
    m = mgr_factory(**{field: 1e9}) if field == "max_lifetime" else mgr_factory(1e9)
    m.add(s)
    assert m.poll(0.05) == []
    assert 0 < m.next_deadline() <= 1e9
    c.sendall(b"x")
    assert m.poll(1.0) == [(s, Event.READABLE)]
    m.remove(s)


class ReplacesOther:
    """An object whose close() removes another tracked connection, closes it, and adds a
    new socket that gets the freed fd number: the manager's own view of that number
    changes in the middle of a poll."""

    def __init__(self, sock, mgr, other):
        self.sock, self.mgr, self.other = sock, mgr, other
        self.new = []

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        fd = self.other.fileno()
        self.mgr.remove(self.other)
        self.other.close()
        a, b = socket.socketpair()
        self.new += [a, b]
        if a.fileno() == fd:
            self.mgr.add(a)
        self.sock.close()


def test_a_number_reused_mid_poll_is_not_taken_for_the_old_connection(mgr_factory, listener):
    """A draining connection (FIN behind unread data) is replaced mid-poll by a new socket
    under the same number: the new one gets none of the old one's re-check (a quiet new
    socket is neither PEER_CLOSED nor muted)."""
    m = mgr_factory(None, max_requests=1, watch_readable=False)
    c1, s1 = pair(listener)
    c2, s2 = pair(listener)
    a = None
    try:
        m.add(s2)
        c2.sendall(b"unread")
        c2.shutdown(socket.SHUT_WR)
        assert m.poll(0.3) == []  # s2 now waits for its reader, out of the epoll set
        a = ReplacesOther(s1, m, s2)
        m.add(a)
        m.touch(a)
        assert m.poll(0.3) == [(a, Event.MAX_REQUESTS)]
        new = [s for s in a.new if s in m]
        assert len(new) == 1 and len(m) == 1
        assert m.poll(0.3) == []  # quiet: nothing to report
        other = a.new[1]
        other.close()  # its peer closes now: reported, so it is watched
        assert m.poll(2.0) == [(new[0], Event.PEER_CLOSED)]
    finally:
        for s in (c1, s1, c2, s2) + tuple(a.new if a else ()):
            s.close()
