/*
 * A joining stream's own resume read (the Redis backend): when the resume
 * cache cannot serve it (redis_join.c decides), one read of every channel
 * after its cursor, then the replay (docs/design.md, Redis links: joining).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frames.h"
#include "redis_internal.h"

static spillway_rq_fn on_resume_rq;

void spillway_redis_send_resume(spillway_hub *hub, spillway_conn *c, bool eval)
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
    if (spillway_redis_queue_resume(hub, q, mode, chans, c->nmem, cursor, 0, eval) != 0) {
        free(q);
        spillway_conn_doom(hub, c, false);
    } else {
        c->inflight++;
        c->flags |= SW_CF_RESUME_SENT;
    }
    free(chans);
}

/* The frames as c gets them (*out): the tagged copies when it asked for
 * channel names (idx: each frame's channel, an index into c->mem, as the
 * read was built), else frames itself. False when out of memory or an
 * index is out of range (c is doomed then). */
static bool tag_replay(spillway_hub *hub, spillway_conn *c, spillway_frame **frames, const uint32_t *idx, long n,
                       spillway_frame ***out)
{
    spillway_frame **t;
    *out = frames;
    if (!(c->flags & SW_CF_CHANNEL) || n <= 0) return true;
    t = malloc((size_t)n * sizeof(*t));
    if (t == NULL) {
        spillway_conn_doom_why(hub, c, false, "out of memory");
        return false;
    }
    for (long i = 0; i < n; i++) {
        if (idx[i] >= c->nmem) {
            spillway_hub_log(hub, SW_LOG_PROTOCOL, "resume read: a frame of channel %u of %u", idx[i], c->nmem);
            spillway_conn_doom_why(hub, c, false, "protocol error");
            free(t);
            return false;
        }
        if ((t[i] = spillway_frame_for(hub, c, frames[i], c->mem[idx[i]].ch)) == NULL) {
            free(t);
            return false;
        }
    }
    *out = t;
    return true;
}

/* Which of c's channels the read flags for a reset (reset[], one per
 * membership), and why, for a read that answered in shape. */
static const char *read_resets(const spillway_hub *hub, const spillway_conn *c, const spillway_rv *v,
                               spillway_id now, bool *reset)
{
    for (uint32_t i = 0; i < c->nmem; i++) {
        const spillway_rv *e = v->element[1]->element[i];
        reset[i] = !c->cursor_ok || (e != NULL && e->type == SW_RV_INTEGER && e->integer == 1);
        /* Without a backlog nothing can be replayed: anything after the
         * cursor is a hole. */
        if (hub->cfg.redis.backlog_size == 0 && spillway_id_cmp(now, c->cursor) > 0) reset[i] = true;
    }
    if (!c->cursor_ok) return "the Last-Event-ID is not an event id";
    if (hub->cfg.redis.backlog_size == 0) return "no backlog (backlog_size 0)";
    return "the backlog no longer reaches back to the Last-Event-ID";
}

static void on_resume_reply(spillway_hub *hub, const struct resume_req *q, spillway_rv *v)
{
    spillway_conn *c = q->conn;
    spillway_frame **frames = NULL, **send;
    uint32_t *idx = NULL;
    bool *reset;
    bool gone = (c->flags & SW_CF_ZOMBIE) != 0;
    spillway_id now;
    long n = 0;
    const char *reason;

    conn_unref(hub, c); /* frees a zombie */
    if (gone || (c->flags & SW_CF_DOOMED)) return;
    if (noscript(v) && !q->eval) {
        spillway_redis_send_resume(hub, c, true); /* the script cache was flushed */
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
    if (!spillway_redis_resume_shape_ok(v, c->nmem) || (n = spillway_redis_collect_frames(v->element[2], &frames, &idx)) < 0) {
        char msg[160];
        rv_message(v, msg, sizeof(msg));
        spillway_hub_log(hub, SW_LOG_RESUME, "resume read failed: %s", msg);
        /* Tell the client instead of leaving it with a possible hole. */
        for (uint32_t i = 0; i < c->nmem; i++) reset[i] = true;
        n = 0;
        now = hub->last;
        reason = "the resume read failed";
    } else {
        now = spillway_redis_parse_last(hub, v->element[0]);
        reason = read_resets(hub, c, v, now, reset);
    }
    /* A cursor newer than anything Redis issued (from the future) must not
     * hold back live frames: the stream starts from now, with its reset. */
    c->last = q->mode == RESUME_CURSOR && spillway_id_cmp(c->cursor, now) <= 0 ? c->cursor : now;
    {
        bool tagged = tag_replay(hub, c, frames, idx, n, &send);
        spillway_conn_replay(hub, c, send, tagged ? (size_t)n : 0, reset, now, reason);
    }
    if (send != frames) free(send);
    for (long i = 0; i < n; i++) spillway_frame_unref(frames[i]);
    free(frames);
    free(idx);
    free(reset);
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
