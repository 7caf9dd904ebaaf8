/* set_keepalive_many through io_uring; see uring.h.
 *
 * Raw system calls (io_uring_setup(2), io_uring_enter(2), mmap(2) of the rings), no
 * liburing. The ABI structures and constants are spelled out here rather than taken from
 * <linux/io_uring.h>: build hosts often have headers older than Linux 6.7, which lack the
 * socket-command fields of the SQE (include/uapi/linux/io_uring.h of 6.7+: level/optname
 * share the addr field, optlen the splice_fd_in field, optval the addr3 field).
 *
 * A batch of fds takes two io_uring_enter calls: the TCP-level options of
 * fk_keepalive_apply (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, [TCP_USER_TIMEOUT]) for
 * every fd, then SO_KEEPALIVE for the fds that took them all, so that a socket that is not
 * TCP fails before SO_KEEPALIVE changes it, as in the plain loop. Every fd with a failure
 * is then redone by the plain loop, which reports its errno and option.
 *
 * The SQEs are not linked per fd (IOSQE_IO_LINK): on Linux 6.18 a linked socket command
 * is issued from task work, with a copy of its SQE, and that made the batch 1.3x SLOWER
 * than the plain loop (2.2 vs 1.7 us per fd) instead of faster. Without links the TCP
 * options of one fd are all attempted even after one fails; the plain loop stops at the
 * first. The final state differs only for a socket that refuses one TCP keepalive option
 * and accepts a later one, which no Linux socket does for values within the limits
 * fastka validates (a socket that is not TCP refuses them all).
 */
#include "uring.h"

#if defined(__linux__)

#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Same number on every architecture (the syscall table unification of Linux 5.1). */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif

#define FK_IORING_OFF_SQ_RING 0ULL
#define FK_IORING_OFF_CQ_RING 0x8000000ULL
#define FK_IORING_OFF_SQES 0x10000000ULL
#define FK_IORING_FEAT_SINGLE_MMAP (1U << 0)
#define FK_IORING_ENTER_GETEVENTS (1U << 0)
#define FK_IORING_SETUP_SUBMIT_ALL (1U << 7)     /* 5.18 */
#define FK_IORING_SETUP_SINGLE_ISSUER (1U << 12) /* 6.0 */
#define FK_IORING_OP_URING_CMD 46           /* 5.19 */
#define FK_SOCKET_URING_OP_SETSOCKOPT 3     /* 6.7: SIOCINQ 0, SIOCOUTQ 1, GETSOCKOPT 2 */

/* One submission queue entry as a socket command reads it (64 bytes). */
struct fk_sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint32_t cmd_op;
    uint32_t pad1;
    uint32_t level;   /* union with addr */
    uint32_t optname;
    uint32_t len;
    uint32_t op_flags;
    uint64_t user_data;
    uint16_t buf_index;
    uint16_t personality;
    uint32_t optlen;  /* union with splice_fd_in */
    uint64_t optval;  /* union with addr3 */
    uint64_t pad2;
};

struct fk_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};

struct fk_sqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
    uint64_t user_addr;
};

struct fk_cqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
    uint64_t user_addr;
};

struct fk_uring_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd;
    uint32_t resv[3];
    struct fk_sqring_offsets sq_off;
    struct fk_cqring_offsets cq_off;
};

_Static_assert(sizeof(struct fk_sqe) == 64, "io_uring SQE is 64 bytes");
_Static_assert(sizeof(struct fk_cqe) == 16, "io_uring CQE is 16 bytes");
_Static_assert(sizeof(struct fk_uring_params) == 120, "io_uring_params is 120 bytes");

/* SQ entries of the ring of one call: the TCP options of 64 fds per io_uring_enter.
 * Setting up a ring costs about 35 us here (1024 entries: 55-90 us); more entries save
 * io_uring_enter calls of about 1 us each, fewer than they cost. */
#define RING_ENTRIES 256
#define MAX_TCP_OPS 4

struct ring {
    int fd;
    unsigned sq_entries, sq_mask, cq_mask;
    unsigned *sq_tail, *cq_head, *cq_tail;
    struct fk_sqe *sqes;
    struct fk_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_map_len, cq_map_len, sqes_len;
};

