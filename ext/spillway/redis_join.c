/*
 * Joining streams of the Redis backend: a stream goes live once its
 * channels are ACTIVE, served from the resume cache that streams resuming
 * on a channel share (one paged backlog read, a ring of frames that keeps
 * every message of the channel after a point: see below), or with a read
 * of its own (redis_resume.c). docs/design.md, Redis links: joining, the
 * resume cache.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "frames.h"
#include "redis_internal.h"

static spillway_rq_fn on_fill_rq;

static bool conn_channels_active(const spillway_conn *c)
{
    for (uint32_t i = 0; i < c->nmem; i++)
        if (c->mem[i].ch->rstate != SW_RS_ACTIVE) return false;
    return true;
}

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
void spillway_redis_cache_drop(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    if (!ch->cached) return;
    cache_unlink(r, ch);
    fill_clear(r, ch);
    spillway_backlog_clear(hub, ch);
    ch->cached = 0;
    ch->fill_gen++;
}

void spillway_redis_cache_drop_all(spillway_hub *hub)
{
    while (R(hub)->cache_head != NULL) spillway_redis_cache_drop(hub, R(hub)->cache_head);
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
void spillway_redis_cache_push(spillway_hub *hub, spillway_channel *ch, spillway_frame *f)
{
    if (!ch->cached) return;
    if (spillway_backlog_push(hub, ch, f) != 0) spillway_redis_cache_drop(hub, ch);
}

/* Idle caches go, then the least recently used until under the budget. */
void spillway_redis_cache_sweep(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    while (r->cache_head != NULL && !r->cache_head->filling &&
           r->cache_head->cache_used_ms + CACHE_IDLE_MS <= hub->now)
        spillway_redis_cache_drop(hub, r->cache_head);
    while (r->cache_head != NULL && cache_bytes(hub) > CACHE_BUDGET) spillway_redis_cache_drop(hub, r->cache_head);
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
    if (spillway_redis_queue_resume(hub, q, RESUME_CURSOR, &ch, 1, cursor, FILL_PAGE, false) != 0) {
        spillway_rq_free(q);
        return -1;
    }
    return 0;
}

/* The streams waiting on the channel's fill look again. */
static void fill_waiters(spillway_hub *hub, spillway_channel *ch)
{
    for (uint32_t i = 0; i < ch->nsubs; i++) spillway_redis_join_if_ready(hub, ch->subs[i].conn);
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
    /* The ring now holds every message after fill_from: what it had
     * trimmed before is back (the fill reached the old ring's start). Left
     * as it was, `trimmed` would still say the ring does not reach back to
     * the waiters' cursor, and they would ask for the same fill forever. */
    ch->cache_from = ch->fill_from;
    if (spillway_id_cmp(ch->trimmed, ch->fill_from) > 0) ch->trimmed = ch->fill_from;
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

/* The n frames of a page (taken over, and the array freed) go after the
 * pages read so far. 0, or -1 when out of memory (the frames are then
 * released). */
static int fill_append(spillway_redis *r, spillway_channel *ch, spillway_frame **frames, size_t n)
{
    if (ch->fill_len + n > ch->fill_cap) {
        size_t cap = SW_MAX((size_t)ch->fill_cap * 2, ch->fill_len + n);
        spillway_frame **f = realloc(ch->fill, cap * sizeof(*f));
        if (f == NULL) {
            for (size_t i = 0; i < n; i++) spillway_frame_unref(frames[i]);
            free(frames);
            return -1;
        }
        ch->fill = f;
        ch->fill_cap = (uint32_t)cap;
    }
    for (size_t i = 0; i < n; i++) {
        ch->fill[ch->fill_len++] = frames[i];
        r->fill_bytes += spillway_frame_size(frames[i]);
    }
    free(frames);
    return 0;
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
    if (!spillway_redis_resume_shape_ok(v, 1) || (n = spillway_redis_collect_frames(v->element[2], &frames, NULL)) < 0) {
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
        spillway_id_cmp(q->cursor, spillway_redis_parse_last(hub, v->element[0])) > 0) {
        /* Trimmed past the cursor, Redis lost its data, or a cursor from
         * the future. */
        for (long i = 0; i < n; i++) spillway_frame_unref(frames[i]);
        free(frames);
        fill_failed_reset(hub, ch, flag != NULL && flag->type == SW_RV_INTEGER && flag->integer == 1
                                       ? "the backlog no longer reaches back to the Last-Event-ID"
                                       : "the Last-Event-ID is newer than anything Redis issued");
        return;
    }
    if (fill_append(r, ch, frames, (size_t)n) != 0) {
        fill_failed_reset(hub, ch, "out of memory");
        return;
    }
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
    fill_complete(hub, ch, spillway_redis_parse_last(hub, v->element[0]));
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
        size_t got = spillway_backlog_collect(ch, c->cursor, frames + n);
        if (!spillway_frames_for(hub, c, frames + n, got, ch)) break; /* doomed */
        n += got;
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

/* A joining stream whose channels are all ACTIVE goes live. */
void spillway_redis_join_if_ready(spillway_hub *hub, spillway_conn *c)
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
    if (R(hub)->cmd.state == SW_LS_READY && hub->now >= R(hub)->resume_retry_at) spillway_redis_send_resume(hub, c, false);
}

void spillway_redis_join(spillway_hub *hub, spillway_conn *c)
{
    /* Attached at once (head written, heartbeats running), live once its
     * channels are ACTIVE: until then live frames are held. */
    c->flags |= SW_CF_JOINING;
    STAT_ADD(hub, st_joining, 1);
    if (c->flags & SW_CF_DOOMED) return;
    if (!c->has_cursor) c->cursor = hub->last;
    spillway_redis_join_if_ready(hub, c);
}

void spillway_redis_join_all_ready(spillway_hub *hub)
{
    for (spillway_conn *c = hub->streams; c != NULL; c = c->anext) spillway_redis_join_if_ready(hub, c);
}
