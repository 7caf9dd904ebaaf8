"""The per-platform option mapping and limits (fastka/_platform.py, their one copy: the C
core applies the plan it is given and knows no option numbers).

Only Linux runs the real calls here; these tests check every row of every platform's
table everywhere, by asking for the option calls (``plan``) and by validating configs
with another platform's table injected. The documentation's mapping table is generated
from the same tables (docs/_ext/fastka_tables.py; tests/test_docs.py checks it).
"""
from __future__ import annotations

import errno
import socket
from collections import OrderedDict

import pytest

from fastka import KeepaliveConfig
from fastka import _keepalive, _platform
from fastka._platform import DARWIN, FREEBSD, LINUX, SUNOS, WINDOWS, plan

TCP = 6
KEEPALIVE_ON = ("SO_KEEPALIVE", socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


@pytest.fixture
def on(monkeypatch):
    """``on(table)``: validate as that platform would."""

    def inject(table):
        monkeypatch.setattr(_platform, "CURRENT", table)

    return inject


# -- the mapping: one test per platform, every field --------------------------------

def test_linux_mapping():
    assert plan(LINUX, 60, 10, 5, 2500) == [
        KEEPALIVE_ON,  # first: set_keepalive, socket_options() and the manager share this order
        ("TCP_KEEPIDLE", TCP, 4, 60),
        ("TCP_KEEPINTVL", TCP, 5, 10),
        ("TCP_KEEPCNT", TCP, 6, 5),
        ("TCP_USER_TIMEOUT", TCP, 18, 2500),  # milliseconds
    ]


def test_macos_mapping_uses_the_constants_python_lacks():
    assert plan(DARWIN, 60, 10, 5, 2500) == [
        KEEPALIVE_ON,
        ("TCP_KEEPALIVE", TCP, 0x10, 60),  # macOS' idle option
        ("TCP_KEEPINTVL", TCP, 0x101, 10),
        ("TCP_KEEPCNT", TCP, 0x102, 5),
        ("TCP_RXT_CONNDROPTIME", TCP, 0x80, 3),  # whole seconds, rounded up
    ]


@pytest.mark.parametrize("table, numbers, name", [
    (FREEBSD, (256, 512, 1024), "FreeBSD"),
    (SUNOS, (0x22, 0x24, 0x23), "Solaris/illumos"),
], ids=["freebsd", "solaris-illumos"])
def test_mapping_without_user_timeout(table, numbers, name):
    idle, intvl, cnt = numbers
    assert plan(table, 60, 10, 5, -1) == [
        KEEPALIVE_ON,
        ("TCP_KEEPIDLE", TCP, idle, 60),
        ("TCP_KEEPINTVL", TCP, intvl, 10),
        ("TCP_KEEPCNT", TCP, cnt, 5),
    ]
    assert plan(table, 60, 10, 5, 0) == plan(table, 60, 10, 5, -1)  # 0 = default: nothing to do
    with pytest.raises(OSError) as info:
        plan(table, 60, 10, 5, 3000)
    assert info.value.errno == errno.ENOPROTOOPT and f"user_timeout cannot be set on {name}" in str(info.value)


def test_windows_per_option_mapping():
    assert plan(WINDOWS, 60, 10, 5, 2500) == [
        KEEPALIVE_ON,
        ("TCP_KEEPIDLE", TCP, 3, 60),  # seconds, Windows 10 1709+
        ("TCP_KEEPINTVL", TCP, 17, 10),
        ("TCP_KEEPCNT", TCP, 16, 5),
        ("TCP_MAXRT", TCP, 5, 3),  # whole seconds, rounded up
    ]


def test_windows_legacy_ioctl_writes_idle_and_interval_in_ms():
    assert plan(WINDOWS, 60, 10, 10, -1, per_option=False) == [
        KEEPALIVE_ON,
        ("SIO_KEEPALIVE_VALS", "ioctl", 0, (1, 60_000, 10_000)),  # count 10 is what it sends anyway
    ]


def test_windows_legacy_count_is_asked_for_not_ignored(monkeypatch):
    steps = plan(WINDOWS, 60, 10, 5, -1, per_option=False)
    assert steps[2] == ("TCP_KEEPCNT", TCP, 16, 5)  # fails before 1703: an error, not ignored
    calls = []

    class OldWindows:
        """Primitives of a Windows before 1703, where TCP_KEEPCNT does not exist."""

        @staticmethod
        def apply(fds, options):
            calls.extend(("setsockopt",) + o for o in options)
            return [(0, errno.ENOPROTOOPT, 0)] if options[0][1] == 16 else []

    def ioctl(fd, value):
        calls.append(("ioctl", fd, value))
        return 0

    monkeypatch.setattr(_keepalive, "_ioctl", ioctl)
    assert _keepalive.apply_steps(OldWindows, [7], steps) == [(0, errno.ENOPROTOOPT, "TCP_KEEPCNT")]
    assert calls == [("setsockopt", socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1), ("ioctl", 7, (1, 60_000, 10_000)),
                     ("setsockopt", TCP, 16, 5)]


def test_windows_legacy_needs_both_fields():
    with pytest.raises(ValueError, match="SIO_KEEPALIVE_VALS needs both idle and interval"):
        plan(WINDOWS, 60, -1, -1, -1, per_option=False)


def test_windows_update_fills_from_last_set_then_system_defaults(monkeypatch):
    monkeypatch.setattr(_platform, "_windows_last", OrderedDict())
    monkeypatch.setattr(_platform, "read_system_defaults", lambda table=None: (7200, 1, 10))
    assert _platform.windows_fill(5, 30, -1) == (30, 1)  # never set by fastka: system default
    _platform.windows_remember(5, 30, 4)
    assert _platform.windows_fill(5, -1, -1) == (30, 4)  # what fastka last set
    assert _platform.windows_fill(5, -1, 9) == (30, 9)
    assert _platform.windows_fill(6, -1, -1) == (7200, 1)


def test_windows_memory_is_bounded_and_forgotten_on_disable(monkeypatch):
    """The rule of _platform._windows_last: the WINDOWS_REMEMBERED fds set most recently,
    each until disable_keepalive forgets it; never one entry per fd ever configured."""
    monkeypatch.setattr(_platform, "_windows_last", OrderedDict())
    monkeypatch.setattr(_platform, "WINDOWS_REMEMBERED", 100)
    monkeypatch.setattr(_platform, "read_system_defaults", lambda table=None: (7200, 1, 10))
    for fd in range(1000):
        _platform.windows_remember(fd, 30, 4)
    assert len(_platform._windows_last) == 100 and list(_platform._windows_last)[0] == 900
    _platform.windows_remember(900, 31, 5)  # set again: the most recent now
    _platform.windows_remember(5000, 32, 6)
    assert 900 in _platform._windows_last and 901 not in _platform._windows_last
    assert _platform.windows_fill(901, -1, -1) == (7200, 1)  # forgotten: the system defaults
    _platform.windows_forget(900)
    _platform.windows_forget(12345)  # never set: nothing to do
    assert _platform.windows_fill(900, -1, -1) == (7200, 1) and len(_platform._windows_last) == 99
    _platform.windows_remember(-1, 1, 1)  # "any fd": nothing to remember
    assert -1 not in _platform._windows_last


def test_disable_keepalive_forgets_the_fd(backend, monkeypatch):
    monkeypatch.setattr(_platform, "_windows_last", OrderedDict([(3, (30, 4))]))
    with socket.socket() as s:
        monkeypatch.setitem(_platform._windows_last, s.fileno(), (30, 4))
        backend.disable_keepalive(s)
        assert s.fileno() not in _platform._windows_last and 3 in _platform._windows_last


def test_update_sets_only_the_given_fields_everywhere():
    for table in (LINUX, DARWIN, FREEBSD, SUNOS, WINDOWS):
        assert plan(table, -1, 20, -1, -1) == [KEEPALIVE_ON, (table.interval.name, TCP, table.interval.number, 20)]
        assert plan(table, -1, -1, -1, -1) == [KEEPALIVE_ON]
        assert plan(table, -1, -1, -1, -1, enable=False) == []


# -- limits per platform ---------------------------------------------------------------

LIMIT_ROWS = [
    # table, (idle), (interval), (count), user_timeout ms range or None
    (LINUX, (1, 32767), (1, 32767), (1, 127), (0, 2**31 - 1)),
    (DARWIN, (1, 4294967), (1, 4294967), (1, 2**31 - 1), (0, 2147483000)),
    (FREEBSD, (1, 4294967), (1, 4294967), (1, 2**31 - 1), None),
    (SUNOS, (10, 864000), (1, 864000), (1, 2**31 - 1), None),
    (WINDOWS, (1, 2147483), (1, 2147483), (1, 255), (0, 2147483000)),
]


@pytest.mark.parametrize("table, idle, interval, count, ut", LIMIT_ROWS, ids=[r[0].name for r in LIMIT_ROWS])
def test_limits(table, idle, interval, count, ut):
    assert table.limits == _platform.Limits(idle, interval, count, ut)


@pytest.mark.parametrize("table, idle, interval, count, ut", LIMIT_ROWS, ids=[r[0].name for r in LIMIT_ROWS])
def test_validation_uses_the_platforms_limits(on, table, idle, interval, count, ut):
    on(table)
    KeepaliveConfig(idle=idle[0], interval=interval[0], count=count[0])
    KeepaliveConfig(idle=idle[1], interval=interval[1], count=count[1])
    for field, (lo, hi) in (("idle", idle), ("interval", interval)):
        for bad in (lo - 1 if lo > 1 else 0, hi + 1):
            with pytest.raises(ValueError) as info:
                KeepaliveConfig(**{field: bad})
            assert f"{field}={bad}" in str(info.value) and f"{lo}..{hi}" in str(info.value)
            assert f"on {table.title}" in str(info.value)
    with pytest.raises(ValueError, match=f"count={count[1] + 1} is out of range; allowed: 1..{count[1]} probes on"):
        KeepaliveConfig(count=count[1] + 1)
    if ut is None:
        with pytest.raises(ValueError, match=f"user_timeout=3 cannot be set on {table.title}.*allowed: None"):
            KeepaliveConfig(user_timeout=3)
        assert KeepaliveConfig(user_timeout=None).user_timeout is None
    else:
        assert KeepaliveConfig(user_timeout=ut[1] / 1000).user_timeout == ut[1] / 1000
        with pytest.raises(ValueError, match="user_timeout="):
            KeepaliveConfig(user_timeout=ut[1] / 1000 + 1)


def test_solaris_minimum_idle_is_ten_seconds(on):
    on(SUNOS)
    with pytest.raises(ValueError, match=r"idle=9 is out of range; allowed: 10..864000 seconds on Solaris/illumos"):
        KeepaliveConfig(idle=9)
    assert KeepaliveConfig(idle=9.01).idle == 10  # rounds up into range
    assert KeepaliveConfig.within(350).idle == 252
    with pytest.raises(ValueError, match="leaves no room for two probes on Solaris/illumos"):
        KeepaliveConfig.within(10)


def test_unit_conversions():
    assert _platform.user_timeout_value(2500, LINUX) == 2500
    assert _platform.user_timeout_value(2001, DARWIN) == 3 and _platform.user_timeout_value(2000, WINDOWS) == 2
    assert _platform.user_timeout_ms(3, DARWIN) == 3000 and _platform.user_timeout_ms(2500, LINUX) == 2500


@pytest.mark.parametrize(
    "name, table", [("linux", LINUX), ("darwin", DARWIN), ("freebsd14", FREEBSD), ("sunos5", SUNOS), ("win32", WINDOWS)]
)
def test_platform_for(name, table):
    assert _platform.platform_for(name) is table


def test_platform_for_unknown():
    with pytest.raises(LookupError, match="no keepalive table for platform 'plan9'"):
        _platform.platform_for("plan9")


def test_unknown_platform_uses_pythons_constants():
    table = _platform._generic("plan9")
    assert table.idle == _platform.Option("TCP_KEEPIDLE", getattr(socket, "TCP_KEEPIDLE", -1), "s")
    assert table.user_timeout is None and table.limits.idle == (10, 32767)
    assert plan(table, 60, 10, 5, -1)[1] == ("TCP_KEEPIDLE", TCP, table.idle.number, 60)


def test_python_constants_agree_where_python_has_them():
    table = _platform.CURRENT
    for option in (table.idle, table.interval, table.count, table.user_timeout):
        if option is not None and hasattr(socket, option.name):
            assert getattr(socket, option.name) == option.number, option.name
    if _platform.CURRENT is LINUX:
        assert socket.TCP_KEEPIDLE == 4 and socket.TCP_USER_TIMEOUT == 18
