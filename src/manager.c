/* The connection manager's core; see manager.h. */
#include "manager.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "liveness.h"

#define LINKS(name, p, n) \
    static void name##_unlink(struct fk_manager *m, struct fk_list *l, int32_t fd) { \
        struct fk_slot *s = &m->slots[fd]; \
        if (s->p != FK_NIL) m->slots[s->p].n = s->n; else l->head = s->n; \
        if (s->n != FK_NIL) m->slots[s->n].p = s->p; else l->tail = s->p; \
        s->p = s->n = FK_NIL; \
    } \
    static void name##_append(struct fk_manager *m, struct fk_list *l, int32_t fd) { \
        struct fk_slot *s = &m->slots[fd]; \
        s->p = l->tail; s->n = FK_NIL; \
        if (l->tail != FK_NIL) m->slots[l->tail].n = fd; else l->head = fd; \
        l->tail = fd; \
    }

LINKS(idle, iprev, inext)
LINKS(queue, qprev, qnext)

/* The lifetime heap: earliest (dies, seq) at heap[0]; each slot knows its index (lpos). */
static int heap_before(const struct fk_manager *m, int32_t a, int32_t b)
{
    const struct fk_slot *x = &m->slots[a], *y = &m->slots[b];
    return x->dies != y->dies ? x->dies < y->dies : x->seq < y->seq;
}

static void heap_put(struct fk_manager *m, int32_t i, int32_t fd)
{
    m->heap[i] = fd;
    m->slots[fd].lpos = i;
}

static void heap_up(struct fk_manager *m, int32_t i)
{
    int32_t fd = m->heap[i];
    while (i > 0) {
        int32_t parent = (i - 1) / 2;
        if (!heap_before(m, fd, m->heap[parent]))
            break;
        heap_put(m, i, m->heap[parent]);
        i = parent;
    }
    heap_put(m, i, fd);
}

static void heap_down(struct fk_manager *m, int32_t i)
{
    int32_t fd = m->heap[i];
    for (;;) {
        int32_t child = 2 * i + 1;
        if (child >= m->nheap)
            break;
        if (child + 1 < m->nheap && heap_before(m, m->heap[child + 1], m->heap[child]))
            child++;
        if (!heap_before(m, m->heap[child], fd))
            break;
        heap_put(m, i, m->heap[child]);
        i = child;
    }
    heap_put(m, i, fd);
}

static void heap_remove(struct fk_manager *m, int32_t fd)
{
    int32_t i = m->slots[fd].lpos, last = m->heap[--m->nheap];
    m->slots[fd].lpos = FK_NIL;
    if (last == fd)
        return;
    heap_put(m, i, last);
    heap_up(m, i);
    heap_down(m, m->slots[last].lpos);
}

int64_t fk_mgr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t tag(uint32_t seq, int fd)
{
    return (uint64_t)seq << 32 | (uint32_t)fd;
}

/* What a slot is registered for: readability (when watched) and the peer's FIN. A slot
 * whose FIN waits behind data someone else reads (draining) is not registered at all:
 * once our side has shut down too, epoll would report EPOLLHUP, which no interest mask
 * turns off, on every wait until the data is read. The caller re-checks it on a timer. */
static uint32_t interest(const struct fk_manager *m)
{
    return (m->opt.watch_readable ? EPOLLIN : 0) | EPOLLRDHUP;
}

/* A new epoll set holding the wake-up and timer fds (sequence number 0: no slot). */
static int control_set(const struct fk_manager *m)
{
    struct epoll_event ev = {.events = EPOLLIN};
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -errno;
    ev.data.u64 = tag(0, m->wakefd);
    if (epoll_ctl(ep, EPOLL_CTL_ADD, m->wakefd, &ev) == 0) {
        ev.data.u64 = tag(0, m->timerfd);
        if (epoll_ctl(ep, EPOLL_CTL_ADD, m->timerfd, &ev) == 0)
            return ep;
    }
    int err = errno;
    close(ep);
    return -err;
}

