/* Is the peer of a connected stream socket still there? Asked without consuming data. */
#ifndef FASTKA_LIVENESS_H
#define FASTKA_LIVENESS_H

#include "events.h"

/* The event for a socket error: ETIMEDOUT -> TIMED_OUT, ECONNRESET/EPIPE -> RESET,
 * anything else -> ERROR. */
int fk_error_event(int err);

/* The pending socket error (SO_ERROR, which reading clears), or the errno of the
 * getsockopt itself when that fails. 0 when there is none. */
int fk_pending_error(int fd);

/* What a one-byte recv(MSG_PEEK | MSG_DONTWAIT) sees in the receive queue. */
enum fk_peek { FK_PEEK_EMPTY = 0, FK_PEEK_DATA = 1, FK_PEEK_EOF = 2 };

/* FK_PEEK_EMPTY / FK_PEEK_DATA / FK_PEEK_EOF, or -errno when the recv fails. */
int fk_peek(int fd);

/* 0 (FK_EV_NONE) while the connection is alive, otherwise why it is dead:
 * FK_EV_PEER_CLOSED (FIN received, or not connected), FK_EV_RESET, FK_EV_TIMED_OUT or
 * FK_EV_ERROR, with the socket error in *err (0 for PEER_CLOSED). Unread data is left
 * in place. Returns -errno (e.g. -EBADF) when fd cannot be polled at all. */
int fk_liveness(int fd, int *err);

#endif
