"""Every recipe in docs/examples/ runs against the real library on loopback, and the options
are read back from the kernel on the library's own socket (getsockopt): the client's
connection, or the server's accepted connection. The table of what each library does on its
own (docs/library_defaults.csv) is checked the same way. Recipes that call a fastka function
run on both backends."""
from __future__ import annotations

import asyncio
import csv
import os
import socket
import subprocess
import sys
import time
from typing import Awaitable, Callable, Dict, Iterator, List, Optional

import pytest
from integrations import (
    EXAMPLES,
    ROOT,
    Subprocess,
    assert_configured,
    http_server,
    load_recipe,
    read_options,
    redis_server,
    server_side_socket,
    subprocess_env,
)

import fastka

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the options are read back with Linux's option names"),
    pytest.mark.skipif(not os.path.isdir(EXAMPLES), reason="docs/examples/ is not beside the tests (installed-wheel run)"),
]

# Values no library and no kernel uses on its own, so a read-back cannot match by accident.
CFG = fastka.KeepaliveConfig(idle=61, interval=7, count=4, user_timeout=30)
DEFAULTS_CSV = os.path.join(ROOT, "docs", "library_defaults.csv")
TIMEOUT = 20  # seconds any one asyncio scenario may take

Options = Dict[str, int]


def lib(name: str):
    return pytest.importorskip(name, reason=f"{name} is not installed (pip install -e '.[test]')")


def run(coro: Awaitable[Options]) -> Options:
    async def bounded() -> Options:
        return await asyncio.wait_for(coro, TIMEOUT)

    return asyncio.run(bounded())


@pytest.fixture
def web():
    with http_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with redis_server() as port:
        yield port


# -- clients: the options of the connection each one opened ---------------------------------

def urllib3_options(pm, url: str) -> Options:
    resp = pm.request("GET", url, preload_content=False)
    try:
        return read_options(resp.connection.sock)
    finally:
        resp.release_conn()
        pm.clear()


def requests_options(session, url: str) -> Options:
    with session:
        with session.get(url, stream=True) as resp:
            return read_options(resp.raw.connection.sock)


def httpx_options(client, url: str) -> Options:
    with client:
        with client.stream("GET", url) as resp:
            return read_options(resp.extensions["network_stream"].get_extra_info("socket"))


async def httpx_async_options(client, url: str) -> Options:
    async with client:
        async with client.stream("GET", url) as resp:
            return read_options(resp.extensions["network_stream"].get_extra_info("socket"))


def redis_options(r) -> Options:
    with r:
        r.ping()
        (conn,) = r.connection_pool._get_free_connections()
        return read_options(conn._sock)


async def redis_async_options(r) -> Options:
    async with r:
        await r.ping()
        (conn,) = r.connection_pool._available_connections
        return read_options(conn._writer.get_extra_info("socket"))


async def aiohttp_options(make_session, srv) -> Options:
    """``make_session()`` is called inside the event loop, as aiohttp requires."""
    async with make_session() as session:
        async with session.get(srv.url + "hold") as resp:
            got = read_options(resp.connection.transport.get_extra_info("socket"))
            srv.release.set()
            assert await resp.read() == b"ok"
            return got


# -- in-process servers: the options of the connection each one accepted --------------------

