"""Which socket option sets each keepalive field on each platform, and the limits there.

The one copy of this table: both backends apply the option calls of :func:`plan` (the
compiled core takes them as (level, option, value) triples and knows no option numbers),
KeepaliveConfig validates against ``CURRENT.limits`` and gives the same calls as
``socket_options()``; tests/test_platform.py checks every row everywhere and the README's
table against them.

Python lacks some of these constants (macOS' TCP_KEEPALIVE before 3.10, TCP_KEEPINTVL and
TCP_KEEPCNT before 3.10, TCP_RXT_CONNDROPTIME; Windows' TCP_KEEPIDLE/TCP_KEEPINTVL before
3.12), so the numbers are written out here from the platforms' headers.
"""
from __future__ import annotations

import errno
import socket
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

IPPROTO_TCP = 6
SOL_SOCKET = socket.SOL_SOCKET
SO_KEEPALIVE = socket.SO_KEEPALIVE
# mstcpip.h: _WSAIOW(IOC_VENDOR, 4); Python has it only on Windows.
SIO_KEEPALIVE_VALS = getattr(socket, "SIO_KEEPALIVE_VALS", 0x98000004)


@dataclass(frozen=True)
class Limits:
    """Inclusive ranges the platform accepts; seconds for idle/interval, ms for user_timeout.

    ``user_timeout_ms`` is None where the platform has no per-socket user timeout.
    """

    idle: Tuple[int, int]
    interval: Tuple[int, int]
    count: Tuple[int, int]
    user_timeout_ms: Optional[Tuple[int, int]]


@dataclass(frozen=True)
class Option:
    """One socket option: its name in the platform's headers, its number and unit."""

    name: str
    number: int
    unit: str  # "s", "ms" or "probes"


@dataclass(frozen=True)
class Platform:
    """How one platform sets each keepalive field (IPPROTO_TCP options unless noted)."""

    name: str  # sys.platform prefix: "linux", "darwin", "freebsd", "sunos", "win32"
    title: str
    idle: Option
    interval: Option
    count: Option
    user_timeout: Optional[Option]
    limits: Limits
    # Windows before 10 1709: SIO_KEEPALIVE_VALS (idle and interval in ms, always both)
    # and a probe count fixed at legacy_count.
    legacy_ioctl: Optional[str] = None
    legacy_count: Optional[int] = None


def _table(
    name: str, title: str, numbers: Tuple[int, int, int], user_timeout: Optional[Option], limits: Limits,
    idle_name: str = "TCP_KEEPIDLE", legacy_ioctl: Optional[str] = None, legacy_count: Optional[int] = None,
) -> Platform:
    """A Platform whose idle, interval and count options have the usual names (``idle_name``,
    TCP_KEEPINTVL, TCP_KEEPCNT) and units (seconds, seconds, probes); ``numbers`` are
    their option numbers."""
    idle, interval, count = numbers
    return Platform(
        name, title, Option(idle_name, idle, "s"), Option("TCP_KEEPINTVL", interval, "s"),
        Option("TCP_KEEPCNT", count, "probes"), user_timeout, limits, legacy_ioctl, legacy_count,
    )


# include/net/tcp.h: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL 32767; MAX_TCP_KEEPCNT 127.
LINUX = _table("linux", "Linux", (4, 5, 6), Option("TCP_USER_TIMEOUT", 18, "ms"),
               Limits(idle=(1, 32767), interval=(1, 32767), count=(1, 127), user_timeout_ms=(0, 2**31 - 1)))
# XNU: 0..UINT32_MAX / TCP_RETRANSHZ (1000) seconds, count an int32.
DARWIN = _table("darwin", "macOS", (0x10, 0x101, 0x102), Option("TCP_RXT_CONNDROPTIME", 0x80, "s"),
                Limits(idle=(1, 4294967), interval=(1, 4294967), count=(1, 2**31 - 1), user_timeout_ms=(0, 2147483000)),
                idle_name="TCP_KEEPALIVE")
# tcp(4): seconds, at most UINT_MAX / hz (hz = 1000 by default).
FREEBSD = _table("freebsd", "FreeBSD", (256, 512, 1024), None,
                 Limits(idle=(1, 4294967), interval=(1, 4294967), count=(1, 2**31 - 1), user_timeout_ms=None))
# tcp_keepalive_interval's range: 10 seconds to 10 days.
SUNOS = _table("sunos", "Solaris/illumos", (0x22, 0x24, 0x23), None,
               Limits(idle=(10, 864000), interval=(1, 864000), count=(1, 2**31 - 1), user_timeout_ms=None))
# SIO_KEEPALIVE_VALS holds ULONG milliseconds; fastka stays within INT_MAX ms.
WINDOWS = _table("win32", "Windows", (3, 17, 16), Option("TCP_MAXRT", 5, "s"),
                 Limits(idle=(1, 2147483), interval=(1, 2147483), count=(1, 255), user_timeout_ms=(0, 2147483000)),
                 legacy_ioctl="SIO_KEEPALIVE_VALS", legacy_count=10)

