/*
 * The native hub: one background thread per process running an epoll loop
 * that owns every client socket, the channel table, the memory backlog and
 * the Redis links. This header is the interface the Ruby binding uses; every
 * function here may be called from any thread unless it says otherwise.
 *
 * Threads: the functions below never touch reactor state directly. They
 * either push a command through the bounded queue (attach, publish) or read
 * atomics (stats). Only the reactor thread touches sockets, channels and
 * frames after a hand-over.
 */
#ifndef SPILLWAY_HUB_H
#define SPILLWAY_HUB_H

#include <string.h>
#include <sys/types.h>

#include "common.h"
#include "events.h"
#include "id.h"

typedef struct spillway_hub spillway_hub;

/* Hard ceilings of the configurable limits: spillway_hub_new and the
 * binding check the configured values against them. */
#define SPILLWAY_MAX_CHANNELS_PER_CONN 1024

/*
 * Multisite: inside the core a site's channel is named "<site>|<channel>"
 * (the Ruby side builds the names; neither a public channel name nor a site
 * id may hold a '|'), so two sites never share a channel, a backlog, a
 * resume or a Redis key. A channel without a site (no site configured, or a
 * "/global/" channel) keeps its public name. Names leave the core towards a
 * client (the `channel:` line, a reset's list) as their public part:
 * spillway_channel_public. Logs, events and busiest_channels keep the whole
 * name (the binding's Ruby side splits it).
 */
#define SPILLWAY_SITE_SEP '|'
#define SPILLWAY_MAX_SITE_LEN 64
#define SPILLWAY_MAX_PUBLIC_CHANNEL_LEN 1024
/* 1089: the longest public name under the longest site. */
#define SPILLWAY_MAX_CHANNEL_LEN (SPILLWAY_MAX_PUBLIC_CHANNEL_LEN + 1 + SPILLWAY_MAX_SITE_LEN)

/* The public part of a channel name (after the site's separator, if any)
 * and its length (*publen); points into name. */
static inline const char *spillway_channel_public(const char *name, size_t len, size_t *publen)
{
    const char *sep = memchr(name, SPILLWAY_SITE_SEP, len);
    if (sep == NULL) {
        *publen = len;
        return name;
    }
    *publen = len - (size_t)(sep + 1 - name);
    return sep + 1;
}

/* Connection to Redis (all strings are copied by spillway_hub_new). */
typedef struct spillway_redis_config {
    const char *host;     /* NULL: no Redis, the memory backend */
    int port;
    const char *path;     /* unix socket path instead of host/port */
    const char *username; /* ACL user (NULL: none) */
    const char *password; /* NULL: no AUTH */
    int db;               /* database of the backlog keys */
    /* Sentinel: ask these ("host:port,host:port") which node is the primary
     * of sentinel_master (host is then only its name, for messages); NULL:
     * host/port or path is Redis. */
    const char *sentinels;
    const char *sentinel_master;
    const char *sentinel_password; /* AUTH to the sentinels, NULL: none */
    const char *ns;       /* key and channel namespace, "spillway" */
    uint32_t connect_timeout_ms;
    uint32_t command_timeout_ms;
    uint32_t health_interval_ms; /* PING the subscriber link this often */
    uint32_t backlog_size;       /* MAXLEN of a channel's stream */
    uint32_t backlog_ttl_s;      /* EXPIRE of a channel's stream, 0: none */
    uint64_t backlog_window_ms;  /* XTRIM MINID: entries older than this go on publish, 0: off */
    uint32_t async_limit;        /* async publishes waiting for Redis at most */
    uint32_t unsubscribe_linger_ms;
    uint32_t idempotency_ttl_ms; /* how long Redis keeps an app-given idempotency key */
    /* rediss://: TLS on every connection (tls.h), NULL: plaintext. A
     * reference: whoever copies the configuration takes one of its own
     * (spillway_tls_ctx_ref) and drops it with its copy. */
    struct spillway_tls_ctx *tls;
} spillway_redis_config;

/* Connection to PostgreSQL (pg.c, pg_publisher.c; strings copied by
 * spillway_hub_new). conninfo NULL: no PostgreSQL. */
