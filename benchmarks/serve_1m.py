"""Idle keep-alive connections by the hundred thousand, up to 1,000,000: `fastka serve`
(compiled) next to nginx with the same worker count, both on this machine's loopback.

    python benchmarks/serve_1m.py [--connections 1000000] [--workers N] [--timeout S]
                                  [--idle-seconds 30] [--sources N] [--per-client 16000]
                                  [--backend c] [--skip-nginx] [--max-minutes 40]

For each server, one run: client processes open ``--connections`` connections (one GET
each, answer read), which then stay idle until the server's keep-alive timeout closes
them. Reported:

- RSS per connection: growth of every server process's RSS over the idle server,
  divided by the connections answered;
- kernel memory per socket: growth of Slab (/proc/meminfo) over the same span, divided by
  twice the connections (both ends are sockets of this machine);
- server CPU over up to ``--idle-seconds`` idle seconds (all connections open, none due
  yet; the window is shortened, and says so, when the first timeout comes sooner). Other
  jobs on the machine make this figure noisy;
- FIN lateness: when the server's FIN arrived past the answer's arrival + the timeout, p50,
  p99, max (and the min: below 0 would be a close before the timeout). The answer's
  arrival is the kernel's receive timestamp (SO_TIMESTAMPNS); FINs are stamped by a
  thread per client process that does nothing but wait on epoll, so a FIN is never
  stamped earlier than it arrived (at worst a little later);
- connections never closed within answer + timeout + 5 s, and those closed by a reset;
- what the machine did meanwhile, from the start of the run to the last FIN: the kernel's
  counters of listen-queue overflows, TCP retransmission timeouts and retransmitted
  segments (/proc/net/netstat, /proc/net/snmp; the whole machine, both servers' runs
  apart), and the CPU time the hypervisor took from this machine (steal, /proc/stat): a
  stall or a retransmission of a few seconds shows in the FIN lateness as much as a late
  timer would.

Limits: each process holds at most the open-file hard limit (20,000 here), so the server
runs ``ceil(connections / 17,000)`` workers (``--workers``) and each client process at most
``--per-client`` connections. Clients bind to ``--sources`` addresses spread over
127.0.0.0/8 (IP_BIND_ADDRESS_NO_PORT), so that each source address needs fewer than the
ephemeral port range's ports for the one server port. The script refuses a size the
machine cannot hold (fs.file-max, ports, memory), raises net.ipv4.tcp_max_syn_backlog and
net.ipv4.tcp_max_orphans for the run when they are lower than the run needs, and puts
them back afterwards. It stops by itself (``--max-minutes``) and stops every process it
started, on success, error or Ctrl-C. The `fastka serve` backend asked for is refused, not
replaced, when this checkout does not have it.
"""
from __future__ import annotations

import argparse
import array
import errno
import math
import multiprocessing
import os
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tables  # noqa: E402
from procs import cpu_model, cpu_seconds, meminfo_kib, raise_nofile, rss_kib, set_sysctl, sysctl  # noqa: E402
from servers import GET, FastkaServe, Nginx, Refused  # noqa: E402

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # linux/in.h
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # asm-generic/socket.h
PER_WORKER = 17_000
IN_FLIGHT = 256  # connections per client process connecting or awaiting their answer at once
LATE_GRACE = 5.0  # seconds past the timeout a client waits for FINs before counting "never"
KIB_PER_CONNECTION = 12  # memory both ends of one idle loopback connection may take, KiB (bound)
MIB_PER_PROCESS = 30  # an idle interpreter or nginx worker, MiB (bound)


def source_address(k: int) -> str:
    """The k-th client source address, spread over 127.0.0.0/8 (never 127.0.0.1)."""
    return f"127.{1 + k // 250}.{k % 250 + 1}.1"


