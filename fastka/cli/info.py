"""`fastka info`: the backend in use, the kernel's keepalive defaults and what they mean,
the open-file limit."""
from __future__ import annotations

import argparse
import sys

from .. import _backends
from .._config import MIDDLEBOX_IDLE_TIMEOUTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`fastka info` takes no options."""


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    if s >= 60:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    return f"{seconds:g} s"


def run(args: argparse.Namespace) -> int:
    import fastka

    out = sys.stdout
    if fastka.IMPLEMENTATION == "c":
        what = "compiled C core"
    elif _backends.extensions_disabled():
        what = f"pure-Python fallback, forced by {_backends.ENV_NO_EXTENSIONS}"
    else:
        what = f"pure-Python fallback; {_backends.unavailable_reason('c')}"
    out.write(f"fastka {fastka.__version__}, backend: {fastka.IMPLEMENTATION} ({what})\n")
    try:
        d = fastka.system_defaults()
    except OSError as exc:
        out.write(f"kernel keepalive defaults: unreadable ({exc})\n")
    else:
        out.write(
            f"kernel keepalive defaults: idle={d.idle} s, interval={d.interval} s, count={d.count}\n"
            f"  a silent peer is detected after idle + interval * count = {d.detection_time:g} s"
            f" ({_duration(d.detection_time)}), on sockets that enable SO_KEEPALIVE\n"
        )
        shortest = min(MIDDLEBOX_IDLE_TIMEOUTS.values())
        if d.idle >= shortest:
            boxes = ", ".join(f"{name} {_duration(t)}" for name, t in MIDDLEBOX_IDLE_TIMEOUTS.items() if d.idle >= t)
            sugg = fastka.KeepaliveConfig.within(shortest)
            out.write(
                f"  warning: the first probe ({d.idle} s) comes after typical middlebox idle"
                f" timeouts ({boxes}): idle connections through them are dropped silently.\n"
                f"  use e.g. KeepaliveConfig.within({shortest}) -> {sugg!r}\n"
            )
    try:
        import resource
    except ImportError:
        out.write("open-file limit: not available on this platform\n")
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

        def fmt(v: int) -> str:
            return "unlimited" if v == resource.RLIM_INFINITY else str(v)

        out.write(f"open-file limit: {fmt(soft)} (hard {fmt(hard)})"
                  " -- each connection uses one fd\n")
    return 0