typedef struct spillway_pg_config {
    const char *conninfo; /* a libpq URL or keyword string */
    const char *ns;       /* schema and LISTEN channel, "spillway" */
    uint32_t connect_timeout_ms;
    uint32_t command_timeout_ms;
    uint32_t backlog_size;       /* rows kept per channel (at least 1) */
    uint32_t backlog_ttl_s;      /* a channel's rows outlive its last message this long, 0: forever */
    uint32_t idempotency_ttl_ms; /* how long an app-given idempotency key is kept */
} spillway_pg_config;

typedef struct spillway_config {
    uint32_t heartbeat_ms;          /* comment to every stream this often */
    uint32_t retry_ms;              /* the `retry:` hint sent to browsers */
    uint32_t max_connections;       /* streams per process */
    uint32_t max_channels_per_conn; /* channels per stream */
    uint32_t outbox_limit;          /* bytes of frames one stream alone may keep waiting: dropped beyond */
    uint32_t max_lag_ms;            /* a stream whose oldest unsent frame waited longer: dropped */
    uint64_t memory_limit;          /* bytes of all waiting frames: the laggiest streams dropped beyond */
    uint32_t backlog_size;          /* memory backend: messages kept per channel */
    uint32_t backlog_ttl_s;         /* memory backend: kept this long after the last message, 0: forever */
    uint64_t backlog_window_ms;     /* a ring drops frames this much older than the newest, 0: off */
    uint32_t max_backlog_channels;  /* memory backend: channels with a backlog, LRU beyond */
    uint32_t queue_limit;           /* commands waiting for the reactor */
    const char *extra_headers;      /* raw "Name: value\r\n" lines added to the head, or NULL */
    spillway_redis_config redis;
    spillway_pg_config pg;
    uint32_t log_interval_ms;       /* the log's rate limit per kind (spillway_hub_log_wait) */
    uint32_t long_poll_timeout_ms;  /* a long-poll with nothing to say is answered empty after this */
} spillway_config;

typedef struct spillway_stats {
    uint64_t connections;      /* open streams (including ones being handed over) */
    uint64_t channels;         /* channels with subscribers or a backlog */
    uint64_t messages_in;      /* messages that entered this hub (memory or Redis): stats[:messages_in] */
    uint64_t delivered;        /* message frames fully written to sockets */
    uint64_t dropped_slow;     /* streams closed as too slow (lag, outbox_limit, memory_limit) */
    uint64_t bytes_out;        /* bytes written to stream sockets */
    uint64_t accepted;         /* streams handed to the hub since start */
    uint64_t closed;           /* streams released since start */
    uint64_t fallback_streams; /* open streams that go through a Ruby pump (TLS, no hijack) */
    uint64_t fallback_total;
    uint64_t resumes;          /* streams that came back with a cursor */
    uint64_t resets;           /* `event: reset` sent (backlog did not reach the cursor) */
    uint64_t joining;          /* streams waiting for their subscriptions (Redis) */
    uint64_t backlog_messages; /* memory backend: frames kept in backlogs */
    uint64_t backlog_bytes;
    uint64_t redis_connected;  /* 1 when both Redis links are up */
    uint64_t redis_reconnects;
    uint64_t redis_messages;   /* pub/sub messages read from Redis */
    uint64_t gap_repairs;      /* backlog reads after a reconnect */
    uint64_t async_pending;    /* async publishes not yet acknowledged by Redis */
    uint64_t async_failed;
    uint64_t errors;           /* error events recorded (see last_error) */
    uint64_t loop_iterations;
    uint64_t outbox_bytes;     /* heap bytes of the frames waiting for streams (memory_limit) */
    uint64_t long_polls;       /* long-polls held now (counted in connections too) */
    uint64_t polls_answered;   /* poll and long-poll answers written since start */
    char last_error[256];
} spillway_stats;

