"""The asyncio recipes of docs/examples (asyncio streams, aiohttp, uvicorn), run on
asyncio's loop and on uvloop, over both backends: per-connection max_requests (also with
pipelined requests), idle close with a FIN and fastka's keepalive on the accepted
sockets; each also runs as a script. (mypy --strict over them: test_integrations.py.)"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest

import fastka
from fastka import Event
from aio_helpers import CLOCK_GRAIN, loop_kind, run  # noqa: F401  (loop_kind is a fixture)
from repo import ROOT

EXAMPLES = os.path.join(ROOT, "docs", "examples")
RECIPES = ("aio_streams", "aio_aiohttp", "aio_uvicorn")
IDLE = 0.4
MAX_REQUESTS = 3


def load(name: str):
    if name != "aio_streams":
        pytest.importorskip(name.split("_")[1])
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def request_of(name: str) -> bytes:
    """One request in the recipe's protocol: a line, or an HTTP/1.1 GET."""
    return b"hi\n" if name == "aio_streams" else b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


async def ask(name: str, reader, writer) -> bytes:
    """One request and its whole response; the response's head."""
    writer.write(request_of(name))
    return await ask_reply(name, reader)


async def answers(name: str, reader) -> int:
    """The count of whole responses read until EOF."""
    n = 0
    while True:
        try:
            await ask_reply(name, reader)
        except asyncio.IncompleteReadError as exc:
            assert exc.partial == b"", f"a response cut short: {exc.partial!r}"
            return n
        n += 1


async def ask_reply(name: str, reader) -> bytes:
    """Read one whole response; its head (b"" for a line); IncompleteReadError at EOF."""
    if name == "aio_streams":
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        assert line == b"hi\n"
        return b""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    assert await reader.readexactly(length) == b"hello\n"
    return head


def closes_itself(name: str) -> bool:
    """The uvicorn recipe leaves max_requests to uvicorn's protocol (the last response says
    Connection: close, then uvicorn closes); the others reap at MAX_REQUESTS. All reap at
    IDLE."""
    return name == "aio_uvicorn"


async def eof_after(reader, since: float, within: float) -> float:
    """Seconds from ``since`` (a time.monotonic() reading) to EOF on ``reader``; fails on
    data, or after ``within`` seconds."""
    assert await asyncio.wait_for(reader.read(100), within) == b""
    return time.monotonic() - since


def says_close(head: bytes) -> bool:
    return re.search(rb"(?i)\r\nconnection: *close\r\n", head) is not None


@pytest.fixture
def on_backend(backend, monkeypatch):
    """The backend the recipes get from fastka._backends.default(): the environment decides."""
    if backend.name == "python":
        monkeypatch.setenv("FASTKA_NO_EXTENSIONS", "1")
    else:
        monkeypatch.delenv("FASTKA_NO_EXTENSIONS", raising=False)
    return backend.load()


async def started(name: str, recipe, on_event, want):
    """Start the recipe's server, check its reaper runs on the backend ``want``; (port,
    stop coroutine function)."""
    if name == "aio_streams":
        server, reaper = await recipe.serve(port=0, idle_timeout=IDLE, max_requests=MAX_REQUESTS, on_event=on_event)

        async def stop():
            server.close()
            await server.wait_closed()
            reaper.close()

        port = server.sockets[0].getsockname()[1]
    elif name == "aio_aiohttp":
        runner, reaper, port = await recipe.start(port=0, idle_timeout=IDLE, max_requests=MAX_REQUESTS, on_event=on_event)

        async def stop():
            await runner.cleanup()
            reaper.close()

    else:
        reaper, port, stop, _ = await started_uvicorn(recipe, on_event)
    assert type(reaper._mgr) is want.KeepaliveManager
    return port, stop


