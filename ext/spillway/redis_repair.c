/*
 * Gap repair: after the subscriber link dropped and every channel is
 * ACTIVE again, each channel's backlog after the position at the drop is
 * read in batches, merged in id order and delivered before the live frames
 * held meanwhile (docs/design.md, Redis links: gap repair).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "redis_internal.h"

static spillway_rq_fn on_repair_rq;

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

/* Whether stream c must hear of ch's hole: ch is marked and, when the
 * repair knows from where it could serve ch (mark_from), c does not already
 * have everything up to there (a stream that joined after the drop, with a
 * read of its own that reached past it, has no hole). */
static bool needs_reset(const spillway_conn *c, const spillway_channel *ch)
{
    return ch->mark && (!ch->mark_from_set || spillway_id_cmp(c->last, ch->mark_from) < 0);
}

/* Every live stream on a channel with ch->mark set gets one reset naming
 * its marked channels that it has a hole in (reason: why, for the log).
 * Clears the marks. */
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
                bool any = false;
                if (c->flags & (SW_CF_JOINING | SW_CF_DOOMED | SW_CF_MARK)) continue;
                c->flags |= SW_CF_MARK;
                flags = calloc(c->nmem, sizeof(*flags));
                if (flags == NULL) {
                    spillway_conn_doom(hub, c, false); /* no hole left unsaid */
                    continue;
                }
                for (uint32_t m = 0; m < c->nmem; m++) any |= flags[m] = needs_reset(c, c->mem[m].ch);
                if (any) spillway_conn_send_reset(hub, c, flags, now, reason);
                free(flags);
            }
        }
    }
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) {
            if (!ch->mark) continue;
            ch->mark = 0;
            ch->mark_from_set = 0;
            for (uint32_t s = 0; s < ch->nsubs; s++) ch->subs[s].conn->flags &= ~SW_CF_MARK;
        }
    }
}

void spillway_redis_acc_clear(struct repair_acc *acc)
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
    spillway_redis_acc_clear(&r->acc);
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

/* Both links up, every channel subscribed and synced, no retry pause. */
static bool repair_may_start(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    if (!r->need_repair || r->repair_inflight || hub->now < r->repair_retry_at) return false;
    if (r->sub.state != SW_LS_READY || r->cmd.state != SW_LS_READY) return false;
    if (r->sent_subs > 0 || r->slist != NULL) return false;
    for (spillway_channel *ch = r->plist; ch != NULL; ch = ch->pnext)
        if (ch->rstate == SW_RS_PENDING) return false; /* not subscribed yet */
    return true;
}

/* The repair's reads over chans (n of them, named in the accumulator), one
 * script run per REPAIR_BATCH channels. 0, or -1 when out of memory (the
 * batches already sent are then answered into nothing by the caller's
 * epoch bump). */
static int send_batches(spillway_hub *hub, spillway_channel **chans, uint32_t n)
{
    spillway_redis *r = R(hub);
    struct repair_acc *acc = &r->acc;
    char cursor[SPILLWAY_ID_TEXT_MAX];

    spillway_redis_acc_clear(acc);
    acc->names = calloc(n, sizeof(*acc->names));
    acc->reset = calloc(n, sizeof(*acc->reset));
    if (acc->names == NULL || acc->reset == NULL) return -1;
    for (uint32_t i = 0; i < n; i++) {
        acc->names[i] = strdup(chans[i]->name);
        if (acc->names[i] == NULL) return -1;
        acc->nnames++;
    }
    spillway_id_format(r->repair_cursor, cursor);
    r->repair_error = false;
    for (uint32_t base = 0; base < n; base += REPAIR_BATCH) {
        uint32_t k = SW_MIN(REPAIR_BATCH, n - base);
        spillway_rq *q = spillway_rq_new(on_repair_rq, sizeof(struct repair_req));
        struct repair_req *rr;
        if (q == NULL) return -1;
        rr = q->privdata;
        rr->epoch = r->sub_epoch;
        rr->nch = k;
        rr->base = base;
        q->timeout_scale = 5; /* it may read many backlogs */
        if (spillway_redis_queue_resume(hub, q, RESUME_CURSOR, chans + base, k, cursor, 0, false) != 0) {
            spillway_rq_free(q);
            return -1;
        }
        r->repair_outstanding++;
    }
    return 0;
}

/* Sends the repair once both links are up and every channel is ACTIVE
 * again: each channel's backlog after the cursor remembered at the drop,
 * in batches of REPAIR_BATCH channels. */
