"""The bookkeeping of an idle clock: fastka.aio.KeepaliveReaper against one loop timer per
connection (the pattern uvicorn uses for its keep-alive timeout).

    python benchmarks/aio_reaper_bench.py [--connections 10000] [--touches 200000] [--rounds 3]

What this measures, and what it does not: the cost of keeping the idle clock alone, in a
loop that does nothing else. It is what a server saves by replacing a per-connection timer
with the reaper. A server that keeps its own timer and runs the reaper beside it saves
nothing of it and pays the touch on top. For a real server that replaces its timer (uvicorn
with the recipe of docs/examples/aio_uvicorn.py), see benchmarks/aio_uvicorn_bench.py.

Per event loop (asyncio's, and uvloop when installed) and per fastka backend, with N
connections tracked at once:

* touch: one request served. The reaper: ``reaper.touch(transport)``. The pattern uvicorn
  uses for ``--timeout-keep-alive``: ``handle.cancel()`` and a new
  ``loop.call_later(timeout, expire)`` per connection. Connections are touched in a
  shuffled order, the loop gets a turn every 1,000 touches (as a server's would);
* idle expiry: all N deadlines have passed; the time the loop takes until every
  connection's transport got its ``close()``;
* memory per connection: tracemalloc (Python heaps; the compiled manager's C slots are
  outside it) and the resident-set growth, for adding N connections.

The transports are stand-ins whose ``close()`` only counts, so the figures are those of the
bookkeeping, not of the kernel's socket teardown; each holds a real established TCP
connection that the reaper's manager watches: a loopback socket connected to itself
(TCP's simultaneous open), one fd per connection, so 10,000 fit under a 20,000 fd limit.
Timings are paired: each round times the timer pattern and every reaper back to back; the
figure is the median of the per-round ratios, with their range.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import socket
import statistics
import sys
import time
import tracemalloc
from typing import Any, Callable, Dict, List, Optional

from fastka import _backends
from fastka.aio import KeepaliveReaper

TIMEOUT = 75.0  # seconds: the idle timeout while touching (nothing expires)
YIELD_EVERY = 1000  # touches between two turns of the loop


class Stand:
    """A transport stand-in: a real socket for the manager, a counting close()."""

    __slots__ = ("sock", "closed", "handle")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self.handle: Optional[asyncio.TimerHandle] = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0  # nothing buffered: a close() here is done at once

    def close(self) -> None:
        self.closed = True
        CLOSES[0] += 1

    def abort(self) -> None:
        self.close()


CLOSES = [0]  # close() calls so far


def self_connected() -> socket.socket:
    """An established loopback TCP connection in one socket: connected to its own address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.connect(sock.getsockname())
    except OSError:
        sock.close()
        raise
    return sock


def reopen(conns: List[Stand]) -> None:
    for c in conns:
        c.closed = False


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(make: Callable[[], Any], n: int) -> Dict[str, float]:
    gc.collect()
    rss0 = rss_bytes()
    tracemalloc.start()
    kept = make()
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = rss_bytes()
    del kept
    return {"traced": traced / n, "rss": (rss1 - rss0) / n}


async def touch_timers(conns: List[Stand], order: List[int], loop: asyncio.AbstractEventLoop) -> float:
    """ns per touch of the cancel + call_later pattern."""
    expire = _noop
    for c in conns:
        c.handle = loop.call_later(TIMEOUT, expire)
    t0 = time.perf_counter()
    for i, k in enumerate(order):
        c = conns[k]
        c.handle.cancel()  # type: ignore[union-attr]
        c.handle = loop.call_later(TIMEOUT, expire)
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    t = time.perf_counter() - t0
    for c in conns:
        c.handle.cancel()  # type: ignore[union-attr]
        c.handle = None
    await asyncio.sleep(0)
    return t / len(order) * 1e9


async def touch_reaper(conns: List[Stand], order: List[int], backend: Any, max_requests: Optional[int]) -> float:
    """ns per reaper.touch."""
    reopen(conns)
    reaper = KeepaliveReaper(TIMEOUT, max_requests=max_requests, _backend=backend)
    async with reaper:
        for c in conns:
            reaper.add(c)  # type: ignore[arg-type]
        touch = reaper.touch
        t0 = time.perf_counter()
        for i, k in enumerate(order):
            touch(conns[k])  # type: ignore[arg-type]
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        t = time.perf_counter() - t0
    return t / len(order) * 1e9


def _noop() -> None:
    pass


