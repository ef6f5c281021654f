/*
 * Hub events for a Ruby thread: one record per stream closed, reset sent or
 * Redis error, for ActiveSupport::Notifications (stream_close.spillway,
 * reset.spillway, redis_error.spillway). Unlike the log, which sums a kind
 * up, every event is kept, in order, up to a bound.
 *
 * One producer (the reactor), one consumer (a Ruby thread, without the GVL).
 * A push never blocks and never allocates: the ring is allocated once; when
 * it is full the oldest event is dropped and counted. While nobody listens
 * (spillway_events_enable(false), the start) a push costs one relaxed
 * atomic load.
 */
#ifndef SPILLWAY_EVENTS_H
#define SPILLWAY_EVENTS_H

#include <pthread.h>
#include <stdatomic.h>

#include "common.h"

typedef enum spillway_event_kind {
    SW_EV_STREAM_CLOSE, /* id: the stream; reason: why; detail: its channels */
    SW_EV_RESET,        /* id: the stream; reason: why; detail: the channels reset */
    SW_EV_REDIS_ERROR,  /* reason: the log kind (redis_link, ...); detail: the message */
    SW_EV_KINDS
} spillway_event_kind;

#define SPILLWAY_EVENT_TEXT 96
#define SPILLWAY_EVENT_DETAIL 200

typedef struct spillway_event {
    spillway_event_kind kind;
    uint64_t id;
    uint64_t wall_ms;                    /* when, CLOCK_REALTIME */
    char reason[SPILLWAY_EVENT_TEXT];    /* NUL-terminated, cut to fit */
    char detail[SPILLWAY_EVENT_DETAIL];  /* NUL-terminated, cut to fit */
} spillway_event;

typedef struct spillway_events {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    spillway_event *ring;
    uint32_t cap, head, len;
    uint64_t dropped;   /* events pushed out by newer ones, since the start */
    atomic_bool enabled;
    bool closed;
} spillway_events;

/* 0, or -ENOMEM / a pthread error. cap >= 1. */
int spillway_events_init(spillway_events *e, uint32_t cap);
void spillway_events_destroy(spillway_events *e);

/* Events are recorded only while enabled (any thread). */
void spillway_events_enable(spillway_events *e, bool on);
bool spillway_events_enabled(spillway_events *e);

/* Records one event (the reactor). reason and detail may be NULL. */
void spillway_events_push(spillway_events *e, spillway_event_kind kind, uint64_t id, const char *reason,
                          const char *detail);

/* Waits up to timeout_ms for events and takes at most max, oldest first.
 * Returns how many (0 on timeout), -EINTR when *interrupted was set (under
 * the lock, by spillway_events_interrupt), -EPIPE once closed and empty.
 * *dropped (may be NULL) gets the drop count so far. Blocking: call it
 * without the GVL. */
int spillway_events_wait(spillway_events *e, spillway_event *out, size_t max, uint32_t timeout_ms,
                         bool *interrupted, uint64_t *dropped);
/* Sets *interrupted and wakes the wait that uses it (any thread). */
void spillway_events_interrupt(spillway_events *e, bool *interrupted);
/* No more events: waits return what is left, then -EPIPE. */
void spillway_events_close(spillway_events *e);

#endif
