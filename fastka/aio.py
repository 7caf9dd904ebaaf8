"""Keep-alive limits for asyncio transports (asyncio's own loop and uvloop).

:class:`KeepaliveReaper` puts a :class:`fastka.KeepaliveManager` under an event loop with
one loop reader, the manager's ``fileno()``, for all its connections, however many there
are: the manager's fd is readable when a connection's socket reports a close, reset or
error, when a deadline has passed and when a touch reached ``max_requests``, so the reaper
needs no loop timer (except one while a graceful close is draining, see below). Reads
stay with asyncio: the manager watches with
``watch_readable=False`` and ``close=False``, so it only peeks for a peer close, reset or
timeout, and every close goes through the transport.

Where the manager has no fd to nest (the fallback's select/poll selectors: Windows, some
Unixes) or the loop has no ``add_reader`` (asyncio's proactor loop on Windows), one loop
timer at the manager's ``next_deadline()`` drives ``poll()`` instead, at least every
``IO_CHECK`` seconds so that closes, resets and dead peers are still noticed.

What the reaper does on each :class:`fastka.Event`:

* ``IDLE``, ``MAX_REQUESTS``, ``MAX_LIFETIME``: ``transport.close()`` (buffered data is
  flushed, then the peer reads EOF: a FIN), and if the transport still holds unsent data
  ``drain_timeout`` seconds later (a peer that stopped reading), ``transport.abort()`` with
  the socket set to reset (SO_LINGER 0, so the kernel drops the unsent data too): a graceful
  close ends within ``drain_timeout``, whatever the peer does;
* ``RESET``, ``TIMED_OUT``, ``ERROR``: ``transport.abort()`` (the peer is gone);
* ``PEER_CLOSED``: nothing; asyncio reads the EOF itself and tells the protocol.

Every event that reaches a tracked transport is passed to ``on_event(transport, event)``
after the reaper acted on it, and the transport is no longer tracked.

A transport its owner closed without :meth:`~KeepaliveReaper.discard` is forgotten at its
next event or deadline, or when a sweep reaches it: each :meth:`~KeepaliveReaper.add` and
each reap check a few tracked transports, in turn, for ``is_closing()``.

Like asyncio's own objects, the reaper is not thread-safe: it is used from the thread of
its loop, for transports of that loop (from another thread, go through
``loop.call_soon_threadsafe``).
"""
from __future__ import annotations

import asyncio
import inspect
import io
import math
import numbers
import socket
import struct
from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from . import _backends, _jitter, _manager
from ._config import KeepaliveConfig
from ._types import DEAD, GRACEFUL, Event

__all__ = ["KeepaliveReaper", "OnEvent", "IO_CHECK"]

IO_CHECK = 1.0
"""Seconds: the longest the timer-driven reaper (no fd to nest, see above) waits between
two polls while it tracks connections."""

# Tracked transports checked for is_closing() by each add() and each reap: one closed
# without discard() is dropped within len(reaper) / _SWEEP such calls, so closed ones
# never outnumber the open ones by much, with no scan per touch and no timer.
_SWEEP = 4

DRAIN_TIMEOUT = 5.0
"""Seconds: the default ``drain_timeout``, the longest a graceful close may spend flushing
what the transport still buffers before the reaper aborts it."""

_TRANSPORT_METHODS = ("get_extra_info", "is_closing", "close", "abort", "get_write_buffer_size")

OnEvent = Callable[[asyncio.WriteTransport, Event], object]
"""The type of ``on_event``: called as ``on_event(transport, event)``; what it returns is
ignored."""


