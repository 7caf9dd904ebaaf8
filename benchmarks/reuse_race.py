"""The keep-alive reuse race, and what a checkout costs: plain client pools next to
fastka.pools.

    python benchmarks/reuse_race.py [--requests 500] [--servers nginx,uvicorn,gunicorn,fastka]
                                    [--delay 0.03] [--seed 1] [--checkout-rounds 15]
                                    [--no-race] [--no-checkout]

Race: every server closes a connection that stays idle for 2 s (nginx ``keepalive_timeout
2s``, uvicorn ``--timeout-keep-alive 2``, gunicorn gthread ``--keep-alive 2``, ``fastka
serve --keepalive-timeout 2``). Each sits behind a relay that delays every byte and every
close by ``--delay`` seconds each way, as a real network does (on bare loopback the race
window is microseconds wide and hides). Six clients run side by side against each server,
one connection each: urllib3, requests and aiohttp with their own pools and defaults, and
with fastka.pools (PoolManager, HTTPAdapter, TCPConnector) told the server's timeout the
way a user would: an idle timeout one second (the default margin) under it, 1 s, and the
server's ``Keep-Alive: timeout=`` hint where it sends one (fastka serve). Each sends ``--requests`` GETs, waiting a gap drawn uniformly from 1.5..2.5 s
(the same seeded draws for every client) after each answer, so that about half of the
reuses land just before or after the server's close. A request that raises is a failure.
The clients' own retries are off (urllib3 ``retries=False``; requests' default; aiohttp's
retry of an idempotent request on a reused connection), as for a request that is not
idempotent. Time: about 2 s x ``--requests`` (all servers and clients run at once).

Checkout: microseconds per checkout and return of a pooled connection (urllib3's
``_get_conn`` + ``_put_conn``, aiohttp's connector ``_get`` + ``release``), plain and
fastka's, with 1 and 100 idle connections to ``fastka serve``, in ``--checkout-rounds``
paired rounds (alternating order, after one warm-up round); the fastka/plain ratio per
round, its median and range.

Every server and relay runs as a child process and is stopped at the end (also on Ctrl-C).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, stop_process, wait_port  # noqa: E402
from servers import ROOT, Nginx  # noqa: E402

sys.path.insert(0, ROOT)
import fastka  # noqa: E402

KEEPALIVE_TIMEOUT = 2
IDLE_TIMEOUT = KEEPALIVE_TIMEOUT - 1.0  # fastka.pools' idle timeout: the server's minus the margin
GAP = (1.5, 2.5)

WSGI_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\\n"]
'''
ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"ok\\n"})
'''


# -- the relay -------------------------------------------------------------------------

async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                on_reset: Callable[[], None]) -> None:
    """Copy ``reader`` to ``writer``, each chunk and the end ``delay`` seconds late, in order."""
    loop = asyncio.get_running_loop()
    queue: "asyncio.Queue[Tuple[float, Optional[bytes]]]" = asyncio.Queue()

    async def deliver() -> None:
        while True:
            when, data = await queue.get()
            await asyncio.sleep(max(0.0, when - loop.time()))
            if data is None:  # the sender closed: half-close the other side
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            if data == b"":  # the sender reset: reset the other side
                on_reset()
                return
            writer.write(data)
            with contextlib.suppress(OSError):
                await writer.drain()

    task = asyncio.ensure_future(deliver())
    try:
        while True:
            try:
                data = await reader.read(65536)
            except OSError:
                queue.put_nowait((loop.time() + delay, b""))
                break
            queue.put_nowait((loop.time() + delay, data if data else None))
            if not data:
                break
        await task
    finally:
        task.cancel()


async def _relay_main(listen_port: int, upstream_port: int, delay: float) -> None:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            c_writer.transport.abort()
            return

        def reset_both() -> None:
            c_writer.transport.abort()
            u_writer.transport.abort()

        await asyncio.gather(_pipe(c_reader, u_writer, delay, reset_both), _pipe(u_reader, c_writer, delay, reset_both),
                             return_exceptions=True)
        c_writer.close()
        u_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


# -- servers ---------------------------------------------------------------------------

class Child:
    """A server or relay process, stopped (then killed) by ``stop()``."""

    def __init__(self, label: str, argv: List[str], cwd: str, port: int, stop_signal: int = signal.SIGTERM) -> None:
        self.label, self.port, self.stop_signal = label, port, stop_signal
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_port(port, self.proc, label)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc, self.stop_signal, 10)


class NginxServer:
    def __init__(self) -> None:
        self.nginx = Nginx(1, KEEPALIVE_TIMEOUT)
        self.label = self.nginx.label
        self.port = self.nginx.start()

    def stop(self) -> None:
        self.nginx.stop()


def start_server(name: str, tmp: str) -> object:
    port = free_port()
    if name == "nginx":
        return NginxServer()
    if name == "uvicorn":
        with open(os.path.join(tmp, "race_asgi.py"), "w") as f:
            f.write(ASGI_APP)
        return Child("uvicorn", [sys.executable, "-m", "uvicorn", "race_asgi:app", "--port", str(port),
                                 "--timeout-keep-alive", str(KEEPALIVE_TIMEOUT), "--log-level", "warning",
                                 "--no-access-log"], tmp, port)
    if name == "gunicorn":
        with open(os.path.join(tmp, "race_wsgi.py"), "w") as f:
            f.write(WSGI_APP)
        return Child("gunicorn (gthread)", [sys.executable, "-m", "gunicorn", "race_wsgi:app", "-b", f"127.0.0.1:{port}",
                                            "-k", "gthread", "--threads", "8", "--keep-alive", str(KEEPALIVE_TIMEOUT),
                                            "--log-level", "warning"], tmp, port)
    if name == "fastka":
        return Child("fastka serve", [sys.executable, "-m", "fastka", "serve", "--port", str(port),
                                      "--keepalive-timeout", str(KEEPALIVE_TIMEOUT)], ROOT, port)
    raise ValueError(f"unknown server {name!r}; allowed: nginx, uvicorn, gunicorn, fastka")


def start_relay(upstream: int, delay: float) -> Child:
    port = free_port()
    return Child(f"relay to {upstream}", [sys.executable, os.path.abspath(__file__), "--relay", str(port), str(upstream),
                                          str(delay)], ROOT, port)


# -- the race's clients ------------------------------------------------------------------

def gaps(seed: int, n: int) -> List[float]:
    rng = random.Random(seed)
    return [rng.uniform(*GAP) for _ in range(n)]


def run_urllib3(url: str, waits: List[float], fastka_pool: bool) -> int:
    import urllib3

    import fastka.pools

    pm = fastka.pools.PoolManager(maxsize=1, idle_timeout=IDLE_TIMEOUT) if fastka_pool else urllib3.PoolManager(maxsize=1)
    failed = 0
    try:
        for gap in waits:
            try:
                pm.request("GET", url, retries=False, timeout=10).data
            except Exception:
                failed += 1
            time.sleep(gap)
    finally:
        pm.clear()
    return failed


def run_requests(url: str, waits: List[float], fastka_pool: bool) -> int:
    import requests

    import fastka.pools

    failed = 0
    with requests.Session() as session:
        if fastka_pool:
            session.mount("http://", fastka.pools.HTTPAdapter(pool_maxsize=1, idle_timeout=IDLE_TIMEOUT))
        for gap in waits:
            try:
                session.get(url, timeout=10).content
            except Exception:
                failed += 1
            time.sleep(gap)
    return failed


def run_aiohttp(url: str, waits: List[float], fastka_pool: bool) -> int:
    import aiohttp

    import fastka.pools

    async def main() -> int:
        connector = fastka.pools.TCPConnector(limit=1, keepalive_timeout=IDLE_TIMEOUT) if fastka_pool else aiohttp.TCPConnector(limit=1)
        failed = 0
        async with aiohttp.ClientSession(connector=connector) as session:
            session._retry_connection = False  # as for a request that is not idempotent
            for gap in waits:
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                        await response.read()
                except Exception:
                    failed += 1
                await asyncio.sleep(gap)
        return failed

    return asyncio.run(main())


CLIENTS: Dict[str, Callable[[str, List[float], bool], int]] = {
    "urllib3": run_urllib3, "requests": run_requests, "aiohttp": run_aiohttp,
}


def race(servers: List[str], n: int, delay: float, seed: int) -> None:
    waits = gaps(seed, n)
    print(f"reuse race: {n} requests per client, gaps {GAP[0]}..{GAP[1]} s around a {KEEPALIVE_TIMEOUT} s keep-alive "
          f"timeout, relay {delay * 1000:g} ms each way, seed {seed} (about {sum(waits) / 60:.1f} min)", flush=True)
    started: List[object] = []
    results: Dict[Tuple[str, str, bool], int] = {}
    tmp = tempfile.mkdtemp(prefix="reuse_race_")
    labels: Dict[str, str] = {}
    try:
        threads = []
        for name in servers:
            try:
                server = start_server(name, tmp)
            except (RuntimeError, OSError) as exc:
                print(f"  {name}: skipped ({exc})")
                continue
            started.append(server)
            relay = start_relay(server.port, delay)  # type: ignore[attr-defined]
            started.append(relay)
            labels[name] = server.label  # type: ignore[attr-defined]
            url = f"http://127.0.0.1:{relay.port}/"
            for client, run in CLIENTS.items():
                for with_fastka in (False, True):
                    def work(name=name, client=client, run=run, with_fastka=with_fastka, url=url) -> None:
                        results[(name, client, with_fastka)] = run(url, waits, with_fastka)
                    threads.append(threading.Thread(target=work, daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=sum(waits) + 60 * 1 + n * 25)  # each request may wait its 10 s timeouts
    finally:
        for child in reversed(started):
            child.stop()  # type: ignore[attr-defined]
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'server':<22}{'client':<10}{'plain':>14}{'fastka.pools':>16}")
    for name in servers:
        if name not in labels:
            continue
        for client in CLIENTS:
            plain, fast = results.get((name, client, False)), results.get((name, client, True))
            cell = lambda v: "unfinished" if v is None else f"{v}/{n} failed"  # noqa: E731
            print(f"{labels[name]:<22}{client:<10}{cell(plain):>14}{cell(fast):>16}")


# -- checkout cost ------------------------------------------------------------------------

def report(client: str, idle: int, plain: List[float], fast: List[float]) -> None:
    """One row: the medians of the paired rounds' times and of their ratios, with the range."""
    ratios = [f / p for p, f in zip(plain, fast)]
    print(f"{client:<10}{idle:>8}{statistics.median(plain):>10.2f}{statistics.median(fast):>11.2f}"
          f"{statistics.median(ratios):>14.2f}{min(ratios):>8.2f}..{max(ratios):.2f}")


