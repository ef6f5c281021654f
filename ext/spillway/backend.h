/*
 * The backend of a hub: where messages come from and where a resuming stream
 * finds what it missed. The hub (hub.c, the reactor loop) calls a backend only
 * through this table and its `self`, in the style of hiredis's
 * redisAsyncContext.ev hooks, so it never knows which backend runs: memory.c
 * (in-process ids and backlog), redis.c (two links to Redis) or pg.c (one
 * LISTEN connection to PostgreSQL). A new backend
 * (Sentinel, Cluster, PostgreSQL) fills in a table of its own and plugs in
 * without touching the loop.
 *
 * Every operation runs on the reactor thread with loop_lock held, except
 * issue_id and issued (any thread, under the queue lock), abandon (a fork
 * child, after fork) and free (after the thread ended).
 * NULL means "nothing to do" for every operation marked optional.
 *
 * Why these and no others (what the hub really needs):
 *   join, channel_wanted, channel_unwanted   a stream's life: the hub builds
 *            the membership (channel.c), the backend decides when the stream
 *            is live and what it replays, and whether a channel without
 *            subscribers still matters (a backlog, a lingering subscription).
 *   publish, publish_async   the two commands the queue carries for a
 *            backend: a frame whose id the backend issued under the queue
 *            lock (memory: issue_id, issued), or a body for the backend to
 *            publish elsewhere (Redis). NULL tells the public API that this
 *            backend takes no such publish.
 *   channel_new   a channel entered the table (its backlog's starting point).
 *   on_event   every epoll event whose handle is no stream and no wake-up:
 *            the backend's own descriptors.
 *   next_timer, timers   the loop's timeout and its timer phase.
 *   end_iteration   after the streams are flushed: the backend's own writes
 *            (batched SUBSCRIBEs, barriers, repairs).
 *   stop, abandon, free, memsize   lifecycle and ObjectSpace.memsize_of.
 */
#ifndef SPILLWAY_BACKEND_H
#define SPILLWAY_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "id.h"

struct spillway_hub;
struct spillway_conn;
struct spillway_channel;
struct spillway_handle;
struct spillway_cmd_publish;

typedef struct spillway_backend_ops {
    const char *name; /* for messages: "memory", "Redis" */
    /* The stream's channels are in c->mem (subscribed in the table, each
     * announced with channel_wanted): make it live now or later, replaying
     * what its cursor missed. */
    void (*join)(void *self, struct spillway_conn *c);
    /* A publish whose frame carries an id the hub issued (the caller frees
     * cmd afterwards). Optional: NULL refuses spillway_hub_publish. */
    void (*publish)(void *self, struct spillway_cmd_publish *cmd);
    /* With publish: under the queue lock, from any thread, the id of the
     * next publish (wall_ms: the wall clock now), and the last id issued
     * (spillway_hub_cursor). */
    spillway_id (*issue_id)(void *self, uint64_t wall_ms);
    spillway_id (*issued)(void *self);
    /* An async publish: the backend owns cmd from here on and reports its
     * ticket with spillway_hub_async_done. Optional: NULL refuses
     * spillway_hub_publish_async. */
    void (*publish_async)(void *self, struct spillway_cmd_publish *cmd);
    /* The channel was just created in the table (optional). */
    void (*channel_new)(void *self, struct spillway_channel *ch);
    /* A stream joins the channel (optional). */
    void (*channel_wanted)(void *self, struct spillway_channel *ch);
    /* The channel's last subscriber left: the backend drops it
     * (spillway_channel_drop) now or when it no longer needs it. */
    void (*channel_unwanted)(void *self, struct spillway_channel *ch);
    /* An epoll event on one of the backend's handles (optional). */
    void (*on_event)(void *self, struct spillway_handle *h, uint32_t events);
    /* When timers must run next (CLOCK_MONOTONIC ms), and running them. */
    uint64_t (*next_timer)(void *self);
    void (*timers)(void *self);
    /* The end of an iteration, after the streams were flushed (optional). */
    void (*end_iteration)(void *self);
    /* Hub stop: fail what waits, close for good (optional). */
    void (*stop)(void *self);
    /* Fork child: close the descriptors, touch nothing else (optional). */
    void (*abandon)(void *self);
    void (*free)(void *self);
    /* Heap bytes the backend owns beyond the hub's own counts. */
    size_t (*memsize)(const void *self);
} spillway_backend_ops;

typedef struct spillway_backend {
    const spillway_backend_ops *ops;
    void *self;
} spillway_backend;

/* The constructors (each sets hub->backend; 0, or -errno with err set). */
int spillway_memory_backend_new(struct spillway_hub *hub, char *err, size_t errlen);
int spillway_redis_backend_new(struct spillway_hub *hub, char *err, size_t errlen);
/* pg.c: -ENOTSUP (err says how to get it) when built without libpq. */
int spillway_pg_backend_new(struct spillway_hub *hub, char *err, size_t errlen);

#endif
