# Declarations of fastka's keepalive C core (src/sockopt.h, src/liveness.h): shared with
# fastka/_keepalive_c.pyx, and `from fastka._keepalive_c cimport ...` elsewhere.

cdef extern from "sockopt.h" nogil:
    struct fk_sockopt:
        int level
        int name
        int value

    int fk_sockopt_apply(int fd, const fk_sockopt *o, size_t n, size_t *failed)
    int fk_sockopt_match(int fd, const fk_sockopt *o, size_t n)
    int fk_sockopt_read(int fd, fk_sockopt *o, size_t n, size_t *failed)

cdef extern from "liveness.h" nogil:
    long fk_find_dead(const int *fds, size_t n, int *dead)

    struct fk_tcp_info:
        unsigned state, retransmits, probes, backoff
        unsigned rtt, rttvar  # microseconds
        unsigned last_data_recv, last_data_sent, last_ack_recv  # milliseconds
        unsigned unacked, lost, total_retrans

    int fk_get_tcp_info(int fd, fk_tcp_info *info)
