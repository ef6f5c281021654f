/*
 * The Redis backend's private header: its state (struct spillway_redis),
 * the command link's requests, small helpers, and what its files call in
 * each other. The backend is split by concern, layered like the core (no
 * two of its files need each other):
 *
 *   redis.c          lifecycle, the backend's table, the links' hooks, the
 *                    subscriber link's replies (messages, confirmations)
 *   redis_subs.c     subscriptions and barriers          -> redis_resume.c
 *   redis_repair.c   gap repair                          -> redis_resume.c
 *   redis_resume.c   joining, resume reads, resume cache
 *   redis_publish.c  async publishes
 *
 * docs/design.md, "Redis links", says why it works the way it does.
 */
#ifndef SPILLWAY_REDIS_INTERNAL_H
#define SPILLWAY_REDIS_INTERNAL_H

#include <stdio.h>
#include <string.h>

#include "hub_internal.h"
#include "idem.h"
#include "redis_link.h"
#include "scripts.h"
#include "tickets.h"

#define SUBSCRIBE_BATCH 1000u

#define HELD_MAX_FRAMES 200000u

#define REPAIR_BATCH 256u

#define REPAIR_ATTEMPTS 3u /* malformed replies only: errors and lost links are retried */

#define BARRIER_RETRY_MS 100u

#define RETRY_MIN_MS 50u   /* backoff of a backlog read that Redis refused for now */

#define RETRY_MAX_MS 2000u

struct held_item {
    spillway_frame *f;
    char *name; /* the channel by name: it may come and go meanwhile */
};

/* A gap repair is read in batches of channels (one script run each, so
 * no run blocks Redis for long) and merged here before anything goes out. */
struct repair_acc {
    spillway_frame **frames;
    uint32_t *chan; /* index into names, per frame */
    size_t n, cap;
    char **names;   /* every channel of the repair */
    uint8_t *reset; /* per name */
    uint32_t nnames;
    /* The oldest point any batch read saw (each reply's element 1): every
     * message up to it is in the repair or behind a reset; every later one
     * arrives live (it was published after the barriers), so it is held. */
    spillway_id seen;
    bool have_seen;
};

typedef struct spillway_redis spillway_redis;

struct spillway_redis {
    spillway_hub *hub;
    spillway_rlink sub, cmd;
    spillway_keys keys; /* the namespace's key names (scripts.h) */
    char *ctl;        /* "NS!<pid>.<random>": this hub's control channel */
    size_t ctl_len;
    int ctl_state;    /* SW_RS_NONE, SW_RS_SENT, SW_RS_ACTIVE */
    spillway_channel *plist;                 /* pending (un)subscribes */
    spillway_channel *linger_head, *linger_tail;
    spillway_channel *slist;                 /* SYNCING channels */
    uint32_t sent_subs;                      /* channels in SW_RS_SENT */
    uint64_t barrier_seq;                    /* the last barrier issued */
    spillway_cmd_publish *aq_head, *aq_tail; /* async publishes waiting for the cmd link */
    /* gap repair */
    bool need_repair, repair_inflight, holding, overflowed, repair_error;
    spillway_id repair_cursor;
    uint64_t sub_epoch;
    uint32_t repair_outstanding; /* batches sent and not answered */
    uint32_t repair_failures;    /* attempts answered with a malformed reply, this repair */
    uint64_t repair_retry_at;    /* after Redis refused a repair read (LOADING, BUSY, ...) */
    uint32_t repair_backoff_ms;
    uint64_t resume_retry_at;    /* after Redis refused a resume read */
    uint32_t resume_backoff_ms;
    struct repair_acc acc;
    struct held_item *held;
    size_t held_len, held_cap;
    /* resume cache: channels with one, least recently used first */
    spillway_channel *cache_head, *cache_tail;
    uint64_t fill_bytes; /* frames read by fills in flight, not yet in a ring */
    uint64_t barrier_retry_at;   /* after a failed barrier */
    /* The newest message received live on a channel with streams: asked
     * about on every new command link (scripts.h, the witness). */
    spillway_id w_id;
    size_t w_chlen;
    char w_chan[SPILLWAY_MAX_CHANNEL_LEN];
};

/* The requests of the command link, each with its continuation (the
 * callbacks below) and its own privdata: */
enum resume_mode {
    RESUME_CURSOR, /* the backlog after the cursor, with trim flags */
    RESUME_NOW     /* no cursor to resume from: only the position ("n" to the script) */
};

struct resume_req { /* a stream's own backlog read */
    spillway_conn *conn;
    enum resume_mode mode;
    bool eval; /* sent as EVAL (after a NOSCRIPT) */
};

