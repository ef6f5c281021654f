/*
 * The synchronous publisher: what Spillway.publish uses with the Redis
 * backend. Blocking (sconn.h: plaintext or TLS, poll-based deadlines) and
 * meant to be called without the GVL. Thread-safe: a small pool of connections, one per
 * concurrent caller, so an interrupted call only breaks its own connection.
 *
 * Fork: every connection records the pid that opened it; in another process
 * it is closed (not used, not written to) and a new one is opened.
 */
#ifndef SPILLWAY_PUBLISHER_H
#define SPILLWAY_PUBLISHER_H

#include <pthread.h>

#include "hub.h"
#include "idem.h"

/* Attempts after the first, at most, when a reply was lost. */
#define SPILLWAY_PUBLISH_RETRIES 10

typedef struct spillway_publisher spillway_publisher;
typedef struct spillway_publish_call spillway_publish_call;

/* Copies the configuration; connects lazily. 0 or -errno (err filled). */
int spillway_publisher_new(const spillway_redis_config *cfg, spillway_publisher **out, char *err,
                           size_t errlen);
void spillway_publisher_free(spillway_publisher *p);

/* One call's state, so an unblock function can interrupt just it. */
struct spillway_publish_call {
    spillway_publisher *p;
    const char *channel;
    size_t chlen;
    const char *body; /* the frame after its id line (spillway_sse_encode without id) */
    size_t bodylen;
    const char *key;  /* the app's idempotency key (idem.h), or NULL: one is generated */
    size_t keylen;
    char genkey[SPILLWAY_IDEM_GEN_LEN + 1];
    uint32_t retries; /* attempts after the first (a reply was lost) */
    char id[SPILLWAY_ID_TEXT_MAX];
    char err[384];
    int rc;
    int fd; /* the connection in use, for spillway_publish_interrupt */
    int interrupted;
    pthread_mutex_t lock; /* fd and interrupted; spillway_publish_call_init */
    pthread_cond_t wake;  /* a pause between retries ends early on an interrupt */
};

/* Prepares a call (its lock); spillway_publish_call_done after the run. */
void spillway_publish_call_init(spillway_publish_call *call, spillway_publisher *p);
void spillway_publish_call_done(spillway_publish_call *call);

/* Runs the publish script: one round trip (plus a connect when needed),
 * under the call's idempotency key (generated when call->key is NULL).
 *
 * A reply that is lost once the command may have reached Redis (the
 * connection closed, no answer within command_timeout) does not fail the
 * call: it is sent again on a fresh connection under the same key, so it
 * publishes at most once. Retries, with short pauses while Redis refuses
 * connections or is still loading, go on at most SPILLWAY_PUBLISH_RETRIES
 * times and until connect_timeout + 2 x command_timeout after the call began
 * (each attempt's timeouts are cut to fit), and only while the key certainly
 * lives. A call that fails before anything reached Redis is not retried.
 *
 * Sets call->rc: 0 (call->id filled) or -errno (call->err filled):
 * -ECONNREFUSED/-ETIMEDOUT/-EIO Redis unreachable or silent, -EPROTO Redis
 * answered with an error, -EINTR interrupted. The message says when the
 * publish may have gone through (a reply was lost and the retries ran out). */
void spillway_publish_run(spillway_publish_call *call);
/* Like spillway_publish_run, but reads the namespace's newest id (the
 * cursor for "now") into call->id; channel and body are unused. */
void spillway_publish_cursor(spillway_publish_call *call);

/* Unblock function: shuts down the connection of this call only. */
/* XREVRANGE <ns>:s:<call->channel> + - COUNT 1: the id of the channel's
 * newest retained message into call->id ("" when its backlog is empty). */
void spillway_publish_last_id(spillway_publish_call *call);
void spillway_publish_interrupt(spillway_publish_call *call);

/* Closes the pooled connections (no command is sent). In a fork child this
 * only closes the inherited descriptors. */
void spillway_publisher_close(spillway_publisher *p);

/* Fork child: closes the inherited descriptors without locking; the object
 * must not be used afterwards (its memory is left, copy-on-write). */
void spillway_publisher_abandon(spillway_publisher *p);

typedef struct spillway_publisher_stats {
    uint64_t published, failed, connects;
    uint64_t retried; /* attempts sent again after a lost reply */
    uint32_t pooled;
} spillway_publisher_stats;
void spillway_publisher_stats_get(spillway_publisher *p, spillway_publisher_stats *out);

#endif
