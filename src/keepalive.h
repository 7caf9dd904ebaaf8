/* TCP keepalive on one socket or many: enable, configure, read back, disable.
 *
 * Times are in seconds (user_timeout in milliseconds), exactly what the platform's
 * options take; callers validate the values against src/platform.h's limits first.
 * Every function returns 0 (or a count) on success and -errno on failure, so it can
 * run without the GIL.
 */
#ifndef FASTKA_KEEPALIVE_H
#define FASTKA_KEEPALIVE_H

#include <stddef.h>

struct fk_keepalive {
    int idle;            /* seconds, > 0 */
    int interval;        /* seconds, > 0 */
    int count;           /* probes, > 0 */
    int user_timeout_ms; /* -1: leave the kernel's value alone; 0: kernel default; > 0: ms */
};

/* Enable SO_KEEPALIVE and apply cfg. 0 on success, else -errno with *failed set to the
   name of the option whose call failed (e.g. "TCP_KEEPIDLE"). */
int fk_keepalive_apply(int fd, const struct fk_keepalive *cfg, const char **failed);

/* 1 when fd already has SO_KEEPALIVE on with exactly cfg's values, 0 when not, -errno on error. */
int fk_keepalive_matches(int fd, const struct fk_keepalive *cfg);

/* Apply cfg to n fds; errs[i] = 0 or the errno of fds[i]'s failure; returns the failure count. */
size_t fk_keepalive_apply_many(const int *fds, size_t n, const struct fk_keepalive *cfg, int *errs);

/* As fk_keepalive_apply_many, and fails[i] names the option whose call failed for fds[i]
   (NULL where fds[i] succeeded). */
size_t fk_keepalive_apply_many_opt(const int *fds, size_t n, const struct fk_keepalive *cfg,
                                   int *errs, const char **fails);

/* What the kernel has for fd. user_timeout_ms is 0 where unset (or unsupported). */
struct fk_keepalive_state {
    int enabled;
    int idle;
    int interval;
    int count;
    int user_timeout_ms;
};

/* Read fd's keepalive settings back from the kernel. 0, or -errno with *failed set. */
int fk_keepalive_get(int fd, struct fk_keepalive_state *st, const char **failed);

/* Enable SO_KEEPALIVE and set only the fields that are >= 0 in cfg (-1: leave alone;
   user_timeout_ms follows struct fk_keepalive). 0, or -errno with *failed set. */
int fk_keepalive_update(int fd, const struct fk_keepalive *cfg, const char **failed);

/* Turn SO_KEEPALIVE off. 0, or -errno with *failed set. */
int fk_keepalive_disable(int fd, const char **failed);

#endif
