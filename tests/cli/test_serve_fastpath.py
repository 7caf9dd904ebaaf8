"""The fast path's socket side (fastka.cli.serve._fastpath.Plain): one read, answered and
sent when it is plain, handed back untouched when it is not."""
import socket

import pytest

fastpath = pytest.importorskip("fastka.cli.serve._fastpath", reason="the compiled fast path is not built")

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_plain_reads_are_answered_and_sent_as_answer_gives_them(pair):
    a, b = pair
    plain = fastpath.Plain(8192, 16384, b"B", b"/other")
    plain.set_head(b"H", b"T")
    b.sendall(GET + b"HEAD /x HTTP/1.1\r\n\r\n")
    assert plain.serve(a.fileno(), 10) == (2, b"")
    want = fastpath.answer(GET + b"HEAD /x HTTP/1.1\r\n\r\n", 8192, 10, b"H", b"T", b"B", b"/other")[1]
    assert want == b"H10TBH9T"
    assert b.recv(100) == want


def test_other_reads_come_back_unanswered(pair):
    a, b = pair
    plain = fastpath.Plain(8192, 16384, b"B", b"/other")
    plain.set_head(b"H", b"T")
    for data in (b"GET /other HTTP/1.1\r\n\r\n", b"POST / HTTP/1.1\r\n\r\n", GET[:10]):
        b.sendall(data)
        assert plain.serve(a.fileno(), 10) == data
    b.sendall(GET)
    assert plain.serve(a.fileno(), 0) == GET  # would be max=0: the general path closes
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(100)  # nothing was sent


def test_nothing_is_plain_before_set_head(pair):
    a, b = pair
    plain = fastpath.Plain(8192, 16384, b"B", b"")
    b.sendall(GET)
    assert plain.serve(a.fileno(), 10) == GET


def test_a_read_is_at_most_size_bytes(pair):
    a, b = pair
    plain = fastpath.Plain(8192, 5, b"B", b"")
    plain.set_head(b"H", b"T")
    b.sendall(GET)
    assert plain.serve(a.fileno(), 10) == GET[:5]
    with pytest.raises(ValueError, match="size=0"):
        fastpath.Plain(8192, 0, b"B", b"")


def test_nothing_to_read_eof_and_errors(pair):
    a, b = pair
    plain = fastpath.Plain(8192, 16384, b"B", b"")
    plain.set_head(b"H", b"T")
    assert plain.serve(a.fileno(), 10) is None
    b.shutdown(socket.SHUT_WR)
    assert plain.serve(a.fileno(), 10) == b""
    with pytest.raises(OSError):
        plain.serve(-1, 10)


def test_answers_the_socket_does_not_take_come_back(pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    plain = fastpath.Plain(8192, 16384, b"x" * 4000, b"")
    plain.set_head(b"H", b"T")
    unsent = b""
    while not unsent:  # fill the socket until an answer is cut short
        b.sendall(GET)
        n, unsent = plain.serve(a.fileno(), 10)
        assert n == 1
    assert unsent == (b"H10T" + b"x" * 4000)[-len(unsent):]
