"""The keep-alive fast path of ``fastka serve`` in C: answer a read that holds nothing but
plain GET/HEAD requests (src/serve/http_simple.h says what "plain" is) without the general
parser. Optional: when it is not built, serve answers everything on its Python path, which
gives the same bytes. It knows no route: the caller passes the one path it answers
differently."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdio cimport snprintf
from libc.string cimport memcpy


cdef extern from "http_simple.h":
    enum: FK_HTTP_MAX_BATCH
    int fk_http_simple(const char *buf, size_t len, size_t max_head, int max_reqs,
                       const char *other, size_t other_len, unsigned char *is_head)


def answer(bytes data, Py_ssize_t max_head, Py_ssize_t left, bytes head, bytes tail, bytes body, bytes other):
    """``(n, answers)`` when ``data`` is exactly n plain requests, else None.

    The i-th answer is ``head + str(left - i) + tail`` followed by ``body`` for a GET (the
    Keep-Alive ``max=`` counts down from ``left``); runs that would reach ``max=0`` (the
    request answered with ``Connection: close``) are left to the general path, as are a head
    (target plus header lines) over ``max_head`` bytes and a request for the path ``other``
    (bytes; empty for none).
    """
    cdef unsigned char is_head[FK_HTTP_MAX_BATCH]
    cdef char digits[32]
    cdef int n, i, k
    cdef Py_ssize_t size = 0, lh = PyBytes_GET_SIZE(head), lt = PyBytes_GET_SIZE(tail), lb = PyBytes_GET_SIZE(body)
    if left < 1 or max_head < 0:
        return None
    n = fk_http_simple(PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data), <size_t>max_head,
                       <int>min(left, FK_HTTP_MAX_BATCH), PyBytes_AS_STRING(other),
                       <size_t>PyBytes_GET_SIZE(other), is_head)
    if n == 0:
        return None
    for i in range(n):
        size += lh + lt + snprintf(digits, sizeof(digits), "%zd", left - i) + (0 if is_head[i] else lb)
    out = PyBytes_FromStringAndSize(NULL, size)
    cdef char *w = PyBytes_AS_STRING(out)
    for i in range(n):
        memcpy(w, PyBytes_AS_STRING(head), lh)
        w += lh
        k = snprintf(digits, sizeof(digits), "%zd", left - i)
        memcpy(w, digits, k)
        w += k
        memcpy(w, PyBytes_AS_STRING(tail), lt)
        w += lt
        if not is_head[i]:
            memcpy(w, PyBytes_AS_STRING(body), lb)
            w += lb
    return n, out