async def started_uvicorn(recipe, on_event, app=None, max_requests=MAX_REQUESTS, **reaper_options):
    reaper = recipe.make_reaper(on_event, **{"idle_timeout": IDLE, **reaper_options})
    await reaper.__aenter__()
    server = recipe.server(app or recipe.hello, reaper, port=0, max_requests=max_requests)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)

    async def stop():
        server.should_exit = True
        await task
        await reaper.__aexit__(None, None, None)

    return reaper, server.servers[0].sockets[0].getsockname()[1], stop, server


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_limits_requests_closes_idle_and_configures_keepalive(name, loop_kind, on_backend):
    recipe = load(name)
    seen = []  # (event, the socket's keepalive settings when it happened)

    def on_event(transport, event):
        seen.append((event, fastka.get_keepalive(transport.get_extra_info("socket"))))

    async def main():
        port, stop = await started(name, recipe, on_event, on_backend)
        try:
            # max_requests: the third answer arrives, then the FIN (EOF, not a reset)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            heads = [await ask(name, reader, writer) for _ in range(MAX_REQUESTS)]
            fin_after = await eof_after(reader, time.monotonic(), 5)
            writer.close()
            # idle: one request, then silence until the FIN
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent = time.monotonic()
            await ask(name, reader, writer)
            idle_after = await eof_after(reader, sent, IDLE + 5)
            writer.close()
        finally:
            await stop()
        return fin_after, idle_after, heads

    fin_after, idle_after, heads = run(loop_kind, main)
    assert fin_after <= 0.05, f"FIN {fin_after * 1000:.1f} ms after the last allowed response"
    assert IDLE - CLOCK_GRAIN <= idle_after <= IDLE + 0.5
    if closes_itself(name):
        assert [says_close(h) for h in heads] == [False] * (MAX_REQUESTS - 1) + [True]
        assert [e for e, _ in seen] == [Event.IDLE]  # the request limit's close was uvicorn's
    else:
        assert [e for e, _ in seen] == [Event.MAX_REQUESTS, Event.IDLE]
    want = recipe.KEEPALIVE
    for _, state in seen:
        assert (state.enabled, state.idle, state.interval, state.count) == (True, want.idle, want.interval, want.count)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_answers_pipelined_requests_up_to_the_limit_then_fin(name, loop_kind, on_backend, caplog):
    """MAX_REQUESTS + 2 requests in one write: at least MAX_REQUESTS whole answers, then a
    FIN; no error from the recipe, the server library or the loop."""
    recipe = load(name)
    events = []

    async def main():
        port, stop = await started(name, recipe, lambda t, e: events.append(e), on_backend)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_of(name) * (MAX_REQUESTS + 2))
            n = await asyncio.wait_for(answers(name, reader), 5)
            writer.close()
        finally:
            await stop()
        return n

    with caplog.at_level(logging.ERROR):
        n = run(loop_kind, main)
    if closes_itself(name):
        assert n == MAX_REQUESTS and events == []
    else:
        assert MAX_REQUESTS <= n <= MAX_REQUESTS + 2
        assert events == [Event.MAX_REQUESTS]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_uvicorn_recipe_closes_a_busy_connection_at_max_lifetime_and_sets_keepalive(loop_kind, on_backend):
    recipe = load("aio_uvicorn")
    seen = []

    def on_event(transport, event):
        seen.append((event, fastka.get_keepalive(transport.get_extra_info("socket"))))

    async def main():
        reaper, port, stop, _ = await started_uvicorn(recipe, on_event, max_requests=None, idle_timeout=5.0, max_lifetime=0.5)
        try:
            assert type(reaper._mgr) is on_backend.KeepaliveManager
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            born = time.monotonic()
            heads = []
            try:
                while True:
                    heads.append(await ask("aio_uvicorn", reader, writer))
                    await asyncio.sleep(0.05)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the reaper's FIN (or a request that crossed it: a reset)
            lived = time.monotonic() - born
            writer.close()
        finally:
            await stop()
        return lived, heads

    lived, heads = run(loop_kind, main)
    assert 0.5 * (1 - 0.1) - CLOCK_GRAIN <= lived <= 1.5  # max_lifetime 0.5 s spread by the recipe's jitter (0.1)
    assert len(heads) >= 3 and not any(says_close(h) for h in heads)
    want = recipe.KEEPALIVE
    assert [(e, (s.enabled, s.idle, s.interval, s.count)) for e, s in seen] == [(Event.MAX_LIFETIME, (True, want.idle, want.interval, want.count))]


def slow(seconds: float):
    """An ASGI app that answers like the recipe's hello after ``seconds``."""

    async def app(scope, receive, send):
        await asyncio.sleep(seconds)
        await load("aio_uvicorn").hello(scope, receive, send)

    return app


async def slow_exchange(recipe, on_event, seconds: float, **reaper_options):
    """One request to an app that takes ``seconds``, then silence: (its head, seconds from
    the whole response to the FIN, the server's protocols after the response)."""
    _, port, stop, server = await started_uvicorn(recipe, on_event, app=slow(seconds), max_requests=None, **reaper_options)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = await asyncio.wait_for(ask("aio_uvicorn", reader, writer), seconds + 5)
        answered = time.monotonic()
        protocols = list(server.server_state.connections)
        fin_after = await eof_after(reader, answered, IDLE + 5)
        writer.close()
    finally:
        await stop()
    return head, fin_after, protocols


