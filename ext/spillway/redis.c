/*
 * The Redis backend of a hub: two links (redis_link.c) owned by the reactor.
 *
 *   sub  SUBSCRIBE / UNSUBSCRIBE (batched, lingering), pub/sub messages,
 *        PING health checks. Every message is a whole SSE frame: it is fanned
 *        out as it arrives, without another copy.
 *   cmd  resume reads (a Lua script over the channels' backlogs), gap repair,
 *        barriers, async publishes (EVALSHA, pipelined).
 *
 * Two links because in RESP2 a subscribed connection can run no other
 * command, and Debian's hiredis 0.14 has no RESP3 to lift that.
 *
 * Ordering is what makes this exact. Message ids strictly increase in the
 * order Redis ran the publish scripts, and one connection receives pub/sub
 * messages in that order. So once a SUBSCRIBE is confirmed every later
 * message arrives, and hub->last (the highest id seen on the sub link) is a
 * cursor for every subscribed channel... except for what was published on a
 * channel before its subscription: those ids may be above hub->last and
 * never arrive. A barrier closes that: after confirmations, the cmd link
 * runs a script that reads the newest id and PUBLISHes it on this hub's
 * private control channel. It arrives on the sub link in order, so when it
 * does, hub->last can take that id, and the channels it covers are ACTIVE:
 * hub->last is then a cursor for them without exception.
 *
 *   join:   a stream subscribes; once its channels are ACTIVE it is live from
 *           the hub's position when it was attached (frames that arrived
 *           meanwhile were held), or, with a cursor, after a backlog read
 *           merged with what arrived meanwhile, without duplicates (conn.c).
 *   repair: when the sub link drops, hub->last is remembered; after the
 *           reconnect every channel is subscribed and synced again, its
 *           backlog read from there, live frames held meanwhile, all of it
 *           delivered in id order.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    char *chan_prefix; /* "NS:" */
    size_t chan_prefix_len;
    char *key_prefix; /* "NS:s:" */
    size_t key_prefix_len;
    char *idkey;      /* "NS:id" */
    char *sincekey;   /* "NS:since" */
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

static spillway_rq_fn on_resume_rq, on_fill_rq, on_repair_rq, on_barrier_rq, on_publish_rq;

/* Every function of this file runs with this backend installed. */
static spillway_redis *R(spillway_hub *hub)
{
    return hub->backend.self;
}

/* ---- small helpers ----------------------------------------------------- */

/* A request that pointed at a stream is over. */
static void conn_unref(spillway_hub *hub, spillway_conn *c)
{
    c->inflight--;
    c->flags &= ~SW_CF_RESUME_SENT;
    if ((c->flags & SW_CF_ZOMBIE) && c->inflight == 0) {
        c->flags &= ~SW_CF_ZOMBIE;
        spillway_conn_release(hub, c);
    }
}

static int frame_set_id(spillway_frame *f)
{
    uint32_t end = 4;
    if (f->len < 6 || memcmp(f->data, "id: ", 4) != 0) return -1;
    while (end < f->len && end < 4 + SPILLWAY_ID_TEXT_MAX && f->data[end] != '\n') end++;
    if (end >= f->len || f->data[end] != '\n') return -1;
    return spillway_id_parse(f->data + 4, end - 4, &f->id);
}

/* Takes the frame out of a reply value (the value keeps nothing). */
static spillway_frame *steal(spillway_rv *v)
{
    spillway_frame *f;
    if (v == NULL || v->type != SW_RV_STRING || v->str == NULL) return NULL;
    f = v->str;
    v->str = NULL;
    return f;
}

/* An error reply's text (or a note that the reply was malformed, and
 * what it was). */
static void rv_message(const spillway_rv *v, char *buf, size_t n)
{
    char what[100];
    if (v != NULL && v->type == SW_RV_ERROR && v->str != NULL)
        spillway_rv_text(v, 150, buf, n);
    else
        snprintf(buf, n, "malformed reply (%s)", spillway_rv_describe(v, what, sizeof(what)));
}

static bool is_str(const spillway_rv *v)
{
    return v != NULL && v->type == SW_RV_STRING && v->str != NULL;
}

static bool is_type(const spillway_rv *v, int type)
{
    return v != NULL && v->type == type;
}

static bool noscript(const spillway_rv *v)
{
    return v->type == SW_RV_ERROR && spillway_rv_starts(v, "NOSCRIPT");
}

static void update_connected(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    STAT_SET(hub, st_redis_connected, r->sub.state == SW_LS_READY && r->cmd.state == SW_LS_READY ? 1 : 0);
}

/* A backlog read that Redis refused for now (LOADING while it reads its
 * AOF, BUSY, MASTERDOWN, OOM, a paused client timing out...) is sent again
 * after a growing pause, never turned into a reset: the backlog may still
 * serve it. Returns when to try next. */
static uint64_t retry_later(spillway_hub *hub, uint32_t *backoff_ms)
{
    *backoff_ms = *backoff_ms == 0 ? RETRY_MIN_MS : SW_MIN(*backoff_ms * 2, RETRY_MAX_MS);
    /* 75-100% of the pause, so that processes do not retry in step. */
    return hub->now + *backoff_ms - (uint64_t)(spillway_mono_ms() % (*backoff_ms / 4 + 1));
}

/* EVALSHA when the link knows the script, EVAL otherwise (or after a
 * NOSCRIPT). */
static int script_head(spillway_buf *b, size_t argc, bool eval, const char *sha, const char *text)
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

/* ---- subscription bookkeeping ------------------------------------------ */

static void plist_add(spillway_redis *r, spillway_channel *ch)
{
    if (ch->in_plist) return;
    ch->in_plist = 1;
    ch->pnext = r->plist;
    r->plist = ch;
}

static void linger_unlink(spillway_redis *r, spillway_channel *ch)
{
    if (!ch->lingering) return;
    if (ch->linger_prev) ch->linger_prev->linger_next = ch->linger_next;
    else r->linger_head = ch->linger_next;
    if (ch->linger_next) ch->linger_next->linger_prev = ch->linger_prev;
    else r->linger_tail = ch->linger_prev;
    ch->linger_prev = ch->linger_next = NULL;
    ch->lingering = 0;
}

static void linger_add(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    if (ch->lingering) return;
    ch->linger_since_ms = hub->now;
    ch->lingering = 1;
    ch->linger_next = NULL;
    ch->linger_prev = r->linger_tail;
    if (r->linger_tail) r->linger_tail->linger_next = ch;
    else r->linger_head = ch;
    r->linger_tail = ch;
}

static void slist_unlink(spillway_redis *r, spillway_channel *ch)
{
    spillway_channel **pp = &r->slist;
    if (!ch->in_slist) return;
    while (*pp != NULL && *pp != ch) pp = &(*pp)->snext;
    if (*pp == ch) *pp = ch->snext;
    ch->snext = NULL;
    ch->in_slist = 0;
}

static void cache_drop(spillway_hub *hub, spillway_channel *ch);

static void drop_channel(spillway_hub *hub, spillway_channel *ch)
{
    cache_drop(hub, ch);
    linger_unlink(R(hub), ch);
    slist_unlink(R(hub), ch);
    spillway_channel_drop(hub, ch);
}

static void redis_channel_wanted(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    linger_unlink(r, ch);
    if (ch->rstate == SW_RS_NONE) {
        ch->rstate = SW_RS_PENDING;
        plist_add(r, ch);
    }
    /* PENDING, SENT, SYNCING: under way. ACTIVE: nothing to do.
     * UNSUB_SENT: the confirmation sees the subscriber and subscribes again. */
}

static void redis_channel_unwanted(spillway_hub *hub, spillway_channel *ch)
{
    switch (ch->rstate) {
    case SW_RS_NONE:
        if (!ch->in_plist) drop_channel(hub, ch);
        break;
    case SW_RS_ACTIVE:
    case SW_RS_SYNCING:
        /* Stay subscribed a little: a browser that reconnects at once
         * (navigation, retry) costs no Redis traffic. */
        linger_add(hub, ch);
        break;
    default:
        /* PENDING: the next batch drops it. SENT: the confirmation lingers
         * it. UNSUB_SENT: the confirmation drops it. */
        break;
    }
}

static bool conn_channels_active(const spillway_conn *c)
{
    for (uint32_t i = 0; i < c->nmem; i++)
        if (c->mem[i].ch->rstate != SW_RS_ACTIVE) return false;
    return true;
}

/* ---- async publishes --------------------------------------------------- */

static int queue_publish(spillway_hub *hub, spillway_cmd_publish *cmd, bool eval)
{
    spillway_redis *r = R(hub);
    spillway_rlink *l = &r->cmd;
    const spillway_redis_config *rc = &hub->cfg.redis;
    char maxlen[16], ttl[16], kttl[16];
    spillway_rq *q = spillway_rq_new(on_publish_rq, sizeof(struct publish_req));
    struct publish_req *pr;
    spillway_buf *b = &l->out;
    int bad;

    if (q == NULL) return -1;
    pr = q->privdata;
    pr->cmd = cmd;
    pr->eval = eval;
    size_t mark = b->len;
    snprintf(maxlen, sizeof(maxlen), "%u", rc->backlog_size);
    snprintf(ttl, sizeof(ttl), "%u", rc->backlog_ttl_s);
    snprintf(kttl, sizeof(kttl), "%u", cmd->key_ttl_ms);
    bad = script_head(b, 12, eval, l->sha[SCRIPT_PUBLISH], spillway_lua_publish);
    bad |= spillway_buf_arg(b, "4", 1);
    bad |= spillway_buf_arg(b, r->idkey, strlen(r->idkey));
    bad |= spillway_buf_arg2(b, r->key_prefix, r->key_prefix_len, cmd->channel, cmd->chlen);
    bad |= spillway_buf_arg(b, cmd->channel + cmd->chlen, cmd->keylen); /* "NS:k:<key>" */
    bad |= spillway_buf_arg(b, r->sincekey, strlen(r->sincekey));
    bad |= spillway_buf_arg2(b, r->chan_prefix, r->chan_prefix_len, cmd->channel, cmd->chlen);
    bad |= spillway_buf_arg(b, cmd->frame->data, cmd->frame->len);
    bad |= spillway_buf_arg(b, maxlen, strlen(maxlen));
    bad |= spillway_buf_arg(b, ttl, strlen(ttl));
    bad |= spillway_buf_arg(b, kttl, strlen(kttl));
    if (bad) {
        /* No half command may stay: it would shift every later reply. */
        b->len = mark;
        spillway_hub_error(hub, "Redis command link: out of memory");
        spillway_rq_free(q);
        return -1;
    }
    spillway_link_push_rq(hub, l, q);
    /* From here on Redis may run it and start the clock of its key; a
     * repeat of one that may have run keeps the first attempt's clock. */
    if (!cmd->maybe_ran) cmd->first_ms = hub->now;
    return 0;
}

