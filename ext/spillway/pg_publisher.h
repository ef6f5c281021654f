/*
 * The synchronous PostgreSQL publisher (pg_publisher.c): what
 * Spillway.publish, Spillway.cursor and Spillway.last_id use with the
 * PostgreSQL backend. Blocking, with deadlines (libpq's non-blocking calls
 * under poll()), meant to run without the GVL. Thread-safe: a small pool of
 * connections, one per concurrent caller, so an interrupted call breaks only
 * its own. Fork: a connection opened by another process is closed (its
 * socket only: nothing is sent on it) and a new one is opened.
 *
 * A publish is one statement: the namespace's publish function (pg_sql.c),
 * under an idempotency key (the app's, or one made up per call), so a reply
 * lost after the statement went out is sent again on a fresh connection and
 * publishes at most once: at most SPILLWAY_PG_PUBLISH_RETRIES times, with
 * pauses of 20-250 ms, until connect_timeout + 2 x command_timeout after the
 * call began. A call that fails before anything reached PostgreSQL
 * (refused, bad password, unknown database) fails at once.
 */
#ifndef SPILLWAY_PG_PUBLISHER_H
#define SPILLWAY_PG_PUBLISHER_H

#include <pthread.h>

#include "hub.h"
#include "id.h"
#include "idem.h"

#define SPILLWAY_PG_PUBLISH_RETRIES 10

typedef struct spillway_pgpub spillway_pgpub;

/* Copies the configuration; connects lazily. 0 or -errno (err filled). */
int spillway_pgpub_new(const spillway_pg_config *cfg, spillway_pgpub **out, char *err, size_t errlen);
void spillway_pgpub_free(spillway_pgpub *p);
/* Closes the pooled connections (Terminate sent) — in this process only. */
void spillway_pgpub_close(spillway_pgpub *p);
/* Fork child: closes the inherited sockets without sending or locking; the
 * object must not be used afterwards. */
void spillway_pgpub_abandon(spillway_pgpub *p);

typedef struct spillway_pgpub_call {
    spillway_pgpub *p;
    const char *channel;
    size_t chlen;
    const char *body; /* the frame after its id line */
    size_t bodylen;
    const char *key; /* the app's idempotency key, or NULL: one is made up */
    size_t keylen;
    char genkey[SPILLWAY_IDEM_GEN_LEN + 1];
    uint32_t retries;
    char id[SPILLWAY_ID_TEXT_MAX]; /* the answer ("" for last_id: none) */
    char err[384];
    int rc;
    int fd; /* the socket in use, for spillway_pgpub_interrupt */
    int interrupted;
    pthread_mutex_t lock; /* fd and interrupted */
} spillway_pgpub_call;

void spillway_pgpub_call_init(spillway_pgpub_call *call, spillway_pgpub *p);
void spillway_pgpub_call_done(spillway_pgpub_call *call);
/* Each sets call->rc: 0 (call->id filled) or -errno (call->err filled):
 * -ECONNREFUSED/-ETIMEDOUT/-EIO unreachable or silent, -EPROTO PostgreSQL
 * answered with an error, -EINTR interrupted. */
void spillway_pgpub_publish(spillway_pgpub_call *call);
void spillway_pgpub_cursor(spillway_pgpub_call *call);
/* The id of the channel's newest retained message ("" when none). */
void spillway_pgpub_last_id(spillway_pgpub_call *call);
/* Unblock function: shuts down the socket of this call only. */
void spillway_pgpub_interrupt(spillway_pgpub_call *call);

typedef struct spillway_pgpub_stats {
    uint64_t published, failed, connects, retried;
    uint32_t pooled;
} spillway_pgpub_stats;
void spillway_pgpub_stats_get(spillway_pgpub *p, spillway_pgpub_stats *out);

#endif