static int uring_setup(unsigned entries, struct fk_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static void ring_free(struct ring *r)
{
    if (!r)
        return;
    if (r->sqes)
        munmap(r->sqes, r->sqes_len);
    if (r->cq_map && r->cq_map != r->sq_map)
        munmap(r->cq_map, r->cq_map_len);
    if (r->sq_map)
        munmap(r->sq_map, r->sq_map_len);
    if (r->fd >= 0)
        close(r->fd);
    free(r);
}

/* A new ring of `entries` SQEs, or NULL with *err = errno (of io_uring_setup, mmap...). */
static struct ring *ring_new(unsigned entries, int *err)
{
    /* A ring serves one call in one thread (SINGLE_ISSUER); SUBMIT_ALL keeps submitting
     * past an SQE that fails at submission. Older kernels refuse the flags: retry without. */
    static const unsigned flag_sets[] = {
        FK_IORING_SETUP_SUBMIT_ALL | FK_IORING_SETUP_SINGLE_ISSUER,
        FK_IORING_SETUP_SUBMIT_ALL,
        0,
    };
    struct fk_uring_params p;
    struct ring *r = calloc(1, sizeof *r);
    unsigned *array;
    size_t i;

    if (!r) {
        *err = ENOMEM;
        return NULL;
    }
    r->fd = -1;
    for (i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
        memset(&p, 0, sizeof p);
        p.flags = flag_sets[i];
        r->fd = uring_setup(entries, &p); /* io_uring fds are close-on-exec */
        if (r->fd >= 0 || errno != EINVAL)
            break;
    }
    if (r->fd < 0)
        goto fail;
    r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct fk_cqe);
    if (p.features & FK_IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_map_len > r->sq_map_len)
            r->sq_map_len = r->cq_map_len;
        r->cq_map_len = r->sq_map_len;
    }
    r->sq_map = mmap(NULL, r->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                     FK_IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) {
        r->sq_map = NULL;
        goto fail;
    }
    if (p.features & FK_IORING_FEAT_SINGLE_MMAP)
        r->cq_map = r->sq_map;
    else {
        r->cq_map = mmap(NULL, r->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                         r->fd, FK_IORING_OFF_CQ_RING);
        if (r->cq_map == MAP_FAILED) {
            r->cq_map = NULL;
            goto fail;
        }
    }
    r->sqes_len = p.sq_entries * sizeof(struct fk_sqe);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   FK_IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        r->sqes = NULL;
        goto fail;
    }
    r->sq_entries = p.sq_entries;
    r->sq_mask = *(unsigned *)((char *)r->sq_map + p.sq_off.ring_mask);
    r->sq_tail = (unsigned *)((char *)r->sq_map + p.sq_off.tail);
    r->cq_mask = *(unsigned *)((char *)r->cq_map + p.cq_off.ring_mask);
    r->cq_head = (unsigned *)((char *)r->cq_map + p.cq_off.head);
    r->cq_tail = (unsigned *)((char *)r->cq_map + p.cq_off.tail);
    r->cqes = (struct fk_cqe *)((char *)r->cq_map + p.cq_off.cqes);
    /* SQ slot i always holds SQE i: SQEs are queued in ring order. */
    array = (unsigned *)((char *)r->sq_map + p.sq_off.array);
    for (i = 0; i < p.sq_entries; i++)
        array[i] = (unsigned)i;
    return r;
fail:
    *err = errno;
    ring_free(r);
    return NULL;
}

/* Queue one setsockopt(fd, level, optname, value, sizeof(int)) socket command. */
static void queue_setsockopt(struct ring *r, unsigned slot, int fd, int level, int optname,
                             const int *value, uint64_t user_data)
{
    struct fk_sqe *sqe = &r->sqes[slot & r->sq_mask];

    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = FK_IORING_OP_URING_CMD;
    sqe->fd = fd;
    sqe->cmd_op = FK_SOCKET_URING_OP_SETSOCKOPT;
    sqe->level = (uint32_t)level;
    sqe->optname = (uint32_t)optname;
    sqe->optval = (uint64_t)(uintptr_t)value;
    sqe->optlen = sizeof(int);
    sqe->user_data = user_data;
}

/* Submit every queued SQE (the SQ tail is published first). 0 or -errno. */
static int submit(struct ring *r, unsigned tail, unsigned count)
{
    __atomic_store_n(r->sq_tail, tail, __ATOMIC_RELEASE);
    while (count > 0) {
        int rc = uring_enter(r->fd, count, 0, 0);

        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (rc == 0)
            return -EIO; /* nothing consumed: the ring is not usable */
        count -= (unsigned)rc;
    }
    return 0;
}