static void async_finish(spillway_hub *hub, spillway_cmd_publish *cmd, bool ok)
{
    spillway_hub_async_done(hub, cmd->seq, ok);
    spillway_frame_unref(cmd->frame);
    free(cmd);
}

static void send_async_queue(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    while (r->aq_head != NULL && r->cmd.state == SW_LS_READY) {
        spillway_cmd_publish *cmd = r->aq_head;
        r->aq_head = (spillway_cmd_publish *)cmd->base.node.next;
        if (r->aq_head == NULL) r->aq_tail = NULL;
        if (cmd->maybe_ran &&
            !spillway_idem_may_resend(cmd->first_ms, cmd->key_ttl_ms, hub->now, hub->cfg.redis.command_timeout_ms)) {
            /* The link was down for longer than its key lives: sent again,
             * it might be published twice. */
            spillway_hub_error(hub, "async publish to %.*s: the command link dropped before Redis answered and "
                                    "stayed down past its idempotency key's TTL; it may not have been published",
                               (int)cmd->chlen, cmd->channel);
            async_finish(hub, cmd, false);
            continue;
        }
        if (queue_publish(hub, cmd, false) != 0) async_finish(hub, cmd, false);
    }
}

static void redis_publish_async(spillway_hub *hub, spillway_cmd_publish *cmd)
{
    spillway_redis *r = R(hub);
    if (r->cmd.state == SW_LS_READY && r->aq_head == NULL) {
        if (queue_publish(hub, cmd, false) != 0) async_finish(hub, cmd, false);
        return;
    }
    cmd->base.node.next = NULL;
    if (r->aq_tail) r->aq_tail->base.node.next = &cmd->base.node;
    else r->aq_head = cmd;
    r->aq_tail = cmd;
}

/* ---- backlog reads: resume and repair ---------------------------------- */

/* The resume script over chans, one cursor for all. */
static int queue_resume(spillway_hub *hub, spillway_rq *q, enum resume_mode mode, spillway_channel **chans,
                        uint32_t n, const char *cursor, uint32_t count, bool eval)
{
    const char *marg = mode == RESUME_CURSOR ? "c" : "n";
    spillway_redis *r = R(hub);
    spillway_buf *b = &r->cmd.out;
    char nkeys[16], ttl[16], cnt[16];
    size_t clen = strlen(cursor);
    int bad;

    size_t mark = b->len;
    snprintf(nkeys, sizeof(nkeys), "%u", n + 2);
    snprintf(ttl, sizeof(ttl), "%u", hub->cfg.redis.backlog_ttl_s);
    snprintf(cnt, sizeof(cnt), "%u", count);
    bad = script_head(b, 3 + 2 + n + 3 + n, eval, r->cmd.sha[SCRIPT_RESUME], spillway_lua_resume);
    bad |= spillway_buf_arg(b, nkeys, strlen(nkeys));
    bad |= spillway_buf_arg(b, r->idkey, strlen(r->idkey));
    bad |= spillway_buf_arg(b, r->sincekey, strlen(r->sincekey));
    for (uint32_t i = 0; i < n; i++)
        bad |= spillway_buf_arg2(b, r->key_prefix, r->key_prefix_len, chans[i]->name, chans[i]->namelen);
    bad |= spillway_buf_arg(b, marg, 1);
    bad |= spillway_buf_arg(b, ttl, strlen(ttl));
    bad |= spillway_buf_arg(b, cnt, strlen(cnt));
    for (uint32_t i = 0; i < n; i++) bad |= spillway_buf_arg(b, cursor, clen);
    if (bad) {
        b->len = mark;
        spillway_hub_error(hub, "Redis command link: out of memory");
        return -1;
    }
    spillway_link_push_rq(hub, &r->cmd, q);
    return 0;
}

static void send_resume(spillway_hub *hub, spillway_conn *c, bool eval)
{
    char cursor[SPILLWAY_ID_TEXT_MAX] = "0-0";
    enum resume_mode mode = c->cursor_ok ? RESUME_CURSOR : RESUME_NOW;
    spillway_channel **chans = malloc((c->nmem ? c->nmem : 1) * sizeof(*chans));
    spillway_rq *q = spillway_rq_new(on_resume_rq, sizeof(struct resume_req));
    struct resume_req *rr;

    if (chans == NULL || q == NULL) {
        free(chans);
        free(q);
        spillway_conn_doom(hub, c, false);
        return;
    }
    for (uint32_t i = 0; i < c->nmem; i++) chans[i] = c->mem[i].ch;
    if (mode == RESUME_CURSOR) spillway_id_format(c->cursor, cursor);
    rr = q->privdata;
    rr->conn = c;
    rr->mode = mode;
    rr->eval = eval;
    if (queue_resume(hub, q, mode, chans, c->nmem, cursor, 0, eval) != 0) {
        free(q);
        spillway_conn_doom(hub, c, false);
    } else {
        c->inflight++;
        c->flags |= SW_CF_RESUME_SENT;
    }
    free(chans);
}

static void join_if_ready(spillway_hub *hub, spillway_conn *c);
static spillway_id parse_last(spillway_hub *hub, const spillway_rv *v);
static long collect_frames(spillway_rv *flat, spillway_frame ***frames, uint32_t **idx);
static bool resume_shape_ok(const spillway_rv *v, uint32_t n);

/* ---- the resume cache -------------------------------------------------- */

/*
 * Streams that resume on a channel share one backlog read. While a channel
 * is ACTIVE, every message after hub->last arrives on the sub link, so a
 * ring that starts collecting live frames at that moment holds, from then
 * on, everything after cache_from (= hub->last then). A fill read of the
 * backlog from a cursor (paged: FILL_PAGE entries per read) extends it back
 * to that cursor. A stream whose cursor is at or after cache_from is served
 * from the ring, in the same iteration, without Redis: a deploy's thousands
 * of browsers reconnecting with the same Last-Event-ID cost one read, and
 * their replays are references to the same frames (ten clients that never
 * read a 32 MB replay hold 32 MB, not 320). Resumes during a repair (the
 * hub is holding live frames) take the direct path: one read per stream.
 *
 * Bounds: a ring keeps at most backlog_size frames (like Redis); a cache no
 * resume used for CACHE_IDLE_MS is dropped; all rings and fills together
 * stay under CACHE_BUDGET bytes (least recently used dropped first). A fill
 * that would pass the budget is given up and its streams get a reset for
 * the channel: a replay that large is not served.
 */
#define FILL_PAGE 512u
#define CACHE_IDLE_MS 10000u
#define CACHE_BUDGET ((uint64_t)64 << 20)

static uint64_t cache_bytes(spillway_hub *hub)
{
    return atomic_load_explicit(&hub->st_backlog_bytes, memory_order_relaxed) + R(hub)->fill_bytes;
}

static void fill_clear(spillway_redis *r, spillway_channel *ch)
{
    for (uint32_t i = 0; i < ch->fill_len; i++) {
        r->fill_bytes -= SW_MIN(r->fill_bytes, (uint64_t)spillway_frame_size(ch->fill[i]));
        spillway_frame_unref(ch->fill[i]);
    }
    free(ch->fill);
    ch->fill = NULL;
    ch->fill_len = ch->fill_cap = 0;
    ch->filling = 0;
}

static void cache_unlink(spillway_redis *r, spillway_channel *ch)
{
    if (ch->cprev) ch->cprev->cnext = ch->cnext;
    else if (r->cache_head == ch) r->cache_head = ch->cnext;
    if (ch->cnext) ch->cnext->cprev = ch->cprev;
    else if (r->cache_tail == ch) r->cache_tail = ch->cprev;
    ch->cprev = ch->cnext = NULL;
}

/* Forgets the channel's cache (its fill in flight is answered into
 * nothing: cached is cleared, and the reply checks it). */
static void cache_drop(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    if (!ch->cached) return;
    cache_unlink(r, ch);
    fill_clear(r, ch);
    spillway_backlog_clear(hub, ch);
    ch->cached = 0;
    ch->fill_gen++;
}

static void cache_drop_all(spillway_hub *hub)
{
    while (R(hub)->cache_head != NULL) cache_drop(hub, R(hub)->cache_head);
}

/* Most recently used last. */
static void cache_touch(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    ch->cache_used_ms = hub->now;
    cache_unlink(r, ch);
    ch->cprev = r->cache_tail;
    if (r->cache_tail) r->cache_tail->cnext = ch;
    else r->cache_head = ch;
    r->cache_tail = ch;
}

static void cache_start(spillway_hub *hub, spillway_channel *ch)
{
    if (ch->cached) return;
    ch->cached = 1;
    ch->cache_from = hub->last;
    cache_touch(hub, ch);
}

/* Every message of the channel after `cursor` is in the ring. */
static bool cache_covers(const spillway_channel *ch, spillway_id cursor)
{
    return ch->cached && ch->rstate == SW_RS_ACTIVE &&
           spillway_id_cmp(cursor, spillway_id_max(ch->cache_from, ch->trimmed)) >= 0;
}

/* A live frame of an ACTIVE channel (not held: the hub is not repairing). */
static void cache_push(spillway_hub *hub, spillway_channel *ch, spillway_frame *f)
{
    if (!ch->cached) return;
    if (spillway_backlog_push(hub, ch, f) != 0) cache_drop(hub, ch);
}

/* Idle caches go, then the least recently used until under the budget. */
static void cache_sweep(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    while (r->cache_head != NULL && !r->cache_head->filling &&
           r->cache_head->cache_used_ms + CACHE_IDLE_MS <= hub->now)
        cache_drop(hub, r->cache_head);
    while (r->cache_head != NULL && cache_bytes(hub) > CACHE_BUDGET) cache_drop(hub, r->cache_head);
}

static int send_fill(spillway_hub *hub, spillway_channel *ch, spillway_id from)
{
    char cursor[SPILLWAY_ID_TEXT_MAX];
    spillway_rq *q = spillway_rq_new(on_fill_rq, sizeof(struct fill_req) + ch->namelen + 1);
    struct fill_req *fr;
    if (q == NULL) return -1;
    fr = q->privdata;
    memcpy(fr->name, ch->name, ch->namelen + 1u);
    fr->gen = ch->fill_gen;
    fr->cursor = from;
    spillway_id_format(from, cursor);
    if (queue_resume(hub, q, RESUME_CURSOR, &ch, 1, cursor, FILL_PAGE, false) != 0) {
        spillway_rq_free(q);
        return -1;
    }
    return 0;
}

