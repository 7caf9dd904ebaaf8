/* Integer socket options through setsockopt(2) / getsockopt(2); see sockopt.h. */
#include "sockopt.h"
#include "platform.h"

int fk_sockopt_apply(int fd, const struct fk_sockopt *o, size_t n, size_t *failed)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (setsockopt(FK_SOCK(fd), o[i].level, o[i].name, (const char *)&o[i].value, sizeof o[i].value) != 0) {
            *failed = i;
            return -FK_ERRNO();
        }
    }
    return 0;
}

int fk_sockopt_read(int fd, struct fk_sockopt *o, size_t n, size_t *failed)
{
    size_t i;

    for (i = 0; i < n; i++) {
        socklen_t len = sizeof o[i].value;

        o[i].value = 0;
        if (getsockopt(FK_SOCK(fd), o[i].level, o[i].name, (char *)&o[i].value, &len) != 0) {
            *failed = i;
            return -FK_ERRNO();
        }
    }
    return 0;
}

int fk_sockopt_match(int fd, const struct fk_sockopt *o, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        struct fk_sockopt got = o[i];
        size_t failed;
        int rc = fk_sockopt_read(fd, &got, 1, &failed);

        if (rc < 0)
            return rc;
        if (o[i].level == SOL_SOCKET && o[i].name == SO_KEEPALIVE ? (got.value != 0) != (o[i].value != 0)
                                                                  : got.value != o[i].value)
            return 0;
    }
    return 1;
}
