/*
 * The Redis backend's subscriptions and barriers: channels wanted are
 * SUBSCRIBEd in batches at the end of an iteration, channels no longer
 * wanted linger a while before their UNSUBSCRIBE, and a confirmed channel is
 * ACTIVE once a barrier published after its confirmation arrives on the
 * subscriber link (docs/design.md, Redis links: barriers).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "redis_internal.h"

static spillway_rq_fn on_barrier_rq;

void spillway_redis_plist_add(spillway_redis *r, spillway_channel *ch)
{
    if (ch->in_plist) return;
    ch->in_plist = 1;
    ch->pnext = r->plist;
    r->plist = ch;
}

void spillway_redis_linger_unlink(spillway_redis *r, spillway_channel *ch)
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

void spillway_redis_drop_channel(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis_cache_drop(hub, ch);
    spillway_redis_linger_unlink(R(hub), ch);
    slist_unlink(R(hub), ch);
    spillway_channel_drop(hub, ch);
}

void spillway_redis_channel_wanted(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    spillway_redis_linger_unlink(r, ch);
    if (ch->rstate == SW_RS_NONE) {
        ch->rstate = SW_RS_PENDING;
        spillway_redis_plist_add(r, ch);
    }
    /* PENDING, SENT, SYNCING: under way. ACTIVE: nothing to do.
     * UNSUB_SENT: the confirmation sees the subscriber and subscribes again. */
}

void spillway_redis_channel_unwanted(spillway_hub *hub, spillway_channel *ch)
{
    switch (ch->rstate) {
    case SW_RS_NONE:
        if (!ch->in_plist) spillway_redis_drop_channel(hub, ch);
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

/* Covers every SYNCING channel not yet covered with a new barrier. */
void spillway_redis_try_barrier(spillway_hub *hub)
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
    bad |= spillway_buf_arg(b, r->keys.id, strlen(r->keys.id));
    bad |= spillway_buf_arg(b, r->keys.since, strlen(r->keys.since));
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
bool spillway_redis_parse_barrier(const spillway_redis *r, const spillway_frame *f, uint64_t *seq, spillway_id *id,
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
void spillway_redis_on_barrier(spillway_hub *hub, uint64_t seq, const spillway_id *id)
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
        for (uint32_t i = 0; i < ch->nsubs; i++) spillway_redis_join_if_ready(hub, ch->subs[i].conn);
    }
}

void spillway_redis_on_subscribed(spillway_hub *hub, spillway_channel *ch)
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

void spillway_redis_on_unsubscribed(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    if (ch->rstate != SW_RS_UNSUB_SENT) return;
    ch->rstate = SW_RS_NONE;
    if (ch->nsubs > 0) {
        /* Someone joined while it was leaving: subscribe again. */
        ch->rstate = SW_RS_PENDING;
        spillway_redis_plist_add(r, ch);
    } else if (!ch->in_plist) {
        spillway_redis_drop_channel(hub, ch);
    }
}

void spillway_redis_refuse_sent(spillway_hub *hub)
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

/* One (UN)SUBSCRIBE command for n channels; 0, or -1 (nothing queued). */
static int batch(spillway_hub *hub, const char *cmd, spillway_channel **chans, uint32_t n)
{
    spillway_redis *r = R(hub);
    spillway_buf *b = &r->sub.out;
    size_t mark = b->len;
    int bad = spillway_buf_begin(b, 1 + n);
    bad |= spillway_buf_arg(b, cmd, strlen(cmd));
    for (uint32_t i = 0; i < n; i++)
        bad |= spillway_buf_arg2(b, r->keys.chan, r->keys.chan_len, chans[i]->name, chans[i]->namelen);
    if (bad) {
        b->len = mark;
        spillway_hub_error(hub, "Redis subscriber link: out of memory");
        return -1;
    }
    return 0;
}

/* Batched SUBSCRIBE / UNSUBSCRIBE of what changed this iteration. */
void spillway_redis_flush_subscriptions(spillway_hub *hub)
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
                spillway_redis_drop_channel(hub, ch);
            }
        } else if (ch->rstate == SW_RS_ACTIVE && ch->nsubs == 0) {
            unsubs[nu++] = ch;
        }
    }
    if (ns > 0 && batch(hub, "SUBSCRIBE", subs, ns) == 0) {
        for (uint32_t i = 0; i < ns; i++) subs[i]->rstate = SW_RS_SENT;
        r->sent_subs += ns;
    } else {
        for (uint32_t i = 0; i < ns; i++) spillway_redis_plist_add(r, subs[i]); /* out of memory: next time */
    }
    if (nu > 0 && batch(hub, "UNSUBSCRIBE", unsubs, nu) == 0) {
        for (uint32_t i = 0; i < nu; i++) {
            unsubs[i]->rstate = SW_RS_UNSUB_SENT;
            spillway_redis_cache_drop(hub, unsubs[i]);
        }
    } else {
        for (uint32_t i = 0; i < nu; i++) spillway_redis_plist_add(r, unsubs[i]);
    }
}
