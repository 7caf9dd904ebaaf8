"""The keep-alive fast path of ``fastka serve`` in C: answer a read that holds nothing but
plain GET/HEAD requests (src/serve/http_simple.h says what "plain" is) without the general
parser. Optional: when it is not built, serve answers everything on its Python path, which
gives the same bytes. It knows no route: the caller passes the one path it answers
differently."""
import os

cimport cython

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy


cdef extern from "http_simple.h":
    enum: FK_HTTP_MAX_BATCH
    int fk_http_simple(const char *buf, size_t len, size_t max_head, int max_reqs,
                       const char *other, size_t other_len, unsigned char *is_head)


cdef extern from "<sys/socket.h>":
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    enum: MSG_NOSIGNAL


@cython.cdivision(True)
cdef int _decimal(char *w, Py_ssize_t v):
    """Write v (>= 1) in decimal at w (at most 20 bytes); its length."""
    cdef char digits[20]
    cdef int k = 0, i
    while True:
        digits[k] = <char>(48 + v % 10)  # '0' + the last digit
        k += 1
        v //= 10
        if v == 0:
            break
    for i in range(k):
        w[i] = digits[k - 1 - i]
    return k


cdef int _requests(const char *data, Py_ssize_t size, Py_ssize_t max_head, Py_ssize_t left, bytes other,
                   unsigned char *is_head):
    """How many plain requests data[0..size) is exactly (0: not plain, see answer())."""
    if left < 1 or max_head < 0:
        return 0
    return fk_http_simple(data, <size_t>size, <size_t>max_head, <int>min(left, FK_HTTP_MAX_BATCH),
                          PyBytes_AS_STRING(other), <size_t>PyBytes_GET_SIZE(other), is_head)


cdef Py_ssize_t _answers_size(int n, Py_ssize_t left, const unsigned char *is_head, bytes head, bytes tail,
                              bytes body):
    cdef char digits[20]
    cdef int i
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t fixed = PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(tail)
    for i in range(n):
        size += fixed + _decimal(digits, left - i) + (0 if is_head[i] else PyBytes_GET_SIZE(body))
    return size


cdef void _write_answers(char *w, int n, Py_ssize_t left, const unsigned char *is_head, bytes head, bytes tail,
                         bytes body):
    """The n answers at w (_answers_size bytes)."""
    cdef int i
    cdef Py_ssize_t lh = PyBytes_GET_SIZE(head), lt = PyBytes_GET_SIZE(tail), lb = PyBytes_GET_SIZE(body)
    for i in range(n):
        memcpy(w, PyBytes_AS_STRING(head), lh)
        w += lh
        w += _decimal(w, left - i)
        memcpy(w, PyBytes_AS_STRING(tail), lt)
        w += lt
        if not is_head[i]:
            memcpy(w, PyBytes_AS_STRING(body), lb)
            w += lb


def answer(bytes data, Py_ssize_t max_head, Py_ssize_t left, bytes head, bytes tail, bytes body, bytes other):
    """``(n, answers)`` when ``data`` is exactly n plain requests, else None.

    The i-th answer is ``head + str(left - i) + tail`` followed by ``body`` for a GET (the
    Keep-Alive ``max=`` counts down from ``left``); runs that would reach ``max=0`` (the
    request answered with ``Connection: close``) are left to the general path, as are a head
    (target plus header lines) over ``max_head`` bytes and a request for the path ``other``
    (bytes; empty for none).
    """
    cdef unsigned char is_head[FK_HTTP_MAX_BATCH]
    cdef int n = _requests(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), max_head, left, other, is_head)
    if n == 0:
        return None
    out = PyBytes_FromStringAndSize(NULL, _answers_size(n, left, is_head, head, tail, body))
    _write_answers(PyBytes_AS_STRING(out), n, left, is_head, head, tail, body)
    return n, out


cdef class Plain:
    """One worker's fast path on its sockets: ``serve(fd, left)`` reads a non-blocking
    socket once and, when the read is exactly plain requests, answers them as answer()
    does and sends the answers, all without Python objects in between.

    ``max_head``: bytes, as answer() takes it; ``size``: bytes read at once (at least 1);
    ``body``: the body of a GET; ``other``: the path left to the general path.
    set_head() gives the head and tail of the answers (by the caller's clock: their Date);
    until then nothing is plain. ValueError for a ``size`` under 1."""

    cdef Py_ssize_t max_head, size
    cdef bytes head, tail, body, other
    cdef bint ready
    cdef char *inbuf
    cdef char *outbuf
    cdef Py_ssize_t outcap

    def __cinit__(self, Py_ssize_t max_head, Py_ssize_t size, bytes body not None, bytes other not None):
        if size < 1:
            raise ValueError(f"size={size} is out of range; allowed: 1 byte or more")
        self.inbuf = <char *>malloc(size)
        if self.inbuf == NULL:
            raise MemoryError()
        self.outbuf = NULL
        self.outcap = 0
        self.max_head, self.size, self.body, self.other = max_head, size, body, other
        self.head = self.tail = b""
        self.ready = False

    def __dealloc__(self):
        free(self.inbuf)
        free(self.outbuf)

    def set_head(self, bytes head not None, bytes tail not None):
        """The text before and after the Keep-Alive ``max=`` figure of every answer."""
        self.head, self.tail, self.ready = head, tail, True

    def serve(self, int fd, Py_ssize_t left):
        """Read ``fd`` once (at most ``size`` bytes) and answer what it read if plain.

        Returns None when there was nothing to read (EAGAIN); the bytes read when they are
        not plain requests (b"" at the peer's FIN), for the general path, nothing sent;
        ``(n, rest)`` when they were n plain requests (``left`` as answer() takes it), whose
        answers were sent but for ``rest`` (bytes the socket did not take, b"" for none).
        OSError when reading or sending fails (the answers are then lost with the
        connection)."""
        cdef unsigned char is_head[FK_HTTP_MAX_BATCH]
        cdef ssize_t got, sent
        cdef Py_ssize_t total
        cdef int n = 0, err
        cdef char *grown
        while True:
            got = recv(fd, self.inbuf, <size_t>self.size, 0)
            if got >= 0:
                break
            err = errno
            if err == EINTR:
                PyErr_CheckSignals()  # raises what a signal handler raised
                continue
            if err == EAGAIN:  # EWOULDBLOCK on Linux
                return None
            raise OSError(err, os.strerror(err))
        if self.ready:
            n = _requests(self.inbuf, got, self.max_head, left, self.other, is_head)
        if n == 0:
            return PyBytes_FromStringAndSize(self.inbuf, got)
        total = _answers_size(n, left, is_head, self.head, self.tail, self.body)
        if total > self.outcap:
            grown = <char *>realloc(self.outbuf, total)
            if grown == NULL:
                raise MemoryError()
            self.outbuf, self.outcap = grown, total
        _write_answers(self.outbuf, n, left, is_head, self.head, self.tail, self.body)
        while True:
            sent = send(fd, self.outbuf, <size_t>total, MSG_NOSIGNAL)
            if sent >= 0:
                break
            err = errno
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err == EAGAIN:  # EWOULDBLOCK on Linux
                sent = 0
                break
            raise OSError(err, os.strerror(err))
        return n, PyBytes_FromStringAndSize(self.outbuf + sent, total - sent) if sent < total else b""