def fill_urllib3(pm, url: str, idle: int):
    responses = [pm.request("GET", url, preload_content=False) for _ in range(idle)]
    for r in responses:
        r.read()
        r.release_conn()
    return pm.connection_from_url(url)


def urllib3_checkout(url: str, idle: int, rounds: int, per_round: int) -> None:
    import urllib3

    import fastka.pools

    plain_pm = urllib3.PoolManager(maxsize=idle)
    fast_pm = fastka.pools.PoolManager(maxsize=idle, idle_timeout=300, max_age=3600)
    try:
        pools = [fill_urllib3(plain_pm, url, idle), fill_urllib3(fast_pm, url, idle)]

        def cycle(pool) -> float:
            get, put = pool._get_conn, pool._put_conn
            t0 = time.perf_counter()
            for _ in range(per_round):
                put(get())
            return (time.perf_counter() - t0) / per_round * 1e6

        times: List[List[float]] = [[], []]
        for i in range(rounds + 1):  # round 0 warms up
            for k in ((0, 1) if i % 2 else (1, 0)):
                us = cycle(pools[k])
                if i:
                    times[k].append(us)
        report("urllib3", idle, *times)
    finally:
        plain_pm.clear()
        fast_pm.clear()


def aiohttp_checkout(url: str, idle: int, rounds: int, per_round: int) -> None:
    import aiohttp

    import fastka.pools

    async def main() -> None:
        connectors = [aiohttp.TCPConnector(limit=0), fastka.pools.TCPConnector(limit=0, max_age=3600)]
        sessions = [aiohttp.ClientSession(connector=c) for c in connectors]
        try:
            for session in sessions:
                async def one(session=session) -> None:
                    async with session.get(url) as response:
                        await response.read()
                await asyncio.gather(*(one() for _ in range(idle)))

            async def cycle(connector) -> float:
                (key,) = list(connector._conns)
                t0 = time.perf_counter()
                for _ in range(per_round):
                    (await connector._get(key, [])).release()
                return (time.perf_counter() - t0) / per_round * 1e6

            times: List[List[float]] = [[], []]
            for i in range(rounds + 1):  # round 0 warms up
                for k in ((0, 1) if i % 2 else (1, 0)):
                    us = await cycle(connectors[k])
                    if i:
                        times[k].append(us)
            report("aiohttp", idle, *times)
        finally:
            for session in sessions:
                await session.close()

    asyncio.run(main())


