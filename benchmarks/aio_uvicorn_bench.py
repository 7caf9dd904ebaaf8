"""uvicorn alone against uvicorn with the fastka.aio recipe (docs/examples/aio_uvicorn.py).

    python benchmarks/aio_uvicorn_bench.py [--backend c] [--rounds 10] [--duration 2] [--idle 5000] [--silent 1000]

Both servers run the same one-line ASGI app, one process each, on the loop uvicorn picks
(uvloop when installed), with the same idle timeout (``--timeout`` seconds: uvicorn's
``timeout_keep_alive`` alone, the reaper's ``idle_timeout`` in the recipe, which takes
over uvicorn's timer). The recipe's reaper runs on the fastka backend ``--backend``; a
server that finds another one refuses to start, and the report names the backend. With
two CPUs or more, the servers run on the first and the clients (wrk, the expiry client)
on the second, so that neither takes the other's CPU:

* throughput: ``--rounds`` rounds; in each, the two servers of a pair are measured at
  the same time, each by its own ``wrk -t1 -c100 -d{duration}s``, so that whatever slows
  the machine during the round slows both alike (one after the other, a shared VM's speed
  drifts between the two runs: their ratio then ranges from 0.7 to 1.6 over 15 rounds).
  Sharing the server CPU, each server gets as much of it as it asks for: the one that
  needs less CPU per request answers more. The figure is the median of the per-round
  ratios (recipe / uvicorn) with their range, never a ratio of separately taken medians;
  also the server's CPU time per request (from /proc) as the same paired ratio. Once more with ``max_requests=100``, the recipe against uvicorn
  with the recipe's request limit alone (``limited``, no reaper): the same reconnect
  every 100 requests on both sides, so the ratio is the reaper's; wrk's read errors show
  whether the last response said ``Connection: close``;
* expiry: ``--idle`` connections send one request each and then stay silent; measured per
  server: CPU time the server spends on them (accept, answer, idle close), FIN lateness
  (client-side receive time of each EOF minus the request's answer time minus the
  timeout: p50/p99/max, one epoll reader that stamps each answer as it arrives, so a
  negative figure is a FIN sent early or an answer stamped late), the server's CPU time
  from the last answer to the last FIN (the expiry alone), and the server's resident
  memory with all of them open;
* silent connections: ``--silent`` connections that never send a byte; how many the
  server has closed ``--timeout`` + 2 seconds later (uvicorn arms its keep-alive timer
  only after a response; the recipe's reaper starts the idle clock at accept).
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "docs", "examples"))

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
KINDS = ("uvicorn", "recipe")
REFUSED = 64  # the exit status of a server whose reaper is not on the backend asked for
ENV_NO_EXTENSIONS = "FASTKA_NO_EXTENSIONS"  # fastka._backends: set, the default backend is the fallback
# (servers, clients): CPU sets, or empty where there is one CPU or no affinity call
_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CPUS, CLIENT_CPUS = ({_CPUS[0]}, set(_CPUS[1:])) if len(_CPUS) >= 2 else (set(), set())


def serve(kind: str, port: int, timeout: float, max_requests: Optional[int], backend: str) -> None:
    """The server process: uvicorn alone, or uvicorn with the recipe (its reaper on
    ``backend``, or SystemExit)."""
    import asyncio

    import uvicorn

    import aio_uvicorn as recipe  # type: ignore[import-not-found]  # docs/examples, put on sys.path above
    from fastka import _backends

    if kind == "uvicorn":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        http = HttpToolsProtocol if max_requests is None else recipe.limited(HttpToolsProtocol, max_requests)
        config = uvicorn.Config(recipe.hello, host="127.0.0.1", port=port, http=http, lifespan="off", log_level="warning", timeout_keep_alive=timeout, backlog=8192)  # type: ignore[arg-type]  # seconds as a float work too
        uvicorn.Server(config).run()
        return

    async def main() -> None:
        async with recipe.make_reaper(idle_timeout=timeout) as reaper:
            if type(reaper._mgr) is not _backends.load(backend).KeepaliveManager:
                print(f"refusing to measure: the reaper runs on {type(reaper._mgr).__module__}, not on the {backend!r} backend", file=sys.stderr)
                sys.exit(REFUSED)
            server = recipe.server(recipe.hello, reaper, port=port, max_requests=max_requests)
            server.config.backlog = 8192
            await server.serve()

    factory = uvicorn.Config(recipe.hello).get_loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    loop.run_until_complete(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, timeout: float, max_requests: Optional[int], backend: str) -> Tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free port (a few tries: another process may take the port
    between the probe and the server's bind)."""
    for _ in range(5):
        try:
            return start_once(kind, timeout, max_requests, backend)
        except RuntimeError:
            continue
    raise RuntimeError(f"the {kind} server did not start in 5 tries")


