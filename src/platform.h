/* What the C core needs from the platform, with the gaps filled here so that the C files
 * and the Cython bindings never branch on the platform themselves.
 *
 * Which option sets which keepalive field on which platform is not here: that table is
 * fastka/_platform.py, whose plan() the core applies (see sockopt.h).
 */
#ifndef FASTKA_PLATFORM_H
#define FASTKA_PLATFORM_H

#include <errno.h>

#if defined(_WIN32)
#include <winsock2.h>
#include <ws2tcpip.h>
/* Winsock takes a SOCKET and reports errors through WSAGetLastError(); it has WSAPoll
 * instead of poll(2), no POLLRDHUP and no MSG_DONTWAIT (fk_peek is called only for a
 * socket that poll reported readable). */
#define FK_SOCK(fd) ((SOCKET)(unsigned int)(fd))
#define FK_ERRNO() WSAGetLastError()
#define FK_EINTR WSAEINTR
#define FK_WOULDBLOCK(e) ((e) == WSAEWOULDBLOCK)
#define FK_EBADF WSAENOTSOCK
#define poll(p, n, t) WSAPoll((p), (ULONG)(n), (t))
#define MSG_DONTWAIT 0
typedef int socklen_t;
#else
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#define FK_SOCK(fd) (fd)
#define FK_ERRNO() errno
#define FK_EINTR EINTR
#define FK_WOULDBLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)
#define FK_EBADF EBADF
#endif

/* POLLRDHUP (the peer shut its writing side) is Linux's; elsewhere a FIN is seen by
 * peeking at a readable socket. */
#ifndef POLLRDHUP
#define POLLRDHUP 0
#endif

#endif
