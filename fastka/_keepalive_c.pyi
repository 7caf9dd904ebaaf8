"""Type stubs of the compiled keepalive backend (same API as fastka._keepalive_py)."""
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypedDict, TypeVar, overload
import socket

from . import _Seconds, _Sock, SocketLike
from ._config import KeepaliveConfig
from ._types import KeepaliveState, TcpInfo

_S = TypeVar("_S", bound=Optional[SocketLike])
_T = TypeVar("_T")

class _Platform(TypedDict):
    name: str
    idle_option: Tuple[str, int]
    interval_option: int
    count_option: int
    idle: Tuple[int, int]
    interval: Tuple[int, int]
    count: Tuple[int, int]
    user_timeout_ms_max: int

PLATFORM: _Platform

def uring_status() -> str: ...
def batch_path() -> str: ...
def set_batch_path(path: str) -> None: ...

__all__ = [
    "create_server",
    "disable_keepalive",
    "find_dead",
    "get_keepalive",
    "is_alive",
    "set_keepalive",
    "set_keepalive_many",
    "tcp_info",
    "update_keepalive",
]

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
