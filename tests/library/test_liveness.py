"""tcp_info, is_alive and find_dead on loopback: live, live with unread data, after a FIN,
after a reset (SO_LINGER 0). The keepalive-timeout case needs a vanishing peer and is in
tests/test_dead_peer.py."""
from __future__ import annotations

import select
import socket
import struct
import time

import pytest

from fastka import _keepalive_py, _platform

pytestmark = pytest.mark.skipif(_platform.CURRENT is not _platform.LINUX, reason="TCP_INFO and POLLRDHUP are Linux's")


def settle(sock: socket.socket, what: int = select.POLLIN, timeout: float = 2.0) -> None:
    """Wait until the kernel has delivered what the peer did (FIN, RST, data) to ``sock``."""
    p = select.poll()
    p.register(sock, what)
    assert p.poll(timeout * 1000), "the peer's packet never arrived"
    time.sleep(0.01)


def test_live_connection(backend, tcp_pair):
    client, server = tcp_pair
    assert backend.is_alive(client) is True and backend.is_alive(server.fileno()) is True
    assert backend.find_dead([client, server]) == []
    info = backend.tcp_info(client)
    assert info.state == "ESTABLISHED"
    assert info.retransmits == info.probes == info.backoff == info.unacked == info.lost == info.total_retrans == 0
    assert 0 < info.rtt < 1 and 0 <= info.rttvar < 1
    for t in (info.last_data_recv, info.last_data_sent, info.last_ack_recv):
        assert isinstance(t, float) and 0 <= t < 60


def test_live_with_unread_data_is_alive_and_the_data_stays(backend, tcp_pair):
    client, server = tcp_pair
    server.sendall(b"hello, pool")
    settle(client)
    time.sleep(0.2)
    assert backend.is_alive(client) is True
    assert backend.find_dead([client, server]) == []
    info = backend.tcp_info(client)
    assert info.state == "ESTABLISHED" and info.last_data_recv >= 0.15  # seconds, from ms
    assert client.recv(100) == b"hello, pool"  # nothing was consumed


def test_after_fin(backend, tcp_pair):
    client, server = tcp_pair
    server.close()
    settle(client)
    assert backend.is_alive(client) is False
    assert backend.find_dead([client]) == [client]
    assert backend.tcp_info(client).state == "CLOSE_WAIT"
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def test_after_fin_with_unread_data_is_dead_and_the_data_stays(backend, tcp_pair):
    client, server = tcp_pair
    server.sendall(b"last words")
    server.shutdown(socket.SHUT_WR)
    settle(client)
    time.sleep(0.05)
    assert backend.is_alive(client) is False  # the peer is gone, for a pool's purposes
    assert backend.find_dead([client]) == [client]
    assert client.recv(100) == b"last words" and client.recv(100) == b""


def test_after_reset(backend, tcp_pair):
    client, server = tcp_pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # SO_LINGER 0: an RST instead of a FIN
    settle(client)
    assert backend.is_alive(client) is False
    assert backend.find_dead([client]) == [client]
    assert backend.tcp_info(client).state == "CLOSE"
    # neither call consumed the pending error: the application still learns of the reset
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 104  # ECONNRESET


def test_find_dead_keeps_order_duplicates_and_objects(backend, make_pairs):
    pairs = make_pairs(6)
    for _, s in pairs[1::2]:
        s.close()
    for c, _ in pairs[1::2]:
        settle(c)
    clients = [c for c, _ in pairs]
    dead = backend.find_dead(iter(clients + [clients[1].fileno(), clients[0], clients[1]]))
    assert dead == [clients[1], clients[3], clients[5], clients[1].fileno(), clients[1]]
    assert all(d is e for d, e in zip(dead, [clients[1], clients[3], clients[5]]))
    assert backend.find_dead([]) == []
    assert backend.find_dead(()) == []


def test_find_dead_over_more_fds_than_one_poll_chunk(backend, make_pairs):
    pairs = make_pairs(600)  # the C core polls in chunks of 512
    for i in (3, 511, 512, 599):
        pairs[i][1].close()
    for i in (3, 511, 512, 599):
        settle(pairs[i][0])
    clients = [c for c, _ in pairs]
    assert backend.find_dead(clients) == [clients[i] for i in (3, 511, 512, 599)]


def test_unconnected_socket_is_dead_and_listener_alive(backend, listener):
    with socket.socket() as fresh:
        assert backend.is_alive(fresh) is False
    assert backend.is_alive(listener) is True


def test_both_backends_read_the_same_tcp_info(tcp_pair):
    from conftest import Backend

    c, py = Backend("c"), Backend("python")
    client, server = tcp_pair
    client.sendall(b"x" * 1000)
    server.recv(1000)
    py.load(), c.load()
    started = time.monotonic()
    a, b = c.tcp_info(client), py.tcp_info(client)
    between = time.monotonic() - started  # the clocks move on between the two reads (long under valgrind)
    assert (a.state, a.retransmits, a.probes, a.backoff, a.unacked, a.lost, a.total_retrans) == (
        b.state, b.retransmits, b.probes, b.backoff, b.unacked, b.lost, b.total_retrans)
    assert abs(a.rtt - b.rtt) < 0.01 and -0.002 <= b.last_data_sent - a.last_data_sent <= between + 0.002


