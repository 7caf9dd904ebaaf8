"""fastka pools for urllib3: PoolManager, ProxyManager and their connection pools.

The connection pools subclass urllib3's and change three steps: ``_make_request`` notes
when each socket was made and the server's ``Keep-Alive: timeout=N``; ``_put_conn`` turns
those into the connection's deadline; ``_get_conn`` hands a pooled connection out only
before its deadline and while ``fastka.is_alive`` says so, and when it finds one that is
not, checks the whole idle set in one ``fastka.find_dead`` call and closes every dead or
expired connection in it. A discarded connection is replaced by a new one, never an error.
"""
from __future__ import annotations

import queue
from typing import Any, List, Optional, Tuple

try:
    import urllib3
    from urllib3.connection import HTTPConnection
    from urllib3.connectionpool import HTTPConnectionPool as _HTTPConnectionPool
    from urllib3.connectionpool import HTTPSConnectionPool as _HTTPSConnectionPool
    from urllib3.exceptions import ClosedPoolError, EmptyPoolError
    from urllib3.response import BaseHTTPResponse
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"fastka.pools.PoolManager needs urllib3 2 ({exc}): pip install 'fastka[urllib3]'"
    ) from exc

import fastka

from .._config import KeepaliveConfig
from ._rule import FOREVER, NO_LIMITS, CheckoutRule, RuleOptions, keep_alive_timeout, monotonic

__all__ = ["HTTPConnectionPool", "HTTPSConnectionPool", "PoolManager", "ProxyManager"]

_STATE = "_fastka_state"
_CLOSED_MESSAGE = "Pool is closed."


class _State:
    """What a pool knows about the socket a connection object holds (urllib3 reconnects
    the same connection object, so the socket's identity says when it changed)."""

    __slots__ = ("sock", "age_deadline", "idle_limit", "deadline")

    def __init__(self, sock: object, age_deadline: float) -> None:
        self.sock = sock
        self.age_deadline = age_deadline
        self.idle_limit = FOREVER  # seconds it may sit idle after the last response
        self.deadline = age_deadline  # monotonic time after which it is not handed out


def _state(conn: object, sock: object) -> Optional[_State]:
    """The state recorded for ``conn`` while it still holds ``sock``, else None."""
    state: Optional[_State] = getattr(conn, _STATE, None)
    return state if state is not None and state.sock is sock else None


def _usable(conn: Any, sock: Any) -> bool:
    """A pooled ``conn`` connected by ``sock`` may be handed out: before its deadline,
    and alive."""
    state = getattr(conn, _STATE, None)
    if state is not None and state.sock is sock and monotonic() >= state.deadline:
        return False
    try:
        return bool(fastka.is_alive(sock))
    except (OSError, ValueError):
        return False


