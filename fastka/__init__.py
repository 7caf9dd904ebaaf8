"""fastka: TCP keepalive configuration and keep-alive connection management.

The compiled backend (Cython over C) is used when it imports; otherwise the pure-Python
fallback. Set FASTKA_NO_EXTENSIONS to a non-empty value other than "0" to force the
fallback. ``IMPLEMENTATION`` says which one this process uses.
"""
from typing import TYPE_CHECKING, Literal, cast

from . import _backends
from ._config import KeepaliveConfig, system_defaults
from ._types import Event, HasFileno, KeepaliveState, SocketLike, TcpInfo

# Type checkers read this module as it is (no stub): the functions are the methods of
# fastka/_keepalive.py's Keepalive, the manager is typed as fastka/_manager_py.py's.
_backend = _backends.default()
IMPLEMENTATION = cast(Literal["c", "python"], _backend.name)

set_keepalive = _backend.set_keepalive
update_keepalive = _backend.update_keepalive
disable_keepalive = _backend.disable_keepalive
get_keepalive = _backend.get_keepalive
set_keepalive_many = _backend.set_keepalive_many
tcp_info = _backend.tcp_info
is_alive = _backend.is_alive
find_dead = _backend.find_dead
create_server = _backend.create_server
if TYPE_CHECKING:
    from ._manager_py import KeepaliveManager
else:
    KeepaliveManager = _backend.KeepaliveManager

del _backend

__version__ = "0.1.0"
__all__ = [
    "IMPLEMENTATION",
    "Event",
    "KeepaliveConfig",
    "KeepaliveManager",
    "KeepaliveState",
    "HasFileno",
    "SocketLike",
    "TcpInfo",
    "create_server",
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