def test_parse_tcp_info_layout_and_short_structs():
    raw = bytearray(_keepalive_py.TCP_INFO_LAYOUT.size)
    raw[0], raw[2], raw[3], raw[4] = 1, 2, 3, 4  # state, retransmits, probes, backoff
    for offset, value in ((24, 5), (32, 6), (44, 7000), (52, 8000), (56, 9000), (68, 250), (72, 125), (100, 11)):
        struct.pack_into("=I", raw, offset, value)
    # (state, retransmits, probes, backoff, rtt us, rttvar us, last_data_recv ms,
    #  last_data_sent ms, last_ack_recv ms, unacked, lost, total_retrans): as the C core fills it
    assert _keepalive_py.parse_tcp_info(bytes(raw)) == (1, 2, 3, 4, 250, 125, 8000, 7000, 9000, 5, 6, 11)
    short = _keepalive_py.parse_tcp_info(bytes(raw[:60]))  # an older kernel's shorter struct
    assert short == (1, 2, 3, 4, 0, 0, 8000, 7000, 9000, 5, 6, 0)


class FakeTcpInfo:
    """Primitives whose tcp_info returns fixed kernel fields."""

    def __init__(self, fields):
        self.fields = fields

    def tcp_info(self, fd):
        return 0, self.fields


def test_tcp_info_units_and_unknown_states():
    from fastka import _keepalive

    info = _keepalive.Keepalive(FakeTcpInfo((1, 2, 3, 4, 250, 125, 8000, 7000, 9000, 5, 6, 11))).tcp_info(5)
    assert info.state == "ESTABLISHED"
    assert (info.retransmits, info.probes, info.backoff, info.unacked, info.lost, info.total_retrans) == (2, 3, 4, 5, 6, 11)
    assert (info.last_data_sent, info.last_data_recv, info.last_ack_recv) == (7.0, 8.0, 9.0)  # seconds, from ms
    assert (info.rtt, info.rttvar) == (0.00025, 0.000125)  # seconds, from us
    unknown = _keepalive.Keepalive(FakeTcpInfo((99,) + (0,) * 11)).tcp_info(5)
    assert unknown.state == "UNKNOWN(99)"


def test_tcp_info_elsewhere_names_the_platform(backend, monkeypatch, tcp_pair):
    monkeypatch.setattr(_platform, "CURRENT", _platform.DARWIN)
    with pytest.raises(NotImplementedError, match="which macOS does not have"):
        backend.tcp_info(tcp_pair[0])


# -- find_dead(socks, *, key=None): pools, closed members, concurrent mutation ---------


def test_find_dead_works_on_a_snapshot_while_another_thread_mutates_the_list(backend, make_pairs):
    """Another thread inserting at the front of the caller's list (or
    popping from it) while find_dead runs must never make a live member come back as dead,
    nor raise IndexError: find_dead reports members of the list as it was when called."""
    import threading

    pairs = make_pairs(400)
    dead_pairs = pairs[::40]
    for _, s in dead_pairs:
        s.close()
    for c, _ in dead_pairs:
        settle(c)
    dead = {id(c) for c, _ in dead_pairs}
    live_extra = [c for c, _ in pairs if id(c) not in dead][:20]
    members = [c for c, _ in pairs]
    stop = threading.Event()
    errors = []

    def mutate():
        k = 0
        while not stop.is_set():
            members.insert(0, live_extra[k % len(live_extra)])  # shifts every index by one
            members.pop(0)
            if k % 7 == 0:
                members.append(live_extra[0])
                members.pop()
            k += 1

    t = threading.Thread(target=mutate)
    t.start()
    try:
        for _ in range(300):
            try:
                got = backend.find_dead(members)
            except Exception as exc:  # IndexError before the fix
                errors.append(exc)
                continue
            wrong = [m for m in got if id(m) not in dead]
            if wrong:
                errors.append(f"{len(wrong)} live members reported dead")
    finally:
        stop.set()
        t.join()
    assert errors == []


class Conn:
    """A pool's connection object: its socket is an attribute, None once disconnected."""

    def __init__(self, sock):
        self.sock = sock


def test_find_dead_with_key_none_and_closed_members(backend, make_pairs):
    pairs = make_pairs(3)
    pairs[1][1].close()
    settle(pairs[1][0])
    closed = socket.socket()
    closed.close()
    conns = [Conn(pairs[0][0]), Conn(None), Conn(pairs[1][0]), Conn(closed), Conn(pairs[2][0])]
    assert backend.find_dead(conns, key=lambda c: c.sock) == [conns[1], conns[2], conns[3]]
    assert backend.find_dead([pairs[0][0], None, closed]) == [None, closed]
    assert backend.find_dead((c for c in conns), key=lambda c: c.sock) == [conns[1], conns[2], conns[3]]
    with pytest.raises(TypeError, match=r"key\(socks\[1\]\) must be a socket"):
        backend.find_dead([conns[0], "x"], key=lambda c: getattr(c, "sock", c))
    with pytest.raises(TypeError, match="key must be a callable or None, not int"):
        backend.find_dead(conns, key=5)
    with pytest.raises(ValueError, match=r"socks\[0\] is a negative fd \(-1\)"):
        backend.find_dead([-1])  # an int is an fd, not a closed socket


