/*
 * Connections (conn.c): one per open stream. A stream's outbox is a ring of
 * references to shared frames, written with one send()/sendmsg() per flush;
 * slow streams are judged by lag and by what they alone keep alive
 * (docs/design.md, the loop). The heartbeat wheel (wheel.c) gives every
 * stream one heartbeat per period.
 */
#ifndef SPILLWAY_CONN_H
#define SPILLWAY_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include "channel.h"
#include "frame.h"
#include "handle.h"
#include "hub.h"
#include "id.h"

/* Frames one sendmsg() gathers at most. */
#define SPILLWAY_IOV_BATCH 256

enum spillway_conn_flag {
    SW_CF_JOINING = 1u << 0,  /* waiting for its resume read (Redis) */
    SW_CF_DOOMED = 1u << 1,   /* will be closed at the end of the iteration */
    SW_CF_DIRTY = 1u << 2,    /* on the dirty list: flush at the end of the iteration */
    SW_CF_FALLBACK = 1u << 3, /* a socket pair pumped by a Ruby thread */
    SW_CF_TCP = 1u << 4,
    SW_CF_ZOMBIE = 1u << 5,   /* closed, memory kept until its Redis requests answer */
    SW_CF_SLOW = 1u << 6,     /* doomed for being too slow */
    SW_CF_BLOCKED = 1u << 7,  /* the last write hit EAGAIN: wait for EPOLLOUT */
    SW_CF_RESUME_SENT = 1u << 8, /* its resume read is on the command link */
    SW_CF_MARK = 1u << 10,       /* scratch flag for one operation */
    SW_CF_QUEUED = 1u << 11,     /* on the queued list: frames wait in it (outbox or held) */
    SW_CF_TURBO = 1u << 12,      /* resets go out as a Turbo refresh (SPILLWAY_ATTACH_TURBO) */
    SW_CF_POLL = 1u << 13,       /* one answer, then close (SPILLWAY_ATTACH_POLL, polls.c) */
    SW_CF_LONG_POLL = 1u << 14,  /* the answer waits for a frame or the timeout */
    SW_CF_ANSWERED = 1u << 15,   /* the answer is in the outbox: close once it is written */
    SW_CF_HEAD = 1u << 16,       /* the hub writes the HTTP head (SPILLWAY_ATTACH_HEAD) */
    SW_CF_CHANNEL = 1u << 17,    /* message frames name their channel (SPILLWAY_ATTACH_CHANNEL) */
    SW_CF_ALL = 1u << 18         /* every targeted message too (SPILLWAY_ATTACH_ALL) */
};

typedef struct spillway_member {
    spillway_channel *ch;
    uint32_t idx; /* index of this connection in ch->subs */
} spillway_member;

/* A run of outbox entries queued at one time: the number of its first
 * entry and the lag clock then. */
typedef struct spillway_run {
    uint32_t first;
    uint32_t t;
} spillway_run;

typedef struct spillway_conn {
    spillway_handle h; /* first */
    uint32_t flags;
    uint16_t nmem;
    spillway_member *mem;
    spillway_id last;   /* highest message id queued on this stream */
    spillway_id cursor; /* the resume point the client asked for; without one
                           (Redis), hub->last when the stream was attached */
    bool has_cursor, cursor_ok;
    /* outbox: a ring of frame references; out_off bytes of the first are
     * sent. Enqueue times (the lag clock, 32 bits of ms) are kept per run of
     * entries queued together (conn.c): head_t is the head's, so the lag. */
    spillway_frame **out;
    uint32_t out_cap, out_start, out_len, out_off;
    uint64_t out_bytes; /* frame bytes not yet written */
    uint32_t head_t, tail_t; /* the runs of the head and of the newest entry */
    uint32_t pushed;         /* entries ever queued (wraps): numbers them */
    uint32_t runs_cap, runs_start, runs_len;
    spillway_run *runs; /* the runs after the head's, oldest first */
    /* The size of the entries at the head that a resume replay queued (and
     * how many): that much over outbox_limit is allowed (spillway_conn_replay). */
    uint64_t replay_bytes;
    uint32_t replay_n;
    uint32_t held_t; /* when the first held frame came, on the lag clock */
    /* Bytes of the frames only this stream keeps alive (frame.h: the
     * frames' `holders` point here). */
    uint64_t excl;
    /* The last write that took bytes, or when frames began to wait: on
     * the lag clock, and in plain ms (the budget's tie-break). */
    uint32_t progress_t, progress_ms;
    /* live frames that arrived while joining (Redis) */
    spillway_frame **held;
    uint32_t held_len, held_cap;
    struct spillway_conn *qprev, *qnext; /* the queued list (SW_CF_QUEUED) */
    struct spillway_conn *wprev, *wnext; /* heartbeat wheel slot list */
    struct spillway_conn *aprev, *anext; /* the list of every stream (hub->streams) */
    struct spillway_conn *pprev, *pnext; /* the held long-polls, oldest first (polls.c) */
    uint64_t poll_deadline;              /* a long-poll is answered empty at this hub->now */
    struct spillway_targets *ident;      /* who the stream is (targets.h), or NULL; one reference */
    struct spillway_conn *dirty_next;    /* the dirty list (SW_CF_DIRTY) */
    struct spillway_conn *doomed_next;   /* the doomed list (SW_CF_DOOMED) */
    uint32_t wslot;
    uint32_t inflight; /* Redis requests that point at this connection */
    uint32_t inbound;  /* bytes the client sent after its request (it should send none) */
    /* Redis: membership slots whose resume found no way back to the cursor
     * (resume cache, redis.c): a reset for them when the stream joins. */
    bool *pend_reset;
    const char *pend_reason; /* why, a static string */
    uint64_t serial;         /* numbers the hub's streams, from 1 (events) */
    const char *why;         /* why it was doomed, a static string (events) */
} spillway_conn;