void spillway_redis_try_repair(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    spillway_chtab *t = &hub->chans;
    spillway_channel **chans;
    uint32_t n = 0;

    if (!repair_may_start(hub)) return;
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
    if (send_batches(hub, chans, n) != 0) goto oom;
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
static void mark_resets(spillway_hub *hub, const struct repair_acc *acc);

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
    mark_resets(hub, acc);
    send_marked_resets(hub, acc->seen, "the backlog no longer reaches back to the Redis outage");
    finish_repair(hub, false);
}

/* Channels whose backlog no longer reaches back get marked: their live
 * streams are told, but not a stream that already has everything up to
 * where the read could serve the channel from (the oldest message it
 * returned of it, or, with none, the point it saw). */
static void mark_resets(spillway_hub *hub, const struct repair_acc *acc)
{
    for (uint32_t i = 0; i < acc->nnames; i++) {
        spillway_channel *ch;
        if (!acc->reset[i]) continue;
        ch = spillway_chtab_find(&hub->chans, acc->names[i], strlen(acc->names[i]));
        if (ch == NULL) continue;
        ch->mark = 1;
        ch->mark_from_set = 1;
        ch->mark_from = acc->seen;
    }
    for (size_t k = 0; k < acc->n; k++) {
        const char *name = acc->names[acc->chan[k]];
        spillway_channel *ch;
        if (!acc->reset[acc->chan[k]]) continue;
        ch = spillway_chtab_find(&hub->chans, name, strlen(name));
        if (ch != NULL && spillway_id_cmp(acc->frames[k]->id, ch->mark_from) < 0) ch->mark_from = acc->frames[k]->id;
    }
}

/* A batch's answer is not the script's (an error, a NOSCRIPT, nonsense):
 * the attempt fails, and is tried again. */
static void batch_failed(spillway_hub *hub, const spillway_rv *v)
{
    spillway_redis *r = R(hub);
    char msg[160];
    rv_message(v, msg, sizeof(msg));
    if (noscript(v)) {
        r->cmd.sha[SCRIPT_RESUME][0] = '\0'; /* the next attempt sends the text */
    } else if (v->type == SW_RV_ERROR) {
        /* Refused for now (LOADING, BUSY, ...): again after a pause, for as
         * long as it takes; live frames are held meanwhile. */
        spillway_hub_log(hub, SW_LOG_REPAIR, "gap repair read refused, retrying: %s", msg);
        r->repair_retry_at = retry_later(hub, &r->repair_backoff_ms);
    } else {
        spillway_hub_log(hub, SW_LOG_REPAIR, "gap repair read failed: %s", msg);
        r->repair_failures++;
    }
    r->repair_error = true;
}

/* Room for at least need frames in the accumulator; 0, or -1 when out of
 * memory. */
static int acc_grow(struct repair_acc *acc, size_t need)
{
    size_t cap = SW_MAX(acc->cap * 2, need);
    spillway_frame **f = realloc(acc->frames, cap * sizeof(*f));
    uint32_t *c = NULL;
    if (f != NULL) {
        acc->frames = f;
        c = realloc(acc->chan, cap * sizeof(*c));
        if (c != NULL) acc->chan = c;
    }
    if (f == NULL || c == NULL) return -1;
    acc->cap = cap;
    return 0;
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
    n = spillway_redis_resume_shape_ok(v, q->nch) ? spillway_redis_collect_frames(v->element[2], &frames, &idx) : -1;
    if (n < 0) {
        batch_failed(hub, v);
        n = 0;
    } else {
        spillway_id seen = spillway_redis_parse_last(hub, v->element[0]);
        acc->seen = acc->have_seen && spillway_id_cmp(acc->seen, seen) < 0 ? acc->seen : seen;
        acc->have_seen = true;
        if (acc->n + (size_t)n > acc->cap && acc_grow(acc, acc->n + (size_t)n) != 0) r->repair_error = true;
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
        spillway_redis_acc_clear(acc);
        return;
    }
    repair_done(hub);
}

void spillway_redis_hold(spillway_hub *hub, spillway_channel *ch, spillway_frame *f)
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
            spillway_redis_acc_clear(&r->acc);
        }
        return;
    }
    if (!backlog_reply_fits(v, rr->nch, why, sizeof(why))) {
        misfit(hub, l, q, why);
        return;
    }
    on_repair_reply(hub, rr, v);
}
