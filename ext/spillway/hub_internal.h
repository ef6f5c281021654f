/*
 * Internal state of the hub, shared by the files of the C core (hub.c,
 * conn.c, channel.c, redis.c). Everything in here belongs to the reactor
 * thread unless a field says otherwise.
 */
#ifndef SPILLWAY_HUB_INTERNAL_H
#define SPILLWAY_HUB_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/uio.h>

#include "backend.h"
#include "commands.h"
#include "frame.h"
#include "hub.h"
#include "log.h"
#include "queue.h"

/* Relaxed atomics: the statistics (hub.h, spillway_stats), written by the
 * reactor, read by any thread. */
#define STAT_ADD(hub, field, n) atomic_fetch_add_explicit(&(hub)->field, (n), memory_order_relaxed)
#define STAT_SUB(hub, field, n) atomic_fetch_sub_explicit(&(hub)->field, (n), memory_order_relaxed)
#define STAT_SET(hub, field, v) atomic_store_explicit(&(hub)->field, (v), memory_order_relaxed)
#define STAT_GET(hub, field) atomic_load_explicit(&(hub)->field, memory_order_relaxed)

/* What an epoll event points at: the first member of every registered
 * object. */
enum spillway_kind {
    SW_KIND_CONN = 1,
    SW_KIND_WAKE,
    SW_KIND_REDIS,
    SW_KIND_RESOLVER
};

typedef struct spillway_handle {
    int kind;
    int fd;
} spillway_handle;

/* Hard ceilings of the configurable limits (the binding checks the
 * configured values against them). */
#define SPILLWAY_MAX_CHANNEL_LEN 1024
#define SPILLWAY_MAX_CHANNELS_PER_CONN 1024
#define SPILLWAY_IOV_BATCH 256

/* ---- channels ---------------------------------------------------------- */

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
    uint8_t rstate;
    uint8_t pad_;
    uint8_t in_plist;  /* on the pending (un)subscribe list */
    uint8_t lingering; /* on the linger list (Redis: subscribed, no subscriber) */
    uint8_t mark;      /* scratch flag for one operation */
    uint8_t in_slist;  /* on the syncing list */
    spillway_sub *subs;
    uint32_t nsubs, capsubs;
    /* memory backend backlog: a ring of frames in id order */
    spillway_frame **ring;
    uint32_t ring_cap, ring_start, ring_len;
    spillway_id trimmed; /* highest id ever dropped from the ring */
    spillway_id last;    /* highest id seen on this channel */
    uint64_t touched_ms; /* last message (memory) or last subscriber left (Redis linger) */
    struct spillway_channel *lprev, *lnext; /* LRU (memory) / linger list (Redis) */
    struct spillway_channel *pnext;         /* pending (un)subscribe list */
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

/* ---- connections ------------------------------------------------------- */

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
    SW_CF_QUEUED = 1u << 11      /* on the queued list: frames wait in it (outbox or held) */
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
    uint64_t held_bytes;
    struct spillway_conn *qprev, *qnext; /* the queued list (SW_CF_QUEUED) */
    struct spillway_conn *wprev, *wnext; /* heartbeat wheel slot list */
    struct spillway_conn *lnext;         /* dirty list */
    struct spillway_conn *dnext;         /* doomed list */
    uint32_t wslot;
    uint32_t inflight; /* Redis requests that point at this connection */
    uint32_t inbound;  /* bytes the client sent after its request (it should send none) */
    /* Redis: membership slots whose resume found no way back to the cursor
     * (resume cache, redis.c): a reset for them when the stream joins. */
    bool *pend_reset;
    const char *pend_reason; /* why, a static string */
} spillway_conn;

/* ---- the hub ----------------------------------------------------------- */

struct spillway_hub {
    spillway_config cfg; /* strings owned by the hub */
    pid_t owner;
    pthread_t thread;
    bool thread_started;
    atomic_bool running;
    atomic_bool abandoned; /* fork child: never touch anything again */
    int epfd;
    spillway_handle wake;
    spillway_queue q;
    pthread_mutex_t loop_lock; /* held by the reactor except in epoll_wait */
    struct spillway_hub *reg_next;
    spillway_cmd stop_cmd;
    atomic_bool stop_queued;

    /* memory backend id generator: guarded by the queue lock */
    spillway_id gen_last;

    /* ---- reactor only ---- */
    uint64_t now;
    bool stopping;
    spillway_chtab chans;
    spillway_frame *f_head, *f_open, *f_heartbeat, *f_retry;
    spillway_conn *dirty, *dirty_last; /* streams to flush, in the order they were marked */
    spillway_conn *doomed;
    /* Streams with frames waiting (outbox leftovers after a flush, or held
     * while joining): the ones the lag sweep and the memory budget look at.
     * out_mem: heap bytes of every frame in an outbox or held list, counted
     * once however many streams hold it, plus the entries pointing at them. */
    spillway_conn *queued;
    uint64_t out_mem;
    /* ms the loop spent outside epoll_wait: now - busy_ms is the clock of
     * lags, which stands still while the loop works (conn.c). */
    uint64_t busy_ms;
    spillway_conn **wheel;
    uint32_t wheel_slots, wheel_pos;
    uint64_t wheel_next_ms;
    spillway_id last;    /* highest message id this hub has seen */
    spillway_id origin;  /* memory: no id below this was ever issued here */
    spillway_id evicted; /* memory: highest id of a backlog that was dropped */
    spillway_channel *lru_head, *lru_tail;
    uint32_t lru_count; /* memory: channels that hold a backlog */
    struct iovec iov[SPILLWAY_IOV_BATCH];
    spillway_backend backend; /* backend.h: the hub calls it through this only */