class HTTPConnectionPool(_HTTPConnectionPool):
    """urllib3's HTTPConnectionPool with fastka's checkout rule (``fastka_rule``, set by
    the PoolManager that makes the pool; a pool made directly checks liveness only)."""

    fastka_rule: CheckoutRule = NO_LIMITS

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> BaseHTTPResponse:
        started = monotonic()
        response = super()._make_request(conn, *args, **kwargs)
        sock = conn.sock
        if sock is not None:
            state = _state(conn, sock)
            if state is None:  # a socket made for this request (or by the proxy tunnel just before)
                state = _State(sock, self.fastka_rule.age_deadline(started))
                setattr(conn, _STATE, state)
            rule = self.fastka_rule
            state.idle_limit = rule.idle_limit(rule.idle_timeout, keep_alive_timeout(response.headers.get("Keep-Alive")))
        return response

    def _put_conn(self, conn: Any) -> None:
        sock = None if conn is None else conn.sock
        if sock is not None:
            state = getattr(conn, _STATE, None)
            if state is not None and state.sock is sock:
                now = monotonic()
                state.deadline = min(state.age_deadline, now + state.idle_limit)
                if now >= state.deadline:  # e.g. the server's hint is shorter than the margin
                    conn.close()
        super()._put_conn(conn)

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        pool = self.pool
        if pool is None:
            raise ClosedPoolError(self, _CLOSED_MESSAGE)
        conn: Any = None
        try:
            conn = pool.get(block=self.block, timeout=timeout)
        except AttributeError:  # closed by another thread meanwhile
            raise ClosedPoolError(self, _CLOSED_MESSAGE) from None
        except queue.Empty:
            if self.block:
                raise EmptyPoolError(
                    self, "Pool is empty and a new connection can't be opened due to blocking mode."
                ) from None
        sock = None if conn is None else conn.sock
        if sock is not None and not _usable(conn, sock):
            conn.close()
            self._discard_unusable()
        return conn or self._new_conn()

    def _discard_unusable(self) -> None:
        """Close every idle connection that is expired or dead (one find_dead call for the
        whole idle set); their slots become empty, to be filled by new connections."""
        pool = self.pool
        if pool is None:
            return
        now = monotonic()
        doomed: List[Any] = []
        with pool.mutex:
            slots = pool.queue
            idle: List[Tuple[int, Any]] = []
            for i, conn in enumerate(slots):
                if conn is None or conn.sock is None:
                    continue
                state = _state(conn, conn.sock)
                if state is not None and now >= state.deadline:
                    doomed.append(conn)
                    slots[i] = None
                else:
                    idle.append((i, conn))
            try:
                dead = fastka.find_dead(idle, key=lambda entry: entry[1].sock)
            except (OSError, ValueError):
                dead = []
            for i, conn in dead:
                doomed.append(conn)
                slots[i] = None
        for conn in doomed:
            conn.close()


class HTTPSConnectionPool(HTTPConnectionPool, _HTTPSConnectionPool):
    """urllib3's HTTPSConnectionPool with fastka's checkout rule."""


def _socket_options(keepalive: Optional[KeepaliveConfig], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the keepalive options after urllib3's (or the caller's) socket options."""
    if keepalive is None:
        return kwargs
    base = kwargs.get("socket_options")
    if base is None:
        base = HTTPConnection.default_socket_options
    return {**kwargs, "socket_options": [*base, *keepalive.socket_options()]}


class _RuleManager(RuleOptions, urllib3.PoolManager):
    """What PoolManager and ProxyManager share: the keyword arguments, fastka's pool
    classes, given the rule."""

    def _start(self, *args: Any, **kwargs: Any) -> None:
        super()._start(*args, **_socket_options(self.fastka_rule.keepalive, kwargs))
        self.pool_classes_by_scheme = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: Optional[dict[str, Any]] = None
    ) -> _HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        if isinstance(pool, HTTPConnectionPool):
            pool.fastka_rule = self.fastka_rule
        return pool


class PoolManager(_RuleManager):
    """A ``urllib3.PoolManager`` whose pools never hand out a pooled connection that is
    dead, idle too long or too old.

    keepalive: a KeepaliveConfig applied to every new socket (its socket options follow
    urllib3's defaults or the ``socket_options`` given). idle_timeout: seconds a pooled
    connection may sit idle (None: no limit). max_age: seconds a connection may live
    (None: no limit), spread per connection by ``jitter`` (fraction 0..0.5). margin:
    seconds before the server's ``Keep-Alive: timeout=N`` at which a connection stops
    being reused. Everything else (num_pools, headers, ...) goes to urllib3.PoolManager.
    TypeError / ValueError naming the argument for a bad value.
    """


class ProxyManager(_RuleManager, urllib3.ProxyManager):
    """A ``urllib3.ProxyManager`` (HTTP or HTTPS proxy; plain and tunnelled requests) with
    the pools of :class:`PoolManager` and the same keyword arguments; everything else
    (proxy_url first) goes to urllib3.ProxyManager."""
