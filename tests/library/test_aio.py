"""fastka.aio.KeepaliveReaper on asyncio's loop and on uvloop, over both backends, with
real loopback connections: idle closes at idle_timeout (never before), a FIN right after
the request that reaches max_requests, busy clients left alone, dead peers aborted, no
loop error logged and no fd closed behind the loop."""
from __future__ import annotations

import asyncio
import io
import random
import socket
import struct
import time

import pytest
from aio_helpers import CLOCK_GRAIN, loop_kind, run  # noqa: F401  (loop_kind is a fixture)
from conftest import BACKENDS, Backend

import fastka.aio
from fastka import Event, KeepaliveConfig, _jitter, get_keepalive
from fastka.aio import KeepaliveReaper

RESPONSE = b"ok\n"


# (backend, loop, mode) combinations: every backend on every loop, and each mode on each
# loop and each backend. "reader": the manager's fd is a loop reader; "timer": a manager
# whose fileno() is unsupported, as the fallback's select/poll selectors are, so that one
# timer drives the reaper.
COMBOS = (
    ("c", "asyncio", "reader"),
    ("python", "uvloop", "reader"),
    ("c", "uvloop", "timer"),
    ("python", "asyncio", "timer"),
)


class Combo:
    """One combination: ``loop_kind`` for run(), ``backend`` for ``KeepaliveReaper(_backend=...)``."""

    def __init__(self, loop_kind: str, backend) -> None:
        self.loop_kind = loop_kind
        self.backend = backend


@pytest.fixture(params=COMBOS, ids=["-".join(c) for c in COMBOS])
def combo(request, monkeypatch) -> Combo:
    name, loop_kind, mode = request.param
    if loop_kind == "uvloop":
        pytest.importorskip("uvloop")
    real = Backend(name).load()
    if mode == "reader":
        return Combo(loop_kind, real)
    monkeypatch.setattr(fastka.aio, "IO_CHECK", 0.1)  # resets and peer closes noticed sooner: a faster test
    return Combo(loop_kind, _without_fd(real))


def _without_fd(real):
    class NoFdManager(real.KeepaliveManager):
        def fileno(self):
            raise io.UnsupportedOperation("no fd to nest (as select and poll selectors)")

    class NoFdBackend:
        name = real.name
        KeepaliveManager = NoFdManager

    return NoFdBackend()


