/* The connection manager's core: one epoll set, per-fd slots in a flat array, intrusive
 * doubly linked lists ordered by last activity (idle expiry) and by the touch that
 * reached max_requests, and a binary heap of slots by max_lifetime deadline (each
 * connection has its own lifetime and request limit: the caller may spread them). Times are milliseconds of
 * CLOCK_MONOTONIC (or of whatever clock the caller passes in). Not thread-safe: the
 * caller serialises calls (the Cython binding does, under the GIL).
 *
 * Three epoll-visible descriptors: `epfd` holds the connections, an eventfd (`wakefd`,
 * written when a MAX_REQUESTS is queued or a blocked wait must return) and a timerfd
 * (`timerfd`, armed to the earliest deadline). `srcfd`, the descriptor users nest in
 * their own event loop, is an epoll set holding only `epfd`: it is readable whenever a
 * poll would have something to do, and stays the same number when `epfd` is rebuilt.
 *
 * Each registration carries its slot's sequence number next to the fd (epoll_data.u64 =
 * seq << 32 | fd). epoll tracks open files, not fd numbers: a socket closed behind the
 * manager's back while a dup() keeps its file open stays registered under the old
 * sequence number. Readiness for such a registration is recognised (fk_mgr_owner) and
 * the set is rebuilt from the live slots (fk_mgr_rebuild: rare, O(n)). */
#ifndef FASTKA_MANAGER_H
#define FASTKA_MANAGER_H

#include <stdint.h>
#include <sys/epoll.h>

#include "tables.h"

#define FK_NIL (-1)
#define FK_MAX_REQUESTS ((1u << 29) - 1) /* the largest max_requests (a 29-bit count) */
#define FK_SLOT_STEP 1024                /* the slot table grows in steps of this many */
#define FK_NEVENTS 4096                  /* epoll events taken per wait (48 KiB) */
#define FK_OWN_CONTROL (-2)              /* fk_mgr_owner: the wake-up or timer fd */
#define FK_OWN_STALE (-1)                /* fk_mgr_owner: a registration no slot owns */

struct fk_slot {              /* 48 bytes */
    int32_t iprev, inext;     /* idle list: by last activity */
    int32_t lpos;             /* index in the lifetime heap; FK_NIL: no max_lifetime */
    int32_t qprev, qnext;     /* max_requests reached, awaiting poll */
    uint32_t limit;           /* this connection's max_requests; 0: unlimited */
    int64_t last, dies;       /* ms: last activity, max_lifetime deadline */
    uint32_t seq;
    uint32_t requests : 29, used : 1, queued : 1, draining : 1;
};

struct fk_list { int32_t head, tail; };

struct fk_manager {
    int epfd, srcfd, wakefd, timerfd; /* -1 once destroyed */
    int64_t armed;                    /* the timerfd's deadline (ms); INT64_MAX: none */
    struct fk_slot *slots;
    int32_t *heap;            /* fds by (dies, seq): a binary heap of nheap, room for cap */
    int32_t cap, nheap;
    uint32_t count, seq, ndraining;
    struct fk_list idle, queue;
    union fk_options opt;     /* the settings (fastka/_manager.py's C_OPTIONS) */
};

/* 0 or -errno. */
int fk_mgr_init(struct fk_manager *m, const union fk_options *opt);
/* Close the descriptors and free the slots; the struct is left empty and unusable (every
 * fd -1, no slots), so a late call fails instead of touching another manager's set. */
void fk_mgr_destroy(struct fk_manager *m);
int64_t fk_mgr_now(void);                      /* CLOCK_MONOTONIC in ms */
int fk_mgr_has(const struct fk_manager *m, int fd);
/* Track fd from `now` with its own limits: life_ms -1 for no max_lifetime, max_requests
 * 0 for unlimited (at most FK_MAX_REQUESTS). 0, -EEXIST (fd is tracked), -ENOMEM or the
 * epoll_ctl -errno. */
int fk_mgr_add(struct fk_manager *m, int fd, int64_t now, int64_t life_ms, uint32_t max_requests);
/* Forget fd (and take it out of the epoll set, ignoring errors): 0 or -ENOENT. */
int fk_mgr_remove(struct fk_manager *m, int fd);
/* Forget fd but leave its registration, for a caller about to close it: closing the
 * last descriptor of a file takes it out of every epoll set. Should the file live on
 * elsewhere, its readiness is recognised as stale (fk_mgr_owner) and the set rebuilt. */
int fk_mgr_forget(struct fk_manager *m, int fd);
/* 1 when this touch reached max_requests, 0 otherwise, -ENOENT. */
int fk_mgr_touch(struct fk_manager *m, int fd, int64_t now);
/* The earliest deadline in ms; INT64_MIN when a MAX_REQUESTS is queued; INT64_MAX none. */
int64_t fk_mgr_earliest(const struct fk_manager *m);
/* epoll_wait (call without the GIL): number of events or -errno. */
int fk_mgr_wait(struct fk_manager *m, struct epoll_event *evs, int n, int timeout_ms);
/* Make epfd (and so srcfd) readable until the next fk_mgr_owner drains it: wakes a
 * blocked fk_mgr_wait, tells a nesting event loop that a poll has work. */
void fk_mgr_wake(struct fk_manager *m);
/* Arm the timerfd for the earliest deadline (or now + drain_ms while connections drain)
 * when that is sooner than what it is armed for, or when its alarm has passed. */
void fk_mgr_arm(struct fk_manager *m, int64_t now, int64_t drain_ms);
/* Whose readiness an epoll event reports: the slot's fd, FK_OWN_CONTROL for the wake-up
 * or timer fd (drained here), FK_OWN_STALE for a registration no live slot owns. */
int fk_mgr_owner(struct fk_manager *m, uint64_t data);
/* Replace epfd by a new set holding the live slots (and the control fds): 0 or -errno. */
int fk_mgr_rebuild(struct fk_manager *m);
/* The event for a ready fd (FK_EV_NONE: nothing to report; it may then leave the epoll set as
 * draining). A READABLE restarts the idle clock. EPOLLIN alone (the fd is registered
 * with EPOLLRDHUP, so no FIN has arrived) is READABLE without a system call; the socket
 * is peeked only when EPOLLRDHUP, EPOLLHUP or EPOLLERR is set. */
int fk_mgr_classify(struct fk_manager *m, int fd, uint32_t events, int64_t now);
/* The first queued MAX_REQUESTS fd, or -1. */
int fk_mgr_queued(const struct fk_manager *m);
/* Is fd tracked and waiting for its reader (out of the epoll set, re-checked on a timer)? */
int fk_mgr_is_draining(const struct fk_manager *m, int fd);
/* Fill fds[0..n) with the draining fds; returns how many (at most n; m->ndraining of
 * them fit in n == m->ndraining). */
int fk_mgr_draining(const struct fk_manager *m, int *fds, int n);
/* The next expired connection at `now`: its fd with *event IDLE or MAX_LIFETIME, in
 * (deadline, insertion) order; -1 when none. The slot stays until fk_mgr_remove. */
int fk_mgr_next_expired(const struct fk_manager *m, int64_t now, int *event);

#endif
