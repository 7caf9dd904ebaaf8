/* Liveness of a connected stream socket from poll(2), recv(MSG_PEEK) and SO_ERROR; see
 * liveness.h. Windows uses WSAPoll, which has no POLLRDHUP: there a FIN shows as
 * POLLHUP only once both directions are shut, and fk_peek must be called only when
 * poll reported the socket readable (Windows has no MSG_DONTWAIT; see platform.h). */
#include "liveness.h"
#include "platform.h"

#if defined(__linux__)
#include <string.h>
#endif

int fk_error_event(int err)
{
    switch (err) {
    case ETIMEDOUT:
        return FK_EV_TIMED_OUT;
    case ECONNRESET:
    case EPIPE:
        return FK_EV_RESET;
    default:
        return FK_EV_ERROR;
    }
}

int fk_pending_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(FK_SOCK(fd), SOL_SOCKET, SO_ERROR, (char *)&err, &len) != 0)
        return FK_ERRNO();
    return err;
}

int fk_peek(int fd)
{
    char byte;
    int n, err;

    do {
        n = (int)recv(FK_SOCK(fd), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
        err = n < 0 ? FK_ERRNO() : 0;
    } while (n < 0 && err == FK_EINTR);
    if (n > 0)
        return FK_PEEK_DATA;
    if (n == 0)
        return FK_PEEK_EOF;
    if (FK_WOULDBLOCK(err))
        return FK_PEEK_EMPTY;
    return -err;
}

/* One zero-timeout poll over p[0..n), retried on EINTR: the count, or -errno. */
static int poll_now(struct pollfd *p, size_t n)
{
    int rc, err;

    do {
        rc = poll(p, n, 0);
        err = rc < 0 ? FK_ERRNO() : 0;
    } while (rc < 0 && err == FK_EINTR);
    return rc < 0 ? -err : rc;
}

/* poll(2) refuses more fds than RLIMIT_NOFILE; chunks keep every call well below it. */
#define FK_POLL_CHUNK 512

long fk_find_dead(const int *fds, size_t n, int *dead)
{
    struct pollfd p[FK_POLL_CHUNK];
    size_t base, i, m;
    long ndead = 0;
    int rc;

    for (base = 0; base < n; base += m) {
        m = n - base < FK_POLL_CHUNK ? n - base : FK_POLL_CHUNK;
        for (i = 0; i < m; i++) {
            p[i].fd = FK_SOCK(fds[base + i]);
            p[i].events = POLLIN | POLLRDHUP;
            p[i].revents = 0;
        }
        rc = poll_now(p, m);
        if (rc < 0)
            return rc;
        for (i = 0; i < m; i++) {
            short r = p[i].revents;

            if (r & POLLNVAL)
                dead[base + i] = -FK_EBADF;
            else if (r & (POLLRDHUP | POLLHUP | POLLERR))
                dead[base + i] = 1;
            else if (!POLLRDHUP && (r & POLLIN) && fk_peek(fds[base + i]) == FK_PEEK_EOF)
                dead[base + i] = 1; /* no POLLRDHUP: a FIN is an empty read */
            else
                dead[base + i] = 0;
            ndead += dead[base + i] == 1;
        }
    }
    return ndead;
}

int fk_get_tcp_info(int fd, struct fk_tcp_info *info)
{
#if defined(__linux__)
    struct tcp_info ti;
    socklen_t len = sizeof ti;

    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return -errno;
#define COPY(name) info->name = ti.tcpi_##name;
    FK_TCP_INFO_FIELDS(COPY)
#undef COPY
    return 0;
#else
    (void)fd;
    (void)info;
    return -ENOPROTOOPT;
#endif
}