class Spy:
    """A transport stand-in that records close()/abort() and forwards to the real one."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.calls = []

    def get_extra_info(self, name, default=None):
        return self.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self) -> None:
        self.calls.append("close")
        self.transport.close()

    def abort(self) -> None:
        self.calls.append("abort")
        self.transport.abort()


class Server:
    """A line server on 127.0.0.1: each b"\\n"-terminated request gets RESPONSE, then the
    reaper is touched (``response``: another answer). ``pause`` leaves reading paused (only the reaper watches)."""

    def __init__(self, reaper: KeepaliveReaper, pause: bool = False, spy: bool = False, discard: bool = True, response: bytes = RESPONSE) -> None:
        self.reaper = reaper
        self.response = response
        self.discard = discard
        self.pause = pause
        self.spy = spy
        self.transports = []  # what was added to the reaper, in connection order
        self.lost = []  # (transport, exc) from connection_lost
        self.added_at = {}  # transport -> time.monotonic() it was added to the reaper
        self.answered_at = {}  # transport -> time.monotonic() of its last response
        self.lost_at = {}  # transport -> time.monotonic() of connection_lost (asyncio closes the socket right after)
        self.fds = []
        self.server = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Line(self), "127.0.0.1", 0, backlog=1024)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def finish(self, lost: "int | None" = None) -> None:
        """The end of a test: once ``lost`` connections have ended (when given), stop
        listening and close the reaper."""
        if lost is not None:
            await until(lambda: len(self.lost) == lost)
        await self.stop()
        self.reaper.close()


class _Line(asyncio.Protocol):
    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.real = transport
        self.transport = Spy(transport) if self.srv.spy else transport
        self.srv.transports.append(self.transport)
        self.srv.fds.append(transport.get_extra_info("socket").fileno())
        self.srv.added_at[self.transport] = time.monotonic()
        self.srv.reaper.add(self.transport)
        if self.srv.pause:  # after connection_made: uvloop starts reading once it returns
            asyncio.get_running_loop().call_soon(transport.pause_reading)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            _, self.buf = self.buf.split(b"\n", 1)
            self.real.write(self.srv.response)
            self.srv.reaper.touch(self.transport)
            self.srv.answered_at[self.transport] = time.monotonic()

    def connection_lost(self, exc) -> None:
        self.srv.lost_at[self.transport] = time.monotonic()
        self.srv.lost.append((self.transport, exc))
        if self.srv.discard:
            self.srv.reaper.discard(self.transport)


async def request(reader, writer) -> float:
    """Send one request, read its response; the time the request was sent."""
    sent = time.monotonic()
    writer.write(b"req\n")
    assert await reader.readexactly(len(RESPONSE)) == RESPONSE
    return sent


async def wait_for_eof(reader, timeout: float) -> float:
    assert await asyncio.wait_for(reader.read(100), timeout) == b""
    return time.monotonic()


async def until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


async def close_all(writers) -> None:
    for w in writers:
        w.close()
    for w in writers:
        try:
            await w.wait_closed()
        except (ConnectionError, OSError):
            pass


# -- idle, limits and dead peers on real connections ------------------------------------


@pytest.mark.slow
def test_thousand_idle_connections_close_at_idle_timeout(combo):
    """Never before idle_timeout after the request was sent (the client's clock), and the
    p99 close within idle_timeout + 100 ms of the response (the server's clock: the
    server closes the socket right after connection_lost, so the clients' own wake-ups on
    a busy loop do not count)."""
    idle = 0.5
    n = 1000
    events = []

    async def main():
        reaper = KeepaliveReaper(idle, on_event=lambda t, e: events.append(e), _backend=combo.backend)
        srv = Server(reaper)
        port = await srv.start()

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                sent = await request(reader, writer)
                return await wait_for_eof(reader, idle + 5) - sent
            finally:
                writer.close()

        since_sent = []
        for start in range(0, n, 250):  # within the listen backlog
            since_sent += await asyncio.gather(*(client() for _ in range(start, min(n, start + 250))))
        await until(lambda: len(srv.lost) == n)
        await srv.stop()
        assert len(reaper) == 0
        reaper.close()
        return srv, since_sent

    srv, since_sent = run(combo.loop_kind, main)
    since_sent.sort()
    since_answer = sorted(srv.lost_at[t] - srv.answered_at[t] for t in srv.transports)
    assert since_sent[0] >= idle - CLOCK_GRAIN, f"closed {idle - since_sent[0]:.4f} s before idle_timeout"
    p99 = since_answer[int(len(since_answer) * 0.99) - 1]
    assert p99 <= idle + 0.1, f"p99 close {p99:.3f} s after the response, idle_timeout {idle}"
    assert events == [Event.IDLE] * n
    assert all(exc is None for _, exc in srv.lost)


def test_request_reaching_max_requests_gets_fin_right_after_response(combo):
    async def main():
        reaper = KeepaliveReaper(30.0, max_requests=3, _backend=combo.backend)
        srv = Server(reaper, spy=True)
        port = await srv.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            await request(reader, writer)
        answered = time.monotonic()
        eof = await wait_for_eof(reader, 5)
        writer.close()
        await srv.finish(1)
        return eof - answered, srv

    delay, srv = run(combo.loop_kind, main)
    assert delay <= 0.05, f"FIN {delay * 1000:.1f} ms after the last response"
    assert srv.transports[0].calls == ["close"]


def test_pipelined_requests_are_flushed_before_the_fin(combo):
    async def main():
        reaper = KeepaliveReaper(30.0, max_requests=2, _backend=combo.backend)
        srv = Server(reaper)
        port = await srv.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a\nb\nc\n")  # the third is past the limit: answered, then closed
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await srv.finish(1)
        return data

    assert run(combo.loop_kind, main) == RESPONSE * 3


@pytest.mark.slow
def test_client_sending_every_half_idle_timeout_is_never_closed(combo):
    idle = 0.3

    async def main():
        reaper = KeepaliveReaper(idle, _backend=combo.backend)
        srv = Server(reaper)
        port = await srv.start()
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        quiet_r, quiet_w = await asyncio.open_connection("127.0.0.1", port)
        await request(quiet_r, quiet_w)
        end = time.monotonic() + 3 * idle
        while time.monotonic() < end:
            await request(busy_r, busy_w)
            await asyncio.sleep(idle / 2)
        assert await asyncio.wait_for(quiet_r.read(10), 1) == b""  # the quiet one was reaped
        assert not busy_r.at_eof() and srv.lost and len(reaper) == 1
        assert srv.transports[0] in reaper and srv.transports[1] not in reaper
        await close_all([busy_w, quiet_w])
        await srv.finish(2)

    run(combo.loop_kind, main)


def test_max_lifetime_closes_a_busy_connection(combo):
    events = []

    async def main():
        reaper = KeepaliveReaper(5.0, max_lifetime=0.3, on_event=lambda t, e: events.append(e), _backend=combo.backend)
        srv = Server(reaper, spy=True)
        port = await srv.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        born = time.monotonic()
        try:
            while not reader.at_eof() and time.monotonic() - born < 3:
                writer.write(b"x\n")
                await asyncio.sleep(0.05)
                await reader.read(100)
        except ConnectionResetError:
            pass  # a request written after the FIN crossed it: the server's kernel answers RST
        lived = time.monotonic() - born
        writer.close()
        await srv.finish(1)
        return lived, srv

    lived, srv = run(combo.loop_kind, main)
    t = srv.transports[0]
    # never before max_lifetime on the server's clock (the client's starts after the add)
    assert srv.lost_at[t] - srv.added_at[t] >= 0.3 - CLOCK_GRAIN
    assert lived < 1.0
    assert events == [Event.MAX_LIFETIME] and t.calls == ["close"]


@pytest.mark.parametrize("limits", [{"idle_timeout": 0.1}, {"idle_timeout": None, "max_lifetime": 0.1}], ids=["idle", "lifetime"])
def test_peer_that_stops_reading_is_aborted_drain_timeout_after_a_graceful_close(combo, limits):
    """A client asks for a response far larger than the socket buffers, then reads nothing:
    close() alone would wait for ever to flush it. drain_timeout after the close the
    transport is aborted (the client sees a reset, not an EOF) and its socket closed."""
    drain = 0.2
    events = []

    async def main():
        reaper = KeepaliveReaper(**limits, drain_timeout=drain, on_event=lambda t, e: events.append(e), _backend=combo.backend)
        srv = Server(reaper, spy=True, response=b"x" * 20_000_000)
        port = await srv.start()
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            client.sendall(b"big\n")
            await until(lambda: len(srv.transports) == 1 and srv.transports[0].calls == ["close"])
            closed = time.monotonic()
            assert srv.transports[0].get_write_buffer_size() > 0  # the close is still flushing
            await until(lambda: len(srv.lost) == 1, timeout=drain + 10)
            lost = time.monotonic() - closed
            with pytest.raises(ConnectionResetError):
                while client.recv(1 << 20):
                    pass
        finally:
            client.close()
        await srv.finish()
        return lost, srv

    lost, srv = run(combo.loop_kind, main)
    assert srv.transports[0].calls == ["close", "abort"]
    assert drain - 0.05 <= lost <= drain + 3.0, f"aborted {lost:.3f} s after the close, drain_timeout {drain}"
    assert len(events) == 1 and events[0] in (Event.IDLE, Event.MAX_LIFETIME)


def test_graceful_close_that_drains_in_time_is_not_aborted(combo):
    """A large last response to a client that reads it all: flushed, then FIN, no abort."""

    async def main():
        reaper = KeepaliveReaper(30.0, max_requests=1, drain_timeout=5.0, _backend=combo.backend)
        srv = Server(reaper, spy=True, response=b"y" * 5_000_000)
        port = await srv.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"big\n")
        data = await asyncio.wait_for(reader.read(), 10)
        await close_all([writer])
        await srv.finish(1)
        return len(data), srv

    size, srv = run(combo.loop_kind, main)
    assert size == 5_000_000 and srv.transports[0].calls == ["close"]


def test_jitter_spreads_max_requests_identically_on_both_backends(loop_kind):
    """jitter=0.5 with a seeded random source: each connection, added in turn, gets its own
    max_requests by the one jitter rule, the same on both backends."""
    limit, jitter, seed, n = 8, 0.5, 20261202, 6

    async def served(name):
        reaper = KeepaliveReaper(30.0, max_requests=limit, jitter=jitter, _random=random.Random(seed).random, _backend=Backend(name).load())
        srv = Server(reaper)
        port = await srv.start()
        counts = []
        for _ in range(n):  # one connection at a time: the draws follow the adds
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answered = 0
            while True:
                writer.write(b"req\n")
                try:
                    data = await asyncio.wait_for(reader.read(len(RESPONSE)), 5)
                except ConnectionResetError:  # this request reached a socket already closed
                    break
                if not data:
                    break
                answered += 1
                await asyncio.wait_for(_rest(reader, data), 5)
            counts.append(answered)
            await close_all([writer])
        await srv.finish(n)
        return counts

    async def main():
        return [await served(name) for name in BACKENDS]

    draw = random.Random(seed).random
    expected = [_jitter.count(limit, jitter, draw) for _ in range(n)]
    assert len(set(expected)) > 1  # the seed spreads them
    assert run(loop_kind, main) == [expected] * len(BACKENDS)


async def _rest(reader, data: bytes) -> None:
    if len(data) < len(RESPONSE):
        assert data + await reader.readexactly(len(RESPONSE) - len(data)) == RESPONSE


def test_dead_peer_reset_goes_through_abort(combo):
    events = []

    async def main():
        reaper = KeepaliveReaper(30.0, on_event=lambda t, e: events.append((t, e)), _backend=combo.backend)
        srv = Server(reaper, pause=True, spy=True)  # asyncio does not read: only the reaper sees the RST
        port = await srv.start()
        client = socket.create_connection(("127.0.0.1", port))
        await until(lambda: len(srv.transports) == 1 and not srv.transports[0].transport.is_reading())
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        await srv.finish(1)
        return srv

    srv = run(combo.loop_kind, main)
    assert events == [(srv.transports[0], Event.RESET)]
    assert srv.transports[0].calls == ["abort"]


def test_peer_close_is_reported_and_left_to_asyncio(combo):
    events = []

    async def main():
        reaper = KeepaliveReaper(30.0, on_event=lambda t, e: events.append(e), _backend=combo.backend)
        srv = Server(reaper, pause=True, spy=True)
        port = await srv.start()
        client = socket.create_connection(("127.0.0.1", port))
        await until(lambda: len(srv.transports) == 1 and not srv.transports[0].transport.is_reading())
        client.close()  # FIN, nothing unread
        await until(lambda: events != [])
        assert srv.transports[0].calls == [] and len(reaper) == 0
        srv.transports[0].transport.close()
        await srv.finish(1)

    run(combo.loop_kind, main)
    assert events == [Event.PEER_CLOSED]


@pytest.mark.slow
def test_fd_numbers_reused_after_reaping_serve_normally(combo):
    """Nothing is closed behind the loop: every transport closes its own socket
    (connection_lost without error), and new connections on the same fd numbers work."""

    async def main():
        reaper = KeepaliveReaper(0.3, _backend=combo.backend)
        srv = Server(reaper)
        port = await srv.start()
        for round_ in range(3):
            pairs = []
            for _ in range(20):  # each asks at once: its idle clock starts when it is accepted
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await request(reader, writer)
                pairs.append((reader, writer))
            for reader, writer in pairs:
                await wait_for_eof(reader, 2)
            await until(lambda: len(srv.lost) == 20 * (round_ + 1))
            await close_all([w for _, w in pairs])
        await srv.finish()
        return srv

    srv = run(combo.loop_kind, main)
    assert all(exc is None for _, exc in srv.lost)
    assert set(srv.fds[:20]) & set(srv.fds[20:])  # the later rounds reused fd numbers


def test_transport_closed_by_its_owner_without_discard_is_forgotten(combo):
    events = []

    async def main():
        reaper = KeepaliveReaper(0.2, on_event=lambda t, e: events.append(e), _backend=combo.backend)
        srv = Server(reaper, discard=False)  # an owner that forgets to discard
        port = await srv.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await request(reader, writer)
        later = socket.socket()  # made now, so the next free fd number is the server's
        later.setblocking(False)
        srv.transports[0].close()
        await wait_for_eof(reader, 2)
        await until(lambda: len(srv.lost) == 1)
        await asyncio.get_running_loop().sock_connect(later, ("127.0.0.1", port))
        reader2, writer2 = await asyncio.open_connection(sock=later)
        await until(lambda: len(srv.transports) == 2)
        # the same fd number came back for the next connection and is tracked afresh
        assert srv.fds[1] == srv.fds[0] and len(reaper) == 1 and srv.transports[1] in reaper
        await wait_for_eof(reader2, 2)
        await close_all([writer, writer2])
        await srv.finish(2)

    run(combo.loop_kind, main)
    assert events == [Event.IDLE]


def test_transports_closed_without_discard_are_swept_with_no_deadline(combo):
    """No idle_timeout, no max_lifetime: a transport its owner closed without discard()
    has no deadline, yet the next reap (here: a MAX_REQUESTS) and the next add() drop it
    (before: it stayed tracked, with its protocol, until the reaper closed)."""
    events = []

    async def main():
        reaper = KeepaliveReaper(None, max_requests=1, on_event=lambda t, e: events.append(e), _backend=combo.backend)
        srv = Server(reaper, discard=False)
        port = await srv.start()
        pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        await until(lambda: len(srv.transports) == 5)
        for t in srv.transports[:3]:
            t.close()
        await until(lambda: len(srv.lost) == 3)
        holders = [socket.socket() for _ in range(3)]  # the freed fd numbers stay taken
        await request(*pairs[4])  # its only request: MAX_REQUESTS, a reap
        await wait_for_eof(pairs[4][0], 5)
        assert len(reaper) == 1 and srv.transports[3] in reaper
        srv.transports[3].close()
        await until(lambda: len(srv.lost) == 5)
        holders += [socket.socket() for _ in range(2)]  # so do transport 3's and 4's
        pairs.append(await asyncio.open_connection("127.0.0.1", port))
        await until(lambda: len(srv.transports) == 6)
        assert len(reaper) == 1 and srv.transports[5] in reaper  # the add swept transport 3
        for h in holders:
            h.close()
        await close_all([w for _, w in pairs])
        await srv.finish(6)

    run(combo.loop_kind, main)
    assert events == [Event.MAX_REQUESTS]


def test_on_event_exception_goes_to_the_loop_handler_and_reaping_goes_on(combo):
    logged = []

    def on_event(transport, event):
        raise RuntimeError("metrics are down")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: logged.append(context))
        reaper = KeepaliveReaper(0.1, on_event=on_event, _backend=combo.backend)
        srv = Server(reaper)
        port = await srv.start()
        pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, _ in pairs:
            await wait_for_eof(reader, 2)
        await close_all([w for _, w in pairs])
        await srv.finish(2)

    run(combo.loop_kind, main)
    assert len(logged) == 2
    assert all(isinstance(c["exception"], RuntimeError) and "on_event" in c["message"] for c in logged)


def test_keepalive_config_applied_on_add(combo):
    cfg = KeepaliveConfig(idle=17, interval=4, count=3)

    async def main():
        reaper = KeepaliveReaper(30.0, keepalive=cfg, _backend=combo.backend)
        srv = Server(reaper)
        port = await srv.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await request(reader, writer)
        state = get_keepalive(srv.transports[0].get_extra_info("socket").fileno())
        await close_all([writer])
        await srv.finish(1)
        return state

    state = run(combo.loop_kind, main)
    assert (state.enabled, state.idle, state.interval, state.count) == (True, 17, 4, 3)


@pytest.mark.parametrize("mode", ["reader", "timer"])
def test_one_reader_or_one_timer(backend, mode):
    """asyncio's loop shows its readers and scheduled timers: the reaper has one reader
    (the manager's fd, which rings at deadlines) and no timer, or, where the manager has
    no fd, one timer and no reader, however many connections it tracks."""

    async def main():
        loop = asyncio.get_running_loop()
        real = backend.load()
        # deadlines far enough that no connection expires while 200 connect on a busy machine
        reaper = KeepaliveReaper(20.0, max_lifetime=30.0, _backend=real if mode == "reader" else _without_fd(real))
        srv = Server(reaper)
        port = await srv.start()
        pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
        for reader, writer in pairs[::2]:
            await request(reader, writer)
        await until(lambda: len(srv.transports) == 200)
        timers = [h for h in loop._scheduled if not h.cancelled()]
        ours = [h for h in timers if getattr(h._callback, "__self__", None) is reaper]
        readers = [k for k in loop._selector.get_map().values() if getattr(k.data[0], "_callback", None) == reaper._reap]
        await close_all([w for _, w in pairs])
        await srv.finish(200)
        return timers, ours, readers

    timers, ours, readers = run("asyncio", main)
    assert (len(ours), len(readers)) == ((0, 1) if mode == "reader" else (1, 0))
    assert len(timers) <= 2 + len(ours)  # this test's own: wait_for, sleep


# -- the API surface --------------------------------------------------------------------


def test_api(combo):
    async def main():
        srv_reaper = KeepaliveReaper(30.0, _backend=combo.backend)
        async with srv_reaper as reaper:
            assert reaper is srv_reaper
            srv = Server(reaper)
            port = await srv.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await until(lambda: len(srv.transports) == 1)
            t = srv.transports[0]
            assert t in reaper and len(reaper) == 1 and "x" not in reaper
            assert "1 transports" in repr(reaper)
            with pytest.raises(ValueError, match="already"):
                reaper.add(t)
            reaper.touch(t)
            reaper.discard(t)
            assert t not in reaper and len(reaper) == 0
            reaper.discard(t)  # twice: no error
            reaper.touch(t)  # untracked: ignored
            reaper.add(t)
            assert t in reaper
            with pytest.raises(TypeError, match="socket"):
                reaper.add(_NoSocket())
            for bad in (42, None, srv.transports[0].get_extra_info("socket")):
                with pytest.raises(TypeError, match="asyncio transport"):
                    reaper.add(bad)
            with pytest.raises(TypeError, match="unhashable"):
                reaper.touch([])
            t.close()
            with pytest.raises(ValueError, match="closing"):
                reaper.add(_Closing())
            await wait_for_eof(reader, 2)
            await close_all([writer])
            await until(lambda: len(srv.lost) == 1)
            await srv.stop()
        assert len(reaper) == 0 and "closed" in repr(reaper)
        reaper.close()  # idempotent
        with pytest.raises(ValueError, match="closed"):
            reaper.add(t)
        reaper.touch(t)
        reaper.discard(t)

    run(combo.loop_kind, main)


class _NoSocket:
    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return default


class _Closing(_NoSocket):
    def is_closing(self) -> bool:
        return True


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"idle_timeout": 0}, ValueError, "idle_timeout"),
        ({"idle_timeout": "75"}, TypeError, "idle_timeout"),
        ({"max_requests": 0}, ValueError, "max_requests"),
        ({"max_lifetime": -1}, ValueError, "max_lifetime"),
        ({"keepalive": 60}, TypeError, "keepalive"),
        ({"on_event": "print"}, TypeError, "on_event"),
        ({"drain_timeout": -1}, ValueError, "drain_timeout"),
        ({"drain_timeout": float("inf")}, ValueError, "drain_timeout"),
        ({"drain_timeout": None}, TypeError, "drain_timeout"),
        ({"jitter": 0.6}, ValueError, "jitter"),
        ({"jitter": "0.1"}, TypeError, "jitter"),
    ],
)
def test_bad_arguments(backend, kwargs, error, words):
    with pytest.raises(error, match=words):
        KeepaliveReaper(_backend=backend.load(), **kwargs)


def test_datagram_transport_is_refused(backend, loop_kind):
    async def main():
        reaper = KeepaliveReaper(30.0, _backend=backend.load())
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            with pytest.raises(TypeError, match="SOCK_DGRAM.*stream .TCP."):
                reaper.add(transport)
            assert len(reaper) == 0
        finally:
            transport.close()
            reaper.close()

    run(loop_kind, main)


def test_used_from_a_second_loop_is_an_error(backend):
    reaper = KeepaliveReaper(30.0, _backend=backend.load())

    async def enter():
        await reaper.__aenter__()

    asyncio.run(enter())
    with pytest.raises(RuntimeError, match="event loop"):
        asyncio.run(enter())
    reaper.close()


def test_reaper_never_reads_a_byte(combo):
    """Data (and a FIN behind it) that asyncio has not read yet stays in the socket for
    asyncio: the reaper reports nothing until it is read, then asyncio gets all of it."""
    events = []

    async def main():
        reaper = KeepaliveReaper(30.0, on_event=lambda t, e: events.append(e), _backend=combo.backend)
        srv = Server(reaper, pause=True)
        port = await srv.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: len(srv.transports) == 1 and not srv.transports[0].is_reading())
        writer.write(b"one\ntwo\n")
        writer.write_eof()
        await asyncio.sleep(0.3)  # the manager re-checks a FIN behind unread data every 100 ms
        assert events == [] and srv.transports[0] in reaper
        srv.transports[0].resume_reading()
        assert await asyncio.wait_for(reader.read(), 5) == RESPONSE * 2  # both requests reached asyncio
        writer.close()
        await srv.finish(1)

    run(combo.loop_kind, main)
    assert events in ([], [Event.PEER_CLOSED])


def test_half_closed_connection_with_unread_data_leaves_the_loop_idle(backend, loop_kind):
    """The peer sent data and a FIN that asyncio has not read (reading paused), and our side
    half-closed too (write_eof): the process stays idle, far below 1% of a core over the
    window (generous bound for a loaded machine: 5%), and the reaper reports nothing."""
    window = 0.5
    events = []

    async def main():
        reaper = KeepaliveReaper(30.0, on_event=lambda t, e: events.append(e), _backend=backend.load())
        srv = Server(reaper, pause=True)
        port = await srv.start()
        client = socket.create_connection(("127.0.0.1", port))
        await until(lambda: len(srv.transports) == 1 and not srv.transports[0].is_reading())
        client.sendall(b"unread")  # no newline: nothing to answer after write_eof
        client.shutdown(socket.SHUT_WR)
        srv.transports[0].write_eof()
        await asyncio.sleep(0.2)  # the FIN and the hang-up have arrived (the manager re-checks every 100 ms)
        cpu = time.process_time()
        await asyncio.sleep(window)
        cpu = time.process_time() - cpu
        assert events == [] and srv.transports[0] in reaper
        srv.transports[0].resume_reading()  # asyncio reads the data and the EOF, and closes
        await until(lambda: len(srv.lost) == 1)
        client.close()
        await srv.finish()
        return cpu

    cpu = run(loop_kind, main)
    assert cpu <= 0.05 * window, f"{cpu:.3f} s of CPU in {window} s idle"


class _FailingClose(Spy):
    def close(self) -> None:
        self.calls.append("close")
        self.transport.close()
        raise RuntimeError("close failed")


def test_transport_and_manager_failures_go_to_the_loop_handler(backend, loop_kind):
    """A transport whose close() raises, and a manager poll() that raises once: each is
    logged through the loop's exception handler, the event is still reported, and the
    reaper keeps reaping."""
    logged, events = [], []
    real = backend.load()

    class FlakyManager(real.KeepaliveManager):
        failed = False

        def poll(self, timeout=None):
            if not FlakyManager.failed:
                FlakyManager.failed = True
                raise OSError("poll failed once")
            return super().poll(timeout)

    class FlakyBackend:
        KeepaliveManager = FlakyManager

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: logged.append(context))
        reaper = KeepaliveReaper(0.1, on_event=lambda t, e: events.append(e), _backend=FlakyBackend())
        srv = Server(reaper)
        port = await srv.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: len(srv.transports) == 1)
        reaper.discard(srv.transports[0])
        wrapped = _FailingClose(srv.transports[0])
        reaper.add(wrapped)
        await wait_for_eof(reader, 2)
        await close_all([writer])
        await srv.finish(1)
        return wrapped

    wrapped = run(loop_kind, main)
    assert wrapped.calls == ["close"] and events == [Event.IDLE]
    assert [type(c["exception"]) for c in logged] == [OSError, RuntimeError]
    assert "poll() failed" in logged[0]["message"] and "IDLE failed" in logged[1]["message"]
    assert logged[1]["transport"] is wrapped
