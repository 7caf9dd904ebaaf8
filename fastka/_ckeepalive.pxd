# Declarations of fastka's C core (src/keepalive.h, src/liveness.h, src/platform.h) for
# Cython modules: `from fastka._ckeepalive cimport ...`.

cdef extern from "keepalive.h" nogil:
    struct fk_keepalive:
        int idle
        int interval
        int count
        int user_timeout_ms

    struct fk_keepalive_state:
        int enabled
        int idle
        int interval
        int count
        int user_timeout_ms

    int fk_keepalive_apply(int fd, const fk_keepalive *cfg, const char **failed)
    int fk_keepalive_matches(int fd, const fk_keepalive *cfg)
    size_t fk_keepalive_apply_many(const int *fds, size_t n, const fk_keepalive *cfg, int *errs)
    size_t fk_keepalive_apply_many_opt(const int *fds, size_t n, const fk_keepalive *cfg,
                                       int *errs, const char **fails)
    int fk_keepalive_get(int fd, fk_keepalive_state *st, const char **failed)
    int fk_keepalive_update(int fd, const fk_keepalive *cfg, const char **failed)
    int fk_keepalive_disable(int fd, const char **failed)

cdef extern from "liveness.h" nogil:
    int fk_error_event(int err)
    int fk_pending_error(int fd)
    int fk_peek(int fd)
    int fk_liveness(int fd, int *err)
    long fk_find_dead(const int *fds, size_t n, int *dead)

    struct fk_tcp_info:
        unsigned state, retransmits, probes, backoff
        unsigned rtt_us, rttvar_us
        unsigned last_data_recv_ms, last_data_sent_ms, last_ack_recv_ms
        unsigned unacked, lost, total_retrans

    int fk_get_tcp_info(int fd, fk_tcp_info *info)

cdef extern from "platform.h":
    const char *FK_PLATFORM
    const char *FK_TCP_KEEPIDLE_NAME
    int FK_TCP_KEEPIDLE, FK_TCP_KEEPINTVL, FK_TCP_KEEPCNT
    int FK_IDLE_MIN, FK_IDLE_MAX, FK_INTERVAL_MIN, FK_INTERVAL_MAX
    int FK_COUNT_MIN, FK_COUNT_MAX, FK_USER_TIMEOUT_MS_MAX
