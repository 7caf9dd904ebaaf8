"""The asyncio recipes of docs/examples (asyncio streams, aiohttp, uvicorn), run on
asyncio's loop and on uvloop: per-connection max_requests, idle close with a FIN and
fastka's keepalive on the accepted sockets; each also runs as a script, and mypy --strict
accepts them."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

import fastka
from fastka import Event
from aio_helpers import CLOCK_GRAIN, loop_kind, run  # noqa: F401  (loop_kind is a fixture)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "examples")
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


async def ask(name: str, reader, writer) -> None:
    """One request and its whole response, in the recipe's protocol."""
    if name == "aio_streams":
        writer.write(b"hi\n")
        assert await reader.readline() == b"hi\n"
        return
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    assert await reader.readexactly(length) == b"hello\n"


async def started(name: str, recipe, on_event):
    """Start the recipe's server; (port, stop coroutine function)."""
    if name == "aio_streams":
        server, reaper = await recipe.serve(port=0, idle_timeout=IDLE, max_requests=MAX_REQUESTS, on_event=on_event)

        async def stop():
            server.close()
            await server.wait_closed()
            reaper.close()

        return server.sockets[0].getsockname()[1], stop
    if name == "aio_aiohttp":
        runner, reaper, port = await recipe.start(port=0, idle_timeout=IDLE, max_requests=MAX_REQUESTS, on_event=on_event)

        async def stop():
            await runner.cleanup()
            reaper.close()

        return port, stop
    reaper = recipe.make_reaper(IDLE, MAX_REQUESTS, on_event)
    await reaper.__aenter__()
    server = recipe.server(recipe.hello, reaper, port=0)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)

    async def stop():
        server.should_exit = True
        await task
        await reaper.__aexit__(None, None, None)

    return server.servers[0].sockets[0].getsockname()[1], stop


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_limits_requests_closes_idle_and_configures_keepalive(name, loop_kind):
    recipe = load(name)
    seen = []  # (event, the socket's keepalive settings when it happened)

    def on_event(transport, event):
        seen.append((event, fastka.get_keepalive(transport.get_extra_info("socket"))))

    async def main():
        port, stop = await started(name, recipe, on_event)
        try:
            # max_requests: the third answer arrives, then the FIN (EOF, not a reset)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(MAX_REQUESTS):
                await ask(name, reader, writer)
            answered = time.monotonic()
            assert await asyncio.wait_for(reader.read(100), 5) == b""
            fin_after = time.monotonic() - answered
            writer.close()
            # idle: one request, then silence until the FIN
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent = time.monotonic()
            await ask(name, reader, writer)
            assert await asyncio.wait_for(reader.read(100), IDLE + 5) == b""
            idle_after = time.monotonic() - sent
            writer.close()
        finally:
            await stop()
        return fin_after, idle_after

    fin_after, idle_after = run(loop_kind, main)
    assert fin_after <= 0.05, f"FIN {fin_after * 1000:.1f} ms after the last allowed response"
    assert IDLE - CLOCK_GRAIN <= idle_after <= IDLE + 0.5
    assert [e for e, _ in seen] == [Event.MAX_REQUESTS, Event.IDLE]
    want = recipe.KEEPALIVE
    for _, state in seen:
        assert (state.enabled, state.idle, state.interval, state.count) == (True, want.idle, want.interval, want.count)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_recipes_pass_mypy_strict():
    if shutil.which("mypy") is None and importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install mypy)")
    for lib in ("aiohttp", "uvicorn"):
        pytest.importorskip(lib)
    paths = [os.path.join(EXAMPLES, f"{n}.py") for n in RECIPES]
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", *paths],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