/* Flags of spillway_hub_attach. */
#define SPILLWAY_ATTACH_HEAD 1u     /* the hub writes the HTTP head (full hijack) */
#define SPILLWAY_ATTACH_FALLBACK 2u /* the socket is a pair pumped by a Ruby thread */
/* A Turbo stream (<turbo-stream-source>): Turbo applies `message` events
 * only, so a reset goes out as a message whose data is
 * <turbo-stream action="refresh"></turbo-stream> (the page reloads its
 * state), with the reset's id. */
#define SPILLWAY_ATTACH_TURBO 4u
/* One answer, then the connection closes (message_bus's polling): POLL
 * answers as soon as the stream has joined, with what its cursor missed
 * (possibly nothing); LONG_POLL (with POLL) holds the request in the loop
 * until at least one frame (a message after the cursor, or a reset) is
 * there or long_poll_timeout_ms passed. The answer is a complete response:
 * with SPILLWAY_ATTACH_HEAD a head with Content-Length, then the same
 * frames and ids a stream would get, at most SPILLWAY_POLL_BODY_MAX bytes
 * of them (at least one frame; the client asks again from the last id). No
 * heartbeats, no opening comment. */
#define SPILLWAY_ATTACH_POLL 8u
#define SPILLWAY_ATTACH_LONG_POLL 16u
#define SPILLWAY_POLL_BODY_MAX (1024u * 1024u)
/* Every message frame names its channel in a `channel: <name>` line after
 * its id (EventSource ignores a field it does not know; a client that
 * parses the stream itself, spillway.js, routes one stream's messages by
 * it). Resets name their channels already. The tagged copy of a message is
 * made once, on first need, and shared by every stream that asked. */
#define SPILLWAY_ATTACH_CHANNEL 32u
/* Targeted messages reach this stream whoever they are for (a server-side
 * subscription, Spillway.subscribe and backlog; never an HTTP client). */
#define SPILLWAY_ATTACH_ALL 64u

/*
 * Creates the hub and starts its thread. 0 and *out, or -errno with a message
 * in err (the function, the syscall, the reason).
 */
int spillway_hub_new(const spillway_config *cfg, spillway_hub **out, char *err, size_t errlen);

/*
 * Admission, before the hijack: takes one of max_connections places. 0, or
 * -EBUSY when full. Every successful reserve is followed by exactly one
 * attach or one unreserve.
 */
int spillway_hub_reserve(spillway_hub *hub);
void spillway_hub_unreserve(spillway_hub *hub);

/*
 * Hands a stream to the hub. fd must be non-blocking and close-on-exec; on
 * success the hub owns it, on failure the caller still does (and still holds
 * its reservation). channels are validated names (the caller checks names
 * and counts; the hub checks them again). cursor is the Last-Event-ID text
 * (NULL: none; text that is not an id makes the stream start with a reset).
 */
int spillway_hub_attach(spillway_hub *hub, int fd, unsigned flags, const char *const *channels,
                        const size_t *lens, size_t n, const char *cursor, size_t cursorlen,
                        char *err, size_t errlen);
/* The same for a stream with an identity (targets.h: "u=7;g=a,b;c=x", at
 * most one user and one client), matched against every targeted message
 * it would get, live or replayed. ident NULL: none. -EINVAL when it is not
 * well formed. */
int spillway_hub_attach_as(spillway_hub *hub, int fd, unsigned flags, const char *const *channels,
                           const size_t *lens, size_t n, const char *cursor, size_t cursorlen, const char *ident,
                           size_t identlen, char *err, size_t errlen);

/*
 * Memory backend: publishes one message in this process. The frame is
 * checked and allocated here, on the calling thread, sized for the longest
 * id; the id is issued and the frame encoded under the queue lock, so that
 * ids and queue order agree. Writes the id into idbuf
 * (SPILLWAY_ID_TEXT_MAX). 0 or -errno with err filled.
 *
 * Why the encoding stays under the lock: a frame is one buffer that starts
 * with its id line, whose length depends on the id, so everything after it
 * could only be written beforehand if the frame had a start offset (or the
 * bytes were moved under the lock, which costs the same as encoding). The
 * encoder is one pass over the data; only publishers contend for the lock
 * (the reactor takes the whole list at once). A frame with a start offset
 * would let only the id line be written under the lock.
 */