/* The streams waiting on the channel's fill look again. */
static void fill_waiters(spillway_hub *hub, spillway_channel *ch)
{
    for (uint32_t i = 0; i < ch->nsubs; i++) join_if_ready(hub, ch->subs[i].conn);
}

/* The fill from ch->fill_from could not be had (trimmed past it, Redis lost
 * its data, over the budget): the streams waiting for exactly that get a
 * reset for the channel; later cursors ask again. */
static void fill_failed_reset(spillway_hub *hub, spillway_channel *ch, const char *reason)
{
    spillway_id from = ch->fill_from;
    fill_clear(R(hub), ch);
    for (uint32_t i = 0; i < ch->nsubs; i++) {
        spillway_conn *c = ch->subs[i].conn;
        uint32_t slot = ch->subs[i].slot;
        if (!(c->flags & SW_CF_JOINING) || !c->has_cursor || spillway_id_cmp(c->cursor, from) != 0) continue;
        if (c->pend_reset == NULL && (c->pend_reset = calloc(c->nmem, sizeof(bool))) == NULL) {
            spillway_conn_doom(hub, c, false);
            continue;
        }
        c->pend_reset[slot] = true;
        c->pend_reason = reason;
    }
    fill_waiters(hub, ch);
}

static void cache_trim(spillway_hub *hub, spillway_channel *ch)
{
    uint32_t keep = hub->cfg.backlog_size;
    for (uint32_t i = 0; i < ch->nsubs; i++) {
        const spillway_conn *c = ch->subs[i].conn;
        uint32_t lo = 0, hi = ch->ring_len;
        if (!(c->flags & SW_CF_JOINING) || !c->has_cursor) continue;
        /* The frames after its cursor (the ring is in id order). */
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (spillway_id_cmp(ch->ring[(ch->ring_start + mid) % ch->ring_cap]->id, c->cursor) <= 0) lo = mid + 1;
            else hi = mid;
        }
        keep = SW_MAX(keep, ch->ring_len - lo);
    }
    spillway_backlog_trim(hub, ch, keep);
}

/* The last page is in: the pages (everything after fill_from up to the
 * read's point) go in front of the ring. */
static void fill_complete(spillway_hub *hub, spillway_channel *ch, spillway_id seen)
{
    spillway_redis *r = R(hub);
    spillway_id from = spillway_id_max(ch->cache_from, ch->trimmed);
    uint32_t keep = 0, total;
    spillway_frame **ring;

    if (spillway_id_cmp(seen, from) < 0) {
        /* The ring dropped frames the read did not reach: no overlap. The
         * waiters ask again. */
        fill_clear(r, ch);
        fill_waiters(hub, ch);
        return;
    }
    while (keep < ch->fill_len && spillway_id_cmp(ch->fill[keep]->id, from) <= 0) keep++;
    total = keep + ch->ring_len;
    ring = malloc((total ? total : 1) * sizeof(*ring));
    if (ring == NULL) {
        fill_failed_reset(hub, ch, "out of memory");
        return;
    }
    /* The frames move from the fill to the ring; the ring's accounting
     * (backlog stats) learns of them through spillway_backlog_adopt. */
    for (uint32_t i = 0; i < keep; i++) ring[i] = spillway_frame_ref(ch->fill[i]);
    for (uint32_t i = 0; i < ch->ring_len; i++) ring[keep + i] = ch->ring[(ch->ring_start + i) % ch->ring_cap];
    spillway_backlog_adopt(hub, ch, ring, total, keep);
    ch->cache_from = ch->fill_from;
    fill_clear(r, ch);
    cache_touch(hub, ch);
    fill_waiters(hub, ch);
    /* The streams that waited have their replay (references): the ring
     * goes back to backlog_size frames, so fills from ever older cursors
     * cannot grow it without bound; but not below a stream still waiting
     * for another of its channels, or that channel's fill and this one
     * could take turns trimming each other's ring. */
    cache_trim(hub, ch);
}

static void on_fill_reply(spillway_hub *hub, const struct fill_req *q, spillway_rv *v)
{
    spillway_redis *r = R(hub);
    spillway_channel *ch = spillway_chtab_find(&hub->chans, q->name, strlen(q->name));
    spillway_frame **frames = NULL;
    spillway_rv *flag;
    long n;

    if (ch == NULL || !ch->cached || !ch->filling || ch->fill_gen != q->gen) return; /* given up */
    if (noscript(v)) r->cmd.sha[SCRIPT_RESUME][0] = '\0'; /* fills are never sent as EVAL */
    if (v->type == SW_RV_ERROR) {
        /* Refused for now: the same page again after a pause (the streams
         * wait, holding live frames). */
        char msg[160];
        rv_message(v, msg, sizeof(msg));
        if (!noscript(v)) spillway_hub_log(hub, SW_LOG_RESUME, "resume read refused, retrying: %s", msg);
        fill_clear(r, ch);
        r->resume_retry_at = retry_later(hub, &r->resume_backoff_ms);
        return;
    }
    if (!resume_shape_ok(v, 1) || (n = collect_frames(v->element[2], &frames, NULL)) < 0) {
        char msg[160];
        rv_message(v, msg, sizeof(msg));
        spillway_hub_log(hub, SW_LOG_RESUME, "resume read failed: %s", msg);
        free(frames); /* collect_frames leaves its (emptied) array on failure */
        fill_failed_reset(hub, ch, "the resume read failed");
        return;
    }
    r->resume_backoff_ms = 0;
    flag = v->element[1]->element[0];
    if (flag == NULL || flag->type != SW_RV_INTEGER || flag->integer == 1 ||
        spillway_id_cmp(q->cursor, parse_last(hub, v->element[0])) > 0) {
        /* Trimmed past the cursor, Redis lost its data, or a cursor from
         * the future. */
        for (long i = 0; i < n; i++) spillway_frame_unref(frames[i]);
        free(frames);
        fill_failed_reset(hub, ch, flag != NULL && flag->type == SW_RV_INTEGER && flag->integer == 1
                                       ? "the backlog no longer reaches back to the Last-Event-ID"
                                       : "the Last-Event-ID is newer than anything Redis issued");
        return;
    }
    if (ch->fill_len + (size_t)n > ch->fill_cap) {
        size_t cap = SW_MAX((size_t)ch->fill_cap * 2, ch->fill_len + (size_t)n);
        spillway_frame **f = realloc(ch->fill, cap * sizeof(*f));
        if (f == NULL) {
            for (long i = 0; i < n; i++) spillway_frame_unref(frames[i]);
            free(frames);
            fill_failed_reset(hub, ch, "out of memory");
            return;
        }
        ch->fill = f;
        ch->fill_cap = (uint32_t)cap;
    }
    for (long i = 0; i < n; i++) {
        ch->fill[ch->fill_len++] = frames[i];
        r->fill_bytes += spillway_frame_size(frames[i]);
    }
    free(frames);
    if (cache_bytes(hub) > CACHE_BUDGET) {
        spillway_hub_log(hub, SW_LOG_RESUME, "resume of %s from a cursor needs more than the %llu MiB resume cache; "
                                "its streams get a reset", ch->name, (unsigned long long)(CACHE_BUDGET >> 20));
        fill_failed_reset(hub, ch, "the replay would need more than the resume cache holds");
        return;
    }
    if (flag->integer == 2 && n > 0) {
        /* A full page: the next one from its last entry. */
        if (send_fill(hub, ch, ch->fill[ch->fill_len - 1]->id) != 0) fill_failed_reset(hub, ch, "out of memory");
        return;
    }
    fill_complete(hub, ch, parse_last(hub, v->element[0]));
}

/* A stream with a cursor, all channels ACTIVE, not repairing: served from
 * the caches if they reach back to its cursor; otherwise the channels that
 * do not are filled (or it waits for a fill under way that starts at or
 * before its cursor). True when it went live. */
static bool resume_from_cache(spillway_hub *hub, spillway_conn *c)
{
    size_t total = 0, n = 0;
    bool waiting = false;
    spillway_frame **frames;

    for (uint32_t m = 0; m < c->nmem; m++) {
        spillway_channel *ch = c->mem[m].ch;
        if (c->pend_reset != NULL && c->pend_reset[m]) continue;
        /* A cursor past the hub's position is checked against Redis (it
         * may come from the future). */
        if (cache_covers(ch, c->cursor) &&
            spillway_id_cmp(c->cursor, spillway_id_max(hub->last, ch->cache_from)) <= 0)
            continue;
        waiting = true;
        /* A fill under way: wait for it (then, if it started after this
         * cursor, ask for our own). */
        if (ch->filling) continue;
        cache_start(hub, ch);
        if (R(hub)->cmd.state != SW_LS_READY || hub->now < R(hub)->resume_retry_at) continue;
        if (send_fill(hub, ch, c->cursor) != 0) {
            spillway_conn_doom(hub, c, false);
            return true;
        }
        ch->filling = 1;
        ch->fill_from = c->cursor;
    }
    if (waiting) return false;
    for (uint32_t m = 0; m < c->nmem; m++)
        if (c->pend_reset == NULL || !c->pend_reset[m]) total += c->mem[m].ch->ring_len;
    frames = malloc((total ? total : 1) * sizeof(*frames));
    if (frames == NULL) {
        spillway_conn_doom(hub, c, false);
        return true;
    }
    for (uint32_t m = 0; m < c->nmem; m++) {
        spillway_channel *ch = c->mem[m].ch;
        if (c->pend_reset != NULL && c->pend_reset[m]) continue;
        n += spillway_backlog_collect(ch, c->cursor, frames + n);
        cache_touch(hub, ch);
    }
    if (c->nmem > 1) qsort(frames, n, sizeof(*frames), spillway_frame_cmp_id);
    {
        bool *reset = c->pend_reset;
        c->pend_reset = NULL;
        /* A cursor from the future (reset) must not hold back live frames. */
        c->last = reset != NULL && spillway_id_cmp(c->cursor, hub->last) > 0 ? hub->last : c->cursor;
        spillway_conn_replay(hub, c, frames, n, reset, hub->last, c->pend_reason);
        free(reset);
    }
    free(frames);
    return true;
}

/* A joining stream whose channels are all ACTIVE goes live. */
static void join_if_ready(spillway_hub *hub, spillway_conn *c)
{
    if (!(c->flags & SW_CF_JOINING) || (c->flags & (SW_CF_RESUME_SENT | SW_CF_DOOMED))) return;
    if (!conn_channels_active(c)) return;
    if (!c->has_cursor) {
        /* Live from where the hub stood when the stream was attached: what
         * arrived since was held and goes out now. */
        c->last = c->cursor;
        spillway_conn_replay(hub, c, NULL, 0, NULL, c->cursor, NULL);
        return;
    }
    if (c->cursor_ok && !R(hub)->holding && hub->cfg.redis.backlog_size > 0) {
        resume_from_cache(hub, c);
        return;
    }
    /* Repairing (live frames are held, so no cache can be continuous), no
     * backlog, or a cursor that is no id: a read of its own. */
    if (R(hub)->cmd.state == SW_LS_READY && hub->now >= R(hub)->resume_retry_at) send_resume(hub, c, false);
}

