/* The head of CPython's socket object (PySocketSockObject in Modules/socketmodule.h): its
 * fd is the first field after PyObject_HEAD, an int on POSIX, on every CPython 3 release;
 * close() and detach() set it to -1. The compiled manager reads it only for objects whose
 * type is exactly socket.socket (checked by the caller), so that the fd-reuse check of a
 * poll tick needs no Python call. */
#ifndef FASTKA_PYSOCKET_H
#define FASTKA_PYSOCKET_H

#include <Python.h>

typedef struct {
    PyObject_HEAD
    int sock_fd;
} fk_pysocket;

static inline int fk_pysocket_fd(PyObject *o)
{
    return ((fk_pysocket *)o)->sock_fd;
}

#endif
