"""`fastka bench`: each backend side by side with the other and with its floor, in one run.

Scenarios, at each size N (default 10,000 and the most the open-file limit allows):

  set_keepalive_many     one call over N sockets; floor: the same four setsockopt calls
                         per socket in a plain Python loop
  find_dead (1% dead)    one call over N sockets; floor: one select.poll() over them
  poll tick (10% ready)  poll(0) returning the N/10 readable sockets; floor: a bare
                         select.epoll().poll() over the same sockets
  idle expiry            poll() reporting all N as IDLE (close=False); floor: removing the
                         N sockets from a bare epoll (the one system call per connection
                         that expiring without closing needs)

Every floor is something an installed fastka can run (no compiler, no source checkout).
The C floors of the system calls live in benchmarks/ (pytest-benchmark). Times are the
best of ``--repeat`` runs taken in turns, so that load from elsewhere hits the contenders
alike. Connections are real loopback TCP connections whose client ends live in a child
process, so that this process can hold as many as its open-file limit allows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import select
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .. import KeepaliveConfig, _backends
from . import _args, loopback_room
from ._progress import Progress

TICK_SIZE = 10000
QUICK_SIZES = (200, 1000)
RESERVED_FDS = 1000  # left free under the open-file limit for the interpreter and pipes
CONFIG = KeepaliveConfig()
IDLE = 0.05  # seconds: the idle timeout of the expiry scenario
TICK_SAMPLES = 5  # a tick is short: this many more samples than the other scenarios


# ---- Connections ----------------------------------------------------------------------

def default_sizes() -> List[int]:
    """10,000 where the bounds of :func:`loopback_room` allow it, and the most they allow
    (rounded down to a thousand where that is at least a thousand); empty where they
    allow fewer than ten."""
    limit = loopback_room(1, RESERVED_FDS)[0]
    if limit >= 1000:
        limit = limit // 1000 * 1000
    return sorted({*(n for n in (TICK_SIZE,) if n <= limit), limit}) if limit >= 10 else []


_PEER = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = {}
for _ in range(n):
    try:
        s = socket.create_connection((host, port))
    except OSError as exc:
        sys.exit(f"connect failed: {exc.strerror}")
    socks[s.getsockname()[1]] = s
print("ready", flush=True)
for line in sys.stdin:
    cmd, *ports = line.split()
    for p in map(int, ports):
        if cmd == "close":
            socks.pop(p).close()
        elif cmd == "send":
            socks[p].send(b"x")
    print("ok", flush=True)
"""


