"""Type stubs of fastka's public API (both backends present the same one)."""
import socket
from typing import Any, Callable, Dict, Iterable, List, Literal, Optional, Tuple, TypeVar, Union, overload

from ._config import KeepaliveConfig as KeepaliveConfig
from ._config import system_defaults as system_defaults
from ._types import Event as Event
from ._types import HasFileno as HasFileno
from ._types import KeepaliveState as KeepaliveState
from ._types import SocketLike as SocketLike
from ._types import TcpInfo as TcpInfo

_Sock = SocketLike
_Seconds = Union[int, float]
_S = TypeVar("_S", bound=Optional[SocketLike])
_T = TypeVar("_T")

IMPLEMENTATION: Literal["c", "python"]
__version__: str

def set_keepalive(
    sock: _Sock,
    config: Optional[KeepaliveConfig] = ...,
    *,
    idle: Optional[_Seconds] = ...,
    interval: Optional[_Seconds] = ...,
    count: Optional[int] = ...,
    user_timeout: Optional[_Seconds] = ...,
) -> KeepaliveConfig: ...
def update_keepalive(
    sock: _Sock,
    *,
    idle: Optional[_Seconds] = ...,
    interval: Optional[_Seconds] = ...,
    count: Optional[int] = ...,
    user_timeout: Optional[_Seconds] = ...,
) -> KeepaliveState: ...
def disable_keepalive(sock: _Sock) -> None: ...
def get_keepalive(sock: _Sock) -> KeepaliveState: ...
def set_keepalive_many(
    socks: Iterable[_Sock],
    config: Optional[KeepaliveConfig] = ...,
    *,
    idle: Optional[_Seconds] = ...,
    interval: Optional[_Seconds] = ...,
    count: Optional[int] = ...,
    user_timeout: Optional[_Seconds] = ...,
) -> Dict[int, OSError]: ...
def tcp_info(sock: _Sock) -> TcpInfo: ...
def is_alive(sock: _Sock) -> bool: ...
@overload
def find_dead(socks: Iterable[_S], *, key: None = ...) -> List[_S]: ...
@overload
def find_dead(socks: Iterable[_T], *, key: Callable[[_T], Optional[SocketLike]]) -> List[_T]: ...
def create_server(
    address: Tuple[Any, ...],
    config: Optional[KeepaliveConfig] = ...,
    *,
    family: int = ...,
    backlog: Optional[int] = ...,
    reuse_port: bool = ...,
    dualstack_ipv6: bool = ...,
) -> socket.socket: ...

class KeepaliveManager:
    def __init__(
        self,
        idle_timeout: Optional[_Seconds] = ...,
        *,
        max_requests: Optional[int] = ...,
        max_lifetime: Optional[_Seconds] = ...,
        keepalive: Optional[KeepaliveConfig] = ...,
        close: bool = ...,
        watch_readable: bool = ...,
    ) -> None: ...
    def add(self, sock: _Sock) -> None: ...
    def remove(self, sock: _Sock) -> None: ...
    def discard(self, sock: _Sock) -> None: ...
    def touch(self, sock: _Sock) -> None: ...
    def poll(self, timeout: Optional[float] = ...) -> List[Tuple[_Sock, Event]]: ...
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