class KeepaliveReaper:
    """Close idle, worn-out and dead asyncio transports.

    ``idle_timeout`` and ``max_lifetime`` are seconds (``None``: never), ``max_requests``
    the number of :meth:`touch` calls a connection may have (``None``: unlimited),
    ``keepalive`` a :class:`fastka.KeepaliveConfig` applied to each added transport's
    socket, ``on_event(transport, event)`` a callback for every event (metrics, logs).
    ``drain_timeout`` (seconds, >= 0) bounds a graceful close: a transport closed on
    ``IDLE``, ``MAX_REQUESTS`` or ``MAX_LIFETIME`` that still buffers unsent data that long
    after ``close()`` (its peer stopped reading) is aborted. ``jitter`` (a fraction, 0 to
    0.5) spreads each connection's ``max_lifetime`` and ``max_requests`` uniformly within
    ±jitter, drawn when it is added, so that connections opened together do not all reach
    their limit together; ``idle_timeout`` is never spread. Bad values raise
    TypeError/ValueError naming the argument.

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
        drain_timeout: float = DRAIN_TIMEOUT,
        jitter: float = 0.0,
        _backend: Optional[_backends.Backend] = None,
        _random: Optional[_jitter.Source] = None,
    ) -> None:
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be a callable(transport, event) or None, not {type(on_event).__name__}: {on_event!r}")
        given: object = drain_timeout  # checked as any object: callers may pass anything
        if isinstance(given, bool) or not isinstance(given, numbers.Real):
            raise TypeError(f"drain_timeout must be seconds (int or float), not {type(drain_timeout).__name__}: {drain_timeout!r}")
        drain = float(drain_timeout)
        if not (0 <= drain and math.isfinite(drain)):
            raise ValueError(f"drain_timeout={drain_timeout!r} must be finite seconds >= 0 (a graceful close never waits longer)")
        backend = _backends.default() if _backend is None else _backend
        self._mgr: Any = backend.KeepaliveManager(
            idle_timeout,
            max_requests=max_requests,
            max_lifetime=max_lifetime,
            keepalive=keepalive,
            close=False,
            watch_readable=False,
            jitter=jitter,
            _random=_random,
        )
        self._on_event = on_event
        self._drain_timeout = drain
        # (loop.time() to abort at, transport) of graceful closes still flushing, in deadline
        # order (one drain_timeout for all, so appending keeps the order)
        self._draining: Deque[Tuple[float, asyncio.WriteTransport]] = deque()
        self._check_limit = max_requests is not None  # in timer mode only: see _bind()
        # transport -> fd given to the manager, in the order the sweep visits them
        self._fds: OrderedDict[asyncio.WriteTransport, int] = OrderedDict()
        self._transports: Dict[int, asyncio.WriteTransport] = {}  # fd -> transport
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._reader = False  # the manager's fd is a loop reader (else: timer mode)
        self._timer: Optional[asyncio.Handle] = None  # uvloop gives a plain Handle when due
        self._timer_when = 0.0  # loop.time() the timer was set for
        self._closed = False

    # -- public API ----------------------------------------------------------------------

    def add(self, transport: asyncio.WriteTransport) -> None:
        """Start the clocks of ``transport`` (and apply ``keepalive`` to its socket).

        Raises ValueError when the reaper is closed, the transport is already tracked or
        already closing; TypeError when it is not a transport or its socket is not a
        stream (TCP) socket; RuntimeError when called off the reaper's loop (the
        transport must belong to that loop too: asyncio's transports are not
        thread-safe); OSError when the socket cannot be watched or configured.
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
        self._sweep()
        old = self._transports.get(fd)
        if old is not None:  # closed by its owner without discard(); the fd number was reused
            self._forget(old)
        self._mgr.add(fd)
        self._fds[transport] = fd
        self._transports[fd] = transport
        if not self._reader and self._timer is None:
            self._arm()

    def touch(self, transport: asyncio.WriteTransport) -> None:
        """One request served on ``transport``: restart its idle clock and count it.

        O(1) and no system call (except on the touch that reaches ``max_requests``, which
        wakes the loop). A transport the reaper does not track (never added, or already
        reaped) is ignored, so a request that races its connection's expiry needs no guard.
        """
        fd = self._fds.get(transport)
        if fd is not None:
            self._mgr.touch(fd)
            if self._check_limit and not self._reader and self._mgr.next_deadline() == 0.0:
                self._arm()  # the limit was reached: poll on the loop's next turn

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
        forgotten; graceful closes still flushing are left to finish (no longer bounded by
        ``drain_timeout``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if self._reader and loop is not None and not loop.is_closed():
            loop.remove_reader(self._mgr.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fds.clear()
        self._transports.clear()
        self._draining.clear()
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
        """Attach to the running loop (once): the manager's fd becomes a loop reader, or
        where that cannot be, polls follow one timer."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            try:
                loop.add_reader(self._mgr.fileno(), self._reap)
                self._reader = True
            except (io.UnsupportedOperation, NotImplementedError):
                self._reader = False
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a KeepaliveReaper is used from the event loop it was first used on only")

    def _sweep(self) -> None:
        """Check the _SWEEP least recently checked transports: forget those closed meanwhile, send
        the others to the back of the line."""
        fds = self._fds
        for _ in range(min(_SWEEP, len(fds))):
            transport = next(iter(fds))
            if transport.is_closing():
                self._forget(transport)
            else:
                fds.move_to_end(transport)

    def _arm(self) -> None:
        """Keep the one timer at or before the next thing due: in timer mode the next
        deadline, at most IO_CHECK seconds away while connections are tracked; in both
        modes the first draining close's abort time. A timer that fires early (touches moved
        the deadline) finds nothing due and is set again."""
        loop = self._loop
        assert loop is not None
        delay: Optional[float] = None
        if not self._reader:
            delay = self._mgr.next_deadline()
            if self._fds:
                delay = IO_CHECK if delay is None else min(delay, IO_CHECK)
        if self._draining:
            drain = self._draining[0][0] - loop.time()
            delay = drain if delay is None else min(delay, drain)
        if delay is None:
            return
        when = loop.time() + max(delay, 0.0)
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)
        self._timer_when = when

    def _on_timer(self) -> None:
        self._timer = None
        if self._reader:
            self._abort_undrained()
            self._arm()
        else:
            self._reap()

    def _abort_undrained(self) -> None:
        """Abort the graceful closes whose drain_timeout has passed with data still buffered."""
        assert self._loop is not None
        now = self._loop.time()
        draining = self._draining
        while draining and draining[0][0] <= now:
            _, transport = draining.popleft()
            try:
                if transport.get_write_buffer_size():
                    _reset_on_close(transport)
                    transport.abort()
            except Exception as exc:
                self._report("fastka.aio.KeepaliveReaper: aborting a transport that did not drain failed", exc, transport)

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
        self._sweep()
        self._abort_undrained()
        if not self._closed and (not self._reader or self._draining):
            self._arm()

    def _act(self, transport: asyncio.WriteTransport, event: Event) -> None:
        try:
            if event in GRACEFUL:
                transport.close()
                if transport.get_write_buffer_size():
                    assert self._loop is not None
                    self._draining.append((self._loop.time() + self._drain_timeout, transport))
            elif event in DEAD:
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


# What inspect.signature, help() and the API reference show: no private test hooks.
KeepaliveReaper.__init__.__signature__ = _manager.public_signature(inspect.signature(KeepaliveReaper.__init__))  # type: ignore[attr-defined]

_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset_on_close(transport: asyncio.WriteTransport) -> None:
    """Make the close of ``transport``'s socket a reset (SO_LINGER 0): without it the kernel
    would keep flushing the socket's send queue to a peer that does not read, after the fd
    is gone, holding its memory. A socket already closed is left alone."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