    /* ---- shared, atomics ---- */
    atomic_uint_fast32_t reserved; /* open + being handed over */
    atomic_uint_fast64_t st_channels, st_published, st_delivered, st_dropped_slow,
        st_bytes_out, st_accepted, st_closed, st_fallback, st_fallback_total, st_resumes,
        st_resets, st_joining, st_backlog_messages, st_backlog_bytes, st_redis_connected,
        st_redis_reconnects, st_redis_messages, st_gap_repairs, st_async_failed, st_errors,
        st_iterations, st_outbox_bytes;
    /* async publish tickets: issued under the queue lock, done by the reactor */
    uint64_t async_issued;
    atomic_uint_fast64_t async_done;
    atomic_uint_fast64_t async_reported;   /* tickets up to here were reported by a flush */
    uint64_t failed_ring[64];              /* the latest failed tickets (flush_lock) */
    uint64_t failed_count;                 /* failed tickets ever (flush_lock) */
    atomic_uint_fast32_t async_waiting_count;
    atomic_uint_fast32_t flush_waiters;
    pthread_mutex_t flush_lock;
    pthread_cond_t flush_cond;
    /* last error */
    pthread_mutex_t err_lock;
    char last_error[256];

    /* the log, for the Ruby thread that writes it (err_lock) */
    spillway_log_slot log[SW_LOG_KINDS];
    pthread_cond_t log_cond; /* CLOCK_MONOTONIC; signalled when an entry is due, and at the stop */
};

/* streams.c */
/* The end of a loop iteration for the streams: flush the dirty ones, close
 * the doomed (out of epoll, out of their channels), weigh the memory budget. */
void spillway_hub_flush_and_close(spillway_hub *hub);
/* Closes every stream (hub free; no last frames). */
void spillway_streams_close_all(spillway_hub *hub);

/* channel.c */
int spillway_chtab_init(spillway_chtab *t);
void spillway_chtab_free(spillway_chtab *t);
spillway_channel *spillway_chtab_find(spillway_chtab *t, const char *name, size_t len);
spillway_channel *spillway_chtab_get(spillway_hub *hub, const char *name, size_t len);
void spillway_channel_drop(spillway_hub *hub, spillway_channel *ch);
void spillway_channel_maybe_release(spillway_hub *hub, spillway_channel *ch);
int spillway_channel_add_sub(spillway_channel *ch, spillway_conn *c, uint32_t slot);
void spillway_channel_remove_sub(spillway_hub *hub, spillway_channel *ch, uint32_t idx);
/* The stream leaves every channel it is on (before spillway_conn_close). */
void spillway_channel_leave_all(spillway_hub *hub, spillway_conn *c);
void spillway_channel_fanout(spillway_hub *hub, spillway_channel *ch, spillway_frame *f);
int spillway_backlog_push(spillway_hub *hub, spillway_channel *ch, spillway_frame *f);
void spillway_backlog_clear(spillway_hub *hub, spillway_channel *ch);
size_t spillway_backlog_collect(spillway_channel *ch, spillway_id after, spillway_frame **out);
/* Replaces the ring with `ring` (n frames in id order, owned by the
 * channel from now on); the first `added` are new to the backlog's
 * statistics, the rest were in the old ring. */
/* Drops the oldest frames until at most max are left (they count as
 * trimmed). */
void spillway_backlog_trim(spillway_hub *hub, spillway_channel *ch, uint32_t max);
void spillway_backlog_adopt(spillway_hub *hub, spillway_channel *ch, spillway_frame **ring, uint32_t n,
                            uint32_t added);

/* conn.c */
spillway_conn *spillway_conn_new(spillway_hub *hub, int fd, unsigned flags);
int spillway_conn_push(spillway_hub *hub, spillway_conn *c, spillway_frame *f);
void spillway_conn_deliver(spillway_hub *hub, spillway_conn *c, spillway_frame *f);
void spillway_conn_mark_dirty(spillway_hub *hub, spillway_conn *c);
void spillway_conn_flush(spillway_hub *hub, spillway_conn *c);
void spillway_conn_doom(spillway_hub *hub, spillway_conn *c, bool slow);
void spillway_conn_close(spillway_hub *hub, spillway_conn *c);
void spillway_conn_release(spillway_hub *hub, spillway_conn *c);
void spillway_conn_on_event(spillway_hub *hub, spillway_conn *c, uint32_t events);
/* reason: why the flagged channels get a reset, for the log line (NULL
 * when reset is NULL or all false). */
void spillway_conn_replay(spillway_hub *hub, spillway_conn *c, spillway_frame **frames,
                          size_t n, const bool *reset, spillway_id now, const char *reason);
void spillway_conn_send_reset(spillway_hub *hub, spillway_conn *c, const bool *reset,
                              spillway_id now, const char *reason);
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
int spillway_frame_cmp_id(const void *a, const void *b);

#endif
