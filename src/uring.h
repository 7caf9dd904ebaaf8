/* set_keepalive_many through io_uring: many setsockopt calls per system call.
 *
 * Linux 6.7+ runs setsockopt(2) as an io_uring socket command (IORING_OP_URING_CMD with
 * cmd_op SOCKET_URING_OP_SETSOCKOPT). Each fd gets the option calls of
 * fk_keepalive_apply, in the same order, linked (IOSQE_IO_LINK) so that a failing
 * option cancels the rest of that fd's options exactly as the plain loop stops there.
 * Whether io_uring can be used is decided once per process (fk_uring_status); elsewhere
 * (other systems, older kernels, io_uring disabled or blocked) callers run the plain loop.
 */
#ifndef FASTKA_URING_H
#define FASTKA_URING_H

#include <stddef.h>

#include "keepalive.h"

/* "available", or "unavailable: <reason>" (e.g. kernel.io_uring_disabled=2, ENOSYS or
 * EPERM from a seccomp filter, a kernel without SOCKET_URING_OP_SETSOCKOPT). Detected on
 * the first call (thread-safe), then cached for the life of the process. */
const char *fk_uring_status(void);

/* 1 when fk_uring_status() is "available", else 0. */
int fk_uring_available(void);

/* As fk_keepalive_apply_many_opt (errs[i] = 0 or errno, fails[i] = the failing option's
 * name or NULL; fails may be NULL), through io_uring: returns the failure count, or
 * -errno when io_uring cannot be used for this call (then nothing was reported and the
 * caller runs the plain loop, which gives the same results). Every fd whose options
 * failed is redone by fk_keepalive_apply, so errs/fails are exactly the plain loop's.
 * Each call sets up its own ring (about 35 us) and closes it: safe from several threads
 * at once and across fork(), and no file descriptor stays open between calls. */
long fk_uring_apply_many(const int *fds, size_t n, const struct fk_keepalive *cfg, int *errs,
                         const char **fails);

#endif