static void redis_conn_joined_channels(spillway_hub *hub, spillway_conn *c)
{
    /* Attached at once (head written, heartbeats running), live once its
     * channels are ACTIVE: until then live frames are held. */
    c->flags |= SW_CF_JOINING;
    STAT_ADD(hub, st_joining, 1);
    if (c->flags & SW_CF_DOOMED) return;
    if (!c->has_cursor) c->cursor = hub->last;
    join_if_ready(hub, c);
}

static void join_all_ready(spillway_hub *hub)
{
    for (uint32_t s = 0; s < hub->wheel_slots; s++)
        for (spillway_conn *c = hub->wheel[s]; c != NULL; c = c->wnext) join_if_ready(hub, c);
}

static spillway_id parse_last(spillway_hub *hub, const spillway_rv *v)
{
    spillway_id id = hub->last;
    if (v != NULL && v->type == SW_RV_STRING && v->str != NULL && v->str->len > 0) {
        spillway_id parsed;
        if (spillway_id_parse(v->str->data, v->str->len, &parsed) == 0) id = parsed;
    }
    return id;
}

/* The frames of a resume reply; *idx (when asked) gets each one's channel
 * index. The count, or -1 on a malformed reply. */
static long collect_frames(spillway_rv *flat, spillway_frame ***frames, uint32_t **idx)
{
    size_t n;
    if (flat == NULL || flat->type != SW_RV_ARRAY || flat->elements % 2 != 0) return -1;
    n = flat->elements / 2;
    *frames = calloc(n ? n : 1, sizeof(**frames));
    if (idx) *idx = calloc(n ? n : 1, sizeof(**idx));
    if (*frames == NULL || (idx && *idx == NULL)) return -1;
    for (size_t i = 0; i < n; i++) {
        spillway_rv *iv = flat->element[2 * i];
        spillway_frame *f = steal(flat->element[2 * i + 1]);
        if (iv == NULL || iv->type != SW_RV_INTEGER || f == NULL || frame_set_id(f) != 0) {
            spillway_frame_unref(f);
            for (size_t j = 0; j < i; j++) spillway_frame_unref((*frames)[j]);
            return -1;
        }
        (*frames)[i] = f;
        if (idx) (*idx)[i] = (uint32_t)iv->integer;
    }
    return (long)n;
}

/* The resume script's answer over n channels: [last id (a string), [n reset
 * flags (integers)], [channel index, frame, ...]]. Only Redis running the
 * script sends that, so anything else does not answer a resume or repair.
 * The frames are checked when they are collected (collect_frames): a backlog
 * entry that something else wrote can spoil them, but never the indexes,
 * which the script writes; an index out of range is not its answer. */
static bool resume_shape_ok(const spillway_rv *v, uint32_t n)
{
    const spillway_rv *flags, *flat;
    if (v == NULL || v->type != SW_RV_ARRAY || v->elements != 3 || !is_str(v->element[0])) return false;
    flags = v->element[1];
    flat = v->element[2];
    if (flags == NULL || flags->type != SW_RV_ARRAY || flags->elements != n) return false;
    for (uint32_t i = 0; i < n; i++)
        if (!is_type(flags->element[i], SW_RV_INTEGER)) return false;
    if (flat == NULL || flat->type != SW_RV_ARRAY) return false;
    for (size_t i = 0; i < flat->elements; i += 2) {
        const spillway_rv *e = flat->element[i];
        if (is_type(e, SW_RV_INTEGER) && (e->integer < 0 || e->integer >= (long long)n)) return false;
    }
    return true;
}

static void on_resume_reply(spillway_hub *hub, const struct resume_req *q, spillway_rv *v)
{
    spillway_conn *c = q->conn;
    spillway_frame **frames = NULL;
    bool *reset;
    bool gone = (c->flags & SW_CF_ZOMBIE) != 0;
    spillway_id now;
    long n = 0;
    const char *reason;

    conn_unref(hub, c); /* frees a zombie */
    if (gone || (c->flags & SW_CF_DOOMED)) return;
    if (noscript(v) && !q->eval) {
        send_resume(hub, c, true); /* the script cache was flushed */
        if (c->flags & SW_CF_RESUME_SENT) return;
    }
    if (v->type == SW_RV_ERROR) {
        /* Refused for now: the stream keeps joining (heartbeats, live
         * frames held) and the read goes out again after a pause. */
        char msg[160];
        spillway_redis *r = R(hub);
        rv_message(v, msg, sizeof(msg));
        spillway_hub_log(hub, SW_LOG_RESUME, "resume read refused, retrying: %s", msg);
        r->resume_retry_at = retry_later(hub, &r->resume_backoff_ms);
        return;
    }
    R(hub)->resume_backoff_ms = 0;
    reset = calloc(c->nmem ? c->nmem : 1, sizeof(*reset));
    if (reset == NULL) {
        spillway_conn_doom(hub, c, false);
        return;
    }
    if (!resume_shape_ok(v, c->nmem) || (n = collect_frames(v->element[2], &frames, NULL)) < 0) {
        char msg[160];
        rv_message(v, msg, sizeof(msg));
        spillway_hub_log(hub, SW_LOG_RESUME, "resume read failed: %s", msg);
        /* Tell the client instead of leaving it with a possible hole. */
        for (uint32_t i = 0; i < c->nmem; i++) reset[i] = true;
        n = 0;
        now = hub->last;
        reason = "the resume read failed";
    } else {
        now = parse_last(hub, v->element[0]);
        for (uint32_t i = 0; i < c->nmem; i++) {
            spillway_rv *e = v->element[1]->element[i];
            reset[i] = !c->cursor_ok || (e != NULL && e->type == SW_RV_INTEGER && e->integer == 1);
            /* Without a backlog nothing can be replayed: anything after the
             * cursor is a hole. */
            if (hub->cfg.redis.backlog_size == 0 && spillway_id_cmp(now, c->cursor) > 0) reset[i] = true;
        }
        if (!c->cursor_ok) reason = "the Last-Event-ID is not an event id";
        else if (hub->cfg.redis.backlog_size == 0) reason = "no backlog (backlog_size 0)";
        else reason = "the backlog no longer reaches back to the Last-Event-ID";
    }
    /* A cursor newer than anything Redis issued (from the future) must not
     * hold back live frames: the stream starts from now, with its reset. */
    c->last = q->mode == RESUME_CURSOR && spillway_id_cmp(c->cursor, now) <= 0 ? c->cursor : now;
    spillway_conn_replay(hub, c, frames, (size_t)n, reset, now, reason);
    for (long i = 0; i < n; i++) spillway_frame_unref(frames[i]);
    free(frames);
    free(reset);
}

/* Live frames held during a repair go out, in arrival (= id) order. */
static void release_held(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    struct held_item *held = r->held;
    size_t n = r->held_len;
    r->held = NULL;
    r->held_len = r->held_cap = 0;
    r->holding = false;
    for (size_t i = 0; i < n; i++) {
        spillway_channel *ch = spillway_chtab_find(&hub->chans, held[i].name, strlen(held[i].name));
        if (ch != NULL) spillway_channel_fanout(hub, ch, held[i].f);
        spillway_frame_unref(held[i].f);
        free(held[i].name);
    }
    free(held);
}

/* Every live stream on a channel with ch->mark set gets one reset naming
 * its marked channels (reason: why, for the log). Clears the marks. */
static void send_marked_resets(spillway_hub *hub, spillway_id now, const char *reason)
{
    spillway_chtab *t = &hub->chans;
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) {
            if (!ch->mark) continue;
            for (uint32_t s = 0; s < ch->nsubs; s++) {
                spillway_conn *c = ch->subs[s].conn;
                bool *flags;
                /* A stream still joining needs nothing from the repair.
                 * With a cursor, its own backlog read was sent after the
                 * repair's (the command link answers in order, so one sent
                 * before would have been answered first and the stream
                 * would be live): that later read reports its own resets.
                 * Without one, it joined after the repair was sent (all its
                 * channels were ACTIVE then, or the repair would not have
                 * started), so it starts at or after the channels' barrier
                 * points, and everything after those arrives live, into
                 * what it holds: it saw no hole. */
                if (c->flags & (SW_CF_JOINING | SW_CF_DOOMED | SW_CF_MARK)) continue;
                c->flags |= SW_CF_MARK;
                flags = calloc(c->nmem, sizeof(*flags));
                if (flags == NULL) {
                    spillway_conn_doom(hub, c, false); /* no hole left unsaid */
                    continue;
                }
                for (uint32_t m = 0; m < c->nmem; m++) flags[m] = c->mem[m].ch->mark != 0;
                spillway_conn_send_reset(hub, c, flags, now, reason);
                free(flags);
            }
        }
    }
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) {
            if (!ch->mark) continue;
            ch->mark = 0;
            for (uint32_t s = 0; s < ch->nsubs; s++) ch->subs[s].conn->flags &= ~SW_CF_MARK;
        }
    }
}

static void acc_clear(struct repair_acc *acc)
{
    for (size_t i = 0; i < acc->n; i++) spillway_frame_unref(acc->frames[i]);
    for (uint32_t i = 0; i < acc->nnames; i++) free(acc->names[i]);
    free(acc->frames);
    free(acc->chan);
    free(acc->names);
    free(acc->reset);
    memset(acc, 0, sizeof(*acc));
}

/* Why finish_repair(reset_all) tells every stream, for the log: try_repair's
 * tests in its order (out of memory is the only other way there). */
static const char *reset_all_reason(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    if (r->overflowed) return "too many messages arrived during the gap repair";
    if (r->repair_failures >= REPAIR_ATTEMPTS) return "the gap repair reads kept failing";
    if (hub->cfg.redis.backlog_size == 0) return "no backlog to repair the Redis outage from";
    return "the gap repair ran out of memory";
}

static void finish_repair(spillway_hub *hub, bool reset_all)
{
    spillway_redis *r = R(hub);
    const char *reason = reset_all_reason(hub);
    acc_clear(&r->acc);
    r->need_repair = false;
    r->overflowed = false;
    r->repair_inflight = false;
    r->repair_outstanding = 0;
    r->repair_failures = 0;
    r->repair_backoff_ms = 0;
    r->repair_retry_at = 0;
    if (reset_all) {
        spillway_chtab *t = &hub->chans;
        for (uint32_t b = 0; b < t->nbuckets; b++)
            for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) ch->mark = ch->nsubs > 0;
        send_marked_resets(hub, hub->last, reason);
    }
    release_held(hub);
    STAT_ADD(hub, st_gap_repairs, 1);
}

