"""`fastka demo`: thousands of loopback connections, sorted by a KeepaliveManager.

Opens N connections on loopback (both ends in this process), configures the server ends
in one ``set_keepalive_many`` call, hands them to a manager with a short idle timeout and
then, on the client side: keeps a tenth busy (a byte every quarter timeout; the server
reads it and calls ``touch``), resets a tenth (SO_LINGER 0, close), half-closes a tenth
(``shutdown(SHUT_WR)``) and leaves the rest idle. It prints what the manager reported and
how long each detection took, and checks that the counts match what was done (exit
status 1 if not). Each backend runs in turn; at the end a table compares what differs
between them: the cost per connection of ``set_keepalive_many`` and ``add``, and of one
poll tick with the busy tenth readable.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import time
from typing import Dict, List, Tuple

from .. import Event, KeepaliveConfig, _backends
from . import _args, loopback_room
from ._progress import Progress
from .bench import render

RESERVED_FDS = 64
CONFIG = KeepaliveConfig()
DEFAULT_CONNECTIONS = 2000


def _room() -> Tuple[int, str]:
    """The most connections the demo can open (both ends in this process: two fds each),
    and what sets that bound."""
    return loopback_room(2, RESERVED_FDS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    room, why = _room()
    parser.add_argument("--connections", default=None, metavar="N",
                        type=_args.integer(10, room, why),
                        help=f"loopback connections to open (default {DEFAULT_CONNECTIONS},"
                             " fewer if the open-file limit or the port range is low)")
    parser.add_argument("--idle-timeout", type=_args.seconds(0.1, 60), default=2.0, metavar="SECONDS",
                        help="the manager's idle timeout (default 2)")
    parser.add_argument("--backend", choices=(*_backends.NAMES, "both"), default="both",
                        help="backend(s) to run on (default both, one after the other)")


def _open_pairs(n: int) -> Tuple[socket.socket, List[socket.socket], List[socket.socket]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    clients: List[socket.socket] = []
    servers: List[socket.socket] = []
    try:
        with Progress(n, "opening connections") as bar:
            addr = listener.getsockname()
            while len(clients) < n:
                batch = min(256, n - len(clients))
                for _ in range(batch):
                    try:
                        clients.append(socket.create_connection(addr))
                    except OSError as exc:
                        raise RuntimeError(f"loopback connection {len(clients) + 1} of {n} failed:"
                                           f" {exc.strerror or exc}") from None
                for _ in range(batch):
                    s, _ = listener.accept()
                    s.setblocking(False)
                    servers.append(s)
                bar.update(batch)
    except BaseException:
        for s in clients + servers:
            s.close()
        listener.close()
        raise
    return listener, clients, servers


def _best(fn, times: int = 5) -> float:
    """The shortest of ``times`` timings of fn() (seconds)."""
    best = float("inf")
    for _ in range(times):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_once(backend: _backends.Backend, n: int, idle_timeout: float) -> Tuple[bool, Dict[str, float]]:
    """One demo run; returns (counts matched, seconds per connection of each cost measured)."""
    print(f"== backend {backend.name}: {n} connections, idle timeout {idle_timeout:g} s ==")
    listener, clients, servers = _open_pairs(n)
    mgr = None
    try:
        tenth = max(1, n // 10)
        plan: Dict[str, List[int]] = {"busy": list(range(0, tenth)),
                                      "reset": list(range(tenth, 2 * tenth)),
                                      "half-closed": list(range(2 * tenth, 3 * tenth)),
                                      "idle": list(range(3 * tenth, n))}
        busy = {servers[i] for i in plan["busy"]}
        costs: Dict[str, float] = {}

        def configure():
            if backend.set_keepalive_many(servers, CONFIG):
                raise RuntimeError("set_keepalive_many failed on connected loopback sockets")

        costs["set_keepalive_many"] = _best(configure) / n
        # The other costs on a manager of their own, so that the demo's starts with fresh clocks.
        probe = backend.KeepaliveManager(None, close=False)
        try:
            t0 = time.perf_counter()
            for s in servers:
                probe.add(s)
            costs["manager.add"] = (time.perf_counter() - t0) / n
            # One poll tick with the busy tenth readable (the bytes stay unread, so every
            # tick reports the same sockets); the first ticks wait for them to arrive.
            for i in plan["busy"]:
                clients[i].send(b"x")
            seen: set = set()
            deadline = time.monotonic() + 10
            while seen != busy and time.monotonic() < deadline:
                seen.update(sock for sock, ev in probe.poll(0.1) if ev == Event.READABLE)
            if seen != busy:
                raise RuntimeError(f"{len(busy - seen)} loopback connections never turned readable")

            def one_tick():
                if len(probe.poll(0)) != len(busy):
                    raise RuntimeError("a poll tick missed readable connections")

            costs[f"poll tick ({len(busy)} ready)"] = _best(one_tick)
        finally:
            probe.close()
        for s in busy:
            s.recv(4096)
        mgr = backend.KeepaliveManager(idle_timeout=idle_timeout)
        t0 = time.monotonic()  # before the first add: no idle clock starts earlier
        for s in servers:
            mgr.add(s)

        expected = {Event.RESET: len(plan["reset"]), Event.PEER_CLOSED: len(plan["half-closed"]),
                    Event.IDLE: len(plan["idle"])}
        linger0 = struct.pack("ii", 1, 0)
        for i in plan["reset"]:
            clients[i].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
            clients[i].close()
        for i in plan["half-closed"]:
            clients[i].shutdown(socket.SHUT_WR)
        times: Dict[Event, List[float]] = {ev: [] for ev in expected}
        other: Dict[Event, int] = {}
        touches = 0
        want = sum(expected.values())
        got = 0
        next_beat = t0
        deadline = t0 + idle_timeout * 2 + 2
        with Progress(want, "waiting for the manager") as bar:
            while got < want and time.monotonic() < deadline:
                now = time.monotonic()
                if now >= next_beat:
                    for i in plan["busy"]:
                        clients[i].send(b"x")
                    next_beat = now + idle_timeout / 4
                for sock, ev in mgr.poll(min(0.05, idle_timeout / 8)):
                    if ev == Event.READABLE and sock in busy:
                        sock.recv(4096)
                        mgr.touch(sock)
                        touches += 1
                    elif ev in times:
                        times[ev].append(time.monotonic() - t0)
                        got += 1
                        bar.update()
                    else:
                        other[Event(ev)] = other.get(Event(ev), 0) + 1
        still_busy = sum(1 for s in busy if s in mgr)
        ok = all(len(times[ev]) == expected[ev] for ev in expected) and not other and still_busy == len(busy)

        print(f"{'event':<12} {'expected':>8} {'reported':>8} {'min ms':>9} {'median ms':>10} {'max ms':>9}")
        for ev, ts in times.items():
            if ts:
                cols = f"{min(ts) * 1e3:9.1f} {statistics.median(ts) * 1e3:10.1f} {max(ts) * 1e3:9.1f}"
            else:
                cols = f"{'-':>9} {'-':>10} {'-':>9}"
            print(f"{ev.name:<12} {expected[ev]:>8} {len(ts):>8} {cols}")
        for ev, count in other.items():
            print(f"{ev.name:<12} {0:>8} {count:>8}")
        print(f"{'busy (open)':<12} {len(busy):>8} {still_busy:>8}   ({touches} touches)")
        print("OK: counts match" if ok else "MISMATCH: the manager reported other counts than expected")
        return ok, costs
    finally:
        if mgr is not None:
            mgr.close()
        for s in clients + servers:
            s.close()
        listener.close()


def compare(costs: Dict[str, Dict[str, float]]) -> str:
    """The table of costs in microseconds, one column per backend, and the ratio of the
    first two."""
    names = list(costs)
    head = ["cost", *names, *([f"{names[1]}/{names[0]}"] if len(names) > 1 else [])]
    body = []
    for what, first in costs[names[0]].items():
        row = [what, *(f"{costs[b][what] * 1e6:.2f} us" for b in names)]
        if len(names) > 1:
            row.append(f"{costs[names[1]][what] / first:.1f}x")
        body.append(row)
    return render(head, body) + "\n(per connection; the poll tick per tick)"


def run(args: argparse.Namespace) -> int:
    room, why = _room()
    n = args.connections if args.connections is not None else min(DEFAULT_CONNECTIONS, room)
    if n < 10:
        print(f"fastka demo: error: {why} leaves room for {n} connections; need at least 10", file=sys.stderr)
        return 2
    chosen, skipped = _backends.available()
    if args.backend != "both":
        picked = [b for b in chosen if b.name == args.backend]
        if not picked:
            print(f"fastka demo: error: argument --backend: {args.backend} cannot run: {skipped[args.backend]}",
                  file=sys.stderr)
            return 2
        chosen, skipped = picked, {}
    for name, why in skipped.items():
        print(f"backend {name}: skipped ({why})")
    results = {}
    for b in chosen:
        results[b.name] = run_once(b, n, args.idle_timeout)
        print()
    print(compare({name: costs for name, (_, costs) in results.items()}))
    return 0 if all(ok for ok, _ in results.values()) else 1
