/*
 * Channels (channel.c): the table from channel name to channel, each
 * channel's subscribers (swap-removed, with back pointers into the
 * streams' memberships), and its backlog ring of shared frames. A channel
 * calls its backend only through the table in backend.h.
 */
#ifndef SPILLWAY_CHANNEL_H
#define SPILLWAY_CHANNEL_H

#include <stdbool.h>
#include <stdint.h>

#include "frame.h"
#include "hub.h"
#include "id.h"

struct spillway_conn;

typedef struct spillway_sub {
    struct spillway_conn *conn;
    uint32_t slot; /* index of this channel in conn->mem */
} spillway_sub;

/* Redis subscription state of a channel. */
enum spillway_rstate {
    SW_RS_NONE = 0,    /* not subscribed */
    SW_RS_PENDING,     /* waiting to be sent in the next SUBSCRIBE batch */
    SW_RS_SENT,        /* SUBSCRIBE sent, confirmation not yet read */
    SW_RS_SYNCING,     /* confirmed; waiting for a barrier through the sub link */
    SW_RS_ACTIVE,      /* every later message reaches us, and hub->last covers
                          everything published before the subscription */
    SW_RS_UNSUB_SENT   /* UNSUBSCRIBE sent, confirmation not yet read */
};

typedef struct spillway_channel {
    struct spillway_channel *hnext; /* hash chain */
    uint32_t hash;
    uint16_t namelen;
    uint8_t rstate;    /* enum spillway_rstate (Redis) */
    uint8_t in_plist;  /* on the pending (un)subscribe list */
    uint8_t lingering; /* on the linger list (Redis: subscribed, no subscriber) */
    uint8_t mark;      /* scratch flag for one operation */
    uint8_t mark_from_set; /* with mark (a repair's reset): mark_from holds */
    uint8_t in_slist;  /* on the syncing list */
    spillway_sub *subs;
    uint32_t nsubs, capsubs;
    /* With mark and mark_from_set: a stream that has every message up to
     * this id misses nothing the repair could not give (its reset is
     * skipped). The oldest message the repair read of the channel, or the
     * read's point when it found none. */
    spillway_id mark_from;
    /* the backlog ring, frames in id order: the memory backend's backlog,
     * or the Redis backend's resume cache */
    spillway_frame **ring;
    uint32_t ring_cap, ring_start, ring_len;
    spillway_id trimmed; /* highest id ever dropped from the ring */
    spillway_id last;    /* highest id seen on this channel */
    /* Messages fanned out: in all, in the window numbered rate_window
     * (hub->now / SPILLWAY_RATE_WINDOW_MS), and in the window before it. */
    uint64_t messages, rate_window, rate_until; /* rate_until: hub->now when rate_window ends */
    uint32_t rate_cur, rate_prev;
    /* memory: the LRU of backlogs, and the last message (for the TTL) */
    struct spillway_channel *lru_prev, *lru_next;
    uint64_t lru_touched_ms;
    /* Redis: the linger list (subscribed, no subscriber), and since when */
    struct spillway_channel *linger_prev, *linger_next;
    uint64_t linger_since_ms;
    struct spillway_channel *pnext;         /* Redis: the pending (un)subscribe list */
    struct spillway_channel *snext;         /* Redis: the syncing list */
    uint64_t barrier;                       /* Redis: the barrier that activates it (0: none yet) */
    /* Redis: the ring above is a resume cache (redis.c): it holds every
     * message after cache_from; a fill read extends it back to fill_from. */
    uint8_t cached, filling;
    uint32_t fill_gen; /* bumped when a fill is given up: its replies are ignored */
    spillway_id cache_from, fill_from;
    uint64_t cache_used_ms;
    struct spillway_channel *cprev, *cnext; /* the cached channels, least recently used first */
    spillway_frame **fill;                  /* pages read so far, in id order */
    uint32_t fill_len, fill_cap;
    char name[];
} spillway_channel;

typedef struct spillway_chtab {
    spillway_channel **buckets;
    uint32_t nbuckets; /* power of two */
    uint32_t count;
    uint64_t seed;
} spillway_chtab;

/* A name a channel may have: 1..SPILLWAY_MAX_CHANNEL_LEN bytes, none of
 * them a control character, '"' or '\\' (names go unescaped into JSON and
 * into Redis keys). */
bool spillway_channel_name_ok(const char *s, size_t len);
int spillway_chtab_init(spillway_chtab *t);
void spillway_chtab_free(spillway_chtab *t);
spillway_channel *spillway_chtab_find(spillway_chtab *t, const char *name, size_t len);
spillway_channel *spillway_chtab_get(spillway_hub *hub, const char *name, size_t len);
/* Removes the channel from the table and frees it; the caller makes sure
 * nothing refers to it any more. */
void spillway_channel_drop(spillway_hub *hub, spillway_channel *ch);
/* A channel without subscribers is handed to the backend's
 * channel_unwanted (backend.h), which drops it now or later. */
void spillway_channel_maybe_release(spillway_hub *hub, spillway_channel *ch);
int spillway_channel_add_sub(spillway_channel *ch, struct spillway_conn *c, uint32_t slot);
void spillway_channel_remove_sub(spillway_hub *hub, spillway_channel *ch, uint32_t idx);
/* The stream leaves every channel it is on (before spillway_conn_close). */
void spillway_channel_leave_all(spillway_hub *hub, struct spillway_conn *c);
void spillway_channel_fanout(spillway_hub *hub, spillway_channel *ch, spillway_frame *f);
/* The busiest channels of the table (spillway_hub_busiest_channels, whose
 * caller holds loop_lock). */
size_t spillway_chtab_busiest(spillway_hub *hub, spillway_channel_info *out, size_t max);
int spillway_backlog_push(spillway_hub *hub, spillway_channel *ch, spillway_frame *f);
void spillway_backlog_clear(spillway_hub *hub, spillway_channel *ch);
/* Stores (without new references) the ring's frames newer than `after` in
 * out (room for ring_len entries); returns how many. */
size_t spillway_backlog_collect(spillway_channel *ch, spillway_id after, spillway_frame **out);
/* Drops the oldest frames until at most max are left (they count as
 * trimmed). */
void spillway_backlog_trim(spillway_hub *hub, spillway_channel *ch, uint32_t max);
/* Replaces the ring with `ring` (n frames in id order, owned by the
 * channel from now on); the first `added` are new to the backlog's
 * statistics, the rest were in the old ring. */
void spillway_backlog_adopt(spillway_hub *hub, spillway_channel *ch, spillway_frame **ring, uint32_t n,
                            uint32_t added);

#endif