/* Sends the repair once both links are up and every channel is ACTIVE
 * again: each channel's backlog after the cursor remembered at the drop,
 * in batches of REPAIR_BATCH channels. */
static void try_repair(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    spillway_chtab *t = &hub->chans;
    struct repair_acc *acc = &r->acc;
    spillway_channel **chans;
    char cursor[SPILLWAY_ID_TEXT_MAX];
    uint32_t n = 0;

    if (!r->need_repair || r->repair_inflight || hub->now < r->repair_retry_at) return;
    if (r->sub.state != SW_LS_READY || r->cmd.state != SW_LS_READY) return;
    if (r->sent_subs > 0 || r->slist != NULL) return;
    for (spillway_channel *ch = r->plist; ch != NULL; ch = ch->pnext)
        if (ch->rstate == SW_RS_PENDING) return; /* not subscribed yet */

    if (r->overflowed || r->repair_failures >= REPAIR_ATTEMPTS || hub->cfg.redis.backlog_size == 0) {
        /* Too much arrived to merge, Redis keeps answering the reads with
         * nonsense, or there is no backlog to read: tell every stream
         * instead. (Errors and lost links are retried, not counted.) */
        finish_repair(hub, true);
        return;
    }
    if (spillway_id_is_zero(r->repair_cursor)) {
        /* No channel was ever ACTIVE before the drop (a barrier would have
         * moved hub->last): no stream was live, nothing to repair. */
        finish_repair(hub, false);
        return;
    }
    chans = malloc((t->count ? t->count : 1) * sizeof(*chans));
    if (chans == NULL) goto oom;
    for (uint32_t b = 0; b < t->nbuckets; b++)
        for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext)
            if (ch->nsubs > 0 && ch->rstate == SW_RS_ACTIVE) chans[n++] = ch;
    if (n == 0) {
        free(chans);
        finish_repair(hub, false);
        return;
    }
    acc_clear(acc);
    acc->names = calloc(n, sizeof(*acc->names));
    acc->reset = calloc(n, sizeof(*acc->reset));
    if (acc->names == NULL || acc->reset == NULL) goto oom;
    for (uint32_t i = 0; i < n; i++) {
        acc->names[i] = strdup(chans[i]->name);
        if (acc->names[i] == NULL) goto oom;
        acc->nnames++;
    }
    spillway_id_format(r->repair_cursor, cursor);
    r->repair_error = false;
    for (uint32_t base = 0; base < n; base += REPAIR_BATCH) {
        uint32_t k = SW_MIN(REPAIR_BATCH, n - base);
        spillway_rq *q = spillway_rq_new(on_repair_rq, sizeof(struct repair_req));
        struct repair_req *rr;
        if (q == NULL) goto oom;
        rr = q->privdata;
        rr->epoch = r->sub_epoch;
        rr->nch = k;
        rr->base = base;
        q->timeout_scale = 5; /* it may read many backlogs */
        if (queue_resume(hub, q, RESUME_CURSOR, chans + base, k, cursor, 0, false) != 0) {
            free(q);
            goto oom;
        }
        r->repair_outstanding++;
    }
    r->repair_inflight = true;
    free(chans);
    return;
oom:
    free(chans);
    spillway_hub_log(hub, SW_LOG_REPAIR, "gap repair: out of memory; streams get a reset");
    /* Batches already sent are answered into nothing (epoch check). */
    r->sub_epoch++;
    finish_repair(hub, true);
}

static int cmp_acc(const void *a, const void *b, void *arg)
{
    const struct repair_acc *acc = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    return spillway_id_cmp(acc->frames[i]->id, acc->frames[j]->id);
}

/* Every batch answered: deliver the merged gap in id order, then resets,
 * then what was held. */
static void repair_done(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    struct repair_acc *acc = &r->acc;
    size_t *order = malloc((acc->n ? acc->n : 1) * sizeof(*order));

    if (order == NULL) {
        finish_repair(hub, true);
        return;
    }
    for (size_t i = 0; i < acc->n; i++) order[i] = i;
    qsort_r(order, acc->n, sizeof(*order), cmp_acc, acc);
    /* Up to the oldest point a batch saw: what a later batch read past it
     * is held too (published after the barriers) and follows after the
     * resets. A reset's id must not pass a message of another channel of
     * the same stream that is still to come, or that message would be
     * dropped as already seen. */
    for (size_t k = 0; k < acc->n; k++) {
        size_t i = order[k];
        const char *name = acc->names[acc->chan[i]];
        spillway_channel *ch;
        if (spillway_id_cmp(acc->frames[i]->id, acc->seen) > 0) break;
        ch = spillway_chtab_find(&hub->chans, name, strlen(name));
        if (ch != NULL) spillway_channel_fanout(hub, ch, acc->frames[i]);
    }
    free(order);
    /* Channels whose backlog no longer reaches back: their live streams are
     * told. */
    for (uint32_t i = 0; i < acc->nnames; i++) {
        spillway_channel *ch;
        if (!acc->reset[i]) continue;
        ch = spillway_chtab_find(&hub->chans, acc->names[i], strlen(acc->names[i]));
        if (ch != NULL) ch->mark = 1;
    }
    send_marked_resets(hub, acc->seen, "the backlog no longer reaches back to the Redis outage");
    finish_repair(hub, false);
}

static void on_repair_reply(spillway_hub *hub, const struct repair_req *q, spillway_rv *v)
{
    spillway_redis *r = R(hub);
    struct repair_acc *acc = &r->acc;
    spillway_frame **frames = NULL;
    uint32_t *idx = NULL;
    long n;

    if (q->epoch != r->sub_epoch) return; /* an earlier repair, abandoned */
    if (r->repair_outstanding > 0) r->repair_outstanding--;
    n = resume_shape_ok(v, q->nch) ? collect_frames(v->element[2], &frames, &idx) : -1;
    if (n < 0) {
        char msg[160];
        rv_message(v, msg, sizeof(msg));
        if (noscript(v)) {
            r->cmd.sha[SCRIPT_RESUME][0] = '\0'; /* the next attempt sends the text */
        } else if (v->type == SW_RV_ERROR) {
            /* Refused for now (LOADING, BUSY, ...): again after a pause,
             * for as long as it takes; live frames are held meanwhile. */
            spillway_hub_log(hub, SW_LOG_REPAIR, "gap repair read refused, retrying: %s", msg);
            r->repair_retry_at = retry_later(hub, &r->repair_backoff_ms);
        } else {
            spillway_hub_log(hub, SW_LOG_REPAIR, "gap repair read failed: %s", msg);
            r->repair_failures++;
        }
        r->repair_error = true;
        n = 0;
    } else {
        spillway_id seen = parse_last(hub, v->element[0]);
        acc->seen = acc->have_seen && spillway_id_cmp(acc->seen, seen) < 0 ? acc->seen : seen;
        acc->have_seen = true;
        if (acc->n + (size_t)n > acc->cap) {
            size_t cap = SW_MAX(acc->cap * 2, acc->n + (size_t)n);
            spillway_frame **f = realloc(acc->frames, cap * sizeof(*f));
            uint32_t *c = NULL;
            if (f != NULL) {
                acc->frames = f;
                c = realloc(acc->chan, cap * sizeof(*c));
                if (c != NULL) acc->chan = c;
            }
            if (f == NULL || c == NULL) r->repair_error = true;
            else acc->cap = cap;
        }
    }
    if (!r->repair_error) {
        for (long i = 0; i < n; i++) {
            acc->frames[acc->n] = frames[i];
            acc->chan[acc->n] = q->base + SW_MIN(idx[i], q->nch - 1);
            acc->n++;
        }
        for (uint32_t i = 0; i < q->nch; i++) {
            spillway_rv *e = v->element[1]->element[i];
            if (e != NULL && e->type == SW_RV_INTEGER && e->integer == 1) acc->reset[q->base + i] = 1;
        }
    } else {
        for (long i = 0; i < n; i++) spillway_frame_unref(frames[i]);
    }
    free(frames);
    free(idx);
    if (r->repair_outstanding > 0) return;
    r->repair_inflight = false;
    if (r->repair_error) {
        /* Try again (try_repair gives up after REPAIR_ATTEMPTS malformed
         * answers). */
        acc_clear(acc);
        return;
    }
    repair_done(hub);
}

/* ---- barriers ---------------------------------------------------------- */

/* Covers every SYNCING channel not yet covered with a new barrier. */
static void try_barrier(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    spillway_buf *b = &r->cmd.out;
    char seq[24];
    bool needed = false;
    size_t mark;
    int bad;
    spillway_rq *q;
    struct barrier_req *br;

    if (r->cmd.state != SW_LS_READY || r->ctl_state != SW_RS_ACTIVE) return;
    if (hub->now < r->barrier_retry_at) return;
    for (spillway_channel *ch = r->slist; ch != NULL && !needed; ch = ch->snext) needed = ch->barrier == 0;
    if (!needed) return;
    q = spillway_rq_new(on_barrier_rq, sizeof(struct barrier_req));
    if (q == NULL) return;
    br = q->privdata;
    br->seq = ++r->barrier_seq;
    mark = b->len;
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)br->seq);
    bad = script_head(b, 7, false, r->cmd.sha[SCRIPT_BARRIER], spillway_lua_barrier);
    bad |= spillway_buf_arg(b, "2", 1);
    bad |= spillway_buf_arg(b, r->idkey, strlen(r->idkey));
    bad |= spillway_buf_arg(b, r->sincekey, strlen(r->sincekey));
    bad |= spillway_buf_arg(b, r->ctl, r->ctl_len);
    bad |= spillway_buf_arg(b, seq, strlen(seq));
    if (bad) {
        b->len = mark;
        spillway_rq_free(q);
        return;
    }
    spillway_link_push_rq(hub, &r->cmd, q);
    for (spillway_channel *ch = r->slist; ch != NULL; ch = ch->snext)
        if (ch->barrier == 0) ch->barrier = br->seq;
}

/* A control message is "<seq> <id>": the barrier script's. seq must be a
 * barrier this hub issued; anything else did not come from it. The id is
 * Redis's id key as it stands, which something else may have spoilt: then
 * *has_id is false and the barrier still counts (as it always did). */