def kernel_counters() -> Dict[str, float]:
    """Machine-wide counters that explain FIN lateness: listen overflows, retransmission
    timeouts, retransmitted segments, and steal seconds (CPU time the hypervisor took)."""
    values: Dict[str, float] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, nums in zip(lines[::2], lines[1::2]):
            prefix = names.split(":")[0]
            for name, num in zip(names.split()[1:], nums.split()[1:]):
                values[f"{prefix}.{name}"] = float(num)
    with open("/proc/stat") as f:
        cpu = f.readline().split()
    values["steal"] = int(cpu[8]) / os.sysconf("SC_CLK_TCK") if len(cpu) > 8 else math.nan
    return values


COUNTERS = {"listen overflows": "TcpExt.ListenOverflows", "retransmission timeouts": "TcpExt.TCPTimeouts",
            "retransmitted segments": "Tcp.RetransSegs", "steal": "steal"}


# -- clients (each in its own process) -----------------------------------------------------


def client(port: int, n: int, sources: List[str], first: int, timeout: float, pipe) -> None:
    """Open ``n`` connections (one GET each, answer read) from ``sources`` (round robin
    from index ``first``), report ("open", answered, {why failed: count}), then wait for the server's
    FINs until the last answer + ``timeout`` + LATE_GRACE; report ("done", lateness
    array in seconds, never closed, resets)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the run
    raise_nofile()
    sys.setswitchinterval(0.0005)  # the FIN thread gets the interpreter soon after it wakes
    fin_ep = select.epoll()
    watch: Dict[int, int] = {}  # fd -> index, for connections answered and waiting for FIN
    socks: List[Optional[socket.socket]] = []
    answered = array.array("d")  # kernel receive time of the answer (CLOCK_REALTIME), by index
    fin_at: Dict[int, float] = {}
    resets = 0
    running = True

    def fin_reader() -> None:
        nonlocal resets
        while running:
            events = fin_ep.poll(0.1, 4096)
            now = time.time()
            for fd, ev in events:
                idx = watch.pop(fd, None)
                if idx is None:
                    continue
                fin_at[idx] = now
                if ev & select.EPOLLERR:
                    resets += 1
                fin_ep.unregister(fd)
                socks[idx].close()
                socks[idx] = None

    reader = threading.Thread(target=fin_reader, daemon=True)
    reader.start()
    ep = select.epoll()
    pending: Dict[int, list] = {}  # fd -> [index, socket, bytes read so far or None while connecting]
    failed: Dict[str, int] = {}

    def fail(fd: int, why: str) -> None:
        idx, s, _ = pending.pop(fd)
        ep.unregister(fd)
        s.close()
        socks[idx] = None
        failed[why] = failed.get(why, 0) + 1

    def handle(events) -> None:
        for fd, ev in events:
            entry = pending[fd]
            idx, s, got = entry
            if got is None:
                if ev & (select.EPOLLERR | select.EPOLLHUP):
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    fail(fd, f"connect: {errno.errorcode.get(err, err)}")
                    continue
                try:
                    s.send(GET)
                except OSError as exc:
                    fail(fd, f"send: {errno.errorcode.get(exc.errno, exc.errno)}")
                    continue
                entry[2] = b""
                ep.modify(fd, select.EPOLLIN)
                continue
            try:
                data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(16))
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                fail(fd, "closed before the answer")
                continue
            if not got:
                stamp = next((struct.unpack("qq", d[:16]) for lvl, t, d in anc
                              if lvl == socket.SOL_SOCKET and t == SO_TIMESTAMPNS), None)
                answered[idx] = stamp[0] + stamp[1] * 1e-9 if stamp else time.time()
            got += data
            head, sep, body = got.partition(b"\r\n\r\n")
            length = re.search(rb"content-length:\s*(\d+)", head, re.I) if sep else None
            if length and len(body) >= int(length.group(1)):
                del pending[fd]
                ep.unregister(fd)
                watch[fd] = idx
                fin_ep.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
            else:
                entry[2] = got

    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind((sources[(first + i) % len(sources)], 0))
        socks.append(s)
        answered.append(math.nan)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError as exc:
            s.close()
            socks[i] = None
            why = f"connect: {errno.errorcode.get(exc.errno, exc.errno)}"
            failed[why] = failed.get(why, 0) + 1
            continue
        pending[s.fileno()] = [i, s, None]
        ep.register(s.fileno(), select.EPOLLOUT)
        while len(pending) >= IN_FLIGHT:
            events = ep.poll(60.0)
            if not events:
                break
            handle(events)
    while pending:
        events = ep.poll(60.0)
        if not events:
            break  # nothing moved for a minute: the rest count as failed
        handle(events)
    for fd in list(pending):
        fail(fd, "no answer, nothing moved for 60 s")
    ok = [t for t in answered if not math.isnan(t)]
    pipe.send(("open", len(ok), failed))
    wait_until = (max(ok) if ok else time.time()) + timeout + LATE_GRACE
    while watch and time.time() < wait_until:
        time.sleep(0.2)
    running = False
    reader.join()
    late = array.array("d", (fin_at[i] - answered[i] - timeout for i in sorted(fin_at)))
    never = sum(1 for i, t in enumerate(answered) if not math.isnan(t) and i not in fin_at)
    for s in socks:
        if s is not None:
            s.close()
    pipe.send(("done", late, never, resets))


# -- the run -------------------------------------------------------------------------------


class Stopped(Exception):
    pass


def receive(pipes, what: str, deadline: float) -> list:
    """One message from every pipe; Stopped when ``deadline`` (monotonic) passes first."""
    out = []
    for a in pipes:
        if not a.poll(max(0.0, deadline - time.monotonic())):
            raise Stopped(f"client processes did not report {what} before the time limit (--max-minutes)")
        out.append(a.recv())
    return out


def run(server, args, deadline: float) -> dict:
    """One server: start it, open the connections, measure, wait for the FINs, stop all."""
    port = server.start()
    procs: List[multiprocessing.Process] = []
    before = kernel_counters()
    try:
        time.sleep(1.0)
        base_rss, base_slab = rss_kib(server.pids()), meminfo_kib("Slab")
        sources = [source_address(k) for k in range(args.sources)]
        sizes = [min(args.per_client, args.connections - i) for i in range(0, args.connections, args.per_client)]
        pipes = []
        t0 = time.monotonic()
        for k, n in enumerate(sizes):
            a, b = multiprocessing.Pipe()
            p = multiprocessing.Process(target=client, args=(port, n, sources, k * n, args.timeout, b), daemon=True)
            p.start()
            procs.append(p)
            pipes.append(a)
        opened = receive(pipes, "their connections", deadline)
        failed: Dict[str, int] = {}
        for m in opened:
            for why, count in m[2].items():
                failed[why] = failed.get(why, 0) + count
        out = {"opened": sum(m[1] for m in opened), "failed": sum(failed.values()), "why": failed,
               "open_seconds": time.monotonic() - t0}
        print(f"  {server.label}: {out['opened']:,} answered, {out['failed']:,} failed{' ' + str(failed) if failed else ''},"
              f" in {out['open_seconds']:.1f} s", flush=True)
        time.sleep(2.0)
        pids = server.pids()
        out["rss_kib"] = rss_kib(pids)
        out["rss_per_conn"] = (out["rss_kib"] - base_rss) * 1024 / max(1, out["opened"])
        out["slab_per_socket"] = (meminfo_kib("Slab") - base_slab) * 1024 / max(1, 2 * out["opened"])
        window = min(args.idle_seconds, t0 + args.timeout - 1.0 - time.monotonic())
        out["idle_window"] = max(0.0, window)
        if window > 0:
            c0 = cpu_seconds(pids)
            time.sleep(window)
            out["idle_cpu"] = cpu_seconds(server.pids()) - c0
        else:
            out["idle_cpu"] = math.nan
        print(f"  {server.label}: RSS {out['rss_kib'] / 1024:,.1f} MiB, {out['rss_per_conn']:.0f} B per connection,"
              f" Slab {out['slab_per_socket']:.0f} B per socket, CPU {out['idle_cpu']:.2f} s over"
              f" {out['idle_window']:.0f} idle s; waiting for the FINs", flush=True)
        done = receive(pipes, "the FINs", deadline)
        late = sorted(x for m in done for x in m[1])
        out["never"] = sum(m[2] for m in done)
        out["resets"] = sum(m[3] for m in done)
        pick = lambda q: late[min(len(late) - 1, int(q * len(late)))] if late else math.nan  # noqa: E731
        out.update(closed=len(late), p50=pick(0.5), p99=pick(0.99), late_max=late[-1] if late else math.nan,
                   late_min=late[0] if late else math.nan)
        after = kernel_counters()
        out["machine"] = {label: after[key] - before[key] for label, key in COUNTERS.items()}
        return out
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(10)
        server.stop()


def raise_sysctls(wanted: Dict[str, int]) -> Dict[str, str]:
    """Raise each sysctl of ``wanted`` that is lower; returns the old values to restore."""
    old = {}
    for name, value in wanted.items():
        now = sysctl(name)
        if int(now) < value:
            set_sysctl(name, str(value))
            old[name] = now
            print(f"{name}: {now} -> {value} for this run", flush=True)
    return old


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, help=f"server workers (default: one per {PER_WORKER:,} connections)")
    ap.add_argument("--timeout", type=float,
                    help="keep-alive timeout, s (default: idle seconds + 30 + 1 s per 2,500 connections, the time to open them here)")
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--sources", type=int, help="client source addresses (default: one per 10,000 connections, >= 8)")
    ap.add_argument("--per-client", type=int, default=16_000, help="connections per client process")
    ap.add_argument("--backend", choices=("c", "python"), default="c", help="fastka serve backend (default c)")
    ap.add_argument("--skip-nginx", action="store_true")
    ap.add_argument("--max-minutes", type=float, default=40.0, help="the whole run stops after this many minutes")
    args = ap.parse_args()
    if args.connections < 1 or args.per_client < 1 or args.idle_seconds < 0 or args.max_minutes <= 0:
        ap.error("--connections and --per-client must be >= 1, --idle-seconds >= 0, --max-minutes > 0")
    n = args.connections
    workers = args.workers or math.ceil(n / PER_WORKER)
    args.sources = args.sources or max(8, math.ceil(n / 10_000))
    if args.timeout is None:
        args.timeout = args.idle_seconds + 30 + n / 2500
    hard = raise_nofile()
    for name in ("fs.file-max", "fs.nr_open", "net.ipv4.ip_local_port_range", "net.core.somaxconn",
                 "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_max_orphans"):
        print(f"{name} = {sysctl(name)}")
    clients = math.ceil(n / args.per_client)
    print(f"open-file limit per process: {hard}; {workers} server workers, {clients} client processes,"
          f" {args.sources} source addresses, keep-alive timeout {args.timeout:g} s", flush=True)
    low, high = map(int, sysctl("net.ipv4.ip_local_port_range").split())
    if n / args.sources > (high - low + 1) * 0.8:
        ap.error(f"{n} connections over {args.sources} sources need more ephemeral ports than {low}..{high}: raise --sources")
    if args.per_client > hard - 200 or n / workers > hard - 2500:
        ap.error(f"per-process open-file limit {hard}: lower --per-client or raise --workers")
    with open("/proc/sys/fs/file-nr") as f:
        in_use, _, file_max = map(int, f.read().split())
    if in_use + 2 * n + 10_000 > file_max:
        ap.error(f"fs.file-max {file_max} with {in_use} files open cannot hold {n:,} connections (both ends)")
    need_mib = n * KIB_PER_CONNECTION / 1024 + MIB_PER_PROCESS * (workers + clients)
    if meminfo_kib("MemAvailable") / 1024 < need_mib * 1.2:
        ap.error(f"{n:,} connections may need {need_mib:,.0f} MiB; MemAvailable is {meminfo_kib('MemAvailable') / 1024:,.0f} MiB")
    servers: list = []
    try:
        fastka = FastkaServe(args.backend, workers, args.timeout)
        fastka.check()
        servers.append(fastka)
    except Refused as exc:
        raise SystemExit(f"refused: {exc}") from None
    if args.skip_nginx:
        print("nginx: skipped (--skip-nginx)")
    else:
        try:
            servers.append(Nginx(workers, args.timeout))
        except Refused as exc:
            print(f"nginx: skipped ({exc})")
    deadline = time.monotonic() + args.max_minutes * 60
    load_start = os.getloadavg()[0]
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    old = raise_sysctls({"net.ipv4.tcp_max_syn_backlog": 65536, "net.ipv4.tcp_max_orphans": 2 * n})
    rows = []
    stopped = None
    try:
        for server in servers:
            print(f"{server.label}:", flush=True)
            try:
                rows.append((server.label, run(server, args, deadline)))
            except (Stopped, Refused, RuntimeError, OSError) as exc:
                stopped = f"{server.label}: {exc}"
                print(f"STOPPED: {stopped}", flush=True)
                break
    except KeyboardInterrupt:
        print("interrupted: every process stopped", flush=True)
        return 130
    finally:
        for name, value in old.items():
            set_sysctl(name, value)
            print(f"{name}: back to {value}")
    if not rows:
        return 1
    per_worker = f"{workers} worker{'s' if workers > 1 else ''}"
    head = ["", *(label for label, _ in rows)]
    lines = [
        ("connections answered", [f"{r['opened']:,}" + (f" ({r['failed']:,} failed: " + ", ".join(
            f"{count:,} {why}" for why, count in sorted(r["why"].items())) + ")" if r["failed"] else "") for _, r in rows]),
        ("seconds to open them", [f"{r['open_seconds']:.0f} s" for _, r in rows]),
        ("server RSS, all processes", [f"{r['rss_kib'] / 1024:,.1f} MiB" for _, r in rows]),
        ("RSS per connection", [f"{r['rss_per_conn']:.0f} B" for _, r in rows]),
        ("kernel memory (Slab) per socket", [f"{r['slab_per_socket']:,.0f} B" for _, r in rows]),
        ("server CPU while idle", [f"{r['idle_cpu']:.2f} s over {r['idle_window']:.0f} s" for _, r in rows]),
        (f"FIN lateness past answer + {args.timeout:g} s, p50 / p99 / max",
         [f"{r['p50']:.3f} / {r['p99']:.3f} / {r['late_max']:.3f} s" for _, r in rows]),
        ("earliest FIN (lateness min)", [f"{r['late_min']:.3f} s" for _, r in rows]),
        (f"never closed (within + {LATE_GRACE:g} s) / closed by reset", [f"{r['never']:,} / {r['resets']:,}" for _, r in rows]),
        ("machine during the run: listen overflows / retransmission timeouts / retransmitted segments",
         [" / ".join(f"{r['machine'][k]:,.0f}" for k in list(COUNTERS)[:3]) for _, r in rows]),
        ("machine during the run: CPU time taken by the hypervisor (steal)", [f"{r['machine']['steal']:.1f} s" for _, r in rows]),
    ]
    print()
    print(f"{time.strftime('%Y-%m-%d', time.gmtime())}: {n:,} idle keep-alive connections, loopback, {per_worker} each,"
          f" {os.cpu_count()} CPUs ({cpu_model()}), {meminfo_kib('MemTotal') / 1048576:.1f} GiB;"
          f" load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"command: python benchmarks/serve_1m.py --connections {n} --idle-seconds {args.idle_seconds:g}"
          f" --timeout {args.timeout:g}" + (f" --workers {args.workers}" if args.workers else ""))
    if stopped:
        print(f"stopped short: {stopped}")
    print()
    print(tables.rst(head, [[name, *values] for name, values in lines]))
    print()
    print(tables.markdown(head, [[name, *values] for name, values in lines]))
    return 0 if not stopped else 1


if __name__ == "__main__":
    sys.exit(main())
