"""find_dead against the select.poll() loop a user would write in Python, as paired ratios.

    python benchmarks/find_dead_vs_poll.py [--backend c|python ...] [--sizes 100,1000]
                                           [--rounds 15] [--calls 200]

N connected loopback TCP sockets (loopback.Pool: both ends in this process), the peers of 1 % of them
closed. Each round times ``--calls`` calls of find_dead and of a baseline, interleaved
call by call (A B B A ...) so that a load change on a shared machine hits both alike; the
round's ratio is find_dead's median call time over the baseline's. Printed: the median of the
per-round ratios and their range, per backend, size and baseline. Baselines:

- ``poll loop``: register each socket with ``select.poll()``, ``poll(0)``, and give back
  the members whose fd came back with POLLRDHUP/POLLHUP/POLLERR (find_dead's answer);
- ``poll only``: the same without mapping back: the dead fds (less than find_dead gives).

The backend measured is the one named, loaded by name: asking for ``c`` where it is not
built (or FASTKA_NO_EXTENSIONS is set) is an error, never a silent fallback measurement.
Each line names the backend and the module its primitives came from.
"""
from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import sys
import time
from typing import Callable, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's fastka

from loopback import Pool  # noqa: E402

from fastka import _backends  # noqa: E402

GONE = select.POLLRDHUP | select.POLLHUP | select.POLLERR
DEAD_EVERY = 100  # 1 % dead


def poll_loop(socks: Sequence[socket.socket]) -> List[socket.socket]:
    """What a user writes for find_dead's answer with select.poll()."""
    p = select.poll()
    for s in socks:
        p.register(s, select.POLLRDHUP)
    gone = {fd for fd, ev in p.poll(0) if ev & GONE}
    return [s for s in socks if s.fileno() in gone]


def poll_only(socks: Sequence[socket.socket]) -> List[int]:
    """The poll alone: the dead fds, not mapped back to the members."""
    p = select.poll()
    for s in socks:
        p.register(s, select.POLLRDHUP)
    return [fd for fd, ev in p.poll(0) if ev & GONE]


BASELINES = {"poll loop": poll_loop, "poll only": poll_only}


def paired_ratios(a: Callable[[], object], b: Callable[[], object], rounds: int, calls: int) -> List[float]:
    """Per round: the median time of ``calls`` calls of ``a`` over that of ``b``, the calls
    interleaved (medians, so that a call preempted on a busy machine does not count)."""
    clock = time.perf_counter_ns
    ratios = []
    for _ in range(rounds):
        ta: List[int] = []
        tb: List[int] = []
        for k in range(calls):
            first, second = (a, b) if k % 2 == 0 else (b, a)
            t0 = clock()
            first()
            t1 = clock()
            second()
            t2 = clock()
            (ta if first is a else tb).append(t1 - t0)
            (tb if first is a else ta).append(t2 - t1)
        ratios.append(statistics.median(ta) / statistics.median(tb))
    return ratios


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", action="append", choices=_backends.NAMES,
                    help="backend to measure (repeatable; default: both, each required to load)")
    ap.add_argument("--sizes", default="100,1000", help="connection counts, comma-separated (default 100,1000)")
    ap.add_argument("--rounds", type=int, default=15, help="paired rounds per figure (default 15)")
    ap.add_argument("--calls", type=int, default=200, help="calls of each side per round (default 200)")
    args = ap.parse_args(argv or None)
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes must be comma-separated integers, not {args.sizes!r}")
    if any(n < DEAD_EVERY for n in sizes) or args.rounds < 1 or args.calls < 2:
        ap.error(f"sizes must be >= {DEAD_EVERY} (1 % dead), --rounds >= 1, --calls >= 2")
    names = args.backend or list(_backends.NAMES)
    chosen, reasons = _backends.available(names)
    if reasons:
        for name, why in reasons.items():
            print(f"find_dead_vs_poll: error: backend {name!r} asked for but cannot be measured: {why}", file=sys.stderr)
        return 2
    print(f"find_dead over N loopback TCP connections, 1 % dead; {args.rounds} paired rounds of {args.calls}"
          f" interleaved calls; ratio = find_dead time / baseline time (median [min-max] of the rounds)")
    for n in sizes:
        with Pool(n) as pool:
            ours = pool.socks
            dead_idx = range(0, n, DEAD_EVERY)
            pool.close_peers(dead_idx)
            want = [ours[i] for i in dead_idx]
            assert poll_loop(ours) == want
            for backend in chosen:
                find_dead = backend.find_dead
                if find_dead(ours) != want:
                    raise RuntimeError(f"the {backend.name} backend's find_dead missed the dead connections")
                us = per_call_us(lambda: find_dead(ours), args.calls)
                module = os.path.basename(getattr(backend.keepalive, "__file__", backend.keepalive.__name__))
                for label, baseline in BASELINES.items():
                    r = paired_ratios(lambda: find_dead(ours), lambda: baseline(ours), args.rounds, args.calls)
                    print(f"N={n:<6} backend={backend.name:<7} ({module}) {us / n * 1000:6.0f} ns/conn"
                          f"  vs {label:<9}: {statistics.median(r):.2f}x [{min(r):.2f}-{max(r):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