static bool parse_barrier(const spillway_redis *r, const spillway_frame *f, uint64_t *seq, spillway_id *id,
                          bool *has_id)
{
    uint32_t i = 0;
    uint64_t n = 0;
    while (i < f->len && i < 20 && f->data[i] >= '0' && f->data[i] <= '9') {
        uint64_t d = (uint64_t)(f->data[i] - '0');
        if (n > (UINT64_MAX - d) / 10) return false;
        n = n * 10 + d;
        i++;
    }
    if (i == 0 || i >= f->len || f->data[i] != ' ' || n == 0 || n > r->barrier_seq) return false;
    *seq = n;
    *has_id = spillway_id_parse(f->data + i + 1, f->len - i - 1, id) == 0;
    return true;
}

/* A barrier arrived on the control channel, in order with every message:
 * channels covered by barriers up to seq are ACTIVE. */
static void on_barrier(spillway_hub *hub, uint64_t seq, const spillway_id *id)
{
    spillway_redis *r = R(hub);
    spillway_channel **pp;

    if (id != NULL) hub->last = spillway_id_max(hub->last, *id);
    pp = &r->slist;
    while (*pp != NULL) {
        spillway_channel *ch = *pp;
        if (ch->barrier == 0 || ch->barrier > seq) {
            pp = &ch->snext;
            continue;
        }
        *pp = ch->snext;
        ch->snext = NULL;
        ch->in_slist = 0;
        ch->rstate = SW_RS_ACTIVE;
        if (ch->nsubs == 0) {
            linger_add(hub, ch);
            continue;
        }
        for (uint32_t i = 0; i < ch->nsubs; i++) join_if_ready(hub, ch->subs[i].conn);
    }
}

/* ---- the sub link ------------------------------------------------------ */

static spillway_channel *channel_of(spillway_hub *hub, const spillway_rv *name)
{
    spillway_redis *r = R(hub);
    if (name == NULL || name->str == NULL || name->str->len <= r->chan_prefix_len) return NULL;
    if (memcmp(name->str->data, r->chan_prefix, r->chan_prefix_len) != 0) return NULL;
    return spillway_chtab_find(&hub->chans, name->str->data + r->chan_prefix_len,
                               name->str->len - r->chan_prefix_len);
}

static bool is_ctl(spillway_redis *r, const spillway_rv *name)
{
    return name != NULL && name->str != NULL && name->str->len == r->ctl_len &&
           memcmp(name->str->data, r->ctl, r->ctl_len) == 0;
}

static void hold(spillway_hub *hub, spillway_channel *ch, spillway_frame *f)
{
    spillway_redis *r = R(hub);
    if (r->held_len < HELD_MAX_FRAMES) {
        if (r->held_len == r->held_cap) {
            size_t n = r->held_cap ? r->held_cap * 2 : 64;
            struct held_item *h = realloc(r->held, n * sizeof(*h));
            if (h != NULL) {
                r->held = h;
                r->held_cap = n;
            }
        }
        if (r->held_len < r->held_cap) {
            char *name = strdup(ch->name);
            if (name != NULL) {
                r->held[r->held_len].f = f;
                r->held[r->held_len].name = name;
                r->held_len++;
                return;
            }
        }
    }
    /* Too much to hold: deliver everything now; the repair then tells
     * every stream (resets) instead of merging. */
    spillway_hub_log(hub, SW_LOG_REPAIR, "gap repair: more than %u messages arrived while repairing; streams get a reset",
                       HELD_MAX_FRAMES);
    r->overflowed = true;
    release_held(hub);
    spillway_channel_fanout(hub, ch, f);
    spillway_frame_unref(f);
}

/* A pub/sub message of the right shape (sub_kind checked it). */
static void on_message(spillway_hub *hub, spillway_rlink *l, spillway_rv *v)
{
    spillway_redis *r = R(hub);
    const spillway_rv *name = v->element[1];
    spillway_frame *f;
    spillway_channel *ch;
    char text[104];

    if (is_ctl(r, name)) {
        uint64_t seq = 0;
        spillway_id id;
        bool has_id = false;
        char why[160], text[64];
        if (is_str(v->element[2]) && parse_barrier(r, v->element[2]->str, &seq, &id, &has_id)) {
            on_barrier(hub, seq, has_id ? &id : NULL);
            return;
        }
        /* Only this hub's barrier script publishes here. Whatever this was,
         * the barrier it may have been is lost, and the channels waiting for
         * it would wait forever: the reconnect subscribes and syncs them
         * again. */
        if (is_str(v->element[2]))
            snprintf(why, sizeof(why), "a control message that is not one of this hub's barriers: \"%s\"",
                     spillway_rv_text(v->element[2], 60, text, sizeof(text)));
        else
            snprintf(why, sizeof(why), "a control message over SPILLWAY_FRAME_MAX");
        spillway_link_protocol_error(hub, l, why);
        return;
    }
    if (is_type(v->element[2], SW_RV_TOOBIG)) {
        /* Spillway never publishes that much (max_message_bytes is far
         * below): someone else did. The backlog could not hold a frame of it
         * either, so reading it back would not help: dropped. */
        spillway_hub_error(hub, "a Redis message of %lld bytes on %s is over SPILLWAY_FRAME_MAX: dropped",
                           v->element[2]->integer, spillway_rv_text(name, 100, text, sizeof(text)));
        return;
    }
    f = steal(v->element[2]);
    STAT_ADD(hub, st_redis_messages, 1);
    STAT_ADD(hub, st_published, 1);
    if (frame_set_id(f) != 0) {
        /* A well-formed message that Spillway did not publish (a PUBLISH
         * from redis-cli, say): nothing of ours is lost by dropping it. */
        spillway_hub_error(hub, "Redis message without a Spillway id on %s (published by something else?)",
                           spillway_rv_text(name, 100, text, sizeof(text)));
        spillway_frame_unref(f);
        return;
    }
    hub->last = spillway_id_max(hub->last, f->id);
    ch = channel_of(hub, name);
    if (ch == NULL) {
        spillway_frame_unref(f);
        return;
    }
    if (r->holding) {
        hold(hub, ch, f);
        return;
    }
    spillway_channel_fanout(hub, ch, f);
    cache_push(hub, ch, f);
    spillway_frame_unref(f);
}

static void on_subscribed(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    if (ch->rstate != SW_RS_SENT) return;
    if (r->sent_subs > 0) r->sent_subs--;
    ch->rstate = SW_RS_SYNCING;
    ch->barrier = 0;
    ch->in_slist = 1;
    ch->snext = r->slist;
    r->slist = ch;
}

static void on_unsubscribed(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    if (ch->rstate != SW_RS_UNSUB_SENT) return;
    ch->rstate = SW_RS_NONE;
    if (ch->nsubs > 0) {
        /* Someone joined while it was leaving: subscribe again. */
        ch->rstate = SW_RS_PENDING;
        plist_add(r, ch);
    } else if (!ch->in_plist) {
        drop_channel(hub, ch);
    }
}

static void refuse_sent(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    spillway_chtab *t = &hub->chans;
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) {
            if (ch->rstate != SW_RS_SENT) continue;
            ch->rstate = SW_RS_NONE;
            for (uint32_t i = 0; i < ch->nsubs; i++) spillway_conn_doom(hub, ch->subs[i].conn, false);
        }
    }
    r->sent_subs = 0;
}

/* What a reply on the subscriber link is. A subscribed RESP2 connection gets
 * nothing but these, in exactly these shapes. */
enum { SUB_BAD, SUB_MESSAGE, SUB_SUBSCRIBE, SUB_UNSUBSCRIBE, SUB_PONG, SUB_ERROR };

static int sub_kind(const spillway_rv *v, char *why, size_t n)
{
    const spillway_rv *kind;
    char what[100], text[104];

    if (v->type == SW_RV_ERROR) return SUB_ERROR;
    if (v->type == SW_RV_STATUS && spillway_rv_is(v, "PONG")) return SUB_PONG;
    if (v->type != SW_RV_ARRAY || v->elements == 0 || !is_str(v->element[0])) {
        if (v->type == SW_RV_ARRAY && v->elements > 0)
            snprintf(why, n, "a push whose kind is %s", spillway_rv_describe(v->element[0], what, sizeof(what)));
        else
            snprintf(why, n, "%s where only pushes, +PONG and errors belong",
                     spillway_rv_describe(v, what, sizeof(what)));
        return SUB_BAD;
    }
    kind = v->element[0];
    if (spillway_rv_is(kind, "message")) {
        if (v->elements != 3) {
            snprintf(why, n, "a pub/sub message of %zu element%s", v->elements, v->elements == 1 ? "" : "s");
        } else if (!is_str(v->element[1])) {
            snprintf(why, n, "a pub/sub message whose channel is %s",
                     spillway_rv_describe(v->element[1], what, sizeof(what)));
        } else if (!is_str(v->element[2]) && !is_type(v->element[2], SW_RV_TOOBIG)) {
            snprintf(why, n, "a pub/sub message on %s whose payload is %s",
                     spillway_rv_text(v->element[1], 100, text, sizeof(text)),
                     spillway_rv_describe(v->element[2], what, sizeof(what)));
        } else {
            return SUB_MESSAGE;
        }
        return SUB_BAD;
    }
    if (spillway_rv_is(kind, "subscribe") || spillway_rv_is(kind, "unsubscribe")) {
        bool sub = spillway_rv_is(kind, "subscribe");
        if (v->elements == 3 && is_str(v->element[1]) && is_type(v->element[2], SW_RV_INTEGER))
            return sub ? SUB_SUBSCRIBE : SUB_UNSUBSCRIBE;
        snprintf(why, n, "a malformed %s confirmation (%zu element%s, channel %s)", sub ? "subscribe" : "unsubscribe",
                 v->elements, v->elements == 1 ? "" : "s",
                 v->elements > 1 ? spillway_rv_describe(v->element[1], what, sizeof(what)) : "missing");
        return SUB_BAD;
    }
    if (spillway_rv_is(kind, "pong")) {
        if (v->elements == 2 && is_str(v->element[1])) return SUB_PONG;
        snprintf(why, n, "a malformed pong (%zu element%s)", v->elements, v->elements == 1 ? "" : "s");
        return SUB_BAD;
    }
    snprintf(why, n, "a push of a kind this hub never subscribes to (%s)",
             spillway_rv_text(kind, 40, text, sizeof(text)));
    return SUB_BAD;
}