int spillway_hub_publish(spillway_hub *hub, const char *channel, size_t chlen, const char *event,
                         size_t evlen, const char *data, size_t datalen, char *idbuf, char *err,
                         size_t errlen);
/* The same for the streams the targets name (targets.h text, checked here:
 * -EINVAL when malformed; NULL: everyone), live and in every replay. */
int spillway_hub_publish_to(spillway_hub *hub, const char *channel, size_t chlen, const char *event, size_t evlen,
                            const char *data, size_t datalen, const char *targets, size_t targetslen, char *idbuf,
                            char *err, size_t errlen);

/* Memory backend: the newest id issued so far (the start of this hub when
 * none), for a page that renders state and then subscribes from "now". */
void spillway_hub_cursor(spillway_hub *hub, char *idbuf);

/*
 * Redis backend: queues a publish for the hub's command link (pipelined
 * EVALSHA). key (keylen bytes, NULL: one is generated) is its idempotency
 * key (idem.h): a publish the link wrote but lost the reply of is sent again
 * after the reconnect under it. 0, -EAGAIN when async_limit publishes are
 * already waiting, or -errno. *seq receives a ticket for spillway_hub_flush.
 */
int spillway_hub_publish_async(spillway_hub *hub, const char *channel, size_t chlen,
                               const char *event, size_t evlen, const char *data,
                               size_t datalen, const char *key, size_t keylen, uint64_t *seq,
                               char *err, size_t errlen);
/* The same with targets (targets.h text; NULL: everyone). */
int spillway_hub_publish_async_to(spillway_hub *hub, const char *channel, size_t chlen, const char *event,
                                  size_t evlen, const char *data, size_t datalen, const char *targets,
                                  size_t targetslen, const char *key, size_t keylen, uint64_t *seq, char *err,
                                  size_t errlen);

/*
 * The interrupt state of one blocking call, owned by its caller (on the
 * caller's stack, set to SPILLWAY_WAITER_INIT before the call and before
 * the unblock function can run). An interrupt names the call it is for: it
 * is never cleared by another call, never ends a call it is not for, and
 * one that arrives before the call is inside its wait still ends it.
 * Guarded by the lock of the wait it is used with.
 */
typedef struct spillway_waiter {
    bool interrupted;
} spillway_waiter;
#define SPILLWAY_WAITER_INIT {false}

/* Blocks until every async publish queued before the call has been
 * acknowledged by Redis or failed, or timeout_ms passed. 0 when all of
 * them (and any since the last flush that returned) reached Redis; -EIO when
 * one of those failed; -ETIMEDOUT (also when the hub stops first); -EINTR
 * when w was interrupted (spillway_hub_flush_interrupt). w may be NULL: the
 * call then ends only by itself. Blocking: call it without the GVL. */
int spillway_hub_flush(spillway_hub *hub, uint32_t timeout_ms, spillway_waiter *w);
/* Ends the spillway_hub_flush that waits with w, or the next one that
 * starts with it (the binding's unblock function; any thread). */
void spillway_hub_flush_interrupt(spillway_hub *hub, spillway_waiter *w);

void spillway_hub_stats(spillway_hub *hub, spillway_stats *out);

/* One channel of spillway_hub_busiest_channels. */
typedef struct spillway_channel_info {
    uint32_t subscribers;  /* streams of this process on it now */
    uint64_t messages;     /* fanned out here since the channel entered the table */
    double messages_per_s; /* over the last SPILLWAY_RATE_WINDOW_MS to twice that */
    size_t namelen;
    char name[SPILLWAY_MAX_CHANNEL_LEN + 1];
} spillway_channel_info;

#define SPILLWAY_RATE_WINDOW_MS 10000u

/*
 * The busiest channels of this process, for a dashboard: up to max of them
 * into out, most deliveries per second first (messages_per_s times
 * subscribers; ties by messages_per_s, then subscribers, then name).
 * Returns how many, or -ETIMEDOUT when the loop did not let go of them
 * within timeout_ms. Any thread but the reactor's; it waits for the loop to
 * be idle (loop_lock) and walks every channel: O(channels x max), so not for
 * a hot path.
 */
