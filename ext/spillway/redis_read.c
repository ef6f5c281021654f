/*
 * One read of the backlog through the resume script (scripts.h): the
 * command over a list of channels and one cursor, and the pieces of its
 * reply (the point the read saw, its frames in order, its shape). Used by
 * every reader: a stream's own resume (redis_resume.c), the resume cache's
 * fills (redis_cache.c) and gap repair (redis_repair.c).
 */
#include <stdlib.h>
#include <string.h>

#include "redis_internal.h"

/* The resume script over chans, one cursor for all. */
int spillway_redis_queue_resume(spillway_hub *hub, spillway_rq *q, enum resume_mode mode, spillway_channel **chans,
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
    bad |= spillway_buf_arg(b, r->keys.id, strlen(r->keys.id));
    bad |= spillway_buf_arg(b, r->keys.since, strlen(r->keys.since));
    for (uint32_t i = 0; i < n; i++)
        bad |= spillway_buf_arg2(b, r->keys.stream, r->keys.stream_len, chans[i]->name, chans[i]->namelen);
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

spillway_id spillway_redis_parse_last(spillway_hub *hub, const spillway_rv *v)
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
long spillway_redis_collect_frames(spillway_rv *flat, spillway_frame ***frames, uint32_t **idx)
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
bool spillway_redis_resume_shape_ok(const spillway_rv *v, uint32_t n)
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
