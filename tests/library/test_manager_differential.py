"""Differential test: the compiled manager and the pure-Python specification, driven by the
same random sequence of operations on real loopback connections, report the same events."""
from __future__ import annotations

import os
import random
import select
import socket
import struct

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conftest import FakeClock
from fastka import _manager_py

_manager_c = pytest.importorskip("fastka._manager_c", reason="the compiled manager is not built")

SLOTS = 4
# poll() events that show the server end received what the peer sent: a byte, a FIN, a reset
SEEN = {"send": select.POLLIN, "fin": select.POLLRDHUP, "send_fin": select.POLLRDHUP,
        "rst": select.POLLERR | select.POLLHUP}
SEED = 20  # the jitter source of both twins: the same draws in the same add order


class Twin:
    """One backend's manager and its own loopback connections (client, server) per slot."""

    def __init__(self, cls, listener, clock, **kw) -> None:
        self.mgr = cls(**kw)
        self.mgr._set_clock(clock)
        self.listener = listener
        self.pairs = {}

    def connect(self, i):
        c = socket.create_connection(self.listener.getsockname())
        s, _ = self.listener.accept()
        self.pairs[i] = (c, s)

    def close_all(self):
        self.mgr.close()
        for c, s in self.pairs.values():
            c.close()
            s.close()
        self.pairs.clear()


class NoClose:
    """A socket wrapper without close(): a closing manager must refuse it."""

    def __init__(self, sock) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()


class ManagerDiff(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(5000.0)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        kw = dict(idle_timeout=10, max_requests=3, max_lifetime=25, jitter=0.4)  # limits of 2..4, 15..35
        self.twins = [Twin(cls, self.listener, self.clock, _random=random.Random(SEED).random, **kw)
                      for cls in (_manager_c.KeepaliveManager, _manager_py.KeepaliveManager)]
        self.added = set()

    def teardown(self) -> None:
        for t in self.twins:
            t.close_all()
        self.listener.close()

    def both(self, fn):
        return [fn(t, *t.pairs.get(self.slot, (None, None))) for t in self.twins]

    @rule(i=st.integers(0, SLOTS - 1))
    def add(self, i):
        self.slot = i
        for t in self.twins:
            if i in t.pairs:
                c, s = t.pairs.pop(i)
                if s in t.mgr:  # a socket closed while registered leaves a stale slot whose
                    t.mgr.remove(s)  # fate depends on fd numbering (tested in test_manager)
                c.close()
                s.close()
            t.connect(i)
            t.mgr.add(t.pairs[i][1])
        self.added.add(i)

    def same_lookup(self, data, method):
        """``method`` (touch, remove) on a drawn slot's socket in both twins: the same
        success, or the same KeyError or ValueError; any other exception fails."""
        i = data.draw(st.sampled_from(sorted(self.added)))
        res = []
        for t in self.twins:
            try:
                getattr(t.mgr, method)(t.pairs[i][1])
                res.append("ok")
            except (KeyError, ValueError) as exc:
                res.append(type(exc).__name__)
        assert res[0] == res[1]

    @precondition(lambda self: self.added)
    @rule(data=st.data())
    def touch(self, data):
        self.same_lookup(data, "touch")

    @precondition(lambda self: self.added)
    @rule(data=st.data())
    def remove(self, data):
        self.same_lookup(data, "remove")

    def same_outcome(self, fn):
        """Run fn(twin) on both; the result or the exception type must agree."""
        res = []
        for t in self.twins:
            try:
                res.append(("ok", fn(t)))
            except Exception as exc:  # any difference in kind is a backend difference
                res.append((type(exc).__name__, None))
        assert res[0] == res[1]

    @precondition(lambda self: self.added)
    @rule(data=st.data())
    def discard(self, data):
        i = data.draw(st.sampled_from(sorted(self.added)))
        self.same_outcome(lambda t: t.mgr.discard(t.pairs[i][1]))

    @rule(idle=st.sampled_from([None, 5, -1]))
    def reinit(self, idle):
        """__init__ again on an open manager: the same error on both, nothing forgotten."""
        self.same_outcome(lambda t: t.mgr.__init__(idle))

    @precondition(lambda self: self.added)
    @rule(data=st.data())
    def add_again_or_unclosable(self, data):
        i = data.draw(st.sampled_from(sorted(self.added)))
        self.same_outcome(lambda t: t.mgr.add(t.pairs[i][1]))
        self.same_outcome(lambda t: t.mgr.add(NoClose(t.pairs[i][1])))

    @precondition(lambda self: self.added)
    @rule(data=st.data(), how=st.sampled_from(["fin", "rst", "send", "send_fin"]))
    def peer(self, data, how):
        i = data.draw(st.sampled_from(sorted(self.added)))
        arrived = select.poll()  # what the server end sees once loopback delivered
        waiting = set()
        for t in self.twins:
            c = t.pairs[i][0]
            if c.fileno() < 0:
                continue
            if how == "rst":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            elif how == "fin":
                c.close()
            else:
                try:
                    c.send(b"x")
                except OSError:
                    continue
                if how == "send_fin":
                    c.close()
            s = t.pairs[i][1]
            if s.fileno() >= 0:
                waiting.add(s.fileno())
                arrived.register(s, SEEN[how])
        while waiting:  # the twins' ends, each until its own arrival
            ready = {fd for fd, _ in arrived.poll(5000)}
            assert ready, f"loopback delivered no {how} within 5 s"
            for fd in ready & waiting:
                arrived.unregister(fd)
            waiting -= ready

    @precondition(lambda self: self.added)
    @rule(data=st.data())
    def read_all(self, data):
        i = data.draw(st.sampled_from(sorted(self.added)))
        for t in self.twins:
            s = t.pairs[i][1]
            if s.fileno() < 0:
                continue
            try:
                s.recv(4096, socket.MSG_DONTWAIT)
            except OSError:
                pass

    @rule(dt=st.sampled_from([0.001, 1, 5, 9.999, 10, 15, 30]))
    def advance(self, dt):
        self.clock.now += dt

    @rule()
    def poll(self):
        got = []
        for t in self.twins:
            by_obj = {id(s): i for i, (_, s) in t.pairs.items()}
            got.append([(by_obj[id(o)], ev) for o, ev in t.mgr.poll(0)])
        assert got[0] == got[1]

    @invariant()
    def same_view(self):
        views = []
        for t in self.twins:
            views.append((len(t.mgr), t.mgr.next_deadline(),
                          sorted(i for i, (_, s) in t.pairs.items() if s in t.mgr)))
        assert views[0] == views[1]


TestManagerDiff = ManagerDiff.TestCase
# FASTKA_FUZZ_EXAMPLES: as in test_fuzz.py (tests/system/test_fuzz_deep.py runs 1,000)
TestManagerDiff.settings = settings(max_examples=int(os.environ.get("FASTKA_FUZZ_EXAMPLES", "80")),
                                    stateful_step_count=25, deadline=None,
                                    suppress_health_check=list(HealthCheck))