def checkout_cost(rounds: int, per_round: int = 3000) -> None:
    port = free_port()
    server = Child("fastka serve", [sys.executable, "-m", "fastka", "serve", "--port", str(port),
                                    "--keepalive-timeout", "600", "--max-requests", "1000000"], ROOT, port)
    url = f"http://127.0.0.1:{port}/"
    try:
        print(f"\ncheckout cost: one checkout and return of a pooled connection (urllib3 _get_conn + _put_conn, "
              f"aiohttp _get + release), fastka {fastka.IMPLEMENTATION} backend, {rounds} paired rounds of {per_round}:")
        print(f"{'client':<10}{'idle':>8}{'plain us':>10}{'fastka us':>11}{'ratio median':>14}{'range':>16}")
        for idle in (1, 100):
            urllib3_checkout(url, idle, rounds, per_round)
        for idle in (1, 100):
            aiohttp_checkout(url, idle, rounds, per_round)
    finally:
        server.stop()


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--relay":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_relay_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per client and server (default 500)")
    parser.add_argument("--servers", default="nginx,uvicorn,gunicorn,fastka")
    parser.add_argument("--delay", type=float, default=0.03, help="relay delay each way, seconds (default 0.03)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--checkout-rounds", type=int, default=15)
    parser.add_argument("--no-race", action="store_true")
    parser.add_argument("--no-checkout", action="store_true")
    args = parser.parse_args()
    if args.requests < 1 or not 0 <= args.delay <= 1 or args.checkout_rounds < 1:
        parser.error("--requests and --checkout-rounds must be >= 1, --delay 0..1 s")
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python", sys.version.split()[0])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if not args.no_checkout:
        checkout_cost(args.checkout_rounds)
    if not args.no_race:
        race([s for s in args.servers.split(",") if s], args.requests, args.delay, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
