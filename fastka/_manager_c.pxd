# Declarations of the manager C core (src/manager.h, tables.h), shared with fastka/_manager_c.pyx.
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        int fd
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    enum:
        EPOLLRDHUP
        EPOLLHUP

cdef extern from "<sys/socket.h>" nogil:
    enum:
        SOL_SOCKET
        SO_TYPE
        SOCK_STREAM
    ctypedef unsigned int socklen_t
    int getsockopt(int fd, int level, int name, void *value, socklen_t *length)

cdef extern from "tables.h" nogil:  # written by setup.py: see fastka/_types.py, fastka/_manager.py
    enum fk_event:  # the codes the binding itself names
        FK_EV_NONE
        FK_EV_READABLE
    enum:
        FK_NOPTIONS
    union fk_options:
        int64_t at[FK_NOPTIONS]

cdef extern from "manager.h" nogil:
    enum:
        FK_MAX_REQUESTS
        FK_SLOT_STEP
        FK_NEVENTS
        FK_OWN_CONTROL
        FK_OWN_STALE

    struct fk_manager:
        int epfd
        int srcfd
        uint32_t count
        uint32_t ndraining

    int fk_mgr_init(fk_manager *m, const fk_options *opt)
    void fk_mgr_destroy(fk_manager *m)
    int64_t fk_mgr_now()
    int fk_mgr_has(const fk_manager *m, int fd)
    int fk_mgr_add(fk_manager *m, int fd, int64_t now, int64_t life_ms, uint32_t max_requests)
    int fk_mgr_remove(fk_manager *m, int fd)
    int fk_mgr_forget(fk_manager *m, int fd)
    int fk_mgr_touch(fk_manager *m, int fd, int64_t now)
    int64_t fk_mgr_earliest(const fk_manager *m)
    int fk_mgr_wait(fk_manager *m, epoll_event *evs, int n, int timeout_ms)
    void fk_mgr_wake(fk_manager *m)
    void fk_mgr_arm(fk_manager *m, int64_t now, int64_t drain_ms)
    int fk_mgr_owner(fk_manager *m, uint64_t data)
    int fk_mgr_rebuild(fk_manager *m)
    int fk_mgr_classify(fk_manager *m, int fd, uint32_t events, int64_t now)
    int fk_mgr_queued(const fk_manager *m)
    int fk_mgr_is_draining(const fk_manager *m, int fd)
    int fk_mgr_draining(const fk_manager *m, int *fds, int n)
    int fk_mgr_next_expired(const fk_manager *m, int64_t now, int *event)

cdef extern from "pysocket.h":
    int fk_pysocket_fd(object o)