# -- find_dead over a large pool: every kind of member, errors named only when raised ----


class Wrapped:
    """An object with fileno(), as a client library's connection."""

    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()


class OtherFd(socket.socket):
    """A socket subclass whose fileno() names another socket's fd: fastka asks fileno()."""

    def __init__(self, other):
        super().__init__()
        self.other = other

    def fileno(self):
        return self.other.fileno()


class BoolFileno:
    def fileno(self):
        return True


class NoFormat(str):
    """A member label that fails if anything formats it."""

    def format(self, *args, **kwargs):
        raise AssertionError("a member's label was formatted with no error to report")


@pytest.fixture
def pool_of_200(make_pairs):
    """200 loopback (client, server) pairs; the servers of clients 7, 100 and 199 closed."""
    pairs = make_pairs(200)
    for i in (7, 100, 199):
        pairs[i][1].close()
        settle(pairs[i][0])
    yield [c for c, _ in pairs]


def test_find_dead_over_every_kind_of_member(backend, pool_of_200):
    clients = pool_of_200
    closed = socket.socket()
    closed.close()
    with OtherFd(clients[7]) as other_dead, OtherFd(clients[8]) as other_live:
        members = (clients[:50] + [None, clients[100].fileno(), Wrapped(clients[7]), closed, Wrapped(clients[9]),
                   other_dead, other_live, clients[60].fileno()] + clients[50:])
        dead = [clients[7], None, clients[100].fileno(), members[52], closed, other_dead, clients[100], clients[199]]
        assert backend.find_dead(members) == dead
        conns = [Conn(m) for m in members]
        assert backend.find_dead(conns, key=lambda c: c.sock) == [c for c in conns if c.sock in dead or c.sock is None]
    assert backend.find_dead(clients) == [clients[7], clients[100], clients[199]]
    assert backend.find_dead(clients[i].fileno() for i in range(200)) == [clients[i].fileno() for i in (7, 100, 199)]


@pytest.mark.parametrize("bad, exc, words", [
    (object(), TypeError, "socks[150] must be a socket, an object with fileno() or an int fd, not object"),
    (True, TypeError, "socks[150] must be a socket, an object with fileno() or an int fd, not bool"),
    (BoolFileno(), TypeError, "socks[150].fileno() must return an int, not bool"),
    (-1, ValueError, "socks[150] is a negative fd (-1)"),
    (2**40, ValueError, f"socks[150] fd {2**40} is out of range"),
    (Wrapped(None), AttributeError, "'NoneType' object has no attribute 'fileno'"),
])
def test_find_dead_names_a_bad_member_after_good_ones(backend, pool_of_200, bad, exc, words):
    members = pool_of_200[:150] + [bad] + pool_of_200[150:]
    with pytest.raises(exc) as info:
        backend.find_dead(members)
    assert words in str(info.value)
    with pytest.raises(exc) as info:
        backend.find_dead([Conn(m) for m in members], key=lambda c: c.sock)
    assert words.replace("socks[150]", "key(socks[150])") in str(info.value)


def test_find_dead_names_the_fd_that_is_not_open(backend, pool_of_200):
    unused = max(s.fileno() for s in pool_of_200) + 500
    with pytest.raises(OSError) as info:
        backend.find_dead(pool_of_200 + [unused])
    assert info.value.errno == 9 and f"fd {unused} is not an open file descriptor; poll" in str(info.value)


def test_find_dead_formats_no_label_unless_it_raises(backend, pool_of_200):
    """The per-member work is the poll: a member's name is made only for an error."""
    closed = socket.socket()
    closed.close()
    members = pool_of_200 + [None, closed, Wrapped(pool_of_200[0]), pool_of_200[7].fileno()]
    states = backend.keepalive.dead_states(members, NoFormat("socks[{}]"))
    assert [i for i, _, _ in states] == [7, 100, 199, 200, 201, 203]
    assert backend.keepalive.fds(members[:-4] + [members[-2]], NoFormat("socks[{}]")) == [s.fileno() for s in members[:-4]] + [pool_of_200[0].fileno()]


class RaisingFileno:
    def fileno(self):
        raise OSError(9, "fileno says EBADF")


def test_find_dead_raises_for_the_first_bad_member_in_order(backend, pool_of_200):
    """A bad int fd before a member whose fileno() raises: the int's error, as when each
    member is checked in turn; after a None (dead, not bad) the fileno() error."""
    with pytest.raises(ValueError, match=r"socks\[200\] is a negative fd \(-1\)"):
        backend.find_dead(pool_of_200 + [-1, RaisingFileno()])
    with pytest.raises(OSError, match="fileno says EBADF"):
        backend.find_dead(pool_of_200 + [None, RaisingFileno()])