class Pool:
    """``n`` connected loopback TCP sockets (``pool.socks``), their peers in a child process.

    ``close_peers(i)`` / ``send(i)`` make the peers of ``socks[i]`` for i in ``i`` close
    (a FIN arrives) or send one byte (the socket turns readable).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.socks: List[socket.socket] = []
        self._listener = socket.socket()
        self._proc: Optional[subprocess.Popen] = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        lst = self._listener
        lst.bind(("127.0.0.1", 0))
        lst.listen(4096)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _PEER, "127.0.0.1", str(lst.getsockname()[1]), str(self.n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        lst.settimeout(0.1)
        deadline = time.monotonic() + 30
        while len(self.socks) < self.n:
            try:
                self.socks.append(lst.accept()[0])
            except socket.timeout:
                if self._proc.poll() is not None:
                    lines = self._proc.stderr.read().strip().splitlines() or [f"exit status {self._proc.returncode}"]
                    raise RuntimeError(f"the peer process stopped after {len(self.socks)} of {self.n}"
                                       f" connections: {lines[-1]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the peer process opened {len(self.socks)} of {self.n}"
                                       " connections in 30 s") from None
        for s in self.socks:
            s.setblocking(False)
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the peer process failed to connect {self.n} sockets")
        self._ports = [s.getpeername()[1] for s in self.socks]

    def _command(self, cmd: str, indices: Sequence[int]) -> None:
        self._proc.stdin.write(cmd + " " + " ".join(str(self._ports[i]) for i in indices) + "\n")
        self._proc.stdin.flush()
        if self._proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"the peer process did not {cmd}")

    def close_peers(self, indices: Sequence[int]) -> None:
        self._command("close", indices)
        _wait_for(indices, self.socks, select.POLLRDHUP if hasattr(select, "POLLRDHUP") else select.POLLIN)

    def send(self, indices: Sequence[int]) -> None:
        self._command("send", indices)
        _wait_for(indices, self.socks, select.POLLIN)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []
        self._listener.close()
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
            self._proc.stdout.close()
            self._proc.stderr.close()
            self._proc = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_for(indices: Sequence[int], socks: Sequence[socket.socket], event: int, timeout: float = 10.0) -> None:
    """Wait until every socks[i] reports ``event`` (loopback delivers within microseconds)."""
    waiting = {socks[i].fileno() for i in indices}
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        p = select.poll()
        for fd in waiting:
            p.register(fd, event)
        for fd, ev in p.poll(100):
            if ev & event:
                waiting.discard(fd)
    if waiting:
        raise RuntimeError(f"{len(waiting)} sockets never saw the peer's data or FIN")


# ---- Timing ---------------------------------------------------------------------------

@dataclass
class Row:
    """One scenario at one size: seconds per ``unit`` for each backend and the floor."""

    scenario: str
    n: int
    unit: str
    times: Dict[str, float] = field(default_factory=dict)


def race(repeat: int, runs: Dict[str, Callable[[], float]]) -> Dict[str, float]:
    """The smallest of ``repeat`` timings of each contender, taken in turns (one warm-up
    run each first), so that a burst of load from elsewhere hits them all alike."""
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    return best


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def tick(poll: Callable[[float], list], nready: int, what: str) -> int:
    """One poll tick: poll(0) until ``nready`` readable connections were reported (one
    call where the poller returns every ready event at once; a poller that returns at most
    so many per call, as epoll_wait's maxevents, takes more). Returns the number of calls."""
    got = calls = 0
    while got < nready:
        events = poll(0)
        calls += 1
        if not events or len(events) > nready:
            raise RuntimeError(f"a poll tick of {what} returned {len(events)} events with {nready} readable")
        got += len(events)
    return calls


# ---- Scenarios ------------------------------------------------------------------------

FLOORS = {
    "set_keepalive_many": "4 setsockopt calls per socket in a Python loop",
    "find_dead (1% dead)": "one select.poll() over the N sockets",
    "poll tick (10% ready)": "one select.epoll().poll() over the same sockets",
    "idle expiry": "epoll.unregister of the N sockets from a bare epoll",
}


class Bench:
    """Runs the scenarios on ``chosen`` backends; ``rows`` collects the results."""

    def __init__(self, chosen: Sequence[_backends.Backend], sizes: Sequence[int], repeat: int, progress) -> None:
        self.backends = list(chosen)
        self.sizes = list(sizes)
        self.repeat = repeat
        self.progress = progress
        self.rows: List[Row] = []

    def steps(self) -> int:
        """How many times run() advances the progress bar."""
        return len(self.sizes) * len(FLOORS)

    def run(self) -> None:
        for n in self.sizes:
            with Pool(n) as pool:
                self.many(pool)
                self.poll_tick(pool)
                self.expiry(pool)
                self.find_dead(pool)  # last: it closes 1% of the peers

    def _race(self, scenario: str, n: int, unit: str, runs: Dict[str, Callable[[], float]],
              per: int, repeat: Optional[int] = None) -> None:
        best = race(self.repeat if repeat is None else repeat, runs)
        self.rows.append(Row(scenario, n, unit, {name: t / per for name, t in best.items()}))
        self.progress.update(1)

    def _race_calls(self, scenario: str, pool: Pool, call: Callable[[_backends.Backend], None],
                    floor: Callable[[], None]) -> None:
        """Race ``call(backend)`` for each backend against ``floor()``, per socket of ``pool``."""
        runs = {b.name: (lambda b=b: timed(lambda: call(b))) for b in self.backends}
        runs["floor"] = lambda: timed(floor)
        self._race(scenario, pool.n, "socket", runs, pool.n)

    def many(self, pool: Pool) -> None:
        socks = pool.socks

        def call(b: _backends.Backend) -> None:
            if b.set_keepalive_many(socks, CONFIG):
                raise RuntimeError("set_keepalive_many failed on connected TCP sockets")

        options = CONFIG.socket_options()  # the calls set_keepalive makes, one setsockopt each

        def floor() -> None:
            for s in socks:
                for level, option, value in options:
                    s.setsockopt(level, option, value)

        self._race_calls("set_keepalive_many", pool, call, floor)

    def find_dead(self, pool: Pool) -> None:
        socks, n = pool.socks, pool.n
        dead_idx = list(range(0, n, 100))
        pool.close_peers(dead_idx)
        want = [socks[i] for i in dead_idx]
        fds = [s.fileno() for s in socks]
        gone = select.POLLRDHUP | select.POLLHUP | select.POLLERR

        def call(b: _backends.Backend) -> None:
            if b.find_dead(socks) != want:
                raise RuntimeError("find_dead missed the dead connections")

        def floor() -> None:
            p = select.poll()
            for fd in fds:
                p.register(fd, select.POLLRDHUP)
            if sum(1 for _, ev in p.poll(0) if ev & gone) != len(want):
                raise RuntimeError("the find_dead floor disagrees with find_dead")

        self._race_calls("find_dead (1% dead)", pool, call, floor)

    def poll_tick(self, pool: Pool) -> None:
        socks, n = pool.socks, pool.n
        readable = list(range(0, n, 10))
        pool.send(readable)
        managers = []
        ep = select.epoll(n)
        try:
            runs = {}
            for b in self.backends:
                mgr = b.KeepaliveManager(None, close=False)
                managers.append(mgr)
                for s in socks:
                    mgr.add(s)
                runs[b.name] = self._tick(mgr.poll, len(readable), f"the {b.name} manager")
            for s in socks:
                ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            runs["floor"] = self._tick(lambda timeout: ep.poll(timeout, n), len(readable), "the epoll floor")
            self._race("poll tick (10% ready)", n, "tick", runs, 1, self.repeat * TICK_SAMPLES)
        finally:
            ep.close()
            for mgr in managers:
                mgr.close()
        for i in readable:  # read the byte back: the sockets are idle again
            socks[i].recv(1)

    @staticmethod
    def _tick(poll: Callable[[float], list], nready: int, what: str) -> Callable[[], float]:
        return lambda: timed(lambda: tick(poll, nready, what))

    def expiry(self, pool: Pool) -> None:
        socks, n = pool.socks, pool.n
        fds = [s.fileno() for s in socks]

        def expire(Manager) -> float:
            """poll() until all N came out through IDLE, their idle timeout having passed."""
            mgr = Manager(IDLE, close=False)
            try:
                for s in socks:
                    mgr.add(s)
                time.sleep(IDLE * 1.5)
                got = 0
                t0 = time.perf_counter()
                while got < n:
                    events = mgr.poll(0)
                    if not events:
                        break
                    got += len(events)
                dt = time.perf_counter() - t0
            finally:
                mgr.close()
            if got != n:
                raise RuntimeError(f"expiry reported {got} of {n} idle connections")
            return dt

        def floor() -> float:
            with select.epoll(n) as ep:
                for fd in fds:
                    ep.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
                unregister = ep.unregister
                return timed(lambda: [unregister(fd) for fd in fds])

        runs = {b.name: (lambda M=b.KeepaliveManager: expire(M)) for b in self.backends}
        runs["floor"] = floor
        self._race("idle expiry", n, "socket", runs, n)


# ---- Output ---------------------------------------------------------------------------

def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def columns(names: Sequence[str]) -> List[str]:
    """The table's header for backends ``names`` (preferred first)."""
    head = ["scenario", "N", *names, "floor"]
    if len(names) > 1:
        head.append(f"{names[1]}/{names[0]}")
    return head + [f"{names[0]}/floor"]


def table_rows(rows: Sequence[Row], names: Sequence[str]) -> List[List[str]]:
    """The table's lines: each backend's and the floor's time per unit, how many times
    faster the first backend is than the second, and the first backend over its floor."""
    out = []
    for row in rows:
        t = row.times
        line = [row.scenario, str(row.n), *(f"{fmt_time(t[k])}/{row.unit}" for k in (*names, "floor"))]
        if len(names) > 1:
            line.append(f"{t[names[1]] / t[names[0]]:.2f}x")
        out.append(line + [f"{t[names[0]] / t['floor']:.2f}"])
    return out


def render(head: List[str], body: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]

    def line(cells: List[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg"] = os.getloadavg()
    return info


def plot(rows: Sequence[Row], names: Sequence[str], path: str) -> None:
    """Cost per connection against N for each scenario: each backend and the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(FLOORS)
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.5 * len(scenarios), 3.6), squeeze=False)
    for ax, name in zip(axes.flat, scenarios):
        mine = sorted((r for r in rows if r.scenario == name), key=lambda r: r.n)
        for key in (*names, "floor"):
            pts = [(r.n, r.times[key] / (r.n if r.unit == "tick" else 1)) for r in mine]
            ax.plot([p[0] for p in pts], [p[1] * 1e6 for p in pts], marker="o", label=key,
                    linestyle="--" if key == "floor" else "-")
        ax.set_title(name)
        ax.set_xlabel("N")
        ax.set_ylabel("us per connection")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("fastka bench: cost per connection (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- Command line ---------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run each backend side by side with the other and with its floor (bare system calls "
        "an installed fastka can make); print one table. Times are the best of --repeat runs."
    )
    limit, why = loopback_room(1, RESERVED_FDS)
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: sizes {','.join(map(str, QUICK_SIZES))}, 3 repeats")
    parser.add_argument("--sizes", metavar="N,N,...",
                        type=_args.integers(10, limit, why),
                        help=f"connection counts (default: {','.join(map(str, default_sizes())) or 'none fit'})")
    parser.add_argument("--repeat", type=_args.integer(1, 1000), metavar="R",
                        help="timings per measurement, best kept (default 15; 3 with --quick)")
    parser.add_argument("--json", metavar="FILE", type=_args.output_file,
                        help="also write the figures as JSON to FILE (written at the end of a run that completes)")
    parser.add_argument("--plot", metavar="FILE.png", type=_args.output_file,
                        help="also draw cost per connection against N (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    if not sys.platform.startswith("linux"):
        print(f"fastka bench: error: the scenarios use Linux's epoll and TCP_KEEPIDLE, not available on {sys.platform}",
              file=sys.stderr)
        return 2
    if args.plot:
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
        except ImportError:
            print("fastka bench: error: --plot needs matplotlib (pip install 'fastka[plot]')", file=sys.stderr)
            return 2
        formats = FigureCanvasAgg.get_supported_filetypes()
        if os.path.splitext(args.plot)[1][1:].lower() not in formats:
            print(f"fastka bench: error: argument --plot: {args.plot!r} does not end in the name of a format"
                  f" matplotlib draws ({', '.join(sorted(formats))})", file=sys.stderr)
            return 2
    sizes = args.sizes or (list(QUICK_SIZES) if args.quick else default_sizes())
    room, why = loopback_room(1, RESERVED_FDS)
    if max(sizes, default=0) > room or not sizes:
        print(f"fastka bench: error: {why} leaves room for {room} connections, fewer than"
              f" {max(sizes, default=10)}", file=sys.stderr)
        return 2
    repeat = args.repeat or (3 if args.quick else 15)
    chosen, skipped = _backends.available()
    names = [b.name for b in chosen]
    for name, why in skipped.items():
        print(f"backend {name}: skipped ({why})")
    start = time.monotonic()
    bench = Bench(chosen, sizes, repeat, None)
    with Progress(bench.steps(), "fastka bench") as bar:
        bench.progress = bar
        bench.run()
    order = list(FLOORS)
    bench.rows.sort(key=lambda r: (order.index(r.scenario), r.n))
    head, body = columns(names), table_rows(bench.rows, names)
    print(render(head, body))
    width = max(map(len, FLOORS))
    for i, (scenario, floor) in enumerate(FLOORS.items()):
        print(f"{'floor:' if i == 0 else '':<7}{scenario:<{width}}  {floor}")
    first = names[0]
    if len(names) > 1:
        print(f"{head[-2]}: how many times faster {first} is than {names[1]};", end=" ")
    print(f"{first}/floor: {first}'s time over the floor's (below 1.00: cheaper than the bare calls from Python)")
    print(f"N = {', '.join(map(str, sizes))}; best of {repeat} (poll tick: of {repeat * TICK_SAMPLES});"
          f" run took {time.monotonic() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "repeat": repeat, "backends": names, "skipped": skipped,
                       "rows": [asdict(r) for r in bench.rows], "columns": head, "table": body}, f, indent=2)
    if args.plot:
        plot(bench.rows, names, args.plot)
    return 0
