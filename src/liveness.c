#include "liveness.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

#ifndef POLLRDHUP
#define POLLRDHUP 0x2000
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

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

int fk_peek(int fd)
{
    char byte;
    ssize_t n;

    do
        n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        return FK_PEEK_DATA;
    if (n == 0)
        return FK_PEEK_EOF;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return FK_PEEK_EMPTY;
    return -errno;
}

int fk_liveness(int fd, int *err)
{
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
    int n;

    *err = 0;
    do
        n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (p.revents & POLLNVAL)
        return -EBADF;
    if (p.revents & (POLLERR | POLLHUP)) {
        *err = fk_pending_error(fd);
        if (*err)
            return fk_error_event(*err);
        return FK_EV_PEER_CLOSED;
    }
    if (p.revents & POLLRDHUP)
        return FK_EV_PEER_CLOSED;
    return FK_EV_NONE;
}
