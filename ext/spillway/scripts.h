/*
 * The Lua scripts Spillway runs in Redis. Every process (the hub's command
 * link and the Ruby publisher) loads them with SCRIPT LOAD on connect and
 * runs them with EVALSHA, falling back to EVAL on NOSCRIPT.
 *
 * Keys of a namespace NS:
 *   NS:id        the last message id issued ("<ms>-<seq>"), for all channels
 *   NS:since     where this Redis's history of the namespace begins: the id
 *                at which NS:id was created from nothing (a fresh namespace,
 *                or a Redis that lost its data: restarted without
 *                persistence, FLUSHALL, failover to an empty replica). A
 *                cursor older than it cannot be served: reset. Absent in a
 *                namespace created before Spillway wrote it (no check then).
 *   NS:s:<name>  the backlog of channel <name>: a capped stream whose entry ids
 *                are the message ids; field "f" holds the whole frame, field
 *                "p" the id of the channel's previous message
 *   NS:k:<key>   the id published under idempotency key <key> (idem.h), for
 *                as long as the key's TTL
 * Pub/sub channel of <name>: NS:<name>; the payload is the whole frame.
 */
#ifndef SPILLWAY_SCRIPTS_H
#define SPILLWAY_SCRIPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resp.h"

/* The key names of a namespace (the list above), made once by each user
 * (the hub's Redis backend, the publisher) so both name them alike. */
typedef struct spillway_keys {
    char *id;     /* "NS:id" */
    char *since;  /* "NS:since" */
    char *stream; /* "NS:s:", followed by the channel: its backlog */
    char *chan;   /* "NS:", followed by the channel: its pub/sub channel */
    char *idem;   /* "NS:k:", followed by an idempotency key */
    size_t stream_len, chan_len, idem_len;
} spillway_keys;

/* 0, or -1 when out of memory (nothing is left allocated then). */
int spillway_keys_init(spillway_keys *k, const char *ns);
void spillway_keys_free(spillway_keys *k);

/* One publish, as the publish script takes it. */
typedef struct spillway_publish_args {
    const char *channel; /* the channel's name (not NUL-terminated) */
    size_t chlen;
    const char *key;     /* the idempotency key (idem.h), without its NS:k: prefix */
    size_t keylen;
    const char *body;    /* the frame after its id line */
    size_t bodylen;
    uint32_t backlog_size, backlog_ttl_s, key_ttl_ms;
    uint64_t backlog_window_ms; /* 0: no trim by age */
} spillway_publish_args;

/* Appends the publish script's run for a to b: EVALSHA sha, or EVAL with
 * the script's text when eval is set or sha is "" (not loaded yet, or
 * NOSCRIPT), with its 4 keys and 5 arguments (6 with a backlog window). The one place they are
 * built, for the hub's async publishes and the publisher's. 0, or -1 when
 * out of memory, b then as it was (a half command would shift every later
 * reply). */
int spillway_buf_publish(spillway_buf *b, const spillway_keys *k, const spillway_publish_args *a, bool eval,
                         const char *sha);

/* KEYS: id key, stream key, the idempotency key, since key. ARGV:
 * pub/sub channel, frame body (everything after the id line), backlog length
 * (0: no backlog), TTL seconds (0: none), the idempotency key's TTL in ms,
 * the backlog window in ms (absent or 0: none; entries older than TIME minus it are
 * trimmed, XTRIM MINID ~, Redis 6.2+).
 * Returns the new id; when the idempotency key exists, the id stored there,
 * and publishes nothing. */
extern const char spillway_lua_publish[];

/* The witness: a process that was told of message `id` on channel `chan`
 * (a publish acknowledged, a live message received) asks a Redis it
 * (re)connected to whether that message is in its history. A failover to a
 * replica that lagged loses writes the old primary acknowledged; when this
 * one is missing, NS:since and NS:id move up to Redis's clock (after the
 * id), so a cursor from before gets a reset instead of silently skipping
 * what was lost, and ids go on after it. Plain EVAL (it runs once per connection). 0, or -1 when out of
 * memory (b then as it was). The reply: :0 when the message is there or was
 * trimmed; when it proved missing, why: :1 the id key is behind it, :2 the
 * entry after it names an older predecessor, :3 the stream ends before it,
 * :4 the stream is gone though its TTL cannot have run out. */
int spillway_buf_witness(spillway_buf *b, const spillway_keys *k, const char *chan, size_t chlen, const char *id,
                         uint32_t backlog_ttl_s, bool backlog);
extern const char spillway_lua_witness[];

/* KEYS: id key, since key, then one stream key per channel. ARGV: mode
 * ("c": read after the cursor and report resets, for a client's cursor and
 * for gap repair; "n": only the last id), TTL seconds, the most entries to
 * read per channel (0: all), then one cursor per channel. Returns { the
 * last id (Redis's clock as "<ms>-0" when the namespace has none), {per
 * channel: 0, 1 for a reset, 2 for a full page (more may follow its last
 * entry)}, {channel index (0-based), frame, ...} in id order }. Element 1
 * is the point the read saw: every message up to it is in the reply, behind
 * a reset, or after a full page's last entry. A channel with a reset gets
 * no frames. */
extern const char spillway_lua_resume[];

/* KEYS: id key, since key. Returns the last id issued; when the namespace
 * has none yet, starts it (and its history, NS:since) at Redis's clock, so
 * a cursor taken before the first publish is valid. */
extern const char spillway_lua_cursor[];

/* KEYS: id key, since key. ARGV: the hub's private control channel, a barrier number.
 * Takes the cursor (as spillway_lua_cursor) and PUBLISHes "<number> <id>"
 * on the control channel: arriving on the subscriber link in order, it
 * tells the hub that every message up to that id has arrived or was
 * published before its subscriptions took effect. */
extern const char spillway_lua_barrier[];

#endif
