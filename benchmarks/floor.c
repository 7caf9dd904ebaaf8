/* The system-call floor of fastka's benchmarks: the bare calls each scenario makes, in a
 * plain C loop, with nothing else around them.
 *
 * Built at benchmark time as a shared library (benchmarks/harness.py: cc -O2 -shared -fPIC)
 * and called through ctypes on the very sockets the scenario uses. One ctypes call
 * covers the whole batch (about 1 us of overhead against the milliseconds of a batch of
 * 1,000+ sockets); the single-socket scenarios pass the same fd repeated, so that one
 * call also covers many repetitions. Every function returns the number of calls that
 * failed, so the benchmark can check the floor did the same work as fastka.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>

/* set_keepalive: TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, SO_KEEPALIVE on each fd. */
int floor_set_keepalive(const int *fds, int n, int idle, int interval, int count)
{
    int i, bad = 0, one = 1;

    for (i = 0; i < n; i++) {
        bad += setsockopt(fds[i], IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0;
        bad += setsockopt(fds[i], IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval) != 0;
        bad += setsockopt(fds[i], IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count) != 0;
        bad += setsockopt(fds[i], SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0;
    }
    return bad;
}

/* get_keepalive: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT. */
int floor_get_keepalive(const int *fds, int n)
{
    static const int opts[5][2] = {
        {SOL_SOCKET, SO_KEEPALIVE}, {IPPROTO_TCP, TCP_KEEPIDLE}, {IPPROTO_TCP, TCP_KEEPINTVL},
        {IPPROTO_TCP, TCP_KEEPCNT}, {IPPROTO_TCP, TCP_USER_TIMEOUT},
    };
    int i, k, bad = 0, value;
    socklen_t len;

    for (i = 0; i < n; i++)
        for (k = 0; k < 5; k++) {
            len = sizeof value;
            bad += getsockopt(fds[i], opts[k][0], opts[k][1], &value, &len) != 0;
        }
    return bad;
}

/* tcp_info: one getsockopt(TCP_INFO) per fd. */
int floor_tcp_info(const int *fds, int n)
{
    int i, bad = 0;
    struct tcp_info info;
    socklen_t len;

    for (i = 0; i < n; i++) {
        len = sizeof info;
        bad += getsockopt(fds[i], IPPROTO_TCP, TCP_INFO, &info, &len) != 0;
    }
    return bad;
}

/* find_dead: one zero-timeout poll(2) over every fd for POLLRDHUP; returns the number of
 * fds with POLLRDHUP/POLLHUP/POLLERR (the dead ones), or -1 when poll fails. */
int floor_find_dead(const int *fds, int n)
{
    struct pollfd *p = malloc((n ? n : 1) * sizeof *p);
    int i, dead = 0;

    if (!p)
        return -1;
    for (i = 0; i < n; i++) {
        p[i].fd = fds[i];
        p[i].events = POLLRDHUP;
        p[i].revents = 0;
    }
    if (poll(p, (nfds_t)n, 0) < 0)
        dead = -1;
    else
        for (i = 0; i < n; i++)
            dead += (p[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
    free(p);
    return dead;
}
