"""The manager's thread-safety contract, on both backends.

- add/remove/touch/__len__/__contains__/next_deadline may be called from any thread,
  also while another thread is blocked in poll(); a call that makes the earliest deadline
  earlier (the first add into an empty manager, a touch reaching max_requests) wakes the
  blocked poller, so poll(None) honours it;
- poll() never runs in two threads at once: a second concurrent poll raises RuntimeError;
- close() while another thread is inside poll() raises RuntimeError;
- every method after close() raises ValueError;
- set_keepalive and the other one-socket functions are plain system calls, safe anywhere.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from fastka import Event

WORKERS = 4
PAIRS_PER_WORKER = 40
ROUNDS = 15
JOIN = 60.0  # seconds: a thread still running after this is a hang


def _pairs(listener, n):
    out = []
    for _ in range(n):
        c = socket.create_connection(listener.getsockname())
        s, _ = listener.accept()
        out.append((c, s))
    return out


def _close_all(pairs):
    for c, s in pairs:
        c.close()
        s.close()


def _run(threads):
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
    assert not any(t.is_alive() for t in threads), "a thread hung"


def _blocked_in_poll(t):
    """Give ``t`` time to enter poll() and block."""
    time.sleep(0.2)
    assert t.is_alive()


def test_workers_and_one_poller(backend, listener):
    """Several threads add, configure, touch and remove their own sockets while one
    thread polls: nothing lost, nothing duplicated, len() consistent at every barrier."""
    pairs = _pairs(listener, WORKERS * PAIRS_PER_WORKER)
    m = backend.KeepaliveManager(idle_timeout=None, close=False)
    stop = threading.Event()
    errors: list = []
    readable: list = []
    barrier = threading.Barrier(WORKERS + 1, timeout=JOIN)
    counts = [[0, 0, 0] for _ in range(WORKERS)]  # adds, touches, removes
    for c, _ in pairs[::3]:
        c.send(b"ping")  # some READABLE work for the poller

    def poller():
        try:
            while not stop.is_set():
                for obj, ev in m.poll(0.01):
                    assert ev is Event.READABLE, ev
                    readable.append(obj)
                    try:
                        obj.recv(64)
                    except BlockingIOError:
                        pass
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def worker(k):
        mine = [s for _, s in pairs[k * PAIRS_PER_WORKER:(k + 1) * PAIRS_PER_WORKER]]
        try:
            for r in range(ROUNDS):
                for s in mine:
                    m.add(s)
                    counts[k][0] += 1
                    backend.set_keepalive(s, idle=5 + r, interval=2, count=3)
                    assert s in m
                for s in mine:
                    m.touch(s)
                    counts[k][1] += 1
                    assert 1 <= len(m) <= WORKERS * PAIRS_PER_WORKER
                    m.next_deadline()
                if r == 0:
                    barrier.wait()  # every worker has added everything
                    barrier.wait()  # the main thread has checked
                for s in mine:
                    m.remove(s)
                    counts[k][2] += 1
                    assert s not in m
                    with pytest.raises(KeyError):
                        m.touch(s)
                assert backend.get_keepalive(mine[0]).idle == 5 + r
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(WORKERS)]
    p = threading.Thread(target=poller)
    p.start()
    for t in threads:
        t.start()
    try:
        barrier.wait()
        assert len(m) == WORKERS * PAIRS_PER_WORKER
        assert all(s in m for _, s in pairs)
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join(JOIN)
    stop.set()
    p.join(JOIN)
    try:
        assert not errors, errors
        assert not p.is_alive() and not any(t.is_alive() for t in threads), "a thread hung"
        assert len(m) == 0
        assert counts == [[PAIRS_PER_WORKER * ROUNDS] * 3] * WORKERS
        assert readable, "the poller saw no READABLE while workers churned"
        assert set(id(o) for o in readable) <= set(id(s) for _, s in pairs)
        assert all(s.fileno() >= 0 for _, s in pairs), "close=False manager closed a socket"
    finally:
        m.close()
        _close_all(pairs)


def test_add_wakes_a_poller_blocked_forever(backend, tcp_pair):
    """The first add into an empty manager wakes poll(None) so that the new idle deadline
    is honoured."""
    client, server = tcp_pair
    m = backend.KeepaliveManager(idle_timeout=0.2, close=False)
    got: list = []
    t = threading.Thread(target=lambda: got.extend(m.poll(None)))
    t.start()
    try:
        _blocked_in_poll(t)
        start = time.monotonic()
        m.add(server)
        t.join(5.0)
        woken = not t.is_alive()
        elapsed = time.monotonic() - start
    finally:
        if t.is_alive():  # broken wake-up: unblock the poller with I/O, then fail
            client.send(b"x")
            t.join(JOIN)
        m.close()
    assert woken, "poll(None) was not woken by add(): the idle deadline was ignored"
    assert got == [(server, Event.IDLE)]
    assert elapsed >= 0.15


def test_touch_reaching_max_requests_wakes_the_poller(backend, tcp_pair):
    client, server = tcp_pair
    m = backend.KeepaliveManager(idle_timeout=None, max_requests=1, close=False)
    m.add(server)
    got: list = []
    t = threading.Thread(target=lambda: got.extend(m.poll(None)))
    t.start()
    try:
        _blocked_in_poll(t)
        m.touch(server)
        t.join(5.0)
        woken = not t.is_alive()
    finally:
        if t.is_alive():
            client.send(b"x")
            t.join(JOIN)
        m.close()
    assert woken, "poll(None) was not woken by touch() reaching max_requests"
    assert got == [(server, Event.MAX_REQUESTS)]


def test_second_concurrent_poll_and_close_during_poll_raise(backend, tcp_pair):
    client, server = tcp_pair
    m = backend.KeepaliveManager(idle_timeout=None, close=False)
    got: list = []
    t = threading.Thread(target=lambda: got.extend(m.poll(None)))
    t.start()
    try:
        _blocked_in_poll(t)
        with pytest.raises(RuntimeError):
            m.poll(0)
        with pytest.raises(RuntimeError):
            m.close()
        # The manager is still usable from this thread while the other one polls.
        assert len(m) == 0 and m.next_deadline() is None
        m.add(server)
        assert server in m and len(m) == 1
    finally:
        client.send(b"x")  # wakes the poller with READABLE (idle_timeout=None: no timer)
        t.join(JOIN)
        alive = t.is_alive()
        m.close()
    assert not alive, "poll(None) did not return on READABLE"
    assert got == [(server, Event.READABLE)]


@pytest.mark.parametrize(
    "call",
    [
        lambda m, s: m.add(s),
        lambda m, s: m.remove(s),
        lambda m, s: m.touch(s),
        lambda m, s: m.poll(0),
        lambda m, s: m.poll(None),
        lambda m, s: m.next_deadline(),
        lambda m, s: m.fileno(),
        lambda m, s: m.__enter__(),
    ],
    ids=["add", "remove", "touch", "poll(0)", "poll(None)", "next_deadline", "fileno", "enter"],
)
def test_methods_after_close_raise_value_error(backend, tcp_pair, call):
    m = backend.KeepaliveManager()
    m.add(tcp_pair[1])
    m.close()
    m.close()  # idempotent
    with pytest.raises(ValueError):
        call(m, tcp_pair[1])
    assert tcp_pair[1].fileno() >= 0  # close() leaves tracked sockets open


def test_set_keepalive_from_many_threads_on_shared_sockets(backend, listener):
    """The one-socket functions are plain system calls: many threads on the same sockets
    end with one of the values written, never a crash or a mixed error."""
    pairs = _pairs(listener, 20)
    errors: list = []

    def hammer(k):
        try:
            for r in range(50):
                socks = [s for _, s in pairs]
                backend.set_keepalive(socks[r % 20], idle=10 + k, interval=1 + k, count=1 + k)
                assert backend.set_keepalive_many(socks, idle=20 + k) == {}
                assert backend.find_dead(socks) == []
                st = backend.get_keepalive(socks[r % 20])
                assert st.enabled and 10 <= st.idle <= 20 + WORKERS
        except BaseException as exc:
            errors.append(exc)

    try:
        _run([threading.Thread(target=hammer, args=(k,)) for k in range(WORKERS)])
        assert not errors, errors
    finally:
        _close_all(pairs)


@pytest.mark.slow
def test_close_racing_add_touch_and_poll(backend, listener):
    """Threads add, touch, discard and poll while the main thread closes the manager and
    makes a new one, over and over: only the documented errors (ValueError on a closed
    manager, RuntimeError for close during poll or a second poll), no crash, no hang."""
    pairs = _pairs(listener, 8)
    socks = [s for _, s in pairs]
    stop = threading.Event()
    errors: list = []
    box = {"m": backend.KeepaliveManager(0.05, max_requests=3, close=False)}

    def churn(mine):
        while not stop.is_set():
            m = box["m"]
            for s in mine:
                try:
                    if s not in m:
                        m.add(s)
                    m.touch(s)
                    m.discard(s)
                    m.poll(0)
                except (ValueError, KeyError, RuntimeError):
                    pass  # closed meanwhile, reaped meanwhile, another thread polling
                except BaseException as exc:
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=churn, args=(socks[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline and not errors:
            old = box["m"]
            try:
                old.close()
            except RuntimeError:
                continue  # a thread is inside poll(): try again
            box["m"] = backend.KeepaliveManager(0.05, max_requests=3, close=False)
            assert len(old) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(JOIN)
        box["m"].close()
        _close_all(pairs)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads), "a thread hung"


class _PooledConn:
    """A pool's connection: its close() or fileno() takes the pool's lock, as a pool that
    keeps its bookkeeping under one lock does."""

    def __init__(self, sock, pool_lock, entered, locked_method):
        self.sock = sock
        self.pool_lock = pool_lock
        self.entered = entered
        self.locked_method = locked_method
        self.armed = False  # lock only once the test has taken the pool lock

    def fileno(self):
        if self.armed and self.locked_method == "fileno":
            self.entered.set()
            with self.pool_lock:
                pass
        return self.sock.fileno()

    def close(self):
        if self.armed and self.locked_method == "close":
            self.entered.set()
            with self.pool_lock:
                pass
        self.sock.close()


@pytest.mark.parametrize("locked_method", ["close", "fileno"])
def test_user_code_in_poll_never_deadlocks_with_add(backend, listener, locked_method):
    """poll() drops an idle connection whose close() (or fileno()) waits for the pool's
    lock, while the thread holding that lock calls add(): the manager must not hold its
    own lock around the user's code, or both threads wait for ever."""
    m = backend.KeepaliveManager(0.05)
    pool_lock = threading.Lock()
    entered = threading.Event()
    (c1, s1), (c2, s2) = _pairs(listener, 2)
    conn = _PooledConn(s1, pool_lock, entered, locked_method)
    added = []

    def poller():
        m.poll(5.0)

    def pool_thread():
        with pool_lock:
            conn.armed = True
            entered.wait(5.0)
            time.sleep(0.05)  # the poller is now blocked on the pool lock inside the manager's call
            m.add(s2)
            added.append(s2)

    try:
        m.add(conn)
        threads = [threading.Thread(target=poller, daemon=True), threading.Thread(target=pool_thread, daemon=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10.0)
        assert not any(t.is_alive() for t in threads), "deadlock: poll() held the manager's lock around user code"
        assert entered.is_set() and added == [s2]
        m.close()
    finally:
        _close_all([(c1, s1), (c2, s2)])


def _alarm_threads():
    return sum(1 for t in threading.enumerate() if t.name.startswith("fastka-"))


def test_no_thread_outlives_a_dropped_manager(backend, listener):
    """Managers dropped without close() leave no thread behind (the fallback's alarm)."""
    import gc

    before = _alarm_threads()
    pairs = _pairs(listener, 20)
    try:
        for i in range(200):
            m = backend.KeepaliveManager(60.0, close=False)
            m.add(pairs[i % 20][1])  # a deadline: the fallback starts its alarm
            del m
        gc.collect()
        deadline = time.monotonic() + 5.0
        while _alarm_threads() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _alarm_threads() == before
    finally:
        _close_all(pairs)


def test_deadline_wakes_fileno_in_a_forked_child(backend, listener):
    """A manager made before fork() keeps working in the child: its fileno() becomes
    readable when a deadline passes (the fallback's alarm thread did not survive fork)."""
    import os
    import select

    m = backend.KeepaliveManager(0.05)
    (c1, s1), (c2, s2) = _pairs(listener, 2)
    r, w = os.pipe()
    try:
        m.add(s1)
        assert m.poll(2.0) == [(s1, Event.IDLE)]  # the alarm has run once
        pid = os.fork()
        if pid == 0:  # the child: writes "ok" when the deadline rang fileno()
            result = b"no wake-up"
            try:
                m.add(s2)
                end = time.monotonic() + 3.0  # an event source: wait on fileno(), then poll(0)
                while time.monotonic() < end:
                    if select.select([m.fileno()], [], [], end - time.monotonic())[0] and m.poll(0):
                        result = b"ok" if s2.fileno() == -1 else b"not closed as IDLE"
                        break
            finally:
                os.write(w, result)
                os._exit(0)  # the result travels through the pipe (a memory checker may set the exit code)
        os.close(w)
        w = -1
        os.waitpid(pid, 0)
        assert os.read(r, 100) == b"ok"
    finally:
        m.close()
        _close_all([(c1, s1), (c2, s2)])
        os.close(r)
        if w >= 0:
            os.close(w)
