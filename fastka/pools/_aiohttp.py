"""fastka pools for aiohttp: a TCPConnector with maximum age, the server's keep-alive hint
and a dead-peer check on checkout.

The dead-peer check costs one system call per checkout. On Linux the connector keeps one
epoll set of all its connections, each watched for the events that make
``fastka.is_alive`` call it dead (EPOLLRDHUP, EPOLLHUP, EPOLLERR); a checkout asks it with
a zero timeout, and only when it reports one does the connector check the idle set with
one ``fastka.find_dead`` call. A closed socket leaves the set by itself. Elsewhere a
checkout calls ``fastka.is_alive`` on the connection about to be handed out.
"""
from __future__ import annotations

import functools
import math
import select
from collections import deque
from typing import Any, Awaitable, Callable, Coroutine, List, Optional, Tuple, cast

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
from ._rule import CheckoutRule, keep_alive_timeout, monotonic

__all__ = ["TCPConnector"]

_Idle = Tuple[ResponseHandler, float]  # aiohttp's pooled entry: (protocol, released at)

_EPOLL = hasattr(select, "epoll") and hasattr(select, "EPOLLRDHUP")


def _alive(proto: ResponseHandler) -> bool:
    """fastka.is_alive of ``proto``'s socket; False where it cannot be checked."""
    try:
        return bool(fastka.is_alive(proto.fastka_fd))  # type: ignore[attr-defined]
    except (OSError, ValueError, TypeError):
        return False


class _Handler(ResponseHandler):
    """aiohttp's protocol, noting when its connection must stop being reused: its age
    deadline, and the seconds it may sit idle after the last response (the connector's
    idle limit, cut by that response's ``Keep-Alive: timeout=N`` minus the margin)."""

    # Set on every connection the connector makes (TCPConnector._create_connection).
    fastka_fd: Optional[int]  # the socket's fd; the number is this socket's while the transport is open
    fastka_age_deadline: float  # monotonic time
    fastka_idle: float  # seconds it may sit idle after the last response
    fastka_idle_limit: Callable[[Optional[float]], float]  # fastka_idle for a server's hint

    def feed_data(self, data: Tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        self.fastka_idle = self.fastka_idle_limit(keep_alive_timeout(data[0].headers.get("Keep-Alive")))
        super().feed_data(data, size)


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
        self._fastka_epoll: Optional[select.epoll] = select.epoll() if _EPOLL else None

    def _get(self, key: ConnectionKey, traces: List[Trace]) -> Coroutine[Any, Any, Optional[aiohttp.connector.Connection]]:
        # Not a coroutine: the check awaits nothing, and aiohttp awaits what this returns.
        conns = self._conns.get(key)
        if conns:
            proto, released = conns[0]  # the one aiohttp hands out next
            now = monotonic()
            epoll = self._fastka_epoll
            if (not proto.is_connected() or now >= proto.fastka_age_deadline  # type: ignore[attr-defined]
                    or now - released >= proto.fastka_idle  # type: ignore[attr-defined]
                    or (epoll.poll(0, 1) if epoll is not None else not _alive(proto))):  # any connection dead
                self._discard_unusable(key)
        return super()._get(key, traces)

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
            if proto.is_connected() and now < proto.fastka_age_deadline and now - released < proto.fastka_idle:  # type: ignore[attr-defined]
                candidates.append((proto, released))
            else:
                doomed.append(proto)
        try:
            dead = fastka.find_dead(candidates, key=lambda entry: entry[0].fastka_fd)  # type: ignore[attr-defined]
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
        transport = proto.transport
        sock: Any = None if transport is None else transport.get_extra_info("socket")
        rule = self.fastka_rule
        idle_timeout = self._keepalive_timeout
        proto.fastka_fd = fd = None if sock is None else sock.fileno()  # type: ignore[attr-defined]
        proto.fastka_age_deadline = rule.age_deadline(monotonic())  # type: ignore[attr-defined]
        proto.fastka_idle_limit = functools.partial(  # type: ignore[attr-defined]
            rule.idle_limit, idle_timeout if isinstance(idle_timeout, (int, float)) else None)
        proto.fastka_idle = proto.fastka_idle_limit(None)  # type: ignore[attr-defined]
        if rule.keepalive is not None:
            try:
                fastka.set_keepalive(sock, rule.keepalive)
            except (OSError, TypeError, ValueError):
                proto.close()
                raise
        if not self._fastka_watch(fd):  # a connection that cannot be checked is never reused
            proto.fastka_age_deadline = -math.inf  # type: ignore[attr-defined]
        return proto

    def _fastka_watch(self, fd: Optional[int]) -> bool:
        """Add ``fd`` to the epoll set (where there is one); False when it cannot be checked."""
        if fd is None:
            return False
        if self._fastka_epoll is not None:
            try:
                self._fastka_epoll.register(fd, select.EPOLLRDHUP)  # EPOLLHUP and EPOLLERR come unasked
            except (OSError, ValueError):  # e.g. the watch limit; a closed connector
                return False
        return True

    def _close(self, *args: Any, **kwargs: Any) -> List[Awaitable[object]]:
        try:
            return super()._close(*args, **kwargs)
        finally:
            if self._fastka_epoll is not None:
                self._fastka_epoll.close()
