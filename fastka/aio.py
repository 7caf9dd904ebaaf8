"""Keep-alive limits for asyncio transports (asyncio's own loop and uvloop).

:class:`KeepaliveReaper` puts a :class:`fastka.KeepaliveManager` under an event loop with
one loop reader, the manager's ``fileno()``, for all its connections, however many there
are: the manager's fd is readable when a connection's socket reports a close, reset or
error, when a deadline has passed and when a touch reached ``max_requests``, so the reaper
needs no loop timer at all. Reads stay with asyncio: the manager watches with
``watch_readable=False`` and ``close=False``, so it only peeks for a peer close, reset or
timeout, and every close goes through the transport.

What the reaper does on each :class:`fastka.Event`:

* ``IDLE``, ``MAX_REQUESTS``, ``MAX_LIFETIME``: ``transport.close()`` (buffered data is
  flushed, then the peer reads EOF: a FIN);
* ``RESET``, ``TIMED_OUT``, ``ERROR``: ``transport.abort()`` (the peer is gone);
* ``PEER_CLOSED``: nothing; asyncio reads the EOF itself and tells the protocol.

Every event that reaches a tracked transport is passed to ``on_event(transport, event)``
after the reaper acted on it, and the transport is no longer tracked.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, Optional

from . import _compat
from ._config import KeepaliveConfig
from ._types import Event

__all__ = ["KeepaliveReaper"]

_GRACEFUL = frozenset((Event.IDLE, Event.MAX_REQUESTS, Event.MAX_LIFETIME))
_DEAD = frozenset((Event.RESET, Event.TIMED_OUT, Event.ERROR))
_TRANSPORT_METHODS = ("get_extra_info", "is_closing", "close", "abort")

OnEvent = Callable[[asyncio.WriteTransport, Event], object]


class KeepaliveReaper:
    """Close idle, worn-out and dead asyncio transports.

    ``idle_timeout`` and ``max_lifetime`` are seconds (``None``: never), ``max_requests``
    the number of :meth:`touch` calls a connection may have (``None``: unlimited),
    ``keepalive`` a :class:`fastka.KeepaliveConfig` applied to each added transport's
    socket, ``on_event(transport, event)`` a callback for every event (metrics, logs).
    Bad values raise the manager's TypeError/ValueError.

    The reaper binds to the running loop on the first :meth:`add` (or ``async with``);
    use it from that loop only.
    """

    def __init__(
        self,
        idle_timeout: Optional[float] = 75.0,
        *,
        max_requests: Optional[int] = None,
        max_lifetime: Optional[float] = None,
        keepalive: Optional[KeepaliveConfig] = None,
        on_event: Optional[OnEvent] = None,
        _backend: Optional[_compat.Backend] = None,
    ) -> None:
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be a callable(transport, event) or None, not {type(on_event).__name__}: {on_event!r}")
        backend = _compat.default() if _backend is None else _backend
        self._mgr: Any = backend.KeepaliveManager(
            idle_timeout,
            max_requests=max_requests,
            max_lifetime=max_lifetime,
            keepalive=keepalive,
            close=False,
            watch_readable=False,
        )
        self._on_event = on_event
        self._fds: Dict[asyncio.WriteTransport, int] = {}  # transport -> fd given to the manager
        self._transports: Dict[int, asyncio.WriteTransport] = {}  # fd -> transport
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closed = False

    # -- public API ----------------------------------------------------------------------

    def add(self, transport: asyncio.WriteTransport) -> None:
        """Start the clocks of ``transport`` (and apply ``keepalive`` to its socket).

        Raises ValueError when the reaper is closed, the transport is already tracked or
        already closing, TypeError when it is not a transport or has no socket, RuntimeError when called off
        the reaper's loop, OSError when the socket cannot be watched or configured.
        """
        self._check_open()
        if not all(callable(getattr(transport, m, None)) for m in _TRANSPORT_METHODS):
            raise TypeError(
                f"transport must be an asyncio transport (with {', '.join(_TRANSPORT_METHODS)}), "
                f"not {type(transport).__name__}: {transport!r}"
            )
        if transport in self._fds:
            raise ValueError(f"{transport!r} is already in this reaper")
        if transport.is_closing():
            raise ValueError(f"{transport!r} is closing; there is nothing left to reap")
        sock = transport.get_extra_info("socket")
        if sock is None:
            raise TypeError(f"transport must have a socket (get_extra_info('socket')), {transport!r} has none")
        fd = sock.fileno()
        if fd < 0:
            raise ValueError(f"the socket of {transport!r} is closed (fileno() -1)")
        self._bind()
        old = self._transports.get(fd)
        if old is not None:  # closed by its owner without discard(); the fd number was reused
            self._forget(old)
        self._mgr.add(fd)
        self._fds[transport] = fd
        self._transports[fd] = transport

    def touch(self, transport: asyncio.WriteTransport) -> None:
        """One request served on ``transport``: restart its idle clock and count it.

        O(1) and no system call (except on the touch that reaches ``max_requests``, which
        wakes the loop). A transport the reaper does not track (never added, or already
        reaped) is ignored, so a request that races its connection's expiry needs no guard.
        """
        fd = self._fds.get(transport)
        if fd is not None:
            self._mgr.touch(fd)

    def discard(self, transport: asyncio.WriteTransport) -> None:
        """Stop tracking ``transport`` if it is tracked (never an error; never closes it)."""
        self._forget(transport)

    def _forget(self, transport: asyncio.WriteTransport) -> None:
        fd = self._fds.pop(transport, None)
        if fd is None:
            return
        del self._transports[fd]
        self._mgr.discard(fd)

    def __len__(self) -> int:
        return len(self._fds)

    def __contains__(self, transport: object) -> bool:
        return transport in self._fds

    def close(self) -> None:
        """Stop reaping: the loop reader goes, tracked transports stay open and are
        forgotten. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._mgr.fileno())
        self._fds.clear()
        self._transports.clear()
        self._mgr.close()

    async def __aenter__(self) -> "KeepaliveReaper":
        self._check_open()
        self._bind()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._fds)} transports"
        return f"<fastka.aio.KeepaliveReaper {state}>"

    # -- the loop side -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("operation on a closed KeepaliveReaper")

    def _bind(self) -> None:
        """Attach to the running loop (once): the manager's fd becomes a loop reader."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            loop.add_reader(self._mgr.fileno(), self._reap)
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a KeepaliveReaper is used from the event loop it was first used on only")

    def _reap(self) -> None:
        if self._closed:
            return
        try:
            events = self._mgr.poll(0)
        except Exception as exc:  # never let the loop's callback die with it
            self._report("fastka.aio.KeepaliveReaper: the manager's poll() failed", exc)
            events = []
        for fd, event in events:
            transport = self._transports.pop(fd, None)
            if transport is None:
                continue
            del self._fds[transport]
            if transport.is_closing():
                continue  # closed by its owner meanwhile: nothing to do, nothing to report
            self._act(transport, event)

    def _act(self, transport: asyncio.WriteTransport, event: Event) -> None:
        try:
            if event in _GRACEFUL:
                transport.close()
            elif event in _DEAD:
                transport.abort()
        except Exception as exc:
            self._report(f"fastka.aio.KeepaliveReaper: closing a transport on {event.name} failed", exc, transport)
        if self._on_event is not None:
            try:
                self._on_event(transport, event)
            except Exception as exc:
                self._report(f"fastka.aio.KeepaliveReaper: on_event raised on {event.name}", exc, transport)

    def _report(self, message: str, exc: BaseException, transport: Optional[asyncio.WriteTransport] = None) -> None:
        context: Dict[str, Any] = {"message": message, "exception": exc}
        if transport is not None:
            context["transport"] = transport
        assert self._loop is not None
        self._loop.call_exception_handler(context)
