"""`fastka demo`: thousands of loopback connections, sorted by a KeepaliveManager.

Opens N connections on loopback (both ends in this process), configures the server ends
in one ``set_keepalive_many`` call, hands them to a manager with a short idle timeout and
then, on the client side: keeps a tenth busy (a byte every quarter timeout; the server
reads it and calls ``touch``), resets a tenth (SO_LINGER 0, close), half-closes a tenth
(``shutdown(SHUT_WR)``) and leaves the rest idle. It prints what the manager reported and
how long each detection took, checks that the counts match what was done (exit status 1
if not) and repeats the run on the other backend for comparison.
"""
from __future__ import annotations

import argparse
import importlib
import socket
import statistics
import struct
import sys
import time
from typing import Dict, List, Tuple

from ._progress import Progress
from ._types import Event

RESERVED_FDS = 64
MODULES = {"c": ("fastka._keepalive_c", "fastka._manager_c"),
           "python": ("fastka._keepalive_py", "fastka._manager_py")}


def _fd_room() -> int:
    """Most connection pairs the open-file limit allows (raising the soft limit if needed)."""
    try:
        import resource
    except ImportError:
        return 500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(0, (soft - RESERVED_FDS) // 2)


def _connections(text: str) -> int:
    room = _fd_room()
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 4 <= n <= room:
        raise argparse.ArgumentTypeError(
            f"{n} is out of range; allowed: 4..{room} (two fds per connection under the open-file limit)")
    return n


def _timeout(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= t <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; allowed: 0.1..60 seconds")
    return t


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=_connections, default=None, metavar="N",
                        help="loopback connections to open (default 2000, fewer if the open-file limit is low)")
    parser.add_argument("--idle-timeout", type=_timeout, default=2.0, metavar="SECONDS",
                        help="the manager's idle timeout (default 2)")
    parser.add_argument("--backend", choices=("c", "python", "both"), default="both",
                        help="backend(s) to run on (default both: compiled first, then the fallback)")


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
                    c = socket.create_connection(addr)
                    clients.append(c)
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


def run_once(backend: str, n: int, idle_timeout: float) -> Tuple[bool, float]:
    """One demo run; returns (counts matched, seconds taken)."""
    from ._config import KeepaliveConfig

    ka = importlib.import_module(MODULES[backend][0])
    mgr_mod = importlib.import_module(MODULES[backend][1])
    print(f"\n== backend {backend}: {n} connections, idle timeout {idle_timeout:g} s ==")
    start = time.perf_counter()
    listener, clients, servers = _open_pairs(n)
    mgr = None
    try:
        t = time.perf_counter()
        failed = ka.set_keepalive_many(servers, KeepaliveConfig(idle=60, interval=10, count=5))
        t_config = time.perf_counter() - t
        mgr = mgr_mod.KeepaliveManager(idle_timeout=idle_timeout)
        t = time.perf_counter()
        for s in servers:
            mgr.add(s)
        t_add = time.perf_counter() - t
        print(f"set_keepalive_many: {n} sockets in {t_config * 1e3:.2f} ms ({len(failed)} failed);"
              f" manager.add: {t_add * 1e3:.2f} ms")

        tenth = max(1, n // 10)
        plan: Dict[str, List[int]] = {"busy": list(range(0, tenth)),
                                      "reset": list(range(tenth, 2 * tenth)),
                                      "half-closed": list(range(2 * tenth, 3 * tenth)),
                                      "idle": list(range(3 * tenth, n))}
        expected = {Event.RESET: len(plan["reset"]), Event.PEER_CLOSED: len(plan["half-closed"]),
                    Event.IDLE: len(plan["idle"])}
        busy = {servers[i] for i in plan["busy"]}
        t0 = time.monotonic()
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
        elapsed = time.perf_counter() - start
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
        print(f"{'result':<12} {'OK: counts match' if ok else 'MISMATCH'}; run took {elapsed:.2f} s")
        return ok, elapsed
    finally:
        if mgr is not None:
            mgr.close()
        for s in clients + servers:
            s.close()
        listener.close()


def run(args: argparse.Namespace) -> int:
    n = args.connections if args.connections is not None else min(2000, _fd_room())
    if n < 4:
        print(f"fastka demo: error: the open-file limit leaves room for {n} connections; need at least 4", file=sys.stderr)
        return 2
    backends = ["c", "python"] if args.backend == "both" else [args.backend]
    results = {}
    for b in backends:
        try:
            importlib.import_module(MODULES[b][0])
            importlib.import_module(MODULES[b][1])
        except ImportError as exc:
            if args.backend == "both" and b == "c":
                print(f"\n== backend c: not built ({exc}); skipped ==")
                continue
            print(f"fastka demo: error: --backend {b}: not available ({exc})", file=sys.stderr)
            return 2
        results[b] = run_once(b, n, args.idle_timeout)
    if len(results) > 1:
        print("\n" + "  ".join(f"{b}: {t:.2f} s" for b, (_, t) in results.items()))
    return 0 if all(ok for ok, _ in results.values()) else 1