/* The sub link's on_push hook: every reply on a READY subscriber link. */
static void on_sub_reply(spillway_hub *hub, spillway_rlink *l, spillway_rv *v)
{
    spillway_redis *r = R(hub);
    char why[240], text[104];
    int kind = sub_kind(v, why, sizeof(why));
    spillway_channel *ch;

    switch (kind) {
    case SUB_BAD:
        /* Redis never sends it. It may have stood for a message (lost) or a
         * confirmation (a channel left waiting for ever), and what follows
         * may be out of step too: the link is dropped, the reconnect
         * subscribes every channel again, and the gap repair reads back from
         * the backlog whatever was published meanwhile. */
        spillway_link_protocol_error(hub, l, why);
        return;
    case SUB_ERROR: {
        /* Redis refused a SUBSCRIBE batch (an ACL without the channel,
         * say). Its channels would wait forever: their streams are closed
         * with the reason logged (the browser retries later). */
        char msg[160];
        rv_message(v, msg, sizeof(msg));
        spillway_hub_error(hub, "Redis refused a subscription: %s; its streams are closed", msg);
        refuse_sent(hub);
        return;
    }
    case SUB_MESSAGE:
        on_message(hub, l, v);
        return;
    case SUB_PONG:
        l->ping_out = false;
        return;
    default:
        break;
    }
    if (is_ctl(r, v->element[1])) {
        if (kind == SUB_SUBSCRIBE) r->ctl_state = SW_RS_ACTIVE;
        return;
    }
    ch = channel_of(hub, v->element[1]);
    if (ch == NULL) {
        /* No subscription of ours is waiting for it: nothing to update. */
        spillway_hub_error(hub, "Redis %s confirmation for %s, which this hub did not ask for: ignored",
                           kind == SUB_SUBSCRIBE ? "a subscribe" : "an unsubscribe",
                           spillway_rv_text(v->element[1], 100, text, sizeof(text)));
        return;
    }
    if (kind == SUB_SUBSCRIBE) on_subscribed(hub, ch);
    else on_unsubscribed(hub, ch);
}

/* ---- the cmd link: each request's continuation ------------------------ */

/* The reply does not fit its request (Redis does not answer that): the
 * replies may be out of step with the requests from here on. The request is
 * handled as if the link had dropped before its answer (a resume or a
 * repair is read again after the reconnect; a publish goes out again), and
 * the link is dropped so that the next one starts in step. */
static void misfit(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, const char *why)
{
    q->fn(hub, l, q, NULL);
    spillway_link_protocol_error(hub, l, why);
}

/* Whether v can answer a backlog read over nch channels (an error always
 * can: Redis refused, and each kind handles that). */
static bool backlog_reply_fits(const spillway_rv *v, uint32_t nch, char *why, size_t n)
{
    char what[100];
    if (v->type == SW_RV_ERROR || resume_shape_ok(v, nch)) return true;
    snprintf(why, n, "the backlog read over %u channels got %s, not the resume script's answer", nch,
             spillway_rv_describe(v, what, sizeof(what)));
    return false;
}

/* The barrier and publish scripts return an id. */
static bool id_reply_fits(const spillway_rv *v, const char *script, char *why, size_t n)
{
    char what[100];
    if (v->type == SW_RV_ERROR || is_str(v)) return true;
    snprintf(why, n, "a %s script got %s instead of an id", script, spillway_rv_describe(v, what, sizeof(what)));
    return false;
}

static void on_resume_rq(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, spillway_rv *v)
{
    struct resume_req *rr = q->privdata;
    char why[240];
    uint32_t nch;

    if (v == NULL) {
        conn_unref(hub, rr->conn); /* sent again once the link is back */
        return;
    }
    /* A stream that closed meanwhile left its channels: any count of flags
     * may then answer it (it is dropped anyway). */
    nch = rr->conn->nmem;
    if ((rr->conn->flags & SW_CF_ZOMBIE) && v->type == SW_RV_ARRAY && v->elements == 3 && v->element[1] != NULL &&
        v->element[1]->type == SW_RV_ARRAY)
        nch = (uint32_t)SW_MIN(v->element[1]->elements, (size_t)UINT32_MAX);
    if (!backlog_reply_fits(v, nch, why, sizeof(why))) {
        misfit(hub, l, q, why);
        return;
    }
    on_resume_reply(hub, rr, v);
}

static void on_fill_rq(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, spillway_rv *v)
{
    struct fill_req *fr = q->privdata;
    char why[240];

    if (v == NULL) {
        /* Asked again (from where the pages got to is not kept: from the
         * start) once the link is back. */
        spillway_channel *ch = spillway_chtab_find(&hub->chans, fr->name, strlen(fr->name));
        if (ch != NULL && ch->filling && ch->fill_gen == fr->gen) {
            fill_clear(R(hub), ch);
            ch->fill_gen++;
        }
        return;
    }
    if (!backlog_reply_fits(v, 1, why, sizeof(why))) {
        misfit(hub, l, q, why);
        return;
    }
    on_fill_reply(hub, fr, v);
}

static void on_repair_rq(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, spillway_rv *v)
{
    struct repair_req *rr = q->privdata;
    spillway_redis *r = R(hub);
    char why[240];

    if (v == NULL) {
        /* The attempt is lost with the link: it starts over once the links
         * are back (its other batches fail here too). */
        if (rr->epoch == r->sub_epoch) {
            r->repair_inflight = false;
            r->repair_outstanding = 0;
            acc_clear(&r->acc);
        }
        return;
    }
    if (!backlog_reply_fits(v, rr->nch, why, sizeof(why))) {
        misfit(hub, l, q, why);
        return;
    }
    on_repair_reply(hub, rr, v);
}

static void on_barrier_rq(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, spillway_rv *v)
{
    struct barrier_req *br = q->privdata;
    spillway_redis *r = R(hub);
    char msg[160], why[240];

    if (v == NULL) return; /* the ready link sends barriers again */
    if (!id_reply_fits(v, "barrier", why, sizeof(why))) {
        misfit(hub, l, q, why);
        return;
    }
    if (v->type != SW_RV_ERROR) return; /* the barrier arrives on the sub link */
    /* Covered channels wait for the next barrier (EVAL after a NOSCRIPT:
     * the script text always works). */
    rv_message(v, msg, sizeof(msg));
    if (!noscript(v)) {
        spillway_hub_error(hub, "barrier failed: %s", msg);
        r->barrier_retry_at = hub->now + BARRIER_RETRY_MS; /* OOM, say: not in a tight loop */
    } else {
        r->cmd.sha[SCRIPT_BARRIER][0] = '\0';
    }
    for (spillway_channel *ch = r->slist; ch != NULL; ch = ch->snext)
        if (ch->barrier == br->seq) ch->barrier = 0;
}

static void on_publish_rq(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, spillway_rv *v)
{
    struct publish_req *pr = q->privdata;
    spillway_cmd_publish *cmd = pr->cmd;
    spillway_redis *r = R(hub);
    char msg[160], why[240];

    if (v == NULL) {
        /* It goes out again after the reconnect, whether it never left this
         * process or was sent and not answered: Redis may have run it, but
         * then the repeat finds its idempotency key and publishes nothing.
         * The waiting queue is empty while the link is up (it drains on
         * ready), and requests fail in FIFO order, so appending keeps the
         * publish order. */
        if (spillway_link_rq_written(l, q)) cmd->maybe_ran = true;
        cmd->base.node.next = NULL;
        if (r->aq_tail != NULL) r->aq_tail->base.node.next = &cmd->base.node;
        else r->aq_head = cmd;
        r->aq_tail = cmd;
        return;
    }
    if (!id_reply_fits(v, "publish", why, sizeof(why))) {
        misfit(hub, l, q, why);
        return;
    }
    if (noscript(v) && !pr->eval && queue_publish(hub, cmd, true) == 0) return;
    if (v->type != SW_RV_STRING) {
        rv_message(v, msg, sizeof(msg));
        spillway_hub_error(hub, "async publish to %.*s failed: %s", (int)cmd->chlen, cmd->channel, msg);
    }
    async_finish(hub, cmd, v->type == SW_RV_STRING);
}

/* ---- link life --------------------------------------------------------- */

static void on_link_ready(spillway_hub *hub, spillway_rlink *l)
{
    spillway_redis *r = R(hub);
    update_connected(hub);
    if (l == &r->sub) {
        /* The control channel first, then everything wanted (after a drop:
         * every channel that still has streams). */
        const char *argv[] = {"SUBSCRIBE", r->ctl};
        size_t lens[] = {9, r->ctl_len};
        spillway_link_queue(hub, l, NULL, 2, argv, lens);
        r->ctl_state = SW_RS_SENT;
        for (uint32_t b = 0; b < hub->chans.nbuckets; b++)
            for (spillway_channel *ch = hub->chans.buckets[b]; ch != NULL; ch = ch->hnext)
                if (ch->rstate == SW_RS_PENDING) plist_add(r, ch);
    } else {
        /* Barriers that were on the old connection are sent again. */
        for (spillway_channel *ch = r->slist; ch != NULL; ch = ch->snext) ch->barrier = 0;
        send_async_queue(hub);
        join_all_ready(hub);
    }
}

/* The subscriber link dropped: every subscription is gone. Channels that
 * still have streams subscribe again after the reconnect, and what was
 * published meanwhile is read back from the backlog (gap repair). */
static void sub_lost(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    spillway_chtab *t = &hub->chans;

    if (!r->need_repair) r->repair_cursor = hub->last;
    r->need_repair = true;
    cache_drop_all(hub); /* what arrives live is no longer continuous */
    r->holding = true;
    r->sub_epoch++; /* answers to an attempt under way are ignored */
    r->repair_inflight = false;
    r->repair_outstanding = 0;
    acc_clear(&r->acc);
    r->sent_subs = 0;
    r->ctl_state = SW_RS_NONE;
    for (spillway_channel *ch = r->plist; ch != NULL; ch = ch->pnext) ch->in_plist = 0;
    r->plist = NULL;
    for (spillway_channel *ch = r->slist; ch != NULL; ch = ch->snext) ch->in_slist = 0;
    r->slist = NULL;
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        spillway_channel *ch = t->buckets[b];
        while (ch != NULL) {
            spillway_channel *next = ch->hnext;
            ch->snext = NULL;
            ch->barrier = 0;
            if (ch->nsubs == 0) {
                ch->rstate = SW_RS_NONE;
                drop_channel(hub, ch);
            } else {
                ch->rstate = SW_RS_PENDING;
                plist_add(r, ch);
            }
            ch = next;
        }
    }
}

static void on_link_lost(spillway_hub *hub, spillway_rlink *l, bool was_ready)
{
    SW_UNUSED(was_ready);
    if (l == &R(hub)->sub && l->ever_ready) sub_lost(hub);
    update_connected(hub);
}

/* ---- the hub's entry points -------------------------------------------- */

static void redis_on_event(spillway_hub *hub, spillway_handle *h, uint32_t events)
{
    spillway_redis *r = R(hub);
    spillway_rlink *l = (h == &r->sub.h || h == &r->sub.rh) ? &r->sub : &r->cmd;
    spillway_link_on_event(hub, l, h, events);
}

