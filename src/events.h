/* Event codes reported for a connection; fastka.Event has the same names and values
 * (the compiled manager exports them as EVENT_CODES; a test compares the two). */
#ifndef FASTKA_EVENTS_H
#define FASTKA_EVENTS_H

enum fk_event {
    FK_EV_NONE = 0,
    FK_EV_READABLE = 1,
    FK_EV_IDLE = 2,
    FK_EV_PEER_CLOSED = 3,
    FK_EV_RESET = 4,
    FK_EV_TIMED_OUT = 5,
    FK_EV_MAX_REQUESTS = 6,
    FK_EV_MAX_LIFETIME = 7,
    FK_EV_ERROR = 8,
};

#endif