def test_uvicorn_recipe_keeps_the_idle_clock_instead_of_uvicorns_timer(loop_kind, on_backend):
    """A request that runs longer than the idle timeout is answered in full (the reaper's
    idle deadline passes meanwhile and spares it); the idle close then comes IDLE after the
    response, from the reaper: uvicorn armed no keep-alive timer of its own."""
    recipe = load("aio_uvicorn")
    events = []

    head, fin_after, protocols = run(loop_kind, lambda: slow_exchange(recipe, lambda t, e: events.append(e), 2.5 * IDLE))
    assert not says_close(head)
    assert IDLE - CLOCK_GRAIN <= fin_after <= IDLE + 0.3, f"FIN {fin_after * 1000:.0f} ms after the response"
    assert events == [Event.IDLE]
    assert len(protocols) == 1 and protocols[0].timeout_keep_alive_task is None
    assert isinstance(protocols[0].loop, recipe.LoopView)


def test_uvicorn_recipe_closes_a_request_in_flight_at_max_lifetime_after_its_response(loop_kind, on_backend):
    """max_lifetime passing during a request: the response is whole and says Connection:
    close, then the FIN."""
    recipe = load("aio_uvicorn")
    events = []

    head, fin_after, _ = run(loop_kind, lambda: slow_exchange(recipe, lambda t, e: events.append(e), 0.8, idle_timeout=5.0, max_lifetime=0.3))
    assert says_close(head)
    assert fin_after <= 0.1
    assert events == [Event.MAX_LIFETIME]


@pytest.mark.parametrize("sends", [b"", b"GET / HTTP/1.1\r\nHo"], ids=["silent", "half-a-request"])
def test_uvicorn_recipe_closes_a_connection_that_never_completes_a_request(sends, loop_kind, on_backend):
    """uvicorn alone arms its timer only after a response: such a connection would stay
    open. The reaper's idle clock starts at accept: FIN at IDLE."""
    recipe = load("aio_uvicorn")
    events = []

    async def main():
        _, port, stop, _ = await started_uvicorn(recipe, lambda t, e: events.append(e))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened = time.monotonic()
            writer.write(sends)
            closed_after = await eof_after(reader, opened, IDLE + 5)
            writer.close()
        finally:
            await stop()
        return closed_after

    closed_after = run(loop_kind, main)
    assert IDLE - CLOCK_GRAIN - 0.05 <= closed_after <= IDLE + 0.3
    assert events == [Event.IDLE]


def test_uvicorn_recipe_leaves_a_websocket_to_uvicorn(loop_kind, on_backend):
    """After the upgrade the connection is uvicorn's WebSocket protocol's: the reaper no
    longer tracks it, and it outlives the idle timeout."""
    recipe = load("aio_uvicorn")
    pytest.importorskip("websockets")

    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await receive()  # until the client goes

    async def main():
        reaper, port, stop, _ = await started_uvicorn(recipe, None, app=app)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await asyncio.sleep(2 * IDLE)
            tracked = len(reaper)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.1)  # still open: nothing, not EOF
            writer.close()
        finally:
            await stop()
        return head, tracked

    head, tracked = run(loop_kind, main)
    assert head.startswith(b"HTTP/1.1 101") and tracked == 0


def test_streams_recipe_closes_the_connection_when_add_fails(loop_kind, on_backend):
    """reaper.add raising (an OSError from the socket, say) still closes the writer: the
    client reads EOF instead of waiting on an open connection, and the error reaches the
    loop's exception handler. (asyncio closes the transport of a failed handler itself
    since Python 3.11.7 and 3.12.1; before, only the recipe did.)"""
    recipe = load("aio_streams")
    logged = []

    def failing_add(transport):
        raise OSError("injected: the socket could not be watched")

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: logged.append(context))
        server, reaper = await recipe.serve(port=0, idle_timeout=IDLE, max_requests=MAX_REQUESTS)
        reaper.add = failing_add
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            try:
                assert await asyncio.wait_for(reader.read(100), 5) == b""
            finally:
                writer.close()
        finally:
            server.close()
            await server.wait_closed()
            reaper.close()

    run(loop_kind, main)
    assert [type(c.get("exception")) for c in logged] == [OSError]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_without_a_port_prints_usage(name):
    load(name)
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, f"{name}.py")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("usage: ") and "PORT" in done.stderr


def test_uvicorn_recipe_runs_on_the_loop_uvicorn_picks():
    """uvloop when it is installed, as uvicorn alone would."""
    recipe = load("aio_uvicorn")
    pytest.importorskip("uvloop")
    import uvloop

    seen = []

    async def fake_main(port):
        seen.append(type(asyncio.get_running_loop()))

    recipe.main = fake_main
    recipe.run(0)
    assert seen == [uvloop.Loop]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_as_a_script(name):
    load(name)  # skips when the library is missing
    port = _free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, f"{name}.py"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def main():
        end = time.monotonic() + 20
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < end, "the script did not start listening"
                await asyncio.sleep(0.05)
        await ask(name, reader, writer)
        writer.close()
        await writer.wait_closed()

    try:
        asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