spillway_conn *spillway_conn_new(spillway_hub *hub, int fd, unsigned flags);
int spillway_conn_push(spillway_hub *hub, spillway_conn *c, spillway_frame *f);
void spillway_conn_deliver(spillway_hub *hub, spillway_conn *c, spillway_frame *f);
void spillway_conn_mark_dirty(spillway_hub *hub, spillway_conn *c);
void spillway_conn_flush(spillway_hub *hub, spillway_conn *c);
void spillway_conn_doom(spillway_hub *hub, spillway_conn *c, bool slow);
/* The same, saying why (a static string: "client gone", "max_lag", ...);
 * the first reason given stays. Without one the close says "slow" or
 * "error". */
void spillway_conn_doom_why(spillway_hub *hub, spillway_conn *c, bool slow, const char *why);
/* Whether a TCP stream's peer stopped acknowledging for most of a heartbeat
 * while bytes were in flight (TCP_INFO); asked by the wheel before each
 * heartbeat. */
bool spillway_conn_vanished(const spillway_hub *hub, const spillway_conn *c);
/* Dooms a vanished stream; its close sends a reset. */
void spillway_conn_abandon_vanished(spillway_hub *hub, spillway_conn *c);
void spillway_conn_close(spillway_hub *hub, spillway_conn *c);

void spillway_conn_release(spillway_hub *hub, spillway_conn *c);
void spillway_conn_on_event(spillway_hub *hub, spillway_conn *c, uint32_t events);
/* The part of the outbox that may pass outbox_limit (a replay), the held
 * frames dropped, the stream off the list of those with frames waiting
 * (when nothing waits): for replay.c. */
void spillway_conn_exempt_queued(spillway_conn *c);
void spillway_conn_held_free(spillway_hub *hub, spillway_conn *c, spillway_frame **held, uint32_t len);
void spillway_conn_queued_remove(spillway_hub *hub, spillway_conn *c);

/* The i-th entry of the outbox from its head (i < out_len). */
static inline spillway_frame *spillway_conn_out(const spillway_conn *c, uint32_t i)
{
    return c->out[(c->out_start + i) & (c->out_cap - 1)];
}
/* Drops the first n entries of the outbox unsent (polls.c: they went into
 * its answer). */
void spillway_conn_drop_out(spillway_hub *hub, spillway_conn *c, uint32_t n);

/* replay.c. reason: why the flagged channels get a reset, for the log line
 * (NULL when reset is NULL or all false). */
void spillway_conn_replay(spillway_hub *hub, spillway_conn *c, spillway_frame **frames,
                          size_t n, const bool *reset, spillway_id now, const char *reason);
void spillway_conn_send_reset(spillway_hub *hub, spillway_conn *c, const bool *reset,
                              spillway_id now, const char *reason);
/* Dooms the streams with frames waiting that are too slow now (lag, or
 * alone with too much while taking nothing). */
void spillway_conn_judge_queued(spillway_hub *hub);

/* wheel.c: a stream sits in one slot for life and gets one heartbeat per
 * period; the tick runs the slots that are due, then judges the waiting.
 * Insert and remove also keep hub->streams, the list of every stream
 * (newest first): what walks all streams walks that, never the wheel. */
void spillway_wheel_insert(spillway_hub *hub, spillway_conn *c);
void spillway_wheel_remove(spillway_hub *hub, spillway_conn *c);
void spillway_wheel_tick(spillway_hub *hub);
/* How a doomed stream is closed at once (streams.c: out of epoll, out of
 * its channels, spillway_conn_close). */
typedef void spillway_close_fn(spillway_hub *hub, spillway_conn *c);
/* After the doomed streams of an iteration are closed: when the frames
 * waiting in outboxes take more than memory_limit, closes the laggiest
 * streams with close_fn until they do not. */
void spillway_conn_budget(spillway_hub *hub, spillway_close_fn *close_fn);
/* replay.c: qsort order of frame pointers by id. */
int spillway_frame_cmp_id(const void *a, const void *b);

#endif
