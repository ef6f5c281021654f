/*
 * The Lua scripts Spillway runs in Redis. Every process (the hub's command
 * link and the Ruby publisher) loads them with SCRIPT LOAD on connect and
 * runs them with EVALSHA, falling back to EVAL on NOSCRIPT.
 *
 * Keys of a namespace NS:
 *   NS:id        the last message id issued ("<ms>-<seq>"), for all channels
 *   NS:s:<name>  the backlog of channel <name>: a capped stream whose entry ids
 *                are the message ids; field "f" holds the whole frame, field
 *                "p" the id of the channel's previous message
 *   NS:k:<key>   the id published under idempotency key <key> (idem.h), for
 *                as long as the key's TTL
 * Pub/sub channel of <name>: NS:<name>; the payload is the whole frame.
 */
#ifndef SPILLWAY_SCRIPTS_H
#define SPILLWAY_SCRIPTS_H

/* KEYS: id key, stream key, and optionally the idempotency key. ARGV:
 * pub/sub channel, frame body (everything after the id line), backlog length
 * (0: no backlog), TTL seconds (0: none), the idempotency key's TTL in ms.
 * Returns the new id; when the idempotency key exists, the id stored there,
 * and publishes nothing. */
extern const char spillway_lua_publish[];

/* KEYS: id key, then one stream key per channel. ARGV: mode ("c": read
 * after the cursor and report resets, for a client's cursor and for gap
 * repair; "n": only the last id), TTL seconds, then one cursor per channel. Returns { last id or
 * "", {reset 0/1 per channel}, {channel index (0-based), frame, ...} in id
 * order }. A channel with a reset gets no frames. */
extern const char spillway_lua_resume[];

/* KEYS: id key. Returns the last id issued; when the namespace has none
 * yet, starts it at Redis's clock (so a cursor taken before the first
 * publish is valid). */
extern const char spillway_lua_cursor[];

/* KEYS: id key. ARGV: the hub's private control channel, a barrier number.
 * Takes the cursor (as spillway_lua_cursor) and PUBLISHes "<number> <id>"
 * on the control channel: arriving on the subscriber link in order, it
 * tells the hub that every message up to that id has arrived or was
 * published before its subscriptions took effect. */
extern const char spillway_lua_barrier[];

#endif
