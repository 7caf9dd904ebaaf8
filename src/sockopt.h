/* Apply, compare and read back a list of integer socket options: the option calls of
 * fastka/_platform.plan(), in its order, as setsockopt(2) and getsockopt(2) make them.
 *
 * Every function returns 0 (or 1/0 for a comparison) on success and -errno on failure,
 * touches no Python object, and so can run without the GIL.
 */
#ifndef FASTKA_SOCKOPT_H
#define FASTKA_SOCKOPT_H

#include <stddef.h>

/* One option: setsockopt(fd, level, name, &value, sizeof(int)). */
struct fk_sockopt {
    int level;
    int name;
    int value;
};

/* Set o[0..n) on fd in order, stopping at the first failure. 0 when all were set, else
 * -errno with *failed = the index of the option whose call failed. */
int fk_sockopt_apply(int fd, const struct fk_sockopt *o, size_t n, size_t *failed);

/* 1 when fd reads back every o[i].value (SO_KEEPALIVE compared as on/off: the BSDs read
 * back the option's flag bit), 0 when one differs, -errno when a getsockopt fails. */
int fk_sockopt_match(int fd, const struct fk_sockopt *o, size_t n);

/* Read o[0..n) of fd into o[i].value, in order. 0, or -errno with *failed = the index of
 * the option whose call failed (the values before it are read). */
int fk_sockopt_read(int fd, struct fk_sockopt *o, size_t n, size_t *failed);

#endif
