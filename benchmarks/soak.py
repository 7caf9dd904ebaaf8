"""Soak: churn loopback connections through a KeepaliveManager for a given time and check
that open fds, the manager's count and the process's memory stay flat.

    python benchmarks/soak.py --duration 600 [--backend c|python] [--report-every 5]

The backend defaults to the one fastka uses (``fastka._backends.default()``, so
FASTKA_NO_EXTENSIONS=1 gives "python"); asking for "c" while FASTKA_NO_EXTENSIONS is set is
an error.

A client process (this file with --client) keeps up to --concurrency connections open and
opens new ones as fast as the machine allows, each with one behaviour in turn:

  talk        sends 1-3 requests, then closes                        -> PEER_CLOSED
  peer-close  connects and closes at once                             -> PEER_CLOSED
  reset       sends a request, then closes with SO_LINGER 0           -> RESET
  idle        sends a request, then waits for the server's FIN        -> IDLE
  many        sends more requests than max_requests                   -> MAX_REQUESTS
  slow        sends a byte (no request line) every 100 ms until the
              server closes: READABLE keeps it from idling, no touch  -> MAX_LIFETIME

The server side (this process) accepts, adds every connection to the manager, reads on
READABLE and touches once per request line; the manager closes what it drops.

Every --report-every seconds it prints open fds (/proc/self/fd), len(manager), RSS,
connections accepted and events by kind. Checks (exit status 1 when one fails):
  * during the run: len(manager) <= 2 x concurrency and open fds <= baseline + 2 x
    concurrency + 16 (connections the client closed may wait one poll to be noticed);
  * after the warm-up (a quarter of the run, 2..30 s): final RSS <= RSS at the end of the
    warm-up + --rss-tolerance MiB (default 16);
  * after the client stops and the manager drains: len(manager) == 0, the open fds are
    exactly the baseline (listener and manager open, no connection), and every accepted
    connection ended with exactly one event other than READABLE (none lost, none twice).
The last line is "SOAK-SUMMARY <json>" for scripts.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

from procs import rss_kib

from fastka import Event, _backends

IDLE_TIMEOUT = 0.3
MAX_REQUESTS = 5
MAX_LIFETIME = 1.5
KINDS = ("talk", "peer-close", "reset", "talk", "idle", "many", "slow")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    return rss_kib([os.getpid()]) / 1024.0


# -- client process ----------------------------------------------------------------------


def client(port: int, concurrency: int) -> None:
    """Open connections with the behaviours of KINDS until SIGTERM."""
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    sel = selectors.DefaultSelector()
    kinds = itertools.cycle(KINDS)
    conns = {}  # socket -> [kind, requests sent, next send time]

    def drop(s):
        sel.unregister(s)
        del conns[s]
        s.close()

    def send(s, n=1, data=b"req\n"):
        try:
            s.send(data * n)
            return True
        except OSError:
            drop(s)
            return False

    while running:
        now = time.monotonic()
        while len(conns) < concurrency:
            kind = next(kinds)
            try:
                # A bounded connect: a blocking one waits out SYN retries on a full backlog,
                # through SIGTERM too (the handler runs, the call resumes).
                s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            except OSError:
                break  # backlog full: let the server catch up
            if kind == "peer-close":
                s.close()
                continue
            s.setblocking(False)
            conns[s] = [kind, 0, now]
            sel.register(s, selectors.EVENT_READ)
            if kind == "reset":
                if send(s):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    drop(s)
            elif kind == "talk":
                if send(s, 1 + len(conns) % 3):
                    drop(s)
            elif kind == "many":
                send(s, MAX_REQUESTS + 2)
            else:  # idle, slow
                send(s)
        for key, _ in sel.select(0.005):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                drop(s)
        now = time.monotonic()
        for s, st in list(conns.items()):
            if st[0] == "slow" and now >= st[2]:
                st[2] = now + 0.1
                send(s, data=b".")
    for s in list(conns):
        drop(s)


# -- server side -------------------------------------------------------------------------


def soak(duration: float, backend: str, report_every: float, concurrency: int, rss_tolerance: float) -> int:
    Manager = _backends.load(backend).KeepaliveManager
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    m = Manager(IDLE_TIMEOUT, max_requests=MAX_REQUESTS, max_lifetime=MAX_LIFETIME, close=True)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(m.fileno(), selectors.EVENT_READ)
    baseline_fds = open_fds()
    rss_start = rss_mib()
    fd_limit = baseline_fds + 2 * concurrency + 16
    warmup = max(2.0, min(30.0, duration / 4))
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--client", str(port), "--concurrency", str(concurrency)]
    )
    events = collections.Counter()
    failures = []
    accepted = touches = 0
    peak_fds = peak_len = 0
    rss_warm = None
    samples = []
    start = time.monotonic()
    next_report = start + report_every
    print(f"soak: backend={backend} duration={duration:g}s concurrency={concurrency} "
          f"idle_timeout={IDLE_TIMEOUT} max_requests={MAX_REQUESTS} max_lifetime={MAX_LIFETIME} "
          f"baseline fds={baseline_fds} rss={rss_start:.1f} MiB", flush=True)

    def serve(deadline_cap: float) -> None:
        nonlocal accepted, touches
        d = m.next_deadline()
        sel.select(deadline_cap if d is None else min(d, deadline_cap))
        for _ in range(256):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # EMFILE and friends are a finding, not a crash
                failures.append(f"accept failed: {exc}")
                break
            conn.setblocking(False)
            m.add(conn)
            accepted += 1
        for obj, ev in m.poll(0):
            events[ev.name] += 1
            if ev is Event.READABLE:
                try:
                    data = obj.recv(65536)
                except OSError:
                    continue  # reset: the next poll reports it
                for _ in range(data.count(b"\n")):
                    if obj not in m:
                        break
                    m.touch(obj)
                    touches += 1

    def sample(now: float) -> None:
        nonlocal peak_fds, peak_len
        fds, n, rss = open_fds(), len(m), rss_mib()
        peak_fds, peak_len = max(peak_fds, fds), max(peak_len, n)
        samples.append({"t": round(now - start, 1), "fds": fds, "len": n, "rss_mib": round(rss, 2)})
        rate = accepted / max(now - start, 1e-9)
        print(f"t={now - start:7.1f}s fds={fds:5d} len={n:5d} rss={rss:7.1f} MiB accepted={accepted} "
              f"({rate:,.0f}/s) touches={touches} events={dict(sorted(events.items()))}", flush=True)
        if n > 2 * concurrency:
            failures.append(f"t={now - start:.1f}s: len(manager)={n} > 2 x concurrency ({2 * concurrency})")
        if fds > fd_limit:
            failures.append(f"t={now - start:.1f}s: {fds} open fds > limit {fd_limit}")

    try:
        while True:
            now = time.monotonic()
            if now - start >= duration:
                break
            if proc.poll() is not None:
                failures.append(f"the client process exited early with status {proc.returncode}")
                break
            serve(0.05)
            if now >= next_report:
                sample(now)
                next_report += report_every
            if rss_warm is None and now - start >= warmup:
                rss_warm = rss_mib()
        end_run = time.monotonic()
        sample(end_run)
        rss_end = rss_mib()
        proc.send_signal(signal.SIGTERM)
        client_until = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < client_until:
            serve(0.05)  # keep accepting and reading, so the client's last calls return
        if proc.poll() is None:
            failures.append("the client process did not stop within 30 s of SIGTERM")
        drain_until = time.monotonic() + 10 * max(IDLE_TIMEOUT, MAX_LIFETIME)
        while len(m) and time.monotonic() < drain_until:
            serve(0.05)
        for _ in range(50):  # connections still in the backlog arrive, then close
            serve(0.01)
            if not len(m):
                break
        final_fds, final_len = open_fds(), len(m)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rss_warm is None:
        rss_warm = rss_end
    if final_len:
        failures.append(f"after the drain len(manager)={final_len}, expected 0")
    if final_fds != baseline_fds:
        failures.append(f"after the drain {final_fds} fds open, baseline {baseline_fds}")
    terminal = sum(n for kind, n in events.items() if kind != "READABLE")
    if terminal != accepted:
        failures.append(f"{accepted} connections accepted but {terminal} ended with an event "
                        "(each must end with exactly one)")
    if rss_end > rss_warm + rss_tolerance:
        failures.append(f"RSS grew from {rss_warm:.1f} MiB (after warm-up) to {rss_end:.1f} MiB "
                        f"(> +{rss_tolerance:g} MiB)")
    summary = {
        "backend": backend,
        "duration_s": round(end_run - start, 1),
        "connections": accepted,
        "connections_per_s": round(accepted / max(end_run - start, 1e-9)),
        "touches": touches,
        "terminal_events": terminal,
        "events": dict(sorted(events.items())),
        "baseline_fds": baseline_fds,
        "peak_fds": peak_fds,
        "final_fds": final_fds,
        "peak_len": peak_len,
        "rss_start_mib": round(rss_start, 2),
        "rss_after_warmup_mib": round(rss_warm, 2),
        "rss_end_mib": round(rss_end, 2),
        "failures": failures,
    }
    m.close()
    sel.close()
    listener.close()
    for f in failures:
        print(f"soak: FAIL: {f}", flush=True)
    print(f"soak: {'FAILED' if failures else 'OK'}: {accepted} connections in {summary['duration_s']} s, "
          f"fds {baseline_fds} -> peak {peak_fds} -> {final_fds}, RSS {rss_start:.1f} -> "
          f"{rss_warm:.1f} (warm) -> {rss_end:.1f} MiB", flush=True)
    print("SOAK-SUMMARY " + json.dumps(summary), flush=True)
    return 1 if failures else 0


# option: (low, high, unit); checked after parsing, so that nan (it would run forever or
# turn a check off) and inf are refused with the value and the range
RANGES = {
    "duration": (1, 7 * 86400, "seconds"),
    "report_every": (0.1, 3600, "seconds"),
    "concurrency": (1, 100000, "connections"),
    "rss_tolerance": (0, 65536, "MiB"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds to churn (default 60)")
    p.add_argument("--backend", choices=_backends.NAMES, default=None,
                   help="default: the backend fastka uses (FASTKA_NO_EXTENSIONS gives python)")
    p.add_argument("--report-every", type=float, default=5.0,
                   help="seconds between checks (default 5)")
    p.add_argument("--concurrency", type=int, default=1024,
                   help="client connections open at once (default 1024)")
    p.add_argument("--rss-tolerance", type=float, default=16.0,
                   help="MiB RSS may grow after the warm-up (default 16)")
    p.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for name, (low, high, unit) in RANGES.items():
        value = getattr(a, name)
        if not low <= value <= high:  # false for nan too
            p.error(f"argument --{name.replace('_', '-')}: {value} is out of range; allowed: {low:g}..{high:g} {unit}")
    if a.client is not None:
        client(a.client, a.concurrency)
        return 0
    if a.backend is None:
        a.backend = _backends.default().name
    else:
        _, reasons = _backends.available([a.backend])
        if reasons:
            p.error(f"argument --backend: {a.backend} cannot run: {reasons[a.backend]}")
    return soak(a.duration, a.backend, a.report_every, a.concurrency, a.rss_tolerance)


if __name__ == "__main__":
    sys.exit(main())
