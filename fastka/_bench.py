"""`fastka bench`: the benchmark scenarios of benchmarks/ without pytest.

Each scenario runs on both backends (compiled and pure-Python fallback) and, where it is
bound by system calls, on its floor: the bare calls in a C loop (benchmarks/floor.c,
compiled now with the system compiler and called through ctypes on the same sockets) or a
bare ``select.epoll().poll()`` over the same ready sockets. Times are the best of
``--repeat`` runs (the least disturbed by other processes), as seconds per operation; the
contenders of a scenario take turns, so that load from elsewhere hits them alike.

Connections are real loopback TCP connections whose client ends live in a child process,
so that one process can hold as many as its open-file limit allows.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ._config import KeepaliveConfig
from ._progress import Progress

SIZES = (1000, 5000, 10000)
QUICK_SIZES = (100, 500)
RESERVED_FDS = 1000  # left free under the open-file limit for the interpreter, pipes, rings
SINGLE_CALLS = 2000  # calls per timing of the one-socket scenarios
CONFIG = KeepaliveConfig(idle=60, interval=10, count=5)
FLOOR_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "floor.c")
MODULES = {
    "compiled": ("fastka._keepalive_c", "fastka._manager_c"),
    "fallback": ("fastka._keepalive_py", "fastka._manager_py"),
}


# ---- Connections ----------------------------------------------------------------------

def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the new soft limit."""
    try:
        import resource
    except ImportError:  # Windows
        return 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def largest_size() -> int:
    """The most connections one process can hold: its open-file limit less a reserve,
    rounded down to a thousand."""
    return max(1000, (raise_fd_limit() - RESERVED_FDS) // 1000 * 1000)


def default_sizes() -> List[int]:
    """SIZES that fit under the open-file limit, and the most that does."""
    limit = largest_size()
    return sorted({*(n for n in SIZES if n <= limit), limit})


_PEER = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = {}
for _ in range(n):
    s = socket.create_connection((host, port))
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
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        lst.settimeout(30)
        while len(self.socks) < self.n:
            self.socks.append(lst.accept()[0])
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


# ---- Floor ----------------------------------------------------------------------------

class Floor:
    """benchmarks/floor.c built as a shared library, called on arrays of fds."""

    def __init__(self, lib: ctypes.CDLL, tmpdir: str) -> None:
        self.lib = lib
        self._tmpdir = tmpdir
        ptr = ctypes.POINTER(ctypes.c_int)
        lib.floor_set_keepalive.argtypes = [ptr, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        for name in ("floor_get_keepalive", "floor_tcp_info", "floor_find_dead"):
            getattr(lib, name).argtypes = [ptr, ctypes.c_int]

    @staticmethod
    def build() -> "Floor":
        """Compile floor.c now; RuntimeError saying why where that cannot be done."""
        if not sys.platform.startswith("linux"):
            raise RuntimeError("the C floor uses Linux socket options (TCP_KEEPIDLE, TCP_INFO, POLLRDHUP)")
        if not os.path.exists(FLOOR_SOURCE):
            raise RuntimeError(f"no {FLOOR_SOURCE} (the floor needs a source checkout)")
        cc = (sysconfig.get_config_var("CC") or "").split()[:1]
        compiler = next((c for c in (*cc, "cc", "gcc", "clang") if c and shutil.which(c)), None)
        if compiler is None:
            raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
        tmpdir = tempfile.mkdtemp(prefix="fastka-floor-")
        lib = os.path.join(tmpdir, "floor.so")
        proc = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", lib, FLOOR_SOURCE], capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise RuntimeError(f"{compiler} could not build floor.c: {proc.stderr.strip()[:200]}")
        return Floor(ctypes.CDLL(lib), tmpdir)

    def close(self) -> None:
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    @staticmethod
    def fds(socks: Sequence[socket.socket]):
        return (ctypes.c_int * len(socks))(*[s.fileno() for s in socks])


# ---- Measurements ---------------------------------------------------------------------

@dataclass
class Row:
    """One scenario at one size: seconds per operation for each implementation."""

    scenario: str
    n: int
    unit: str
    times: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


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


def load(impl: str, which: int):
    """fastka's module for ``impl`` ("compiled"/"fallback"): 0 keepalive, 1 manager.
    ImportError when it is not there."""
    return importlib.import_module(MODULES[impl][which])


class Bench:
    """Runs the scenarios; ``rows`` collects the results."""

    def __init__(self, sizes: Sequence[int], repeat: int, single_calls: int, progress) -> None:
        self.sizes = list(sizes)
        self.repeat = repeat
        self.single_calls = single_calls
        self.progress = progress
        self.rows: List[Row] = []
        self.skipped: Dict[str, str] = {}
        self.impls = {}
        for impl in MODULES:
            try:
                self.impls[impl] = load(impl, 0)
            except ImportError as exc:
                self.skipped[impl] = f"{MODULES[impl][0]} does not import: {exc}"
        self.managers = {}
        for impl in MODULES:
            try:
                self.managers[impl] = load(impl, 1).KeepaliveManager
            except (ImportError, AttributeError) as exc:
                self.skipped[f"{impl} manager"] = f"{MODULES[impl][1]} does not import: {exc}"
        try:
            self.floor: Optional[Floor] = Floor.build()
        except RuntimeError as exc:
            self.floor = None
            self.skipped["floor"] = str(exc)

    def steps(self) -> int:
        """How many times run() advances the progress bar."""
        return 3 + len(self.sizes) * (2 + (4 if self.managers else 0))


    def _row(self, scenario: str, n: int, unit: str) -> Row:
        row = Row(scenario, n, unit)
        self.rows.append(row)
        return row

    def run(self) -> None:
        with Pool(1) as one:
            self.single(one.socks[0])
        for n in self.sizes:
            with Pool(n) as pool:
                self.many(pool)
                self.manager(pool)
                self.find_dead(pool)

    def _race(self, row: Row, runs: Dict[str, Callable[[], float]], per: int) -> None:
        for name, best in race(self.repeat, runs).items():
            row.times[name] = best / per
        self.progress.update(1)

    # 1. One socket.
    def single(self, sock: socket.socket) -> None:
        k = self.single_calls
        fds = Floor.fds([sock] * k)
        for name in ("set_keepalive", "get_keepalive", "tcp_info"):
            row = self._row(name, 1, "call")
            args = (sock, CONFIG) if name == "set_keepalive" else (sock,)
            runs = {}
            for impl, mod in self.impls.items():
                def calls(fn=getattr(mod, name)):
                    for _ in range(k):
                        fn(*args)

                runs[impl] = lambda calls=calls: timed(calls)
            if self.floor:
                lib = self.floor.lib
                call = {
                    "set_keepalive": lambda: lib.floor_set_keepalive(fds, k, CONFIG.idle, CONFIG.interval, CONFIG.count),
                    "get_keepalive": lambda: lib.floor_get_keepalive(fds, k),
                    "tcp_info": lambda: lib.floor_tcp_info(fds, k),
                }[name]
                if call() != 0:
                    raise RuntimeError(f"the {name} floor failed on a connected TCP socket")
                runs["floor"] = lambda call=call: timed(call)
            self._race(row, runs, k)

    # 2. set_keepalive_many over N sockets, on each batch path of the compiled backend.
    def many(self, pool: Pool) -> None:
        socks, n = pool.socks, pool.n
        row = self._row("set_keepalive_many", n, "socket")
        runs = {}
        for impl, mod in self.impls.items():
            def call(mod=mod):
                if mod.set_keepalive_many(socks, CONFIG):
                    raise RuntimeError("set_keepalive_many failed on connected TCP sockets")

            runs[impl] = lambda call=call: timed(call)
        compiled = self.impls.get("compiled")
        if compiled is not None:
            paths = ["loop"] + (["uring"] if compiled.uring_status() == "available" else [])
            if "uring" not in paths:
                row.notes.append(f"io_uring path {compiled.uring_status()}")

            def on_path(path):
                before = compiled.batch_path()
                compiled.set_batch_path(path)
                try:
                    return timed(lambda: compiled.set_keepalive_many(socks, CONFIG))
                finally:
                    compiled.set_batch_path(before)

            for path in paths:
                runs[f"compiled {path}"] = lambda path=path: on_path(path)
        if self.floor:
            fds = Floor.fds(socks)
            lib = self.floor.lib
            runs["floor"] = lambda: timed(lambda: lib.floor_set_keepalive(fds, n, CONFIG.idle, CONFIG.interval, CONFIG.count))
        self._race(row, runs, n)

    # 3. find_dead over N pooled connections, 1% dead.
    def find_dead(self, pool: Pool) -> None:
        socks, n = pool.socks, pool.n
        dead_idx = list(range(0, n, 100))
        pool.close_peers(dead_idx)
        want = [socks[i] for i in dead_idx]
        row = self._row("find_dead", n, "socket")
        runs = {}
        for impl, mod in self.impls.items():
            def call(mod=mod):
                if mod.find_dead(socks) != want:
                    raise RuntimeError("find_dead missed the dead connections")

            runs[impl] = lambda call=call: timed(call)
        if "fallback" in self.impls:
            is_alive = self.impls["fallback"].is_alive
            runs["fallback is_alive loop"] = lambda: timed(lambda: [s for s in socks if not is_alive(s)])
        if self.floor:
            fds = Floor.fds(socks)
            lib = self.floor.lib
            if lib.floor_find_dead(fds, n) != len(want):
                raise RuntimeError("the find_dead floor disagrees with find_dead")
            runs["floor"] = lambda: timed(lambda: lib.floor_find_dead(fds, n))
        self._race(row, runs, n)

    # 4. The manager: add, touch, expiry, one poll tick with 10% readable.
    def manager(self, pool: Pool) -> None:
        socks, n = pool.socks, pool.n
        if not self.managers:
            return
        for name, timer in (("add", self._add), ("touch", self._touch), ("expiry", self._expiry)):
            row = self._row(f"manager {name}", n, "socket")
            runs = {impl: timer(Manager, socks) for impl, Manager in self.managers.items()}
            self._race(row, runs, n)
        readable = list(range(0, n, 10))
        pool.send(readable)
        row = self._row("manager poll tick", n, "tick")
        managers = []
        ep = select.epoll(n)
        try:
            runs = {}
            for impl, Manager in self.managers.items():
                mgr = Manager(None, close=False)
                managers.append(mgr)
                for s in socks:
                    mgr.add(s)
                runs[impl] = self._tick(mgr.poll, len(readable), impl)
            for s in socks:
                ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            runs["floor"] = self._tick(lambda timeout: ep.poll(timeout, n), len(readable), "the epoll floor")
            self.repeat *= 5  # a tick is short: more samples for the same confidence
            try:
                self._race(row, runs, 1)
            finally:
                self.repeat //= 5
        finally:
            ep.close()
            for mgr in managers:
                mgr.close()
        for i in readable:  # read the byte back: the sockets are idle again
            socks[i].recv(1)

    @staticmethod
    def _add(Manager, socks) -> Callable[[], float]:
        def run():
            mgr = Manager(None, close=False)
            try:
                return timed(lambda: [mgr.add(s) for s in socks])
            finally:
                mgr.close()
        return run

    @staticmethod
    def _touch(Manager, socks) -> Callable[[], float]:
        def run():
            mgr = Manager(None, close=False)
            try:
                for s in socks:
                    mgr.add(s)
                touch = mgr.touch
                return timed(lambda: [touch(s) for s in socks])
            finally:
                mgr.close()
        return run

    @staticmethod
    def _expiry(Manager, socks, idle: float = 0.05) -> Callable[[], float]:
        """poll() until all N came out through IDLE, their idle timeout having passed."""
        def run():
            mgr = Manager(idle, close=False)
            try:
                for s in socks:
                    mgr.add(s)
                time.sleep(idle * 1.5)
                got = 0
                t0 = time.perf_counter()
                while got < len(socks):
                    events = mgr.poll(0)
                    got += len(events)
                    if not events and mgr.next_deadline() is None:
                        break
                dt = time.perf_counter() - t0
                if got != len(socks):
                    raise RuntimeError(f"expiry reported {got} of {len(socks)} idle connections")
                return dt
            finally:
                mgr.close()
        return run

    @staticmethod
    def _tick(poll: Callable[[float], list], nready: int, what: str) -> Callable[[], float]:
        def run():
            t0 = time.perf_counter()
            tick(poll, nready, what)
            return time.perf_counter() - t0
        return run


    def close(self) -> None:
        if self.floor:
            self.floor.close()


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


# ---- Memory ---------------------------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _malloced() -> Optional[int]:
    """Bytes in use from malloc (glibc mallinfo2: uordblks + hblkhd), None elsewhere."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return info.uordblks + info.hblkhd


def memory_main(impl: str, n: int) -> None:
    """In a child process: bytes per connection a manager adds (RSS and malloc deltas over
    n connections; the sockets exist before and after). Prints JSON."""
    raise_fd_limit()
    Manager = load(impl, 1).KeepaliveManager
    with Pool(n) as pool:
        warm = Manager(None, close=False)  # first-use allocations (module state, code paths)
        warm.add(pool.socks[0])
        warm.close()
        gc.collect()
        rss0, mal0 = _rss(), _malloced()
        mgr = Manager(None, close=False)
        for s in pool.socks:
            mgr.add(s)
        gc.collect()
        rss1, mal1 = _rss(), _malloced()
        out = {"impl": impl, "n": n, "rss_per_conn": (rss1 - rss0) / n,
               "malloc_per_conn": None if mal0 is None else (mal1 - mal0) / n}
        mgr.close()
    print(json.dumps(out))


def measure_memory(impl: str, n: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", f"from fastka._bench import memory_main; memory_main({impl!r}, {n})"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH")]))),
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- Output ---------------------------------------------------------------------------

def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def table_rows(rows: Sequence[Row]) -> List[List[str]]:
    """Lines of the table: scenario, N, compiled, fallback, speed-up, compiled/floor."""
    out = []
    for row in rows:
        if not row.times:
            continue
        variants = [("compiled", "fallback", row.scenario)]
        if row.scenario == "set_keepalive_many":
            variants += [(k, "fallback", f"{row.scenario} [{k.split()[1]}]") for k in ("compiled loop", "compiled uring") if k in row.times]
        if row.scenario == "find_dead":
            variants.append(("compiled", "fallback is_alive loop", "find_dead vs is_alive loop"))
        for ckey, fkey, label in variants:
            c, f, fl = row.times.get(ckey), row.times.get(fkey), row.times.get("floor")
            out.append([
                label, str(row.n), f"{fmt_time(c)}/{row.unit}" if c else "-", f"{fmt_time(f)}/{row.unit}" if f else "-",
                f"{f / c:.2f}x" if c and f else "-",
                f"{c / fl:.2f}" if c and fl else "-",
            ])
    return out


def render(rows: Sequence[Row], memory: Sequence[dict]) -> str:
    head = ["scenario", "N", "compiled", "fallback", "speed-up", "compiled/floor"]
    body = table_rows(rows)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for row in rows:
        lines += [f"note: {row.scenario} N={row.n}: {note}" for note in row.notes]
    for m in memory:
        if "error" in m:
            lines.append(f"memory per managed connection ({m['impl']}): {m['error']}")
        else:
            mal = "" if m["malloc_per_conn"] is None else f", malloc {m['malloc_per_conn']:.0f} B"
            lines.append(f"memory per managed connection ({m['impl']}, N={m['n']}): RSS {m['rss_per_conn']:.0f} B{mal}")
    return "\n".join(lines)


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg"] = os.getloadavg()
    try:
        info["io_uring"] = load("compiled", 0).uring_status()
    except (ImportError, AttributeError):
        info["io_uring"] = "unavailable: no compiled backend"
    return info


def plot(rows: Sequence[Row], path: str) -> None:
    """Cost per operation against N (log scale) for each scenario measured at several
    sizes: compiled, fallback and floor; a flat line is a cost per connection that does
    not grow with N."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FormatStrFormatter
    except ImportError as exc:
        raise RuntimeError(f"--plot needs matplotlib (pip install 'fastka[plot]'): {exc}") from None
    scenarios = [s for s in dict.fromkeys(r.scenario for r in rows if r.times) if sum(r.scenario == s and bool(r.times) for r in rows) > 1]
    cols = 3
    rows_n = max(1, -(-len(scenarios) // cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    styles = {"compiled": ("C0", "-"), "compiled loop": ("C0", ":"), "compiled uring": ("C2", "--"), "fallback": ("C1", "-"),
              "fallback is_alive loop": ("C1", ":"), "floor": ("k", "--")}
    for ax, name in zip(axes.flat, scenarios):
        mine = sorted((r for r in rows if r.scenario == name), key=lambda r: r.n)
        per = "connection" if mine[0].unit == "tick" else mine[0].unit
        for key, (color, ls) in styles.items():
            pts = [(r.n, r.times[key] / (r.n if r.unit == "tick" else 1)) for r in mine if key in r.times]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] * 1e6 for p in pts], color=color, linestyle=ls, marker="o", label=key)
        ax.set_title(name + (" (per connection)" if mine[0].unit == "tick" else ""))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
        ax.set_xticks([r.n for r in mine])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("N")
        ax.set_ylabel(f"us per {per}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(scenarios):]:
        ax.axis("off")
    fig.suptitle("fastka: cost per operation against N (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- Command line ---------------------------------------------------------------------

def _sizes(text: str) -> List[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes numbers separated by commas, not {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes must be positive numbers, not {text!r}")
    return sizes


def _repeat(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--repeat must be a positive integer, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Benchmark the compiled backend against the pure-Python fallback and the system-call "
        "floor; print one table (times are the best of --repeat runs, per operation)."
    )
    parser.add_argument("--quick", action="store_true", help=f"a short run: sizes {QUICK_SIZES}, fewer repeats, no memory run")
    parser.add_argument("--sizes", type=_sizes, metavar="N,N,...",
                        help=f"connection counts (default: {', '.join(map(str, SIZES))} and the most the open-file limit allows)")
    parser.add_argument("--repeat", type=_repeat, metavar="R", help="timings per measurement, best kept (default 15; 2 with --quick)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw cost per operation against N (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    limit = largest_size()
    sizes = args.sizes or (list(QUICK_SIZES) if args.quick else default_sizes())
    too_big = [n for n in sizes if n > limit]
    if too_big:
        print(f"fastka bench: --sizes {too_big[0]} exceeds what the open-file limit allows ({limit})", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fastka bench: --plot needs matplotlib (pip install 'fastka[plot]')", file=sys.stderr)
            return 2
    repeat = args.repeat or (2 if args.quick else 15)
    bench = Bench(sizes, repeat, SINGLE_CALLS // 10 if args.quick else SINGLE_CALLS, None)
    if "compiled" not in bench.impls and "fallback" not in bench.impls:
        print("fastka bench: no backend imports", file=sys.stderr)
        return 1
    memory: List[dict] = []
    try:
        with Progress(bench.steps(), "fastka bench") as bar:
            bench.progress = bar
            bench.run()
        if not args.quick:
            for impl in bench.managers:
                try:
                    memory.append(measure_memory(impl, max(sizes)))
                except RuntimeError as exc:
                    memory.append({"impl": impl, "error": str(exc)})
    finally:
        bench.close()
    print(render(bench.rows, memory))
    for what, why in bench.skipped.items():
        print(f"skipped {what}: {why}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "repeat": repeat, "rows": [asdict(r) for r in bench.rows],
                       "table": table_rows(bench.rows), "memory": memory, "skipped": bench.skipped}, f, indent=2)
    if args.plot:
        plot(bench.rows, args.plot)
    return 0
