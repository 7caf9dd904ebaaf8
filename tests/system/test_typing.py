"""Static typing of the public API as users write it: mypy --strict over code that uses
fastka next to urllib3 (the annotations in fastka/*.pyi; the recipes' own mypy run is in
test_integrations.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from repo import ROOT


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
