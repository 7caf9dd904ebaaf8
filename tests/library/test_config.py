"""KeepaliveConfig: validation, rounding, detection_time, within(), system_defaults()."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastka import KeepaliveConfig, system_defaults
from fastka import _platform
from fastka._config import MIDDLEBOX_IDLE_TIMEOUTS
from repo import ROOT


@contextmanager
def table(platform):
    """Validate against ``platform``'s table inside the block (for hypothesis tests,
    which run their examples outside a function-scoped fixture)."""
    old = _platform.CURRENT
    _platform.CURRENT = platform
    try:
        yield
    finally:
        _platform.CURRENT = old


@pytest.fixture
def linux(monkeypatch):
    """Validate against the Linux table whatever runs the tests."""
    monkeypatch.setattr(_platform, "CURRENT", _platform.LINUX)


def test_defaults_frozen_hashable_and_readable(linux):
    cfg = KeepaliveConfig()
    assert (cfg.idle, cfg.interval, cfg.count, cfg.user_timeout) == (60, 10, 5, None)
    assert repr(cfg) == "KeepaliveConfig(idle=60, interval=10, count=5, user_timeout=None)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.idle = 5  # type: ignore[misc]
    assert hash(cfg) == hash(KeepaliveConfig(60, 10, 5)) and cfg == KeepaliveConfig(60.0, 10, 5)
    assert len({cfg, KeepaliveConfig(), KeepaliveConfig(idle=61)}) == 2


@pytest.mark.parametrize(
    "idle, expected", [(1, 1), (0.001, 1), (1.0, 1), (1.5, 2), (59.0000001, 60), (32766.5, 32767)]
)
def test_fractions_round_up(linux, idle, expected):
    cfg = KeepaliveConfig(idle=idle, interval=idle)
    assert cfg.idle == cfg.interval == expected
    assert type(cfg.idle) is int


@pytest.mark.parametrize("ut, expected", [(0, 0.0), (0.0001, 0.001), (1.5, 1.5), (2.0004, 2.001), (3, 3.0)])
def test_user_timeout_rounds_up_to_milliseconds(linux, ut, expected):
    assert KeepaliveConfig(user_timeout=ut).user_timeout == expected


def test_replace_validates_again(linux):
    cfg = KeepaliveConfig(idle=5)
    assert cfg.replace(count=9) == KeepaliveConfig(idle=5, count=9)
    with pytest.raises(ValueError, match="count=0"):
        cfg.replace(count=0)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"idle": 0}, ValueError, "idle=0 must be > 0 seconds; allowed: 1..32767 on Linux"),
        ({"interval": 32768}, ValueError, "interval=32768 is out of range; allowed: 1..32767 seconds on Linux"),
        ({"idle": float("nan")}, ValueError, "idle=nan is not a finite number of seconds"),
        ({"count": 128}, ValueError, "count=128 is out of range; allowed: 1..127 probes on Linux"),
        ({"count": 3.0}, TypeError, "count must be an int, not float: 3.0"),
        ({"user_timeout": -0.5}, ValueError, "user_timeout=-0.5 is out of range; allowed: None, or 0..2147483.647 seconds"),
        ({"idle": None}, TypeError, "idle must be a number of seconds (int or float), not NoneType"),
    ],
)
def test_validation_messages(linux, kwargs, exc, words):
    with pytest.raises(exc) as info:
        KeepaliveConfig(**kwargs)
    assert words in str(info.value)


def test_linux_default_detection_time_is_over_two_hours(linux):
    cfg = KeepaliveConfig(idle=7200, interval=75, count=9)
    assert cfg.detection_time == 7875.0
    assert KeepaliveConfig().detection_time == 110.0


@pytest.mark.parametrize(
    "idle, interval, count, ut, expected",
    [
        (1, 1, 2, None, 3.0),
        (1, 1, 9, 2, 2.0),  # user_timeout ends it at the first tick past it: count ignored
        (1, 1, 1, 4, 4.0),  # ... also when that is later than count probes would be
        (10, 5, 3, 1, 15.0),  # never before the first probe's tick
        (10, 5, 3, 22, 25.0),  # ticks at 15, 20, 25: the first with >= 22 s of silence
        (60, 10, 5, 0, 110.0),  # 0 = kernel default: the count rule
    ],
)
def test_detection_time_with_user_timeout_on_linux(linux, idle, interval, count, ut, expected):
    cfg = KeepaliveConfig(idle=idle, interval=interval, count=count, user_timeout=ut)
    assert cfg.detection_time == expected


def test_detection_time_count_rule_elsewhere(monkeypatch):
    monkeypatch.setattr(_platform, "CURRENT", _platform.DARWIN)
    assert KeepaliveConfig(idle=1, interval=1, count=9, user_timeout=2).detection_time == 10.0


@given(
    st.integers(1, 32767), st.integers(1, 32767), st.integers(1, 127),
    st.one_of(st.none(), st.floats(0.001, 2_000_000, allow_nan=False)),
)
def test_detection_time_properties(idle, interval, count, ut):
    with table(_platform.LINUX):
        cfg = KeepaliveConfig(idle=idle, interval=interval, count=count, user_timeout=ut)
        t = cfg.detection_time
    assert t >= idle + interval  # at least one probe tick
    if ut is None:
        assert t == idle + interval * count
    else:
        assert t >= cfg.user_timeout  # never before user_timeout ...
        assert t < max(cfg.user_timeout, idle) + interval + 1e-6  # ... and within one tick of it


@pytest.mark.parametrize(
    "timeout, name", [(t, n) for n, t in MIDDLEBOX_IDLE_TIMEOUTS.items()] + [(60, "1 min"), (20, "20 s")]
)
def test_within_probes_before_the_middlebox_gives_up(linux, timeout, name):
    cfg = KeepaliveConfig.within(timeout)
    # the second probe still goes out before the middlebox drops the flow
    assert cfg.idle + cfg.interval <= 0.75 * timeout, name
    assert cfg.idle >= timeout / 2, name  # no needless chatter
    assert cfg.detection_time < timeout, name  # a dead peer is found within one idle period


def test_within_values(linux):
    assert KeepaliveConfig.within(350) == KeepaliveConfig(idle=252, interval=10, count=5)
    assert KeepaliveConfig.within(240) == KeepaliveConfig(idle=170, interval=10, count=5)
    assert KeepaliveConfig.within(600, count=3, user_timeout=30) == KeepaliveConfig(440, 10, 3, 30)
    assert KeepaliveConfig.within(60) == KeepaliveConfig(idle=42, interval=3, count=5)
    assert KeepaliveConfig.within(2.5) == KeepaliveConfig(idle=1, interval=1)


@given(st.floats(2.5, 1e7, allow_nan=False))
def test_within_always_leaves_room_for_two_probes(timeout):
    with table(_platform.LINUX):
        cfg = KeepaliveConfig.within(timeout)
    assert cfg.idle + cfg.interval < timeout
    assert 1 <= cfg.interval <= 10 and 1 <= cfg.idle <= 32767


@pytest.mark.parametrize(
    "bad, exc", [(2.4, ValueError), (0, ValueError), (-5, ValueError), (math.inf, ValueError),
                 (math.nan, ValueError), ("350", TypeError), (True, TypeError), (None, TypeError)]
)
def test_within_rejects(linux, bad, exc):
    with pytest.raises(exc, match="idle_timeout"):
        KeepaliveConfig.within(bad)


def test_system_defaults_are_the_sysctls():
    if _platform.CURRENT is not _platform.LINUX:
        pytest.skip("reads /proc/sys on Linux")
    base = "/proc/sys/net/ipv4/tcp_keepalive_"
    expected = tuple(int(open(base + n).read()) for n in ("time", "intvl", "probes"))
    cfg = system_defaults()
    assert (cfg.idle, cfg.interval, cfg.count, cfg.user_timeout) == expected + (None,)
    assert cfg.detection_time == expected[0] + expected[1] * expected[2]


# -- socket_options() / tcp_options(): the plan as data for client libraries ------------


def test_socket_options_on_linux(linux):
    cfg = KeepaliveConfig(idle=30, interval=5, count=3, user_timeout=2.007)
    assert cfg.socket_options() == [(1, 9, 1), (6, 4, 30), (6, 5, 5), (6, 6, 3), (6, 18, 2007)]
    assert cfg.tcp_options() == {4: 30, 5: 5, 6: 3, 18: 2007}
    # user timeout only when it is not None; 0 (kernel default) is a value to set
    assert KeepaliveConfig().socket_options() == [(1, 9, 1), (6, 4, 60), (6, 5, 10), (6, 6, 5)]
    assert KeepaliveConfig(user_timeout=0).tcp_options()[18] == 0


@pytest.mark.parametrize("platform", [_platform.DARWIN, _platform.FREEBSD, _platform.SUNOS, _platform.WINDOWS],
                         ids=lambda p: p.name)
def test_socket_options_follow_each_platforms_plan(monkeypatch, platform):
    monkeypatch.setattr(_platform, "CURRENT", platform)
    monkeypatch.setattr(_platform, "_windows_per_option", True)
    cfg = KeepaliveConfig(idle=30, interval=5, count=3)
    opts = cfg.socket_options()
    assert opts[0] == (_platform.SOL_SOCKET, _platform.SO_KEEPALIVE, 1)
    assert opts[1:] == [(6, platform.idle.number, 30), (6, platform.interval.number, 5), (6, platform.count.number, 3)]
    assert cfg.tcp_options() == {platform.idle.number: 30, platform.interval.number: 5, platform.count.number: 3}
    if platform.user_timeout is not None:  # macOS and Windows take whole seconds, rounded up
        assert cfg.replace(user_timeout=2.5).tcp_options()[platform.user_timeout.number] == 3


def test_socket_options_refuse_where_an_ioctl_is_needed(monkeypatch):
    monkeypatch.setattr(_platform, "CURRENT", _platform.WINDOWS)
    monkeypatch.setattr(_platform, "_windows_per_option", False)  # Windows before 10 1709
    with pytest.raises(ValueError, match="needs the SIO_KEEPALIVE_VALS ioctl on Windows before 10 1709"):
        KeepaliveConfig(idle=30).socket_options()
    with pytest.raises(ValueError, match="SIO_KEEPALIVE_VALS"):
        KeepaliveConfig().tcp_options()


def test_socket_options_type_check_for_urllib3_style_use(tmp_path, monkeypatch):
    """mypy --strict accepts fastka's options next to urllib3's defaults, and find_dead's
    key over pool objects (the recipe of the integrations docs)."""
    pytest.importorskip("mypy")
    pytest.importorskip("urllib3")
    monkeypatch.setenv("MYPYPATH", ROOT)  # this tree's fastka
    src = tmp_path / "use.py"
    src.write_text(
        "import socket\n"
        "from typing import Optional\n"
        "from urllib3 import PoolManager\n"
        "from urllib3.connection import HTTPConnection\n"
        "import fastka\n"
        "cfg = fastka.KeepaliveConfig(idle=30, interval=5, count=3, user_timeout=10)\n"
        "pool = PoolManager(socket_options=[*HTTPConnection.default_socket_options, *cfg.socket_options()])\n"
        "opts: dict[int, int] = cfg.tcp_options()\n"
        "class Conn:\n"
        "    sock: Optional[socket.socket] = None\n"
        "conns: list[Conn] = [Conn()]\n"
        "dead: list[Conn] = fastka.find_dead(conns, key=lambda c: c.sock)\n"
        "socks: list[socket.socket] = fastka.find_dead([socket.socket()])\n"
        "s: fastka.SocketLike = 3\n"
        "lst: socket.socket = fastka.create_server(('127.0.0.1', 0), cfg, backlog=5)\n"
    )
    # In a process of its own: mypy leaves ~300,000 objects alive, which would slow every
    # later gc.collect() of the run.
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           "--cache-dir", str(tmp_path / "cache"), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