PLATFORMS: Dict[str, Platform] = {p.name: p for p in (LINUX, DARWIN, FREEBSD, SUNOS, WINDOWS)}


def platform_for(name: str) -> Platform:
    """The table for a ``sys.platform`` value ("linux", "darwin", "freebsd13", "sunos5", "win32")."""
    for prefix, table in PLATFORMS.items():
        if name.startswith(prefix):
            return table
    raise LookupError(f"fastka has no keepalive table for platform {name!r}; known: {', '.join(PLATFORMS)}")


def _generic(name: str) -> Platform:
    """A table for a platform fastka does not know: Python's own constants (-1 where
    Python has none, so that the option call fails with an error naming the option),
    no user timeout, and the narrowest limits of the known platforms."""
    numbers = (getattr(socket, "TCP_KEEPIDLE", -1), getattr(socket, "TCP_KEEPINTVL", -1), getattr(socket, "TCP_KEEPCNT", -1))
    return _table(name, name, numbers, None, Limits(idle=(10, 32767), interval=(1, 32767), count=(1, 127), user_timeout_ms=None))


def _current() -> Platform:
    try:
        return platform_for(sys.platform)
    except LookupError:
        return _generic(sys.platform)


CURRENT: Platform = _current()


def user_timeout_value(ms: int, table: Platform) -> int:
    """fastka's milliseconds in the unit of ``table``'s user-timeout option (seconds round up)."""
    assert table.user_timeout is not None
    return -(-ms // 1000) if table.user_timeout.unit == "s" else ms


def user_timeout_ms(value: int, table: Platform) -> int:
    """The user-timeout option's read-back value in milliseconds."""
    assert table.user_timeout is not None
    return value * 1000 if table.user_timeout.unit == "s" else value


# One step of applying keepalive: (option name, level, option number, value). The level
# "ioctl" means sock.ioctl(SIO_KEEPALIVE_VALS, value) with value (onoff, idle ms, interval ms).
Step = Tuple[str, object, int, object]


def plan(
    table: Platform,
    idle: int,
    interval: int,
    count: int,
    user_timeout_ms_: int,
    *,
    per_option: bool = True,
    enable: bool = True,
) -> List[Step]:
    """The option calls that apply one config on ``table``'s platform, in order.

    Fields < 0 are left alone (user_timeout_ms_ < 0 means None). SO_KEEPALIVE comes
    first (``enable``), then the TCP options: set_keepalive, socket_options() and the
    manager all make the calls in this one order, so an error names the same first
    failing option everywhere. ``per_option=False`` is Windows
    before 10 1709: SIO_KEEPALIVE_VALS with both idle and interval (the caller fills what
    it was not given, see :func:`windows_fill`), and TCP_KEEPCNT only for a count other
    than the fixed 10 (it fails before Windows 10 1703: an error, not an ignored field).
    Raises OSError(ENOPROTOOPT) for user_timeout where the platform has none.
    """
    steps: List[Step] = [("SO_KEEPALIVE", SOL_SOCKET, SO_KEEPALIVE, 1)] if enable else []
    if per_option or table.legacy_ioctl is None:
        if idle >= 0:
            steps.append((table.idle.name, IPPROTO_TCP, table.idle.number, idle))
        if interval >= 0:
            steps.append((table.interval.name, IPPROTO_TCP, table.interval.number, interval))
        if count >= 0:
            steps.append((table.count.name, IPPROTO_TCP, table.count.number, count))
    else:
        if idle < 0 or interval < 0:
            raise ValueError(f"{table.legacy_ioctl} needs both idle and interval (got idle={idle}, interval={interval})")
        steps.append((table.legacy_ioctl, "ioctl", 0, (1, idle * 1000, interval * 1000)))
        if count >= 0 and count != table.legacy_count:
            # Windows 10 1703..1708 has TCP_KEEPCNT without the other two; before 1703 this
            # call fails and the error says so instead of the count being ignored.
            steps.append((table.count.name, IPPROTO_TCP, table.count.number, count))
    if user_timeout_ms_ > 0 or (user_timeout_ms_ == 0 and table.user_timeout is not None):
        if table.user_timeout is None:
            raise OSError(errno.ENOPROTOOPT, f"user_timeout cannot be set on {table.title}: it has no per-socket user timeout")
        steps.append((table.user_timeout.name, IPPROTO_TCP, table.user_timeout.number,
                      user_timeout_value(user_timeout_ms_, table)))
    return steps


def steps_for(fd: int, idle: int, interval: int, count: int, user_timeout_ms_: int) -> List[Step]:
    """:func:`plan` on this platform for ``fd`` (-1: any fd, with every field given).

    On Windows before 10 1709 a missing idle or interval is filled for ``fd`` (see
    :func:`windows_fill`) and what is set is remembered. Raises OSError(ENOPROTOOPT) for a
    user timeout the platform lacks (KeepaliveConfig refuses it first).
    """
    per_option = windows_per_option()
    if not per_option:  # SIO_KEEPALIVE_VALS writes idle and interval together
        idle, interval = windows_fill(fd, idle, interval)
        windows_remember(fd, idle, interval)
    return plan(CURRENT, idle, interval, count, user_timeout_ms_, per_option=per_option)


def read_options(table: Platform) -> List[Tuple[str, int, int]]:
    """(name, level, option) that get_keepalive reads, in order: SO_KEEPALIVE, idle,
    interval, count, and the user timeout where the platform has one."""
    fields = [table.idle, table.interval, table.count] + ([table.user_timeout] if table.user_timeout else [])
    return [("SO_KEEPALIVE", SOL_SOCKET, SO_KEEPALIVE)] + [(o.name, IPPROTO_TCP, o.number) for o in fields]


DISABLE: List[Step] = [("SO_KEEPALIVE", SOL_SOCKET, SO_KEEPALIVE, 0)]
"""The option calls of disable_keepalive."""

# Windows' SIO_KEEPALIVE_VALS zeroes what it is not given and cannot be read back, so
# update_keepalive on that path fills the missing field from what fastka last set on the
# socket, else from the system defaults. The rule that bounds it: an fd is remembered
# from set/update_keepalive until disable_keepalive forgets it, and only the
# WINDOWS_REMEMBERED fds configured most recently are kept (an older one falls back to
# the system defaults), so a server that configures every connection it accepts does not
# grow this without end. Only that Windows path remembers anything.
WINDOWS_REMEMBERED = 4096
_windows_last: "OrderedDict[int, Tuple[int, int]]" = OrderedDict()
_windows_per_option: Optional[bool] = None


def windows_per_option() -> bool:
    """Whether this Windows takes TCP_KEEPIDLE/TCP_KEEPINTVL per option (10 1709+), found
    out once by trying it on a fresh socket. Always True elsewhere."""
    global _windows_per_option
    if CURRENT is not WINDOWS:
        return True
    if _windows_per_option is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.setsockopt(IPPROTO_TCP, WINDOWS.idle.number, 7200)
            except OSError:
                _windows_per_option = False
            else:
                _windows_per_option = True
    return _windows_per_option


def windows_fill(fd: int, idle: int, interval: int) -> Tuple[int, int]:
    """(idle, interval) for SIO_KEEPALIVE_VALS: a field < 0 comes from what fastka last set
    on ``fd``, or from the system defaults when fastka never set it."""
    last = _windows_last.get(fd)
    if last is None:
        d_idle, d_interval, _ = read_system_defaults(WINDOWS)
        last = (d_idle, d_interval)
    return (idle if idle >= 0 else last[0], interval if interval >= 0 else last[1])


def windows_remember(fd: int, idle: int, interval: int) -> None:
    """Remember what fastka set on ``fd`` (not for fd -1), dropping the oldest entry past
    WINDOWS_REMEMBERED."""
    if fd < 0:
        return
    _windows_last[fd] = (idle, interval)
    _windows_last.move_to_end(fd)
    while len(_windows_last) > WINDOWS_REMEMBERED:
        _windows_last.popitem(last=False)


def windows_forget(fd: int) -> None:
    """disable_keepalive: forget what fastka set on ``fd``."""
    _windows_last.pop(fd, None)


def read_system_defaults(table: Optional[Platform] = None) -> Tuple[int, int, int]:
    """(idle, interval, count) the OS applies when a socket sets only SO_KEEPALIVE.

    Linux: net.ipv4.tcp_keepalive_time / _intvl / _probes. Windows without per-option
    support: the KeepAliveTime / KeepAliveInterval registry values (ms) or their defaults
    (2 hours, 1 second) and 10 probes. Elsewhere: what a fresh TCP socket reads back.
    """
    table = table or CURRENT
    if table is LINUX:
        base = "/proc/sys/net/ipv4/tcp_keepalive_"
        with open(base + "time") as t, open(base + "intvl") as i, open(base + "probes") as p:
            return int(t.read()), int(i.read()), int(p.read())
    if table is WINDOWS and not windows_per_option():
        return _windows_registry_defaults()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return tuple(s.getsockopt(IPPROTO_TCP, o.number) for o in (table.idle, table.interval, table.count))  # type: ignore[return-value]


def _windows_registry_defaults() -> Tuple[int, int, int]:
    values = {"KeepAliveTime": 7_200_000, "KeepAliveInterval": 1000}  # documented defaults, ms
    if sys.platform == "win32":
        import winreg

        try:
            key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Services\Tcpip\Parameters")
        except OSError:
            key = None
        for name in values:
            if key is not None:
                try:
                    values[name] = int(winreg.QueryValueEx(key, name)[0])
                except OSError:
                    pass
    return -(-values["KeepAliveTime"] // 1000), -(-values["KeepAliveInterval"] // 1000), WINDOWS.legacy_count or 10