struct fill_req { /* a page of one channel's backlog for the resume cache */
    uint32_t gen;       /* the channel's fill_gen when sent */
    spillway_id cursor; /* where the page starts */
    char name[];        /* the channel, by name: it may go meanwhile */
};

struct repair_req { /* one batch of a gap repair */
    uint64_t epoch;         /* the sub link's epoch when sent */
    uint32_t nch, base;     /* its channels: acc.names[base .. base + nch) */
};

struct barrier_req {
    uint64_t seq;
};

struct publish_req { /* an async publish */
    spillway_cmd_publish *cmd;
    bool eval;
};

/* Scripts the command link loads (its sha[] in this order). */
enum { SCRIPT_PUBLISH, SCRIPT_RESUME, SCRIPT_BARRIER, SCRIPTS };

/* Every function of this file runs with this backend installed. */
static inline spillway_redis *R(spillway_hub *hub)
{
    return hub->backend.self;
}

/* ---- what the files call in each other -------------------------------- */

/* redis_subs.c: subscriptions (batched, lingering) and barriers */
void spillway_redis_drop_channel(spillway_hub *hub, spillway_channel *ch);
void spillway_redis_flush_subscriptions(spillway_hub *hub);
void spillway_redis_linger_unlink(spillway_redis *r, spillway_channel *ch);
void spillway_redis_on_barrier(spillway_hub *hub, uint64_t seq, const spillway_id *id);
void spillway_redis_on_subscribed(spillway_hub *hub, spillway_channel *ch);
void spillway_redis_on_unsubscribed(spillway_hub *hub, spillway_channel *ch);
bool spillway_redis_parse_barrier(const spillway_redis *r, const spillway_frame *f, uint64_t *seq, spillway_id *id,
                                  bool *has_id);
void spillway_redis_plist_add(spillway_redis *r, spillway_channel *ch);
void spillway_redis_channel_unwanted(spillway_hub *hub, spillway_channel *ch);
void spillway_redis_channel_wanted(spillway_hub *hub, spillway_channel *ch);
void spillway_redis_refuse_sent(spillway_hub *hub);
void spillway_redis_try_barrier(spillway_hub *hub);

/* redis_join.c: joining streams and the resume cache; redis_resume.c: a
 * stream's own resume read; redis_read.c: the resume script's command and
 * reply */
void spillway_redis_cache_drop(spillway_hub *hub, spillway_channel *ch);
void spillway_redis_cache_drop_all(spillway_hub *hub);
void spillway_redis_cache_push(spillway_hub *hub, spillway_channel *ch, spillway_frame *f);
void spillway_redis_cache_sweep(spillway_hub *hub);
/* The stream's own read of every channel after its cursor (eval: by text,
 * after NOSCRIPT). */
void spillway_redis_send_resume(spillway_hub *hub, spillway_conn *c, bool eval);
long spillway_redis_collect_frames(spillway_rv *flat, spillway_frame ***frames, uint32_t **idx);
void spillway_redis_join_all_ready(spillway_hub *hub);
void spillway_redis_join_if_ready(spillway_hub *hub, spillway_conn *c);
spillway_id spillway_redis_parse_last(spillway_hub *hub, const spillway_rv *v);
int spillway_redis_queue_resume(spillway_hub *hub, spillway_rq *q, enum resume_mode mode, spillway_channel **chans,
                                uint32_t n, const char *cursor, uint32_t count, bool eval);
void spillway_redis_join(spillway_hub *hub, spillway_conn *c);
bool spillway_redis_resume_shape_ok(const spillway_rv *v, uint32_t n);

/* redis_repair.c: gap repair after the subscriber link dropped */
void spillway_redis_acc_clear(struct repair_acc *acc);
void spillway_redis_hold(spillway_hub *hub, spillway_channel *ch, spillway_frame *f);
void spillway_redis_try_repair(spillway_hub *hub);

/* redis_publish.c: async publishes on the command link */
void spillway_redis_async_finish(spillway_hub *hub, spillway_cmd_publish *cmd, bool ok);
void spillway_redis_publish_async(spillway_hub *hub, spillway_cmd_publish *cmd);
void spillway_redis_send_async_queue(spillway_hub *hub);


/* ---- small helpers ----------------------------------------------------- */

/* A request that pointed at a stream is over. */
static inline void conn_unref(spillway_hub *hub, spillway_conn *c)
{
    c->inflight--;
    c->flags &= ~SW_CF_RESUME_SENT;
    if ((c->flags & SW_CF_ZOMBIE) && c->inflight == 0) {
        c->flags &= ~SW_CF_ZOMBIE;
        spillway_conn_release(hub, c);
    }
}

