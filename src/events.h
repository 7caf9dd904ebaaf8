/* Event codes reported for a connection: the C side's one table. fastka.Event (the
 * Python side, fastka/_types.py) has the same names and values; the compiled manager
 * exports this table as EVENT_CODES (built from fk_event_names) and a test compares the
 * two. A new event is one FK_EVENT line here and one member there. */
#ifndef FASTKA_EVENTS_H
#define FASTKA_EVENTS_H

#define FK_EVENTS(FK_EVENT)    \
    FK_EVENT(READABLE, 1)      \
    FK_EVENT(IDLE, 2)          \
    FK_EVENT(PEER_CLOSED, 3)   \
    FK_EVENT(RESET, 4)         \
    FK_EVENT(TIMED_OUT, 5)     \
    FK_EVENT(MAX_REQUESTS, 6)  \
    FK_EVENT(MAX_LIFETIME, 7)  \
    FK_EVENT(ERROR, 8)

#define FK_EV_ENUM(name, value) FK_EV_##name = value,
enum fk_event {
    FK_EV_NONE = 0, /* nothing to report */
    FK_EVENTS(FK_EV_ENUM)
};
#undef FK_EV_ENUM

/* Each event's name at its code (NULL at FK_EV_NONE and any gap); FK_EV_LIMIT entries. */
#define FK_EV_COUNT(name, value) + 1
enum { FK_EV_LIMIT = 1 FK_EVENTS(FK_EV_COUNT) };
#undef FK_EV_COUNT
#define FK_EV_NAME(name, value) [value] = #name,
static const char *const fk_event_names[FK_EV_LIMIT] = {FK_EVENTS(FK_EV_NAME)};
#undef FK_EV_NAME

#endif