/* ---- Detection, once per process ------------------------------------------------- */

static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static int uring_ok;
static char status[200] = "unavailable: not detected";

/* kernel.io_uring_disabled (Linux 6.6+): 0 allowed, 1 only for CAP_SYS_ADMIN or members
 * of kernel.io_uring_group, 2 never. -1 where the file does not exist. */
static int io_uring_disabled(void)
{
    int fd = open("/proc/sys/kernel/io_uring_disabled", O_RDONLY | O_CLOEXEC);
    char buf[16];
    ssize_t len;

    if (fd < 0)
        return -1;
    len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0)
        return -1;
    buf[len] = '\0';
    return atoi(buf);
}

static const char *errno_name(int err)
{
    switch (err) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENOMEM: return "ENOMEM";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case EACCES: return "EACCES";
    default: return "error";
    }
}

/* Why io_uring_setup failed, in words. */
static void setup_failed(int err)
{
    int disabled = io_uring_disabled();

    if (err == EPERM && disabled == 2)
        snprintf(status, sizeof status,
                 "unavailable: kernel.io_uring_disabled=2 (io_uring is switched off for every process)");
    else if (err == EPERM && disabled == 1)
        snprintf(status, sizeof status,
                 "unavailable: kernel.io_uring_disabled=1 and this process is neither privileged "
                 "nor in kernel.io_uring_group (EPERM)");
    else if (err == EPERM)
        snprintf(status, sizeof status,
                 "unavailable: io_uring_setup is blocked (EPERM), e.g. by a seccomp filter");
    else if (err == ENOSYS)
        snprintf(status, sizeof status,
                 "unavailable: io_uring_setup is missing (ENOSYS): a kernel without io_uring, or a "
                 "seccomp filter such as Docker's default profile");
    else
        snprintf(status, sizeof status, "unavailable: io_uring_setup failed with %s (%s)",
                 errno_name(err), strerror(err));
}

/* Run one setsockopt(TCP_KEEPIDLE) through the ring on a throwaway TCP socket and check
 * that the kernel really applied it. 0, or sets status and returns -1. */
static int probe_setsockopt(struct ring *r)
{
    const int want = 4321;
    int got = 0, res, s;
    socklen_t len = sizeof got;
    unsigned head, tail;

    s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        snprintf(status, sizeof status, "unavailable: no TCP socket for the io_uring probe (%s)",
                 strerror(errno));
        return -1;
    }
    queue_setsockopt(r, 0, s, IPPROTO_TCP, FK_TCP_KEEPIDLE, &want, 0);
    if ((res = submit(r, 1, 1)) == 0) {
        while (uring_enter(r->fd, 0, 1, FK_IORING_ENTER_GETEVENTS) < 0 && errno == EINTR)
            ;
        head = *r->cq_head;
        tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        res = head != tail ? r->cqes[head & r->cq_mask].res : -EIO;
        __atomic_store_n(r->cq_head, tail, __ATOMIC_RELEASE);
    }
    if (res == 0 && getsockopt(s, IPPROTO_TCP, FK_TCP_KEEPIDLE, &got, &len) == 0 && got != want)
        res = -EIO;
    close(s);
    if (res == 0)
        return 0;
    if (res == -EOPNOTSUPP || res == -EINVAL)
        snprintf(status, sizeof status,
                 "unavailable: the kernel lacks SOCKET_URING_OP_SETSOCKOPT (needs Linux 6.7+; the "
                 "probe got %s)", errno_name(-res));
    else
        snprintf(status, sizeof status, "unavailable: the io_uring setsockopt probe failed with %s (%s)",
                 errno_name(-res), strerror(-res));
    return -1;
}

static void detect(void)
{
    int err = 0;
    struct ring *r;

    r = ring_new(8, &err);
    if (!r) {
        setup_failed(err);
        return;
    }
    if (probe_setsockopt(r) == 0) {
        uring_ok = 1;
        snprintf(status, sizeof status, "available");
    }
    ring_free(r);
}

const char *fk_uring_status(void)
{
    pthread_once(&detect_once, detect);
    return status;
}

int fk_uring_available(void)
{
    pthread_once(&detect_once, detect);
    return uring_ok;
}

/* Submit the `count` SQEs queued past the ring's tail and reap their CQEs (each posts
 * one; user_data is the fd's index). A CQE with res < 0 marks its fd failed (errs[i] = 1).
 * 0, or -errno when the ring failed. */
