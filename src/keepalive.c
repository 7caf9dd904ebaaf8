/* TCP keepalive through setsockopt(2) / getsockopt(2); see keepalive.h and platform.h.
 *
 * The success path of fk_keepalive_apply is exactly the option calls, in the order of
 * fastka/_platform.plan: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT and
 * TCP_USER_TIMEOUT (when asked).
 */
#include "keepalive.h"
#include "platform.h"

#include <errno.h>

#if defined(_WIN32)
#define FK_SOCK(fd) ((SOCKET)(unsigned int)(fd))
#define FK_ERRNO() WSAGetLastError()
#else
#define FK_SOCK(fd) (fd)
#define FK_ERRNO() errno
#endif

static int set_int(int fd, int level, int opt, int value)
{
    if (setsockopt(FK_SOCK(fd), level, opt, (const char *)&value, sizeof value) != 0)
        return -FK_ERRNO();
    return 0;
}

static int get_int(int fd, int level, int opt, int *value)
{
    socklen_t len = sizeof *value;

    *value = 0;
    if (getsockopt(FK_SOCK(fd), level, opt, (char *)value, &len) != 0)
        return -FK_ERRNO();
    return 0;
}

/* One option call; on failure record its name and return -errno from the caller. */
#define TRY(call, name)                  \
    do {                                 \
        int rc_ = (call);                \
        if (rc_ < 0) {                   \
            *failed = (name);            \
            return rc_;                  \
        }                                \
    } while (0)

#ifdef FK_TCP_USER_TIMEOUT
/* fastka's milliseconds in the platform's unit (whole seconds round up). */
static int user_timeout_value(int ms)
{
#if FK_USER_TIMEOUT_UNIT == FK_UNIT_S
    return ms / 1000 + (ms % 1000 != 0);
#else
    return ms;
#endif
}

static int user_timeout_ms(int value)
{
#if FK_USER_TIMEOUT_UNIT == FK_UNIT_S
    return value > INT_MAX / 1000 ? INT_MAX : value * 1000;
#else
    return value;
#endif
}
#endif

static int set_user_timeout(int fd, int ms, const char **failed)
{
    if (ms < 0)
        return 0;
#ifdef FK_TCP_USER_TIMEOUT
    TRY(set_int(fd, IPPROTO_TCP, FK_TCP_USER_TIMEOUT, user_timeout_value(ms)), FK_TCP_USER_TIMEOUT_NAME);
    return 0;
#else
    /* KeepaliveConfig refuses user_timeout here; only 0 (the default) reaches the core. */
    (void)fd;
    if (ms == 0)
        return 0;
    *failed = "user_timeout";
    return -ENOPROTOOPT;
#endif
}

#if defined(_WIN32)
/* Windows before 10 1709 has no per-option idle/interval: SIO_KEEPALIVE_VALS sets both
 * at once (milliseconds) and turns keepalive on. Windows 10 1703+ has TCP_KEEPCNT;
 * before that the count is fixed at 10, so on that path TCP_KEEPCNT is set only for
 * another count, and fails there. */
static int win_per_option = -1; /* -1 unknown, 0 no, 1 yes: decided by the first call */

static int win_unsupported(int rc)
{
    return rc == -WSAENOPROTOOPT || rc == -WSAEINVAL;
}

static int win_keepalive_vals(int fd, int idle, int interval)
{
    struct tcp_keepalive vals;
    DWORD out = 0;

    vals.onoff = 1;
    vals.keepalivetime = (ULONG)idle * 1000u;
    vals.keepaliveinterval = (ULONG)interval * 1000u;
    if (WSAIoctl(FK_SOCK(fd), SIO_KEEPALIVE_VALS, &vals, sizeof vals, NULL, 0, &out, NULL, NULL) != 0)
        return -FK_ERRNO();
    return 0;
}

static int win_count(int fd, int count, const char **failed)
{
    if (count < 0 || (win_per_option == 0 && count == FK_WIN_LEGACY_COUNT))
        return 0;
    /* Before 1703 this fails: an error, not a count silently ignored. */
    TRY(set_int(fd, IPPROTO_TCP, FK_TCP_KEEPCNT, count), FK_TCP_KEEPCNT_NAME);
    return 0;
}

/* idle/interval/count < 0: leave alone (per-option path); the legacy path needs both
 * idle and interval, which the Python layer fills in before calling. */
