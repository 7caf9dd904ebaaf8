"""The `fastka` command line: help, info, demo on both backends, bad flags."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fastka(*args: str, env: dict = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastka.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def test_main_help_lists_every_subcommand():
    r = fastka("--help")
    assert r.returncode == 0
    for name in ("info", "demo", "serve", "bench"):
        assert re.search(rf"^\s+{name}\s+\S", r.stdout, re.M), r.stdout


@pytest.mark.parametrize("cmd,flags", [("info", []), ("demo", ["--connections", "--idle-timeout", "--backend"]),
                                       ("serve", ["--port", "--keepalive-timeout", "--max-requests",
                                                  "--tcp-keepalive", "--backend", "--max-header-size"])])
def test_subcommand_help(cmd, flags):
    r = fastka(cmd, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: fastka {cmd}")
    for f in flags:
        assert f in r.stdout


@pytest.mark.parametrize("args,flag", [
    (["demo", "--connections", "-5"], "--connections"),
    (["demo", "--connections", "many"], "--connections"),
    (["demo", "--connections", "100000000"], "--connections"),
    (["demo", "--idle-timeout", "0"], "--idle-timeout"),
    (["demo", "--backend", "java"], "--backend"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--keepalive-timeout", "nan"], "--keepalive-timeout"),
    (["serve", "--max-requests", "0"], "--max-requests"),
    (["serve", "--tcp-keepalive", "0:1:2"], "--tcp-keepalive"),
    (["info", "--bogus"], "--bogus"),
    (["nosuchcommand"], "nosuchcommand"),
    ([], "COMMAND"),
])
def test_bad_flags_one_line_exit_2(args, flag):
    r = fastka(*args)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1 and flag in errors[0], r.stderr
    assert lines[-1] == errors[0]


def test_info():
    import fastka as fk

    r = fastka("info")
    assert r.returncode == 0, r.stderr
    d = fk.system_defaults()
    assert f"backend: {fk.IMPLEMENTATION}" in r.stdout
    assert f"idle={d.idle} s, interval={d.interval} s, count={d.count}" in r.stdout
    assert f"= {d.detection_time:g} s" in r.stdout
    assert ("warning:" in r.stdout) == (d.idle >= 240)
    assert re.search(r"^io_uring socket commands: \S", r.stdout, re.M)
    assert re.search(r"^open-file limit: \d+", r.stdout, re.M)


def test_info_on_the_fallback():
    r = fastka("info", env={"FASTKA_NO_EXTENSIONS": "1"})
    assert r.returncode == 0, r.stderr
    assert "backend: python" in r.stdout
    assert "io_uring socket commands: not used by the pure-Python backend" in r.stdout


@pytest.mark.parametrize("backend", ["c", "python"])
def test_demo(backend):
    if backend == "c":
        try:
            importlib.import_module("fastka._manager_c")
        except ImportError as exc:
            if os.environ.get("FASTKA_REQUIRE_EXTENSION"):
                pytest.fail(f"compiled backend missing but FASTKA_REQUIRE_EXTENSION is set: {exc}")
            pytest.skip(f"compiled backend not built: {exc}")
    r = fastka("demo", "--connections", "500", "--idle-timeout", "1", "--backend", backend)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"== backend {backend}: 500 connections" in out
    assert re.search(r"^RESET\s+50\s+50\s", out, re.M), out
    assert re.search(r"^PEER_CLOSED\s+50\s+50\s", out, re.M), out
    m = re.search(r"^IDLE\s+350\s+350\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert m and 900 <= float(m.group(1)) and float(m.group(3)) < 3000, out
    assert re.search(r"^busy \(open\)\s+50\s+50\s", out, re.M), out
    assert "OK: counts match" in out
    assert "opening connections [" in r.stderr
