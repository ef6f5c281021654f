/*
 * The hub's log (log.c): errors and resets, recorded by the reactor (or any
 * thread) into a fixed table, one slot per kind, and taken by the Ruby
 * thread that writes Spillway.logger (spillway_hub_log_wait in hub.h). A
 * flood costs no memory: a kind's first occurrence is due at once, its
 * repeats within log_interval become one summary (docs/design.md, threads).
 */
#ifndef SPILLWAY_LOG_H
#define SPILLWAY_LOG_H

#include <stdint.h>

#include "hub.h"

/* What an entry of the hub's log is about: the rate limit is per kind, and
 * the kind decides the level (the names and levels are in log.c). */
typedef enum spillway_log_kind {
    SW_LOG_ERROR = 0,      /* "error": anything without a kind of its own */
    SW_LOG_REDIS_LINK,     /* "redis_link": an established link dropped (killed, reset, no answer) */
    SW_LOG_REDIS_CONNECT,  /* "redis_connect": an attempt to connect failed (refused, timeout, AUTH) */
    SW_LOG_PROTOCOL,       /* "protocol": a reply or a message the hub cannot use */
    SW_LOG_SUBSCRIBE,      /* "subscribe": Redis refused a subscription */
    SW_LOG_RESUME,         /* "resume": a resume read failed */
    SW_LOG_REPAIR,         /* "repair": a gap repair failed or gave up */
    SW_LOG_ASYNC_PUBLISH,  /* "async_publish": an async publish failed or may have */
    SW_LOG_MEMORY,         /* "memory": out of memory */
    SW_LOG_RESET,          /* "reset": a stream was sent `event: reset` (a warning, not an error) */
    SW_LOG_SLOW_CLIENT,    /* "slow_client": a stream was dropped for being slow (a warning) */
    SW_LOG_PG_LINK,        /* "postgres_link": the LISTEN connection dropped or a query on it failed */
    SW_LOG_PG_CONNECT,     /* "postgres_connect": an attempt to connect failed (refused, timeout, auth) */
    SW_LOG_KINDS
} spillway_log_kind;

/* Formats an error message into the caller's buffer (err may be NULL). */
void spillway_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

typedef struct spillway_log_slot {
    uint64_t count;          /* occurrences not taken yet */
    uint64_t since_ms;       /* what count covers starts here */
    uint64_t quiet_until_ms; /* an occurrence before this waits for the summary */
    char message[256];       /* the last occurrence */
} spillway_log_slot;

/* Records an error (stats errors and last_error) and logs it with the kind
 * SW_LOG_ERROR: spillway_hub_log for what has no kind of its own. */
void spillway_hub_error(spillway_hub *hub, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Logs one occurrence of kind (any thread; never blocks on Ruby): the
 * message goes to Spillway.logger from a Ruby thread, rate-limited per kind.
 * Error kinds also count in stats errors and become last_error. */
void spillway_hub_log(spillway_hub *hub, spillway_log_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