async def http_get(host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.")
    writer.close()
    await writer.wait_closed()


async def aiohttp_server_options(start: Callable[..., Awaitable[object]]) -> Options:
    """``start(app)`` starts serving ``app`` on 127.0.0.1 and returns the AppRunner."""
    from aiohttp import web

    got: Options = {}

    async def handler(request: web.Request) -> web.Response:
        got.update(read_options(request.transport.get_extra_info("socket")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    runner = await start(app)
    try:
        await http_get(*runner.addresses[0][:2])
    finally:
        await runner.cleanup()
    return got


async def streams_server_options(start: Callable[..., Awaitable[asyncio.Server]]) -> Options:
    got: Options = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.update(read_options(writer.get_extra_info("socket")))
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
        writer.close()

    server = await start(handler)
    try:
        await http_get(*server.sockets[0].getsockname()[:2])
    finally:
        server.close()
        await server.wait_closed()
    return got


# -- servers in subprocesses: uvicorn, gunicorn ----------------------------------------------

def subprocess_server_options(argv: List[str], backend_name: str, listening: str,
                              ready: Optional[str] = None) -> Options:
    """Start a server, open a connection and read its options from the server's own socket
    while the request is still incomplete (so that even gunicorn's sync worker, which closes
    after each response, holds it), then finish the request. ``listening``: the regex of the
    server's 'listening' line, whose group 1 is the port; ``ready``: a later line after which
    the server takes connections as configured."""
    with Subprocess(argv, subprocess_env(backend_name)) as server:
        port = int(server.wait_for(listening).group(1))
        if ready is not None:
            server.wait_for(ready)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            with server_side_socket(server.proc.pid, client) as accepted:
                got = read_options(accepted)
            client.sendall(b"Connection: close\r\n\r\n")
            assert client.recv(64).startswith(b"HTTP/1.1 200"), server.output
        return got


UVICORN_LISTENING = r"(?:^listening on |Uvicorn running on http://)127\.0\.0\.1:(\d+)"
GUNICORN_LISTENING = r"Listening at: http://127\.0\.0\.1:(\d+)"
# gunicorn logs the address before its when_ready hook runs; the first worker boots after it.
GUNICORN_READY = r"Booting worker"
WSGI_APP = 'def app(environ, start_response):\n    start_response("200 OK", [("Content-Length", "2")])\n    return [b"ok"]\n'


def uvicorn_recipe_options(backend_name: str) -> Options:
    lib("uvicorn")
    return subprocess_server_options([sys.executable, os.path.join(EXAMPLES, "uvicorn_recipe.py"), "0"],
                                     backend_name, UVICORN_LISTENING)


def uvicorn_default_options(backend_name: str) -> Options:
    lib("uvicorn")
    return subprocess_server_options(
        [sys.executable, "-m", "uvicorn", "--app-dir", EXAMPLES, "--host", "127.0.0.1", "--port", "0",
         "uvicorn_recipe:hello"], backend_name, UVICORN_LISTENING)


def gunicorn_options(backend_name: str, tmp_path, conf: Optional[str]) -> Options:
    gunicorn_config = lib("gunicorn.config")
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    argv = [sys.executable, "-m", "gunicorn", "--chdir", str(tmp_path), "-b", "127.0.0.1:0", "--workers", "1"]
    if any(s.name == "control_socket_disable" for s in gunicorn_config.KNOWN_SETTINGS):
        argv.append("--no-control-socket")  # gunicorn 24+ would open ~/.gunicorn/gunicorn.ctl
    if conf is not None:
        argv += ["-c", conf]
    return subprocess_server_options(argv + ["wsgi_app:app"], backend_name, GUNICORN_LISTENING, GUNICORN_READY)


# -- the recipes ---------------------------------------------------------------------------

def test_urllib3_recipe_keeps_tcp_nodelay(web):
    lib("urllib3")
    got = urllib3_options(load_recipe("urllib3_recipe").pool_manager(CFG), web.url)
    assert_configured(got, CFG)
    assert got["TCP_NODELAY"] == 1  # urllib3's default option survives


def test_requests_recipe(web):
    lib("requests")
    got = requests_options(load_recipe("requests_recipe").session(CFG), web.url)
    assert_configured(got, CFG)
    assert got["TCP_NODELAY"] == 1


def test_httpx_recipe(web):
    lib("httpx")
    assert_configured(httpx_options(load_recipe("httpx_recipe").client(CFG), web.url), CFG)


def test_httpx_async_recipe(web):
    lib("httpx")
    assert_configured(run(httpx_async_options(load_recipe("httpx_recipe").async_client(CFG), web.url)), CFG)


def test_redis_recipe(redis_port):
    lib("redis")
    assert_configured(redis_options(load_recipe("redis_recipe").client(CFG, "127.0.0.1", redis_port)), CFG)


def test_redis_asyncio_recipe(redis_port):
    lib("redis")
    recipe = load_recipe("redis_asyncio_recipe")
    assert_configured(run(redis_async_options(recipe.client(CFG, "127.0.0.1", redis_port))), CFG)


@pytest.mark.usefixtures("on_backend")
def test_redis_drop_dead_recipe(backend, redis_port):
    """drop_dead() leaves live connections alone and disconnects those whose peer is gone."""
    lib("redis")
    recipe = load_recipe("redis_recipe")
    with recipe.client(CFG, "127.0.0.1", redis_port) as r:
        pool = r.connection_pool
        conns = [pool.get_connection() for _ in range(3)]
        for conn in conns:
            conn.send_command("PING")
            assert conn.read_response() in (b"PONG", "PONG")
            pool.release(conn)
        assert recipe.drop_dead(r) == []
        # The server closes every connection but the one that sends this command.
        r.execute_command("CLIENT", "KILL", "SKIPME", "yes")
        dead = _wait_for_dead(recipe, r, expected=2)
        assert len(dead) == 2 and all(c._sock is None for c in dead)
        assert r.ping()  # the pool reconnects what drop_dead disconnected


def _wait_for_dead(recipe, r, expected: int, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        dead = recipe.drop_dead(r)
        if len(dead) >= expected or time.monotonic() > deadline:
            return dead
        time.sleep(0.02)


@pytest.mark.usefixtures("on_backend")
def test_aiohttp_client_recipe(backend, web):
    lib("aiohttp")
    assert_configured(run(aiohttp_options(lambda: load_recipe("aiohttp_client_recipe").session(CFG), web)), CFG)


@pytest.mark.usefixtures("on_backend")
def test_aiohttp_server_recipe(backend):
    lib("aiohttp")
    recipe = load_recipe("aiohttp_server_recipe")
    assert_configured(run(aiohttp_server_options(lambda app: recipe.start(app, CFG, "127.0.0.1", 0))), CFG)


@pytest.mark.usefixtures("on_backend")
def test_asyncio_streams_recipe(backend):
    recipe = load_recipe("asyncio_streams_recipe")
    assert_configured(run(streams_server_options(lambda h: recipe.start(h, CFG, "127.0.0.1", 0))), CFG)


@pytest.mark.slow
def test_uvicorn_recipe(backend):
    backend.load()
    assert_configured(uvicorn_recipe_options(backend.name), load_recipe("uvicorn_recipe").CONFIG)


@pytest.mark.slow
def test_gunicorn_recipe(backend, tmp_path):
    backend.load()
    got = gunicorn_options(backend.name, tmp_path, os.path.join(EXAMPLES, "gunicorn_conf.py"))
    assert_configured(got, load_recipe("gunicorn_conf").CONFIG)


# -- what each library does on its own: docs/library_defaults.csv ---------------------------

def _defaults_rows() -> List[Dict[str, str]]:
    if not os.path.exists(DEFAULTS_CSV):
        return []  # installed-wheel run: the module is skipped
    with open(DEFAULTS_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def default_options(key: str, web, redis_port: Callable[[], int], tmp_path) -> Options:
    """The options of the connection library ``key`` makes (or accepts) when left alone."""
    if key == "urllib3":
        return urllib3_options(lib("urllib3").PoolManager(), web.url)
    if key == "requests":
        return requests_options(lib("requests").Session(), web.url)
    if key == "httpx":
        return httpx_options(lib("httpx").Client(), web.url)
    if key == "httpx-async":
        return run(httpx_async_options(lib("httpx").AsyncClient(), web.url))
    if key == "redis":
        return redis_options(lib("redis").Redis(host="127.0.0.1", port=redis_port()))
    if key == "redis-asyncio":
        lib("redis")
        import redis.asyncio

        return run(redis_async_options(redis.asyncio.Redis(host="127.0.0.1", port=redis_port())))
    if key == "aiohttp-client":
        return run(aiohttp_options(lib("aiohttp").ClientSession, web))
    if key == "aiohttp-server":
        web_ = lib("aiohttp.web")

        async def start(app):
            runner = web_.AppRunner(app)
            await runner.setup()
            await web_.TCPSite(runner, "127.0.0.1", 0).start()
            return runner

        return run(aiohttp_server_options(start))
    if key == "asyncio":
        return run(streams_server_options(lambda h: asyncio.start_server(h, "127.0.0.1", 0)))
    if key == "uvicorn":
        return uvicorn_default_options(fastka.IMPLEMENTATION)
    if key == "gunicorn":
        return gunicorn_options(fastka.IMPLEMENTATION, tmp_path, None)
    raise AssertionError(f"docs/library_defaults.csv names an unknown library key {key!r}")


def _installed_version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return sys.version.split()[0] if module == "python" else ""


@pytest.mark.parametrize("row", _defaults_rows(), ids=lambda row: row["key"])
def test_library_defaults_table(row, request, tmp_path):
    """Each row of the defaults table is what the library's socket reads back."""
    installed = _installed_version(row["distribution"])
    if not installed:
        pytest.skip(f"{row['distribution']} is not installed")
    if not installed.startswith(row["version"].rstrip("x")):
        pytest.skip(f"the table describes {row['distribution']} {row['version']}, this is {installed}")
    web = request.getfixturevalue("web")
    got = default_options(row["key"], web, lambda: request.getfixturevalue("redis_port"), tmp_path)
    assert got["SO_KEEPALIVE"] == (1 if row["SO_KEEPALIVE"] == "on" else 0), got
    if row["SO_KEEPALIVE"] == "on":
        timers = row["idle / interval / count"]
        if timers.startswith("kernel"):
            want = fastka.system_defaults()
            assert (got["TCP_KEEPIDLE"], got["TCP_KEEPINTVL"], got["TCP_KEEPCNT"]) == (
                int(want.idle), int(want.interval), want.count), got
        else:
            assert [got["TCP_KEEPIDLE"], got["TCP_KEEPINTVL"], got["TCP_KEEPCNT"]] == [
                int(v) for v in timers.split("/")], got
    user_timeout = row["TCP_USER_TIMEOUT"]
    assert got["TCP_USER_TIMEOUT"] == (0 if user_timeout == "none" else round(float(user_timeout) * 1000)), got


# -- the recipes are mypy --strict clean ---------------------------------------------------

@pytest.mark.slow
def test_recipes_and_aio_are_mypy_strict_clean(request):
    """The plain command, from the project root: its settings live in pyproject.toml's
    [tool.mypy]. The one mypy run over the recipes (asyncio ones included) and fastka.aio."""
    lib("mypy")
    argv = [sys.executable, "-m", "mypy", "--strict", os.path.join("fastka", "aio.py"), os.path.relpath(EXAMPLES, ROOT)]
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    if cache is not None:  # reuse mypy's cache between runs
        argv.append("--cache-dir=" + str(cache.mkdir("mypy")))
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
