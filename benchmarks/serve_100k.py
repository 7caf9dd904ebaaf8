"""100,000 idle keep-alive connections: `fastka serve --workers N` next to nginx configured alike.

    python benchmarks/serve_100k.py [--connections 100000] [--workers N] [--timeout 10]
                                    [--idle-seconds 30] [--sources 8] [--skip-nginx]

Two phases per server, loopback only:

1. hold: a long keep-alive timeout; client processes open the connections (one GET each,
   answer read), then hold them idle. Reported: total server RSS (all its processes),
   RSS per connection (growth over the idle server, divided by the connections), server
   CPU seconds over ``--idle-seconds`` idle seconds.
2. expire: keep-alive timeout ``--timeout``; every client records when its answer arrived
   and when the server's FIN did (as it arrives). Reported: lateness of the FIN past answer +
   timeout (p50, p99, max; separately the max over FINs due after every connection was open,
   when the server no longer also accepts) and how many never got one within timeout + 5 s.

Limits respected: the open-file hard limit of this machine is 20,000 per process, so each
client process holds at most ``--per-client`` connections and the server runs enough workers
(default: one per 14,000 connections; SO_REUSEPORT does not split exactly evenly). Clients
bind to 127.0.0.2.. 127.0.0.(1 + --sources) with IP_BIND_ADDRESS_NO_PORT, so each source
address has the whole ephemeral port range (net.ipv4.ip_local_port_range) for the one
server port. The script raises only its own processes' soft fd limit (to the hard limit);
it changes no sysctl: it prints the relevant ones and stops if they cannot hold the run.
Every process it starts is stopped at the end.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # linux/in.h
PER_WORKER = 14000
LATE_GRACE = 5.0  # seconds past the timeout a client waits for FINs before counting "never"

NGINX_CONF = """
worker_processes {workers};
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {per_worker}; use epoll; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout {timeout};
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ return 200 "Hello from nginx\\n"; }}
    }}
}}
"""


def sysctl(name: str) -> str:
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return " ".join(f.read().split())


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- server processes ------------------------------------------------------------------------


def tree_pids(pid: int) -> List[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return pids


def proc_kib(pids: List[int], path: str, field: str) -> int:
    """The sum of ``field`` (kB) in /proc/PID/``path`` over ``pids``; a process that is gone
    counts 0."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/{path}") as f:
                total += int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def rss_kib(pids: List[int]) -> int:
    return proc_kib(pids, "status", "VmRSS")


def pss_kib(pids: List[int]) -> int:
    return proc_kib(pids, "smaps_rollup", "Pss")


def stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Send ``sig`` (the server's graceful stop) and wait ``timeout`` seconds, then kill."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in tree_pids(proc.pid):
            os.kill(p, signal.SIGKILL)
        proc.wait()


def cpu_seconds(pids: List[int]) -> float:
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fastka:
    name = "fastka serve"

    def __init__(self, workers: int, timeout: float, backend: Optional[str]) -> None:
        self.workers, self.timeout, self.backend = workers, timeout, backend

    def start(self) -> int:
        cmd = [sys.executable, "-m", "fastka.cli", "serve", "--port", "0", "--workers", str(self.workers),
               "--keepalive-timeout", str(self.timeout)]
        if self.backend:
            cmd += ["--backend", self.backend]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     preexec_fn=raise_nofile)
        line = self.proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            self.stop()
            raise SystemExit(f"fastka serve did not start: {line!r}")
        backend = re.search(r"backend (\w+)", line).group(1)
        self.label = f"fastka serve ({backend}), {self.workers} worker{'s' if self.workers > 1 else ''}"
        return int(m.group(1))

    def pids(self) -> List[int]:
        return tree_pids(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, self.timeout + 15)


