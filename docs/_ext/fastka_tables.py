"""Tables generated at build time: ``.. fastka-platform-table::`` from
``fastka._platform.PLATFORMS`` and ``.. fastka-library-defaults::`` from
``docs/library_defaults.csv`` (the facts tests/system/test_integrations.py reads back from each
library's socket)."""
import csv
import os
from typing import Callable, List

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from fastka import _platform
from fastka._config import KeepaliveConfig

DEFAULTS_CSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "library_defaults.csv")


def _option(option) -> str:
    if option is None:
        return "none: ``ValueError``"
    return f"``{option.name}`` ({option.number:#x}, {option.unit})"


def _range(lo_hi) -> str:
    return "{}..{}".format(*lo_hi)


def platform_rows() -> List[List[str]]:
    """The option mapping, one column per platform (Windows twice: per-option and legacy)."""
    tables = list(_platform.PLATFORMS.values())
    win = _platform.WINDOWS
    legacy = f"``{win.legacy_ioctl}`` (ms)"
    titles = [t.title if t is not win else "Windows 10 1709+" for t in tables] + ["Windows before 10 1709"]
    return [
        ["field", *titles],
        ["idle", *(_option(t.idle) for t in tables), legacy],
        ["interval", *(_option(t.interval) for t in tables), legacy],
        ["count", *(_option(t.count) for t in tables), f"fixed at {win.legacy_count} (``{win.count.name}`` from 1703)"],
        ["user_timeout", *(_option(t.user_timeout) for t in tables), _option(win.user_timeout)],
        ["idle range (s)", *(_range(t.limits.idle) for t in tables), _range(win.limits.idle)],
        ["interval range (s)", *(_range(t.limits.interval) for t in tables), _range(win.limits.interval)],
        ["count range", *(_range(t.limits.count) for t in tables), str(win.legacy_count)],
    ]


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s" if secs else ""]
    return " ".join(p for p in parts if p) or "0 s"


def defaults_rows() -> List[List[str]]:
    """The library-defaults table: what each library's socket reads back when left alone."""
    kernel = KeepaliveConfig(idle=7200, interval=75, count=9)  # Linux's net.ipv4.tcp_keepalive_* defaults
    rows = [["library", "checked with", "socket", "SO_KEEPALIVE", "idle / interval / count",
             "TCP_USER_TIMEOUT", "a silent idle peer is noticed after"]]
    with open(DEFAULTS_CSV, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            timers = row["idle / interval / count"]
            if row["SO_KEEPALIVE"] != "on":
                timers, noticed = "n/a", "never (no probes)"
            elif timers.startswith("kernel"):
                timers = "kernel defaults (Linux: {} / {} / {})".format(int(kernel.idle), int(kernel.interval), kernel.count)
                noticed = _duration(kernel.detection_time) + " (Linux defaults)"
            else:
                idle, interval, count = (int(v) for v in timers.split("/"))
                noticed = _duration(KeepaliveConfig(idle=idle, interval=interval, count=count).detection_time)
            rows.append([row["library"], f"{row['distribution']} {row['version']}", row["socket"],
                         row["SO_KEEPALIVE"], timers, row["TCP_USER_TIMEOUT"], noticed])
    return rows


class _Table(SphinxDirective):
    """A list-table whose rows ``make_rows()`` computes; the first row is the header."""

    has_content = False
    make_rows: Callable[[], List[List[str]]]
    source: str  # the file the rows come from: a change rebuilds the page

    def run(self) -> List[nodes.Node]:
        self.env.note_dependency(self.source)
        lines = [".. list-table::", "   :header-rows: 1", ""]
        for row in self.make_rows():
            lines.append("   * - " + row[0])
            lines.extend("     - " + cell for cell in row[1:])
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return container.children


class PlatformTable(_Table):
    make_rows = staticmethod(platform_rows)
    source = _platform.__file__


class LibraryDefaults(_Table):
    make_rows = staticmethod(defaults_rows)
    source = DEFAULTS_CSV


def setup(app):
    app.add_directive("fastka-platform-table", PlatformTable)
    app.add_directive("fastka-library-defaults", LibraryDefaults)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