int fk_mgr_init(struct fk_manager *m, const union fk_options *opt)
{
    struct epoll_event ev = {.events = EPOLLIN};
    int err;
    memset(m, 0, sizeof *m);
    m->epfd = m->srcfd = m->wakefd = m->timerfd = -1;
    m->idle.head = m->idle.tail = FK_NIL;
    m->queue.head = m->queue.tail = FK_NIL;
    m->opt = *opt;
    m->armed = INT64_MAX;
    m->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->wakefd < 0)
        goto fail;
    m->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (m->timerfd < 0)
        goto fail;
    m->epfd = control_set(m);
    if (m->epfd < 0) {
        errno = -m->epfd;
        m->epfd = -1;
        goto fail;
    }
    m->srcfd = epoll_create1(EPOLL_CLOEXEC);
    if (m->srcfd < 0)
        goto fail;
    ev.data.fd = m->epfd;
    if (epoll_ctl(m->srcfd, EPOLL_CTL_ADD, m->epfd, &ev) < 0)
        goto fail;
    return 0;
fail:
    err = errno;
    fk_mgr_destroy(m);
    return -err;
}

void fk_mgr_destroy(struct fk_manager *m)
{
    int *fds[] = {&m->srcfd, &m->epfd, &m->timerfd, &m->wakefd};
    for (size_t i = 0; i < sizeof fds / sizeof *fds; i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
    free(m->slots);
    free(m->heap);
    m->slots = NULL;
    m->heap = NULL;
    m->cap = m->nheap = 0;
    m->count = m->ndraining = 0;
    m->idle.head = m->idle.tail = FK_NIL;
    m->queue.head = m->queue.tail = FK_NIL;
}

int fk_mgr_has(const struct fk_manager *m, int fd)
{
    return fd >= 0 && fd < m->cap && m->slots[fd].used;
}

static int grow(struct fk_manager *m, int fd)
{
    /* the next multiple of FK_SLOT_STEP above fd: no doubling, little slack */
    int32_t cap = fd > INT32_MAX - FK_SLOT_STEP ? INT32_MAX : (fd / FK_SLOT_STEP + 1) * FK_SLOT_STEP;
    struct fk_slot *s;
    int32_t *h = realloc(m->heap, (size_t)cap * sizeof *h);
    if (!h)
        return -ENOMEM;
    m->heap = h;
    s = realloc(m->slots, (size_t)cap * sizeof *s);
    if (!s)
        return -ENOMEM;
    memset(s + m->cap, 0, (size_t)(cap - m->cap) * sizeof *s);
    m->slots = s;
    m->cap = cap;
    return 0;
}

int fk_mgr_add(struct fk_manager *m, int fd, int64_t now, int64_t life_ms, uint32_t max_requests)
{
    struct epoll_event ev;
    struct fk_slot *s;
    uint32_t seq;
    if (m->epfd < 0)
        return -EBADF;
    if (fd >= m->cap && grow(m, fd) < 0)
        return -ENOMEM;
    s = &m->slots[fd];
    if (s->used)
        return -EEXIST;
    seq = m->seq + 1 ? m->seq + 1 : 1; /* 0 tags the control fds */
    ev.events = interest(m);
    ev.data.u64 = tag(seq, fd);
    /* EEXIST: this very file is still registered under fd, from a slot dropped without
     * EPOLL_CTL_DEL (fk_mgr_forget) whose close() left the file open (a makefile() of
     * the socket, say). No live slot owns it, so it is taken over. */
    if (epoll_ctl(m->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 && (errno != EEXIST || epoll_ctl(m->epfd, EPOLL_CTL_MOD, fd, &ev) < 0))
        return -errno;
    m->seq = seq;
    memset(s, 0, sizeof *s);
    s->used = 1;
    s->last = now;
    s->seq = seq;
    s->limit = max_requests;
    s->qprev = s->qnext = s->lpos = FK_NIL;
    idle_append(m, &m->idle, fd);
    if (life_ms >= 0) {
        s->dies = now + life_ms;
        m->nheap++;
        heap_put(m, m->nheap - 1, fd);
        heap_up(m, m->nheap - 1);
    }
    m->count++;
    return 0;
}

int fk_mgr_forget(struct fk_manager *m, int fd)
{
    struct fk_slot *s;
    if (!fk_mgr_has(m, fd))
        return -ENOENT;
    s = &m->slots[fd];
    idle_unlink(m, &m->idle, fd);
    if (s->lpos != FK_NIL)
        heap_remove(m, fd);
    if (s->queued)
        queue_unlink(m, &m->queue, fd);
    if (s->draining)
        m->ndraining--;
    s->used = s->queued = s->draining = 0;
    m->count--;
    return 0;
}

int fk_mgr_remove(struct fk_manager *m, int fd)
{
    int draining = fk_mgr_has(m, fd) && m->slots[fd].draining; /* not registered */
    int r = fk_mgr_forget(m, fd);
    /* ENOENT/EBADF when the fd was closed (and maybe reused) behind our back: fine. */
    if (r == 0 && !draining)
        epoll_ctl(m->epfd, EPOLL_CTL_DEL, fd, NULL);
    return r;
}

int fk_mgr_touch(struct fk_manager *m, int fd, int64_t now)
{
    struct fk_slot *s;
    if (!fk_mgr_has(m, fd))
        return -ENOENT;
    s = &m->slots[fd];
    s->last = now;
    idle_unlink(m, &m->idle, fd);
    idle_append(m, &m->idle, fd);
    if (s->requests < FK_MAX_REQUESTS)
        s->requests++;
    if (s->limit && s->requests >= s->limit && !s->queued) {
        s->queued = 1;
        queue_append(m, &m->queue, fd);
        return 1;
    }
    return 0;
}

int64_t fk_mgr_earliest(const struct fk_manager *m)
{
    int64_t best = INT64_MAX;
    if (m->queue.head != FK_NIL)
        return INT64_MIN;
    if (m->opt.idle_ms >= 0 && m->idle.head != FK_NIL)
        best = m->slots[m->idle.head].last + m->opt.idle_ms;
    if (m->nheap && m->slots[m->heap[0]].dies < best)
        best = m->slots[m->heap[0]].dies;
    return best;
}

int fk_mgr_wait(struct fk_manager *m, struct epoll_event *evs, int n, int timeout_ms)
{
    int r = epoll_wait(m->epfd, evs, n, timeout_ms);
    return r < 0 ? -errno : r;
}

void fk_mgr_wake(struct fk_manager *m)
{
    uint64_t one = 1;
    ssize_t r = write(m->wakefd, &one, sizeof one); /* EAGAIN: a wake-up is pending */
    (void)r;
}

void fk_mgr_arm(struct fk_manager *m, int64_t now, int64_t drain_ms)
{
    int64_t at = fk_mgr_earliest(m);
    struct itimerspec its = {{0, 0}, {0, 0}};
    if (at == INT64_MIN) {
        fk_mgr_wake(m);
        return;
    }
    if (m->ndraining && now + drain_ms < at)
        at = now + drain_ms;
    if (at == INT64_MAX || m->timerfd < 0 || (at >= m->armed && m->armed > now))
        return; /* none, or an alarm at or before it is pending (an early alarm is harmless) */
    if (at <= now) {
        its.it_value.tv_nsec = 1; /* due already: readable at once */
    } else {
        its.it_value.tv_sec = (at - now) / 1000;
        its.it_value.tv_nsec = (at - now) % 1000 * 1000000;
    }
    if (timerfd_settime(m->timerfd, 0, &its, NULL) == 0)
        m->armed = at;
}

int fk_mgr_owner(struct fk_manager *m, uint64_t data)
{
    int fd = (int)(uint32_t)data;
    uint32_t seq = (uint32_t)(data >> 32);
    uint64_t v;
    if (seq == 0 && (fd == m->wakefd || fd == m->timerfd)) {
        ssize_t r = read(fd, &v, sizeof v); /* EAGAIN: drained already */
        (void)r;
        if (fd == m->timerfd)
            m->armed = INT64_MAX;
        return FK_OWN_CONTROL;
    }
    if (!fk_mgr_has(m, fd) || m->slots[fd].seq != seq)
        return FK_OWN_STALE;
    return fd;
}

int fk_mgr_rebuild(struct fk_manager *m)
{
    struct epoll_event ev = {.events = EPOLLIN};
    int ep, err;
    if (m->epfd < 0)
        return -EBADF;
    ep = control_set(m);
    if (ep < 0)
        return ep;
    for (int32_t fd = 0; fd < m->cap; fd++) {
        const struct fk_slot *s = &m->slots[fd];
        struct epoll_event sev;
        if (!s->used || s->draining)
            continue;
        sev.events = interest(m);
        sev.data.u64 = tag(s->seq, fd);
        /* EBADF/EPERM: closed or replaced behind our back; its slot is found stale later */
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &sev);
    }
    ev.data.fd = ep;
    if (epoll_ctl(m->srcfd, EPOLL_CTL_ADD, ep, &ev) < 0) {
        err = errno;
        close(ep);
        return -err;
    }
    epoll_ctl(m->srcfd, EPOLL_CTL_DEL, m->epfd, NULL);
    close(m->epfd);
    m->epfd = ep;
    return 0;
}

int fk_mgr_classify(struct fk_manager *m, int fd, uint32_t events, int64_t now)
{
    struct fk_slot *s = &m->slots[fd];
    int p;
    if (m->opt.watch_readable && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == EPOLLIN) {
        s->last = now;
        idle_unlink(m, &m->idle, fd);
        idle_append(m, &m->idle, fd);
        return FK_EV_READABLE;
    }
    if (events & (EPOLLERR | EPOLLHUP)) {
        int err = fk_pending_error(fd);
        if (err)
            return fk_error_event(err);
    }
    p = fk_peek(fd);
    if (p < 0)
        return fk_error_event(-p);
    if (p == FK_PEEK_EOF)
        return FK_EV_PEER_CLOSED;
    if (p == FK_PEEK_DATA) {
        if (m->opt.watch_readable) {
            s->last = now;
            idle_unlink(m, &m->idle, fd);
            idle_append(m, &m->idle, fd);
            return FK_EV_READABLE;
        }
        /* A FIN behind data someone else reads: wait for the reads, polled by the caller. */
        if (events & (EPOLLRDHUP | EPOLLHUP) && !s->draining) {
            s->draining = 1;
            m->ndraining++;
            epoll_ctl(m->epfd, EPOLL_CTL_DEL, fd, NULL);
        }
        return FK_EV_NONE;
    }
    if (events & (EPOLLERR | EPOLLHUP))
        return events & EPOLLERR ? FK_EV_ERROR : FK_EV_PEER_CLOSED;
    return FK_EV_NONE;
}

int fk_mgr_queued(const struct fk_manager *m)
{
    return m->queue.head;
}

int fk_mgr_is_draining(const struct fk_manager *m, int fd)
{
    return fk_mgr_has(m, fd) && m->slots[fd].draining;
}

int fk_mgr_draining(const struct fk_manager *m, int *fds, int n)
{
    int k = 0;
    for (int32_t fd = 0; fd < m->cap && k < n && (uint32_t)k < m->ndraining; fd++)
        if (m->slots[fd].used && m->slots[fd].draining)
            fds[k++] = fd;
    return k;
}

static int before(int64_t d1, uint32_t q1, int k1, int64_t d2, uint32_t q2, int k2)
{
    if (d1 != d2)
        return d1 < d2;
    if (q1 != q2)
        return q1 < q2;
    return k1 < k2;
}

int fk_mgr_next_expired(const struct fk_manager *m, int64_t now, int *event)
{
    int32_t best = FK_NIL, fd;
    int64_t bd = 0;
    int bk = 0;
    if (m->nheap && m->slots[m->heap[0]].dies <= now) {
        best = m->heap[0];
        bd = m->slots[best].dies;
    }
    if (m->opt.idle_ms >= 0) {
        /* the first idle-expired connection whose lifetime is not also over */
        for (fd = m->idle.head; fd != FK_NIL; fd = m->slots[fd].inext) {
            const struct fk_slot *s = &m->slots[fd];
            if (s->last + m->opt.idle_ms > now)
                break;
            if (s->lpos != FK_NIL && s->dies <= now)
                continue;
            if (best == FK_NIL || before(s->last + m->opt.idle_ms, s->seq, 1, bd, m->slots[best].seq, bk)) {
                best = fd;
                bk = 1;
            }
            break;
        }
    }
    if (best == FK_NIL)
        return -1;
    *event = bk ? FK_EV_IDLE : FK_EV_MAX_LIFETIME;
    return best;
}