static void redis_timers(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    uint64_t linger = hub->cfg.redis.unsubscribe_linger_ms;

    spillway_link_timers(hub, &r->sub);
    spillway_link_timers(hub, &r->cmd);
    cache_sweep(hub);
    if (r->resume_retry_at != 0 && hub->now >= r->resume_retry_at) {
        r->resume_retry_at = 0;
        join_all_ready(hub); /* resume reads refused earlier go out again */
    }
    while (r->linger_head != NULL && r->linger_head->linger_since_ms + linger <= hub->now) {
        spillway_channel *ch = r->linger_head;
        linger_unlink(r, ch);
        if (ch->nsubs == 0 && ch->rstate == SW_RS_ACTIVE) plist_add(r, ch);
    }
}

static uint64_t redis_next_timer(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    uint64_t next = hub->now + 1000;
    next = SW_MIN(next, spillway_link_next_timer(hub, &r->sub));
    next = SW_MIN(next, spillway_link_next_timer(hub, &r->cmd));
    if (r->linger_head != NULL) next = SW_MIN(next, r->linger_head->linger_since_ms + hub->cfg.redis.unsubscribe_linger_ms);
    if (r->slist != NULL && r->barrier_retry_at > hub->now) next = SW_MIN(next, r->barrier_retry_at);
    if (r->need_repair && r->repair_retry_at > hub->now) next = SW_MIN(next, r->repair_retry_at);
    if (r->resume_retry_at != 0) next = SW_MIN(next, r->resume_retry_at);
    return next;
}

/* One (UN)SUBSCRIBE command for n channels; 0, or -1 (nothing queued). */
static int batch(spillway_hub *hub, const char *cmd, spillway_channel **chans, uint32_t n)
{
    spillway_redis *r = R(hub);
    spillway_buf *b = &r->sub.out;
    size_t mark = b->len;
    int bad = spillway_buf_begin(b, 1 + n);
    bad |= spillway_buf_arg(b, cmd, strlen(cmd));
    for (uint32_t i = 0; i < n; i++)
        bad |= spillway_buf_arg2(b, r->chan_prefix, r->chan_prefix_len, chans[i]->name, chans[i]->namelen);
    if (bad) {
        b->len = mark;
        spillway_hub_error(hub, "Redis subscriber link: out of memory");
        return -1;
    }
    return 0;
}

/* Batched SUBSCRIBE / UNSUBSCRIBE of what changed this iteration. */
static void flush_subscriptions(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    spillway_channel *subs[SUBSCRIBE_BATCH], *unsubs[SUBSCRIBE_BATCH];
    uint32_t ns = 0, nu = 0;

    while (r->plist != NULL && ns < SUBSCRIBE_BATCH && nu < SUBSCRIBE_BATCH) {
        spillway_channel *ch = r->plist;
        r->plist = ch->pnext;
        ch->pnext = NULL;
        ch->in_plist = 0;
        if (ch->rstate == SW_RS_PENDING && ch->nsubs > 0) {
            subs[ns++] = ch;
        } else if (ch->rstate == SW_RS_PENDING || ch->rstate == SW_RS_NONE) {
            if (ch->nsubs == 0) {
                ch->rstate = SW_RS_NONE; /* wanted, then unwanted before it went out */
                drop_channel(hub, ch);
            }
        } else if (ch->rstate == SW_RS_ACTIVE && ch->nsubs == 0) {
            unsubs[nu++] = ch;
        }
    }
    if (ns > 0 && batch(hub, "SUBSCRIBE", subs, ns) == 0) {
        for (uint32_t i = 0; i < ns; i++) subs[i]->rstate = SW_RS_SENT;
        r->sent_subs += ns;
    } else {
        for (uint32_t i = 0; i < ns; i++) plist_add(r, subs[i]); /* out of memory: next time */
    }
    if (nu > 0 && batch(hub, "UNSUBSCRIBE", unsubs, nu) == 0) {
        for (uint32_t i = 0; i < nu; i++) {
            unsubs[i]->rstate = SW_RS_UNSUB_SENT;
            cache_drop(hub, unsubs[i]);
        }
    } else {
        for (uint32_t i = 0; i < nu; i++) plist_add(r, unsubs[i]);
    }
}

static void redis_flush_writes(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    if (r->sub.state == SW_LS_READY && r->plist != NULL) flush_subscriptions(hub);
    try_barrier(hub);
    try_repair(hub);
    if (r->sub.state == SW_LS_READY || r->sub.state == SW_LS_HANDSHAKE) spillway_link_write(hub, &r->sub);
    if (r->cmd.state == SW_LS_READY || r->cmd.state == SW_LS_HANDSHAKE) spillway_link_write(hub, &r->cmd);
}

/* ---- lifecycle --------------------------------------------------------- */

/* The subscriber link: pushes, PING health checks, no db. */
static const spillway_link_options sub_options = {
    .name = "subscriber",
    .tag = "sub",
    .health_ping = true,
};
static const spillway_link_hooks sub_hooks = {
    .on_ready = on_link_ready,
    .on_push = on_sub_reply,
    .on_lost = on_link_lost,
};
/* The command link: requests answered in order, the three scripts. */
static const spillway_link_options cmd_options = {
    .name = "command",
    .tag = "cmd",
    .select_db = true,
    .nscripts = SCRIPTS,
    .scripts = {[SCRIPT_PUBLISH] = spillway_lua_publish,
                [SCRIPT_RESUME] = spillway_lua_resume,
                [SCRIPT_BARRIER] = spillway_lua_barrier},
};
static const spillway_link_hooks cmd_hooks = {
    .on_ready = on_link_ready,
    .on_lost = on_link_lost,
};

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s == NULL) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

static int redis_new(spillway_hub *hub, char *err, size_t errlen)
{
    spillway_redis *r = calloc(1, sizeof(*r));
    const char *ns = hub->cfg.redis.ns;
    char ctl[64];

    if (r == NULL) goto oom;
    spillway_link_init(&r->sub, &sub_options, &sub_hooks, hub->now);
    spillway_link_init(&r->cmd, &cmd_options, &cmd_hooks, hub->now);
    /* '!' never appears in a channel name: no stream can subscribe to it. */
    snprintf(ctl, sizeof(ctl), "!%d.%08x", (int)getpid(), (unsigned)(spillway_mono_ms() ^ (uintptr_t)r));
    r->chan_prefix = concat(ns, ":");
    r->key_prefix = concat(ns, ":s:");
    r->idkey = concat(ns, ":id");
    r->sincekey = concat(ns, ":since");
    r->ctl = concat(ns, ctl);
    if (r->chan_prefix == NULL || r->key_prefix == NULL || r->idkey == NULL || r->sincekey == NULL ||
        r->ctl == NULL) {
        free(r->chan_prefix);
        free(r->key_prefix);
        free(r->idkey);
        free(r->sincekey);
        free(r->ctl);
        free(r);
        goto oom;
    }
    r->chan_prefix_len = strlen(r->chan_prefix);
    r->key_prefix_len = strlen(r->key_prefix);
    r->ctl_len = strlen(r->ctl);
    r->hub = hub;
    hub->backend.self = r;
    /* Redis issues the ids: no local clock may seed the position (a clock
     * ahead of Redis's would hold back every live frame). Zero accepts
     * everything that arrives after a subscription. */
    hub->last = (spillway_id){0, 0};
    return 0;
oom:
    snprintf(err, errlen, "spillway_redis_new: out of memory");
    return -ENOMEM;
}

static void redis_stop(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    if (r == NULL) return;
    spillway_link_teardown(hub, &r->sub);
    spillway_link_teardown(hub, &r->cmd);
    while (r->aq_head != NULL) {
        spillway_cmd_publish *cmd = r->aq_head;
        r->aq_head = (spillway_cmd_publish *)cmd->base.node.next;
        async_finish(hub, cmd, false);
    }
    r->aq_tail = NULL;
    for (size_t i = 0; i < r->held_len; i++) {
        spillway_frame_unref(r->held[i].f);
        free(r->held[i].name);
    }
    free(r->held);
    r->held = NULL;
    r->held_len = r->held_cap = 0;
    acc_clear(&r->acc);
    cache_drop_all(hub);
    update_connected(hub);
}

static void redis_free(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    redis_stop(hub);
    free(r->chan_prefix);
    free(r->key_prefix);
    free(r->idkey);
    free(r->sincekey);
    free(r->ctl);
    free(r);
    hub->backend.self = NULL;
}

static void redis_abandon(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    if (r == NULL) return;
    spillway_link_abandon(&r->sub);
    spillway_link_abandon(&r->cmd);
}

static size_t redis_memsize(const spillway_redis *r)
{
    return sizeof(*r) + r->sub.out.cap + r->cmd.out.cap + r->held_cap * sizeof(*r->held);
}

/* ---- the backend's table (backend.h) ----------------------------------- */

static spillway_hub *HUB(const void *self)
{
    return ((const spillway_redis *)self)->hub;
}

static void op_join(void *self, spillway_conn *c)
{
    redis_conn_joined_channels(HUB(self), c);
}

static void op_publish_async(void *self, spillway_cmd_publish *cmd)
{
    redis_publish_async(HUB(self), cmd);
}

static void op_channel_wanted(void *self, spillway_channel *ch)
{
    redis_channel_wanted(HUB(self), ch);
}

static void op_channel_unwanted(void *self, spillway_channel *ch)
{
    redis_channel_unwanted(HUB(self), ch);
}

static void op_on_event(void *self, spillway_handle *h, uint32_t events)
{
    redis_on_event(HUB(self), h, events);
}

static uint64_t op_next_timer(void *self)
{
    return redis_next_timer(HUB(self));
}

static void op_timers(void *self)
{
    redis_timers(HUB(self));
}

static void op_end_iteration(void *self)
{
    redis_flush_writes(HUB(self));
}

static void op_stop(void *self)
{
    redis_stop(HUB(self));
}

static void op_abandon(void *self)
{
    redis_abandon(HUB(self));
}

static void op_free(void *self)
{
    redis_free(HUB(self));
}

static size_t op_memsize(const void *self)
{
    return redis_memsize(self);
}

static const spillway_backend_ops redis_ops = {
    .name = "Redis",
    .join = op_join,
    .publish_async = op_publish_async,
    .channel_wanted = op_channel_wanted,
    .channel_unwanted = op_channel_unwanted,
    .on_event = op_on_event,
    .next_timer = op_next_timer,
    .timers = op_timers,
    .end_iteration = op_end_iteration,
    .stop = op_stop,
    .abandon = op_abandon,
    .free = op_free,
    .memsize = op_memsize,
};

int spillway_redis_backend_new(spillway_hub *hub, char *err, size_t errlen)
{
    int rc = redis_new(hub, err, errlen);
    if (rc == 0) hub->backend.ops = &redis_ops;
    return rc;
}