static int run_batch(struct ring *r, unsigned count, int *errs)
{
    unsigned head, tail, done = 0;
    int rc = submit(r, *r->sq_tail + count, count);

    while (rc == 0) {
        head = *r->cq_head;
        tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++, done++) {
            const struct fk_cqe *cqe = &r->cqes[head & r->cq_mask];

            if (cqe->res < 0)
                errs[cqe->user_data] = 1;
        }
        __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
        if (done >= count)
            break;
        /* Socket commands complete during the submission; wait only for any that did not. */
        if (uring_enter(r->fd, 0, count - done, FK_IORING_ENTER_GETEVENTS) < 0 && errno != EINTR)
            rc = -errno;
    }
    return rc;
}

long fk_uring_apply_many(const int *fds, size_t n, const struct fk_keepalive *cfg, int *errs,
                         const char **fails)
{
    int name[MAX_TCP_OPS], value[MAX_TCP_OPS];
    static const int one = 1;
    unsigned ntcp = 0, k, per_batch, count, tail;
    size_t start, i, m, j;
    long nfail = 0;
    int err = 0, rc = 0;
    struct ring *r;

    if (!fk_uring_available())
        return -EOPNOTSUPP;
    if (n == 0)
        return 0;
    r = ring_new(RING_ENTRIES, &err);
    if (!r)
        return -err;

    /* fk_keepalive_apply's TCP-level calls on Linux, in its order. */
#define OP(nm, v) (name[ntcp] = (nm), value[ntcp] = (v), ntcp++)
    if (cfg->idle >= 0)
        OP(FK_TCP_KEEPIDLE, cfg->idle);
    if (cfg->interval >= 0)
        OP(FK_TCP_KEEPINTVL, cfg->interval);
    if (cfg->count >= 0)
        OP(FK_TCP_KEEPCNT, cfg->count);
    if (cfg->user_timeout_ms >= 0)
        OP(FK_TCP_USER_TIMEOUT, cfg->user_timeout_ms);
#undef OP

    memset(errs, 0, n * sizeof *errs);
    per_batch = ntcp ? r->sq_entries / ntcp : r->sq_entries;
    for (start = 0; rc == 0 && start < n; start += m) {
        m = n - start < per_batch ? n - start : per_batch;
        /* The TCP options of every fd of the batch, then SO_KEEPALIVE on those that took
         * them all: a socket that is not TCP fails before SO_KEEPALIVE changes it. */
        tail = *r->sq_tail;
        for (j = 0; j < m; j++)
            for (k = 0; k < ntcp; k++)
                queue_setsockopt(r, tail++, fds[start + j], IPPROTO_TCP, name[k], &value[k], start + j);
        rc = run_batch(r, (unsigned)m * ntcp, errs);
        tail = *r->sq_tail;
        for (j = 0, count = 0; rc == 0 && j < m; j++)
            if (!errs[start + j]) {
                queue_setsockopt(r, tail++, fds[start + j], SOL_SOCKET, SO_KEEPALIVE, &one, start + j);
                count++;
            }
        if (rc == 0)
            rc = run_batch(r, count, errs);
    }
    ring_free(r);
    if (rc < 0)
        return rc; /* the caller falls back to the plain loop, which sets everything
                      again (the same values: harmless), or reports where "uring" was forced */

    /* Redo each failed fd with the plain loop: it stops at the same option (the earlier
     * ones are set again to the same values) and reports the errno and option name the
     * loop reports, which io_uring does not always match (EOPNOTSUPP for a pipe, where
     * setsockopt(2) says ENOTSOCK). */
    for (i = 0; i < n; i++) {
        const char *failed = NULL;

        if (errs[i]) {
            rc = fk_keepalive_apply(fds[i], cfg, &failed);
            errs[i] = -rc;
            nfail += rc < 0;
        }
        if (fails)
            fails[i] = errs[i] ? failed : NULL;
    }
    return nfail;
}

#else /* not Linux */

#include <errno.h>

const char *fk_uring_status(void)
{
    return "unavailable: io_uring is Linux-only";
}

int fk_uring_available(void)
{
    return 0;
}

long fk_uring_apply_many(const int *fds, size_t n, const struct fk_keepalive *cfg, int *errs,
                         const char **fails)
{
    (void)fds, (void)n, (void)cfg, (void)errs, (void)fails;
    return -ENOSYS;
}

#endif