static int set_fields(int fd, const struct fk_keepalive *cfg, const char **failed)
{
    int rc;

    if (win_per_option != 0 && cfg->idle >= 0) {
        rc = set_int(fd, IPPROTO_TCP, FK_TCP_KEEPIDLE, cfg->idle);
        if (rc < 0 && win_unsupported(rc) && win_per_option == -1)
            win_per_option = 0;
        else {
            TRY(rc, FK_TCP_KEEPIDLE_NAME);
            win_per_option = 1;
        }
    }
    if (win_per_option == 0) {
        if (cfg->idle < 0 || cfg->interval < 0) {
            *failed = "SIO_KEEPALIVE_VALS";
            return -WSAEINVAL;
        }
        TRY(win_keepalive_vals(fd, cfg->idle, cfg->interval), "SIO_KEEPALIVE_VALS");
    } else if (cfg->interval >= 0)
        TRY(set_int(fd, IPPROTO_TCP, FK_TCP_KEEPINTVL, cfg->interval), FK_TCP_KEEPINTVL_NAME);
    if ((rc = win_count(fd, cfg->count, failed)) < 0)
        return rc;
    return set_user_timeout(fd, cfg->user_timeout_ms, failed);
}
#else
/* Set the fields that are >= 0 (user_timeout_ms follows struct fk_keepalive). */
static int set_fields(int fd, const struct fk_keepalive *cfg, const char **failed)
{
    if (cfg->idle >= 0)
        TRY(set_int(fd, IPPROTO_TCP, FK_TCP_KEEPIDLE, cfg->idle), FK_TCP_KEEPIDLE_NAME);
    if (cfg->interval >= 0)
        TRY(set_int(fd, IPPROTO_TCP, FK_TCP_KEEPINTVL, cfg->interval), FK_TCP_KEEPINTVL_NAME);
    if (cfg->count >= 0)
        TRY(set_int(fd, IPPROTO_TCP, FK_TCP_KEEPCNT, cfg->count), FK_TCP_KEEPCNT_NAME);
    return set_user_timeout(fd, cfg->user_timeout_ms, failed);
}
#endif

int fk_keepalive_apply(int fd, const struct fk_keepalive *cfg, const char **failed)
{
    TRY(set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1), "SO_KEEPALIVE");
    return set_fields(fd, cfg, failed);
}

int fk_keepalive_update(int fd, const struct fk_keepalive *cfg, const char **failed)
{
    return fk_keepalive_apply(fd, cfg, failed);
}

int fk_keepalive_disable(int fd, const char **failed)
{
    TRY(set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 0), "SO_KEEPALIVE");
    return 0;
}

int fk_keepalive_get(int fd, struct fk_keepalive_state *st, const char **failed)
{
    TRY(get_int(fd, SOL_SOCKET, SO_KEEPALIVE, &st->enabled), "SO_KEEPALIVE");
    st->enabled = st->enabled != 0;
    TRY(get_int(fd, IPPROTO_TCP, FK_TCP_KEEPIDLE, &st->idle), FK_TCP_KEEPIDLE_NAME);
    TRY(get_int(fd, IPPROTO_TCP, FK_TCP_KEEPINTVL, &st->interval), FK_TCP_KEEPINTVL_NAME);
    TRY(get_int(fd, IPPROTO_TCP, FK_TCP_KEEPCNT, &st->count), FK_TCP_KEEPCNT_NAME);
#ifdef FK_TCP_USER_TIMEOUT
    TRY(get_int(fd, IPPROTO_TCP, FK_TCP_USER_TIMEOUT, &st->user_timeout_ms), FK_TCP_USER_TIMEOUT_NAME);
    st->user_timeout_ms = user_timeout_ms(st->user_timeout_ms);
#else
    st->user_timeout_ms = 0;
#endif
    return 0;
}

int fk_keepalive_matches(int fd, const struct fk_keepalive *cfg)
{
    struct fk_keepalive_state st;
    const char *failed;
    int rc = fk_keepalive_get(fd, &st, &failed);

    if (rc < 0)
        return rc;
    if (!st.enabled || st.idle != cfg->idle || st.interval != cfg->interval || st.count != cfg->count)
        return 0;
#ifdef FK_TCP_USER_TIMEOUT
    if (cfg->user_timeout_ms >= 0 && st.user_timeout_ms != user_timeout_ms(user_timeout_value(cfg->user_timeout_ms)))
        return 0;
#endif
    return 1;
}

size_t fk_keepalive_apply_many_opt(const int *fds, size_t n, const struct fk_keepalive *cfg,
                                   int *errs, const char **fails)
{
    size_t i, nfail = 0;

    for (i = 0; i < n; i++) {
        const char *failed = NULL;
        int rc = fk_keepalive_apply(fds[i], cfg, &failed);

        errs[i] = -rc;
        if (fails)
            fails[i] = rc < 0 ? failed : NULL;
        nfail += rc < 0;
    }
    return nfail;
}

size_t fk_keepalive_apply_many(const int *fds, size_t n, const struct fk_keepalive *cfg, int *errs)
{
    return fk_keepalive_apply_many_opt(fds, n, cfg, errs, NULL);
}