async def until_all_closed(conns: List[Stand], target: int) -> float:
    """Seconds the loop needs until ``target`` close() calls happened (deadlines due)."""
    t0 = time.perf_counter()
    while CLOSES[0] < target:
        await asyncio.sleep(0)
    t = time.perf_counter() - t0
    assert all(c.closed for c in conns)
    return t


async def expire_timers(conns: List[Stand], loop: asyncio.AbstractEventLoop) -> float:
    idle = 0.05
    reopen(conns)
    for c in conns:
        c.handle = loop.call_later(idle, c.close)
    target = CLOSES[0] + len(conns)
    time.sleep(idle + 0.05)  # every deadline passes while the loop does not run
    t = await until_all_closed(conns, target)
    return t / len(conns) * 1e9


async def expire_reaper(conns: List[Stand], backend: Any) -> float:
    idle = 0.05
    reopen(conns)
    async with KeepaliveReaper(idle, _backend=backend) as reaper:
        for c in conns:
            reaper.add(c)  # type: ignore[arg-type]
        target = CLOSES[0] + len(conns)
        time.sleep(idle + 0.05)
        t = await until_all_closed(conns, target)
        assert len(reaper) == 0
    return t / len(conns) * 1e9


async def memory_timers(conns: List[Stand], loop: asyncio.AbstractEventLoop) -> Dict[str, float]:
    def make() -> List[Stand]:
        for c in conns:
            c.handle = loop.call_later(TIMEOUT, _noop)
        return conns

    m = measure_memory(make, len(conns))
    for c in conns:
        c.handle.cancel()  # type: ignore[union-attr]
        c.handle = None
    await asyncio.sleep(0)
    return m


async def memory_reaper(conns: List[Stand], backend: Any) -> Dict[str, float]:
    reopen(conns)
    async with KeepaliveReaper(TIMEOUT, _backend=backend) as reaper:

        def make() -> KeepaliveReaper:
            for c in conns:
                reaper.add(c)  # type: ignore[arg-type]
            return reaper

        return measure_memory(make, len(conns))


def loops() -> Dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    out: Dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed: asyncio's loop only")
    else:
        out["uvloop"] = uvloop.new_event_loop
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=10_000, help="connections tracked at once (default 10000)")
    ap.add_argument("--touches", type=int, default=200_000, help="touches timed per run (default 200000)")
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds (default 3)")
    args = ap.parse_args(argv)
    n = args.connections
    if n < 1 or args.touches < 1 or args.rounds < 1:
        ap.error("--connections, --touches and --rounds must be >= 1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 200 <= hard or (hard == resource.RLIM_INFINITY and soft < n + 200):
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 200, hard))
    backends = [_backends.load(name) for name in _backends.NAMES if _backends.unavailable_reason(name) is None]
    rng = random.Random(1)
    order = [rng.randrange(n) for _ in range(args.touches)]
    socks: List[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(self_connected())
    except OSError:
        for sock in socks:
            sock.close()
        raise
    conns = [Stand(s) for s in socks]
    print(f"{n} connections, {args.touches} touches, {args.rounds} paired rounds, Python {sys.version.split()[0]}")
    print("ratios: timer pattern / reaper per round (> 1: the reaper's bookkeeping is cheaper), median (range)")
    try:
        for loop_name, new_loop in loops().items():
            loop = new_loop()
            try:
                run = loop.run_until_complete
                ratios: Dict[str, List[float]] = {}
                for _ in range(args.rounds):  # each round times the timer pattern and every reaper back to back
                    base_touch = run(touch_timers(conns, order, loop))
                    base_exp = run(expire_timers(conns, loop))
                    for b in backends:
                        pairs = {
                            "touch": base_touch / run(touch_reaper(conns, order, b, None)),
                            "touch, max_requests set": base_touch / run(touch_reaper(conns, order, b, 10**6)),
                            "idle expiry": base_exp / run(expire_reaper(conns, b)),
                        }
                        for what, r in pairs.items():
                            ratios.setdefault(f"{b.name:6}  {what}", []).append(r)
                base_mem = run(memory_timers(conns, loop))
                print(f"\n{loop_name}: call_later + cancel per connection: traced {base_mem['traced']:.0f} B, RSS {base_mem['rss']:.0f} B")
                for b in backends:
                    mem = run(memory_reaper(conns, b))
                    print(f"  reaper ({b.name}) per connection: traced {mem['traced']:.0f} B, RSS {mem['rss']:.0f} B")
                for what, rs in ratios.items():
                    print(f"  {what:32} {statistics.median(rs):5.2f}x ({min(rs):.2f}-{max(rs):.2f})")
            finally:
                loop.close()
    finally:
        for s in socks:
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