/* The id of a frame read from Redis, and its targets (targets.h). */
static inline int frame_set_id(spillway_frame *f)
{
    uint32_t end = 4;
    const char *why;
    if (f->len < 6 || memcmp(f->data, "id: ", 4) != 0) return -1;
    while (end < f->len && end < 4 + SPILLWAY_ID_TEXT_MAX && f->data[end] != '\n') end++;
    if (end >= f->len || f->data[end] != '\n') return -1;
    if (spillway_id_parse(f->data + 4, end - 4, &f->id) != 0) return -1;
    /* A targeted message: its targets line comes out here (targets.h). */
    return spillway_targets_take(f, &f->targets, &why);
}

/* Takes the frame out of a reply value (the value keeps nothing). */
static inline spillway_frame *steal(spillway_rv *v)
{
    spillway_frame *f;
    if (v == NULL || v->type != SW_RV_STRING || v->str == NULL) return NULL;
    f = v->str;
    v->str = NULL;
    return f;
}

/* An error reply's text (or a note that the reply was malformed, and
 * what it was). */
static inline void rv_message(const spillway_rv *v, char *buf, size_t n)
{
    char what[100];
    if (v != NULL && v->type == SW_RV_ERROR && v->str != NULL)
        spillway_rv_text(v, 150, buf, n);
    else
        snprintf(buf, n, "malformed reply (%s)", spillway_rv_describe(v, what, sizeof(what)));
}

static inline bool is_str(const spillway_rv *v)
{
    return v != NULL && v->type == SW_RV_STRING && v->str != NULL;
}

static inline bool is_type(const spillway_rv *v, int type)
{
    return v != NULL && v->type == type;
}

static inline bool noscript(const spillway_rv *v)
{
    return v->type == SW_RV_ERROR && spillway_rv_starts(v, "NOSCRIPT");
}

/* A backlog read that Redis refused for now (LOADING while it reads its
 * AOF, BUSY, MASTERDOWN, OOM, a paused client timing out...) is sent again
 * after a growing pause, never turned into a reset: the backlog may still
 * serve it. Returns when to try next. */
static inline uint64_t retry_later(spillway_hub *hub, uint32_t *backoff_ms)
{
    *backoff_ms = *backoff_ms == 0 ? RETRY_MIN_MS : SW_MIN(*backoff_ms * 2, RETRY_MAX_MS);
    /* 75-100% of the pause, so that processes do not retry in step. */
    return hub->now + *backoff_ms - (uint64_t)(spillway_mono_ms() % (*backoff_ms / 4 + 1));
}

/* EVALSHA when the link knows the script, EVAL otherwise (or after a
 * NOSCRIPT). */
static inline int script_head(spillway_buf *b, size_t argc, bool eval, const char *sha, const char *text)
{
    int bad = spillway_buf_begin(b, argc);
    if (eval || sha[0] == '\0') {
        bad |= spillway_buf_arg(b, "EVAL", 4);
        bad |= spillway_buf_arg(b, text, strlen(text));
    } else {
        bad |= spillway_buf_arg(b, "EVALSHA", 7);
        bad |= spillway_buf_arg(b, sha, 40);
    }
    return bad;
}

/* The reply does not fit its request (Redis does not answer that): the
 * replies may be out of step with the requests from here on. The request is
 * handled as if the link had dropped before its answer (a resume or a
 * repair is read again after the reconnect; a publish goes out again), and
 * the link is dropped so that the next one starts in step. */
static inline void misfit(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, const char *why)
{
    q->fn(hub, l, q, NULL);
    spillway_link_protocol_error(hub, l, why);
}

/* Whether v can answer a backlog read over nch channels (an error always
 * can: Redis refused, and each kind handles that). */
static inline bool backlog_reply_fits(const spillway_rv *v, uint32_t nch, char *why, size_t n)
{
    char what[100];
    if (v->type == SW_RV_ERROR || spillway_redis_resume_shape_ok(v, nch)) return true;
    snprintf(why, n, "the backlog read over %u channels got %s, not the resume script's answer", nch,
             spillway_rv_describe(v, what, sizeof(what)));
    return false;
}

/* The barrier and publish scripts return an id. */
static inline bool id_reply_fits(const spillway_rv *v, const char *script, char *why, size_t n)
{
    char what[100];
    if (v->type == SW_RV_ERROR || is_str(v)) return true;
    snprintf(why, n, "a %s script got %s instead of an id", script, spillway_rv_describe(v, what, sizeof(what)));
    return false;
}

#endif
