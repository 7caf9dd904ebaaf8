"""fastka: TCP keepalive configuration and keep-alive connection management.

The compiled backend (Cython over C) is used when it imports; otherwise the pure-Python
fallback. Set FASTKA_NO_EXTENSIONS to a non-empty value other than "0" to force the
fallback. ``IMPLEMENTATION`` says which one this process uses.
"""
import os
import sys

from ._config import KeepaliveConfig, system_defaults
from ._types import Event, KeepaliveState, TcpInfo


def _load_backend():
    """Return (name, keepalive module, manager module) for this process.

    The compiled manager is epoll-based and built only on Linux; elsewhere the compiled
    keepalive core is paired with the selectors-based manager. Any import failure of a
    compiled module that should be there means the whole pure-Python fallback.
    """
    if os.environ.get("FASTKA_NO_EXTENSIONS", "") in ("", "0"):
        try:
            from . import _keepalive_c

            if sys.platform.startswith("linux"):
                from . import _manager_c as manager
            else:
                from . import _manager_py as manager
        except ImportError:
            pass
        else:
            return "c", _keepalive_c, manager
    from . import _keepalive_py, _manager_py

    return "python", _keepalive_py, _manager_py


IMPLEMENTATION, _ka, _mgr = _load_backend()

set_keepalive = _ka.set_keepalive
update_keepalive = _ka.update_keepalive
disable_keepalive = _ka.disable_keepalive
get_keepalive = _ka.get_keepalive
set_keepalive_many = _ka.set_keepalive_many
tcp_info = _ka.tcp_info
is_alive = _ka.is_alive
find_dead = _ka.find_dead
KeepaliveManager = _mgr.KeepaliveManager

del os, sys, _load_backend, _ka, _mgr

__version__ = "0.1.0"
__all__ = [
    "IMPLEMENTATION",
    "Event",
    "KeepaliveConfig",
    "KeepaliveManager",
    "KeepaliveState",
    "TcpInfo",
    "disable_keepalive",
    "find_dead",
    "get_keepalive",
    "is_alive",
    "set_keepalive",
    "set_keepalive_many",
    "system_defaults",
    "tcp_info",
    "update_keepalive",
]