class Nginx:
    name = "nginx"

    def __init__(self, binary: str, workers: int, timeout: float, nofile: int) -> None:
        self.binary, self.workers, self.timeout, self.nofile = binary, workers, timeout, nofile
        self.label = f"nginx {self.version()}, {workers} worker{'s' if workers > 1 else ''}"

    def start(self) -> int:
        self.dir = tempfile.mkdtemp(prefix="serve_100k_nginx_")
        port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=self.workers, nofile=self.nofile, dir=self.dir, port=port,
                                      per_worker=self.nofile - 100, timeout=f"{self.timeout:g}s"))
        self.proc = subprocess.Popen([self.binary, "-p", self.dir, "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"nginx did not start: {self.proc.stderr.read()}")
                time.sleep(0.05)
        time.sleep(0.3)  # every worker has its reuseport listener
        return port

    def version(self) -> str:
        r = subprocess.run([self.binary, "-v"], capture_output=True, text=True)
        m = re.search(r"nginx/([\d.]+)", r.stderr)
        return m.group(1) if m else "?"

    def pids(self) -> List[int]:
        return tree_pids(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT, self.timeout + 15)  # SIGQUIT: nginx's graceful stop
        shutil.rmtree(self.dir, ignore_errors=True)


# -- clients -------------------------------------------------------------------------------


def client(port: int, n: int, first_source: int, sources: int, conn, wait_s: float) -> None:
    """Open n connections (one GET each, answer read) and report; then hold them until told
    to close, or (``wait_s`` > 0) wait for the server's FINs. A FIN is timed whenever it
    arrives, also while other connections are still opening. Sends (answered_at, fin_at or
    None) pairs."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    socks = []
    answered: Dict[int, float] = {}
    fin: Dict[int, float] = {}
    failed = 0
    pending = 0  # connecting or waiting for the answer

    def handle(events) -> None:
        nonlocal pending, failed
        for key, ev in events:
            s2, data = key.fileobj, key.data
            if data is None:  # answered: the next thing is the server's FIN
                try:
                    chunk = s2.recv(4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    fin[s2.fileno()] = time.monotonic()
                    sel.unregister(s2)
                continue
            if ev & selectors.EVENT_WRITE:
                try:
                    s2.send(REQ)
                except OSError:
                    sel.unregister(s2)
                    pending -= 1
                    failed += 1
                    continue
                sel.modify(s2, selectors.EVENT_READ, b"")
                continue
            try:
                chunk = s2.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(s2)
                pending -= 1
                failed += 1
                continue
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"Content-Length: (\d+)", head, re.I) if sep else None
            if m and len(body) >= int(m.group(1)):
                answered[s2.fileno()] = time.monotonic()
                pending -= 1
                sel.modify(s2, selectors.EVENT_READ, None)
            else:
                sel.modify(s2, selectors.EVENT_READ, data)

    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((f"127.0.0.{first_source + i % sources}", 0))
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            failed += 1
            s.close()
            continue
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE, b"")
        pending += 1
        while pending > 2000:  # bounded in flight: keep the accept queues short
            events = sel.select(60.0)
            if not events:
                break
            handle(events)
    while pending:
        events = sel.select(60.0)
        if not events:
            break  # nothing moved for a minute: the rest count as failed
        handle(events)
    failed += pending
    conn.send(("open", len(answered), failed))
    if wait_s > 0:
        wait_until = (max(answered.values()) if answered else time.monotonic()) + wait_s
        while len(fin) < len(answered) and time.monotonic() < wait_until:
            handle(sel.select(max(0.0, wait_until - time.monotonic())))
    else:
        conn.recv()  # "close"
    result = [(answered[fd], fin.get(fd)) for fd in answered]
    for s in socks:
        s.close()
    sel.close()
    conn.send(("done", result))


def run_phase(server, args, phase: str) -> dict:
    port = server.start()
    try:
        time.sleep(0.5)
        base = rss_kib(server.pids())
        per = [min(args.per_client, args.connections - i) for i in range(0, args.connections, args.per_client)]
        wait = args.timeout + LATE_GRACE if phase == "expire" else 0.0
        pipes, procs = [], []
        for k, n in enumerate(per):
            a, b = multiprocessing.Pipe()
            p = multiprocessing.Process(target=client, args=(port, n, 2, args.sources, b, wait))
            p.start()
            pipes.append(a)
            procs.append(p)
        t_open = time.monotonic()
        opened = failed = 0
        for a in pipes:
            _, ok, bad = a.recv()
            opened += ok
            failed += bad
        all_open = time.monotonic()
        t_open = all_open - t_open
        out = {"opened": opened, "failed": failed, "open_seconds": t_open}
        if phase == "hold":
            time.sleep(1.0)
            pids = server.pids()
            out["rss_kib"] = rss_kib(pids)
            out["rss_per_conn"] = (out["rss_kib"] - base) * 1024 / max(1, opened)
            c0 = cpu_seconds(pids)
            time.sleep(args.idle_seconds)
            out["idle_cpu"] = cpu_seconds(server.pids()) - c0
            for a in pipes:
                a.send("close")
        late: List[float] = []
        quiet: List[float] = []  # FINs due after every connection was open (no opening load)
        never = 0
        for a in pipes:
            _, result = a.recv()
            for answered_at, fin_at in result:
                if fin_at is None:
                    never += 1
                else:
                    late.append(fin_at - answered_at - args.timeout)
                    if answered_at + args.timeout > all_open:
                        quiet.append(late[-1])
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        if phase == "expire":
            late.sort()
            pick = lambda q: late[min(len(late) - 1, int(q * len(late)))] if late else float("nan")  # noqa: E731
            out.update(p50=pick(0.5), p99=pick(0.99), late_max=late[-1] if late else float("nan"), never=never,
                       quiet=len(quiet), quiet_max=max(quiet) if quiet else float("nan"))
        return out
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--workers", type=int, help=f"server workers (default: one per {PER_WORKER} connections)")
    ap.add_argument("--timeout", type=float, default=10.0, help="keep-alive timeout of the expire phase, seconds")
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--sources", type=int, default=8, help="client source addresses 127.0.0.2..")
    ap.add_argument("--per-client", type=int, default=16_000, help="connections per client process")
    ap.add_argument("--backend", choices=("c", "python"))
    ap.add_argument("--skip-nginx", action="store_true")
    args = ap.parse_args()
    hard = raise_nofile()
    workers = args.workers or math.ceil(args.connections / PER_WORKER)
    for name in ("fs.nr_open", "fs.file-max", "net.ipv4.ip_local_port_range", "net.core.somaxconn"):
        print(f"{name} = {sysctl(name)}")
    print(f"open-file limit per process: {hard}; {workers} server workers, "
          f"{math.ceil(args.connections / args.per_client)} client processes, {args.sources} source addresses")
    low, high = map(int, sysctl("net.ipv4.ip_local_port_range").split())
    if args.connections / args.sources > (high - low) * 0.9:
        raise SystemExit(f"{args.connections} connections over {args.sources} sources need more ephemeral ports"
                         f" than {low}..{high}: use more --sources")
    if args.per_client > hard - 100 or args.connections / workers > hard - 500:
        raise SystemExit(f"per-process fd limit {hard}: lower --per-client or raise --workers")
    with open("/proc/sys/fs/file-nr") as f:
        in_use, _, file_max = map(int, f.read().split())
    if in_use + 2.2 * args.connections > file_max:
        raise SystemExit(f"fs.file-max {file_max} with {in_use} open files cannot hold {args.connections} connections twice")
    servers = [Fastka(workers, args.timeout, args.backend)]
    nginx = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if args.skip_nginx:
        print("nginx: skipped (--skip-nginx)")
    elif not nginx:
        print("nginx: skipped (not installed: apt-get install nginx)")
    else:
        servers.append(Nginx(nginx, workers, args.timeout, hard))
    rows = []
    for server in servers:
        server.timeout = 3600.0
        hold = run_phase(server, argparse.Namespace(**{**vars(args), "timeout": 3600.0}), "hold")
        server.timeout = args.timeout
        expire = run_phase(server, args, "expire")
        rows.append((server.label, hold, expire))
        print(f"{server.label}: hold {hold}; expire {expire}", flush=True)
    print()
    print(f"{args.connections} connections, loopback, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
    head = ["", *(label for label, _, _ in rows)]
    lines = [
        ("connections answered (hold / expire)", [f"{h['opened']} / {e['opened']}" for _, h, e in rows]),
        ("seconds to open them (hold)", [f"{h['open_seconds']:.1f}" for _, h, e in rows]),
        ("server RSS, all processes (MiB)", [f"{h['rss_kib'] / 1024:.1f}" for _, h, e in rows]),
        ("RSS per connection (bytes)", [f"{h['rss_per_conn']:.0f}" for _, h, e in rows]),
        (f"server CPU over {args.idle_seconds:g} idle s (s)", [f"{h['idle_cpu']:.2f}" for _, h, e in rows]),
        (f"FIN lateness past {args.timeout:g} s, p50 (s)", [f"{e['p50']:.3f}" for _, h, e in rows]),
        ("FIN lateness p99 (s)", [f"{e['p99']:.3f}" for _, h, e in rows]),
        ("FIN lateness max (s)", [f"{e['late_max']:.3f}" for _, h, e in rows]),
        ("FIN lateness max, FINs due after all were open (s)", [f"{e['quiet_max']:.3f} ({e['quiet']})" for _, h, e in rows]),
        (f"no FIN within timeout + {LATE_GRACE:g} s", [str(e["never"]) for _, h, e in rows]),
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, values in lines:
        print("| " + " | ".join([name, *values]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