def start_once(kind: str, timeout: float, max_requests: Optional[int], backend: str) -> Tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(port), "--timeout", str(timeout), "--backend", backend]
    if max_requests is not None:
        args += ["--max-requests", str(max_requests)]
    env = dict(os.environ)
    env.pop(ENV_NO_EXTENSIONS, None)
    if backend == "python":
        env[ENV_NO_EXTENSIONS] = "1"
    proc = subprocess.Popen(args, env=env)
    if SERVER_CPUS:
        os.sched_setaffinity(proc.pid, SERVER_CPUS)
    end = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return proc, port
        except ConnectionRefusedError:
            if proc.poll() == REFUSED:
                raise SystemExit(f"the {kind} server refused to run (see above)")
            if proc.poll() is not None or time.monotonic() > end:
                stop(proc)
                raise RuntimeError(f"the {kind} server did not start")
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wrk_at_once(servers: List[Tuple[subprocess.Popen[bytes], int]], duration: float) -> List[Tuple[float, int, float]]:
    """One wrk run against each server, all at the same time: per server (requests per
    second, read errors, server CPU microseconds per request)."""
    cpu = [cpu_seconds(proc.pid) for proc, _ in servers]
    runs = [subprocess.Popen(["wrk", "-t1", "-c100", f"-d{duration:g}s", f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True) for _, port in servers]
    outs = [run.communicate()[0] for run in runs]
    figures = []
    for (proc, _), before, run, out in zip(servers, cpu, runs, outs):
        if run.returncode:
            raise RuntimeError(f"wrk exited with {run.returncode}: {out}")
        rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
        done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        errors = re.search(r"read (\d+)", out)
        figures.append((rps, int(errors.group(1)) if errors else 0, (cpu_seconds(proc.pid) - before) / done * 1e6))
    return figures


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def expiry(proc: subprocess.Popen[bytes], port: int, n: int, timeout: float) -> Dict[str, float]:
    """n connections, one request each, then silence until the server closes them all.
    The server's CPU time covers the whole of it (accept, answer, idle close); the
    resident memory is read once every connection has its answer."""
    socks: List[socket.socket] = []
    answered: Dict[int, float] = {}
    lateness: List[float] = []
    rss = 0
    expiry_cpu0 = 0.0
    base_rss = rss_kib(proc.pid)
    cpu0 = cpu_seconds(proc.pid)
    ep = select.epoll()
    pending: Dict[int, socket.socket] = {}
    got: Dict[int, bytes] = {}

    def collect(wait: float) -> None:
        """Read what arrived: each answer and each EOF is timestamped as soon as it is seen."""
        for fd, _ in ep.poll(wait):
            now = time.monotonic()
            data = pending[fd].recv(4096)
            if not data:
                lateness.append(now - answered[fd] - timeout)
                ep.unregister(fd)
                continue
            got[fd] = got.get(fd, b"") + data
            if got[fd].endswith(b"hello\n") and fd not in answered:
                answered[fd] = now

    for _ in range(n):  # connect and ask, reading as things come (not all at the end)
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(REQUEST)
        socks.append(s)
        pending[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLIN)
        collect(0)
    deadline = time.monotonic() + timeout + 30
    while len(lateness) < n and time.monotonic() < deadline:
        if not rss and len(answered) == n:
            rss = rss_kib(proc.pid) - base_rss
            expiry_cpu0 = cpu_seconds(proc.pid)
        collect(0.5)
    cpu1 = cpu_seconds(proc.pid)
    for s in socks:
        s.close()
    ep.close()
    lateness.sort()
    return {
        "cpu": cpu1 - cpu0,
        "expiry_cpu": cpu1 - expiry_cpu0 if expiry_cpu0 else float("nan"),
        "rss_per_conn": rss * 1024 / n,
        "closed": len(lateness),
        "p50": lateness[len(lateness) // 2] if lateness else float("nan"),
        "p99": lateness[int(len(lateness) * 0.99) - 1] if lateness else float("nan"),
        "max": lateness[-1] if lateness else float("nan"),
    }


def silent(proc: subprocess.Popen[bytes], port: int, n: int, timeout: float) -> int:
    """n connections that never send; how many the server closed within timeout + 2 s."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    closed: Set[int] = set()
    end = time.monotonic() + timeout + 2
    while len(closed) < n and time.monotonic() < end:
        for fd, _ in ep.poll(max(0.0, end - time.monotonic())):
            closed.add(fd)
            ep.unregister(fd)
    ep.close()
    for s in socks:
        s.close()
    return len(closed)


def ratio_line(ratios: List[float]) -> str:
    return f"median {statistics.median(ratios):.3f}x (range {min(ratios):.3f}-{max(ratios):.3f}; rounds: {', '.join(f'{r:.3f}' for r in ratios)})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="paired throughput rounds (0: skip)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of each wrk run")
    parser.add_argument("--idle", type=int, default=5000, help="connections for the expiry figures (0: skip)")
    parser.add_argument("--silent", type=int, default=1000, help="connections that never send a request (0: skip)")
    parser.add_argument("--timeout", type=float, default=5.0, help="the idle timeout of both servers, seconds")
    parser.add_argument("--backend", choices=("c", "python"), default="c", help="the fastka backend of the recipe's reaper (default c)")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-requests", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve:
        serve(args.serve, args.port, args.timeout, args.max_requests, args.backend)
        return 0
    from fastka import _backends

    reason = _backends.unavailable_reason(args.backend)
    if reason is not None:
        parser.error(f"--backend {args.backend}: {reason}")
    try:
        import uvloop  # noqa: F401  (uvicorn's loop="auto" picks it when installed)
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    if CLIENT_CPUS:
        os.sched_setaffinity(0, CLIENT_CPUS)  # wrk and the expiry client inherit it
    pinned = f"servers on CPU {min(SERVER_CPUS)}, clients on {sorted(CLIENT_CPUS)}" if SERVER_CPUS else "not pinned (one CPU)"
    print(f"fastka backend {args.backend} (the recipe's reaper), loop {loop} (both), timeout {args.timeout:g} s, "
          f"wrk -t1 -c100 -d{args.duration:g}s per server, {args.rounds} rounds of pairs measured at once, {pinned}")
    servers: Dict[str, Tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, kind, limit in (("uvicorn", "uvicorn", None), ("recipe", "recipe", None), ("uvicorn100", "uvicorn", 100), ("recipe100", "recipe", 100)):
            servers[name] = start(kind, args.timeout, limit, args.backend)
        pairs = {"recipe": "uvicorn", "recipe100": "uvicorn100"}  # measured: its reference
        ratios: Dict[str, List[float]] = {name: [] for name in pairs}
        cost: Dict[str, List[float]] = {name: [] for name in pairs}
        for r in range(args.rounds):
            figures: Dict[str, Tuple[float, int, float]] = {}
            for name, ref in pairs.items():
                pair = [name, ref] if r % 2 == 0 else [ref, name]  # neither wrk always started first
                figures.update(zip(pair, wrk_at_once([servers[n] for n in pair], args.duration)))
            line = ", ".join(f"{name} {rps:.0f} req/s ({err} read errors, {us:.0f} us CPU/req)" for name, (rps, err, us) in figures.items())
            print(f"round {r + 1}: {line}", flush=True)
            for name, ref in pairs.items():
                ratios[name].append(figures[name][0] / figures[ref][0])
                cost[name].append(figures[name][2] / figures[ref][2])
        if args.rounds:
            print(f"req/s, recipe / uvicorn:                                      {ratio_line(ratios['recipe'])}")
            print(f"req/s, max_requests=100, recipe / uvicorn with the limit:     {ratio_line(ratios['recipe100'])}")
            print(f"server CPU per request, recipe / uvicorn:                     {ratio_line(cost['recipe'])}")
            print(f"server CPU per request, max_requests=100, recipe / uvicorn with the limit: {ratio_line(cost['recipe100'])}")
        if args.idle:
            for name in ("uvicorn", "recipe"):
                proc, port = servers[name]
                e = expiry(proc, port, args.idle, args.timeout)
                print(f"{name:8} {args.idle} idle connections: closed {e['closed']:.0f}, server CPU {e['cpu']:.2f} s (expiry alone {e['expiry_cpu']:.2f} s), "
                      f"RSS {e['rss_per_conn']:.0f} B per connection, FIN lateness p50 {e['p50'] * 1000:.1f} ms p99 {e['p99'] * 1000:.1f} ms max {e['max'] * 1000:.1f} ms", flush=True)
        if args.silent:
            for name in ("uvicorn", "recipe"):
                proc, port = servers[name]
                print(f"{name:8} {args.silent} silent connections: {silent(proc, port, args.silent, args.timeout)} closed within {args.timeout + 2:g} s", flush=True)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
