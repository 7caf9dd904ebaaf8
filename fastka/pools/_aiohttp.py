"""fastka pools for aiohttp: a TCPConnector with maximum age, the server's keep-alive hint
and a dead-peer check on checkout."""
from __future__ import annotations

import functools
from collections import deque
from typing import Any, List, Optional, Tuple, cast

try:
    import aiohttp
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest, ConnectionKey
    from aiohttp.http_parser import RawResponseMessage
    from aiohttp.streams import StreamReader
    from aiohttp.tracing import Trace
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(f"fastka.pools.TCPConnector needs aiohttp ({exc}): pip install 'fastka[aiohttp]'") from exc

import fastka

from .._config import KeepaliveConfig
from ._rule import FOREVER, CheckoutRule, keep_alive_timeout, monotonic

__all__ = ["TCPConnector"]

_Idle = Tuple[ResponseHandler, float]  # aiohttp's pooled entry: (protocol, released at)


class _Handler(ResponseHandler):
    """aiohttp's protocol, noting when its connection must stop being reused and the
    last response's ``Keep-Alive: timeout=N``."""

    fastka_age_deadline: float = FOREVER
    fastka_hint: Optional[float] = None
    fastka_fd: Optional[int] = None  # the socket's fd, while the transport is open

    def feed_data(self, data: Tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        self.fastka_hint = keep_alive_timeout(data[0].headers.get("Keep-Alive"))
        super().feed_data(data, size)


def _socket(proto: ResponseHandler) -> Any:
    """The socket of ``proto``'s connection: its fd as noted when it was made (an int is
    is_alive's fastest argument; it stays this socket's while the transport is open),
    else the transport's socket object."""
    fd: Optional[int] = getattr(proto, "fastka_fd", None)
    if fd is not None:
        return fd
    transport = proto.transport
    return None if transport is None else transport.get_extra_info("socket")


class TCPConnector(aiohttp.TCPConnector):
    """An ``aiohttp.TCPConnector`` that never hands out a pooled connection that is dead,
    idle longer than its ``keepalive_timeout`` or than the server's ``Keep-Alive:
    timeout=N`` minus ``margin``, or older than ``max_age``.

    keepalive: a KeepaliveConfig applied to every new connection's socket. max_age:
    seconds a connection may live (None: no limit), spread per connection by ``jitter``
    (fraction 0..0.5). margin: seconds before the server's advertised timeout at which a
    connection stops being reused. aiohttp's own ``keepalive_timeout`` (default 15 s) is
    the idle timeout; everything else goes to aiohttp.TCPConnector. Must be made inside a
    running event loop, as aiohttp's. TypeError / ValueError naming the argument for a
    bad value.
    """

    fastka_rule: CheckoutRule

    def __init__(
        self,
        *,
        keepalive: Optional[KeepaliveConfig] = None,
        max_age: Optional[float] = None,
        jitter: float = 0.1,
        margin: float = 1.0,
        **connector_kwargs: Any,
    ) -> None:
        self.fastka_rule = CheckoutRule(keepalive, None, max_age, jitter, margin)
        super().__init__(**connector_kwargs)
        self._factory = cast("functools.partial[ResponseHandler]", functools.partial(_Handler, loop=self._loop))

    def _deadline(self, proto: ResponseHandler, released: float) -> float:
        age_deadline: float = getattr(proto, "fastka_age_deadline", FOREVER)
        hint: Optional[float] = getattr(proto, "fastka_hint", None)
        timeout = self._keepalive_timeout
        idle = self.fastka_rule.idle_limit(timeout if isinstance(timeout, (int, float)) else None, hint)
        return min(age_deadline, released + idle)

    def _usable(self, proto: ResponseHandler, released: float, now: float) -> bool:
        if not proto.is_connected() or now >= self._deadline(proto, released):
            return False
        try:
            return bool(fastka.is_alive(_socket(proto)))
        except (OSError, ValueError, TypeError):
            return False

    async def _get(self, key: ConnectionKey, traces: List[Trace]) -> Optional[aiohttp.connector.Connection]:
        conns = self._conns.get(key)
        if conns:
            proto, released = conns[0]  # the one aiohttp hands out next
            if not self._usable(proto, released, monotonic()):
                self._discard_unusable(key)
        return await super()._get(key, traces)

    def _discard_unusable(self, key: ConnectionKey) -> None:
        """Close every idle connection for ``key`` that is expired or dead (one find_dead
        call for the whole idle set)."""
        conns = self._conns.get(key)
        if not conns:
            return
        now = monotonic()
        doomed: List[ResponseHandler] = []
        candidates: List[_Idle] = []
        for proto, released in conns:
            if proto.is_connected() and now < self._deadline(proto, released):
                candidates.append((proto, released))
            else:
                doomed.append(proto)
        try:
            dead = fastka.find_dead(candidates, key=lambda entry: _socket(entry[0]))
        except (OSError, ValueError, TypeError):
            dead = list(candidates)
        gone = {id(entry[0]) for entry in dead}
        doomed.extend(proto for proto, _ in dead)
        keep = deque(entry for entry in candidates if id(entry[0]) not in gone)
        if keep:
            self._conns[key] = keep
        else:
            del self._conns[key]
        for proto in doomed:
            proto.close()

    async def _create_connection(self, req: ClientRequest, traces: List[Trace], timeout: aiohttp.ClientTimeout) -> ResponseHandler:
        proto = await super()._create_connection(req, traces, timeout)
        sock = _socket(proto)
        if isinstance(proto, _Handler):
            proto.fastka_age_deadline = self.fastka_rule.age_deadline(monotonic())
            proto.fastka_fd = None if sock is None else sock.fileno()
        keepalive = self.fastka_rule.keepalive
        if keepalive is not None:
            try:
                fastka.set_keepalive(sock, keepalive)
            except (OSError, TypeError, ValueError):
                proto.close()
                raise
        return proto
