/* Is the peer of a connected stream socket still there? Asked without consuming data. */
#ifndef FASTKA_LIVENESS_H
#define FASTKA_LIVENESS_H

#include <stddef.h>

#include "tables.h"

/* The event (enum fk_event) a pending socket error reports: the mapping of
 * fastka/_liveness_py.py's error_event. */
int fk_error_event(int err);

/* The pending socket error (SO_ERROR, which reading clears), or the errno of the
 * getsockopt itself when that fails. 0 when there is none. */
int fk_pending_error(int fd);

/* What a one-byte recv(MSG_PEEK | MSG_DONTWAIT) sees in the receive queue. */
enum fk_peek { FK_PEEK_EMPTY = 0, FK_PEEK_DATA = 1, FK_PEEK_EOF = 2 };

/* FK_PEEK_EMPTY / FK_PEEK_DATA / FK_PEEK_EOF, or -errno when the recv fails. */
int fk_peek(int fd);

/* Whether each of fds[0..n) is dead in the sense of fastka.is_alive: the peer sent FIN
 * or RST, a keepalive or user timeout fired, or an error is pending (POLLRDHUP, POLLHUP or
 * POLLERR from one zero-timeout poll(2) per chunk of fds). Neither data nor the pending
 * error is consumed. dead[i] = 1 (dead), 0 (alive) or -EBADF (fds[i] is not open).
 * Returns the number of dead fds, or -errno when poll itself fails. */
long fk_find_dead(const int *fds, size_t n, int *dead);

/* The fields of Linux's struct tcp_info (tcpi_<name>) that fastka.TcpInfo reports, in its
 * order and in the kernel's units (rtt, rttvar in microseconds, last_* in milliseconds). */
#define FK_TCP_INFO_FIELDS(X)                                  \
    X(state) X(retransmits) X(probes) X(backoff) X(rtt) X(rttvar) \
    X(last_data_recv) X(last_data_sent) X(last_ack_recv) X(unacked) X(lost) X(total_retrans)

#define FK_TCP_INFO_FIELD(name) unsigned name;
struct fk_tcp_info {
    FK_TCP_INFO_FIELDS(FK_TCP_INFO_FIELD)
};
#undef FK_TCP_INFO_FIELD

/* getsockopt(TCP_INFO) into *info: 0, or -errno. An older kernel's shorter struct leaves
 * the fields it lacks at 0. -ENOPROTOOPT where the platform has no Linux TCP_INFO. */
int fk_get_tcp_info(int fd, struct fk_tcp_info *info);

#endif
