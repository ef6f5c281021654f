/*
 * Message ids.
 *
 * Every message gets an id "<ms>-<seq>" from one generator per backend (the
 * Lua publish script for Redis, the hub for the memory backend). Ids are
 * strictly increasing across ALL channels of a namespace, so the SSE `id:` of
 * the last frame a browser saw is a cursor for every channel the connection
 * listens to: on resume the hub replays, per channel, what is newer than it.
 * The shape is the one of Redis stream ids, so backlog entries use the
 * message id as their stream id and XRANGE can start right after a cursor.
 */
#ifndef SPILLWAY_ID_H
#define SPILLWAY_ID_H

#include "common.h"

typedef struct spillway_id {
    uint64_t ms;
    uint64_t seq;
} spillway_id;

/* "18446744073709551615-18446744073709551615" plus NUL. */
#define SPILLWAY_ID_TEXT_MAX 42

static inline int spillway_id_cmp(spillway_id a, spillway_id b)
{
    if (a.ms != b.ms) return a.ms < b.ms ? -1 : 1;
    if (a.seq != b.seq) return a.seq < b.seq ? -1 : 1;
    return 0;
}

static inline bool spillway_id_is_zero(spillway_id a)
{
    return a.ms == 0 && a.seq == 0;
}

static inline spillway_id spillway_id_max(spillway_id a, spillway_id b)
{
    return spillway_id_cmp(a, b) >= 0 ? a : b;
}

/*
 * Parses "<ms>-<seq>" or "<ms>" (seq 0) from exactly len bytes, digits only,
 * no sign, no spaces, each part at most 20 digits and within uint64.
 * Returns 0 and fills *out, or -1 when the text is not an id.
 */
int spillway_id_parse(const char *s, size_t len, spillway_id *out);

/* Writes the text form and a NUL into buf (SPILLWAY_ID_TEXT_MAX bytes);
 * returns the length without the NUL. */
size_t spillway_id_format(spillway_id id, char *buf);

/*
 * The id generator: the next id after `last` at wall-clock time now_ms. Never
 * goes backwards, even when the clock does: within one millisecond (or while
 * the clock is behind) the sequence part counts up.
 */
spillway_id spillway_id_next(spillway_id last, uint64_t now_ms);

#endif
