"""Type stubs of fastka's public API (both backends present the same one).

The functions are the methods of fastka/_keepalive.py's Keepalive, the manager is
fastka/_manager_py.py's KeepaliveManager; tests/library/test_keepalive.py checks that
every signature here is the one ``inspect.signature`` gives at run time on both backends.
"""
import socket
from typing import Any, Callable, Dict, Iterable, List, Literal, Optional, Tuple, TypeVar, overload

from ._config import KeepaliveConfig as KeepaliveConfig
from ._config import Seconds
from ._config import system_defaults as system_defaults
from ._types import Event as Event
from ._types import HasFileno as HasFileno
from ._types import KeepaliveState as KeepaliveState
from ._types import SocketLike as SocketLike
from ._types import TcpInfo as TcpInfo

_S = TypeVar("_S", bound=Optional[SocketLike])
_T = TypeVar("_T")

IMPLEMENTATION: Literal["c", "python"]
__version__: str

def set_keepalive(
    sock: SocketLike,
    config: Optional[KeepaliveConfig] = None,
    *,
    idle: Optional[Seconds] = None,
    interval: Optional[Seconds] = None,
    count: Optional[int] = None,
    user_timeout: Optional[Seconds] = None,
) -> KeepaliveConfig: ...
def update_keepalive(
    sock: SocketLike,
    *,
    idle: Optional[Seconds] = None,
    interval: Optional[Seconds] = None,
    count: Optional[int] = None,
    user_timeout: Optional[Seconds] = None,
) -> KeepaliveState: ...
def disable_keepalive(sock: SocketLike) -> None: ...
def get_keepalive(sock: SocketLike) -> KeepaliveState: ...
def set_keepalive_many(
    socks: Iterable[SocketLike],
    config: Optional[KeepaliveConfig] = None,
    *,
    idle: Optional[Seconds] = None,
    interval: Optional[Seconds] = None,
    count: Optional[int] = None,
    user_timeout: Optional[Seconds] = None,
) -> Dict[int, OSError]: ...
def tcp_info(sock: SocketLike) -> TcpInfo: ...
def is_alive(sock: SocketLike) -> bool: ...
@overload
def find_dead(socks: Iterable[_S], *, key: None = None) -> List[_S]: ...
@overload
def find_dead(socks: Iterable[_T], *, key: Callable[[_T], Optional[SocketLike]]) -> List[_T]: ...
def create_server(
    address: Tuple[Any, ...],
    config: Optional[KeepaliveConfig] = None,
    *,
    family: int = ...,
    backlog: Optional[int] = None,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
) -> socket.socket: ...

class KeepaliveManager:
    def __init__(
        self,
        idle_timeout: Optional[Seconds] = ...,
        *,
        max_requests: Optional[int] = ...,
        max_lifetime: Optional[Seconds] = ...,
        keepalive: Optional[KeepaliveConfig] = ...,
        close: bool = ...,
        watch_readable: bool = ...,
        jitter: float = ...,
    ) -> None: ...
    def add(self, sock: SocketLike) -> None: ...
    def remove(self, sock: SocketLike) -> None: ...
    def discard(self, sock: SocketLike) -> None: ...
    def touch(self, sock: SocketLike) -> None: ...
    def poll(self, timeout: Optional[float] = ...) -> List[Tuple[SocketLike, Event]]: ...
    def fileno(self) -> int: ...
    def next_deadline(self) -> Optional[float]: ...
    def close(self) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, sock: object) -> bool: ...
    def __enter__(self) -> "KeepaliveManager": ...
    def __exit__(self, *exc: object) -> None: ...

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