int spillway_hub_busiest_channels(spillway_hub *hub, spillway_channel_info *out, size_t max,
                                  uint32_t timeout_ms);

/*
 * The newest id of channel name in this process's table (memory backend: the
 * last message published on it while it has lived here) into out
 * (SPILLWAY_ID_TEXT_MAX bytes). 1 when found, 0 when the table has no such
 * channel (or it never had a message), -ETIMEDOUT when the loop did not let
 * go within timeout_ms. Any thread but the reactor's (loop_lock).
 */
int spillway_hub_channel_last(spillway_hub *hub, const char *name, size_t len, char *out, uint32_t timeout_ms);

/*
 * The hub's log: every error and every reset the reactor records, for a
 * Ruby thread to write to the app's logger (the reactor never calls Ruby).
 * The hub keeps one slot per kind ("redis_link", "reset", ...), so it holds
 * a fixed amount whatever the rate: an entry stands for every occurrence of
 * its kind since the previous one, with the text of the last.
 *
 * Rate limit: the first occurrence of a kind is due at once; the kind then
 * stays quiet for log_interval_ms, and what occurred meanwhile is due as one
 * summary entry at the end of that interval.
 */
typedef struct spillway_log_entry {
    const char *kind;  /* static name of the kind */
    bool warning;      /* warning level (otherwise error) */
    uint64_t count;    /* occurrences it stands for */
    uint64_t span_ms;  /* the time they cover: since the kind's previous entry, or its first of these */
    char message[256]; /* the last occurrence's text */
} spillway_log_entry;

/* Blocks until entries are due, then copies up to max of them into out and
 * returns how many. 0 when timeout_ms passed first; -EINTR when w was
 * interrupted (spillway_hub_log_interrupt); -EPIPE once the hub has stopped
 * and every entry was taken (after the stop everything pending is due at
 * once). Blocking: call it without the GVL. */
int spillway_hub_log_wait(spillway_hub *hub, spillway_log_entry *out, size_t max, uint32_t timeout_ms,
                          spillway_waiter *w);
/* Ends the spillway_hub_log_wait that waits with w (any thread). */
void spillway_hub_log_interrupt(spillway_hub *hub, spillway_waiter *w);

/*
 * The hub's events (events.h): every stream close, reset and Redis error,
 * one record each, for ActiveSupport::Notifications. Recorded only while
 * enabled; at most a few thousand wait, the oldest dropped beyond.
 */
void spillway_hub_events_enable(spillway_hub *hub, bool on);
/* As spillway_events_wait: up to max events, 0 on timeout, -EINTR when w
 * was interrupted (spillway_hub_events_interrupt), -EPIPE once the hub has
 * stopped and every event was taken; *dropped: the drops so far. Blocking:
 * call it without the GVL. */
int spillway_hub_events_wait(spillway_hub *hub, spillway_event *out, size_t max, uint32_t timeout_ms,
                             spillway_waiter *w, uint64_t *dropped);
void spillway_hub_events_interrupt(spillway_hub *hub, spillway_waiter *w);

/* Heap bytes the hub holds (for ObjectSpace.memsize_of); approximate. */
size_t spillway_hub_memsize(const spillway_hub *hub);

/*
 * Stops: every stream gets a final retry hint and is closed, the Redis links
 * close, the thread exits. Waits up to timeout_ms for the thread; 0 or
 * -ETIMEDOUT (the thread then frees nothing and is left to finish).
 * Blocking: call it without the GVL.
 */
int spillway_hub_stop(spillway_hub *hub, uint32_t timeout_ms);

/* Frees a stopped hub (or a hub abandoned in a fork child: then only the
 * handle itself). */
void spillway_hub_free(spillway_hub *hub);

/* The pid that created the hub: in any other process the hub is dead. */
pid_t spillway_hub_owner(const spillway_hub *hub);
bool spillway_hub_running(const spillway_hub *hub);

#endif
