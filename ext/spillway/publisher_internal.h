/*
 * What publisher.c (the pool, the publish and the reads) and
 * publisher_conn.c (a new connection: connect, AUTH/SELECT, Sentinel, the
 * witness) share: the publisher's state. No other file includes this.
 */
#ifndef SPILLWAY_PUBLISHER_INTERNAL_H
#define SPILLWAY_PUBLISHER_INTERNAL_H

#include <stdatomic.h>

#include "publisher.h"
#include "scripts.h"
#include "sconn.h"

#define POOL_MAX 16
/* Sentinel: how often the pool's primary is checked with them. More often
 * than the hub's links (1 s): publishers that leave the old primary first
 * leave the hubs on it nothing to miss (redis_link.c). */
#define SENTINEL_CHECK_MS 250u

struct spillway_publisher {
    spillway_redis_config cfg; /* strings owned, a reference of cfg.tls */
    spillway_keys keys;        /* the namespace's key names (scripts.h) */
    pthread_mutex_t lock;
    spillway_sconn *pool[POOL_MAX];
    uint32_t npool;
    char sha[41];
    /* Sentinel: the primary the pool's connections go to, when the
     * sentinels were last asked whether it still is, and a generation that
     * changes with it (a connection of an older one is closed, not used). */
    char primary[160];
    uint64_t checked_ms;
    uint32_t gen;
    /* The newest publish acknowledged, asked about on every new connection
     * (scripts.h, the witness). Under lock. */
    spillway_id w_id;
    size_t w_chlen;
    char w_chan[SPILLWAY_MAX_CHANNEL_LEN];
    atomic_uint_fast64_t published, failed, connects, retried;
};

/* Sets c->rc and c->err. */
void spillway_pub_set_err(spillway_publish_call *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* "redis://host:port", "unix://path" or the Sentinel master: for messages. */
void spillway_pub_describe_target(const spillway_publisher *p, char *buf, size_t n);
/* A new connection with these timeouts (a retry cuts them to what is left
 * of its budget), set up and asked the witness question, or NULL with c->rc
 * and c->err set. */
spillway_sconn *spillway_pub_connect(spillway_publisher *p, spillway_publish_call *c, uint32_t connect_ms,
                                     uint32_t command_ms);
/* Sentinel: asks them again, every SENTINEL_CHECK_MS, whether the pool's
 * primary still is the primary (no-op otherwise). */
void spillway_pub_recheck_primary(spillway_publisher *p);
/* An acknowledged publish: the witness when it is the newest. */
void spillway_pub_witness_note(spillway_publisher *p, const spillway_publish_call *c);

#endif
