/*
 * The Redis backend of a hub (backend.h): two links (redis_link.c) owned by
 * the reactor. The subscriber link SUBSCRIBEs and reads pub/sub messages,
 * each a whole SSE frame fanned out as it arrives, without another copy;
 * the command link runs resume reads, gap repairs, barriers and async
 * publishes. Two links because a subscribed RESP2 connection can run no
 * other command (and Debian's hiredis 0.14 has no RESP3). Why ids,
 * barriers, joins and repairs make this exact: docs/design.md, "Redis
 * links". This file holds the lifecycle, the backend's table, the links'
 * hooks and the subscriber link's replies; the rest is in redis_*.c
 * (redis_internal.h says which file does what).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "redis_internal.h"

static void update_connected(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    STAT_SET(hub, st_redis_connected, r->sub.state == SW_LS_READY && r->cmd.state == SW_LS_READY ? 1 : 0);
}

static spillway_channel *channel_of(spillway_hub *hub, const spillway_rv *name)
{
    spillway_redis *r = R(hub);
    if (name == NULL || name->str == NULL || name->str->len <= r->keys.chan_len) return NULL;
    if (memcmp(name->str->data, r->keys.chan, r->keys.chan_len) != 0) return NULL;
    return spillway_chtab_find(&hub->chans, name->str->data + r->keys.chan_len,
                               name->str->len - r->keys.chan_len);
}

static bool is_ctl(spillway_redis *r, const spillway_rv *name)
{
    return name != NULL && name->str != NULL && name->str->len == r->ctl_len &&
           memcmp(name->str->data, r->ctl, r->ctl_len) == 0;
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
        if (is_str(v->element[2]) && spillway_redis_parse_barrier(r, v->element[2]->str, &seq, &id, &has_id)) {
            spillway_redis_on_barrier(hub, seq, has_id ? &id : NULL);
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
    STAT_ADD(hub, st_messages_in, 1);
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
    if (spillway_id_cmp(f->id, r->w_id) > 0 && ch->namelen <= sizeof(r->w_chan)) {
        r->w_id = f->id;
        memcpy(r->w_chan, ch->name, ch->namelen);
        r->w_chlen = ch->namelen;
    }
    if (r->holding) {
        spillway_redis_hold(hub, ch, f);
        return;
    }
    spillway_channel_fanout(hub, ch, f);
    spillway_redis_cache_push(hub, ch, f);
    spillway_frame_unref(f);
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
        spillway_redis_refuse_sent(hub);
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
    if (kind == SUB_SUBSCRIBE) spillway_redis_on_subscribed(hub, ch);
    else spillway_redis_on_unsubscribed(hub, ch);
}

static void on_witness_rq(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, spillway_rv *v)
{
    spillway_redis *r = R(hub);
    char text[160], id[SPILLWAY_ID_TEXT_MAX];
    SW_UNUSED(l);
    SW_UNUSED(q);
    if (v == NULL) return; /* the link dropped: asked again on the next one */
    if (v->type == SW_RV_INTEGER && v->integer >= 1 && v->integer <= 4) {
        static const char *const how[] = {"", "its id is newer than the namespace's last", "the entry after it names an older one as predecessor",
                                          "the channel's backlog ends before it", "the channel's backlog is gone, not expired"};
        spillway_id_format(r->w_id, id);
        spillway_hub_log(hub, SW_LOG_REPAIR,
                         "Redis lacks message %s of %.*s, which this hub received (%s): it lost acknowledged writes "
                         "(a failover to a replica that lagged, or a restart without persistence); a resume from "
                         "before it gets a reset",
                         id, (int)SW_MIN(r->w_chlen, 200), r->w_chan, how[v->integer]);
    } else if (v->type != SW_RV_INTEGER) {
        spillway_hub_log(hub, SW_LOG_REPAIR, "Redis refused the witness check: %s",
                         spillway_rv_text(v, 150, text, sizeof(text)));
    }
}

/* A new command link (a reconnect, maybe to a new primary): is the newest
 * message this hub received live still in Redis's history (scripts.h)?
 * First on the link, before any resume read. */
static void send_witness(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    char id[SPILLWAY_ID_TEXT_MAX];
    spillway_rq *q;

    if (spillway_id_is_zero(r->w_id)) return;
    q = spillway_rq_new(on_witness_rq, 0);
    spillway_id_format(r->w_id, id);
    if (q == NULL || spillway_buf_witness(&r->cmd.out, &r->keys, r->w_chan, r->w_chlen, id,
                                          hub->cfg.redis.backlog_ttl_s, hub->cfg.redis.backlog_size > 0) != 0) {
        spillway_rq_free(q);
        spillway_hub_error(hub, "Redis command link: out of memory");
        return;
    }
    spillway_link_push_rq(hub, &r->cmd, q);
}

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
                if (ch->rstate == SW_RS_PENDING) spillway_redis_plist_add(r, ch);
    } else {
        /* Barriers that were on the old connection are sent again. */
        for (spillway_channel *ch = r->slist; ch != NULL; ch = ch->snext) ch->barrier = 0;
        send_witness(hub);
        spillway_redis_send_async_queue(hub);
        spillway_redis_join_all_ready(hub);
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
    spillway_redis_cache_drop_all(hub); /* what arrives live is no longer continuous */
    r->holding = true;
    r->sub_epoch++; /* answers to an attempt under way are ignored */
    r->repair_inflight = false;
    r->repair_outstanding = 0;
    spillway_redis_acc_clear(&r->acc);
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
                spillway_redis_drop_channel(hub, ch);
            } else {
                ch->rstate = SW_RS_PENDING;
                spillway_redis_plist_add(r, ch);
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
    spillway_redis_cache_sweep(hub);
    if (r->resume_retry_at != 0 && hub->now >= r->resume_retry_at) {
        r->resume_retry_at = 0;
        spillway_redis_join_all_ready(hub); /* resume reads refused earlier go out again */
    }
    while (r->linger_head != NULL && r->linger_head->linger_since_ms + linger <= hub->now) {
        spillway_channel *ch = r->linger_head;
        spillway_redis_linger_unlink(r, ch);
        if (ch->nsubs == 0 && ch->rstate == SW_RS_ACTIVE) spillway_redis_plist_add(r, ch);
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

static void redis_flush_writes(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    if (r->sub.state == SW_LS_READY && r->plist != NULL) spillway_redis_flush_subscriptions(hub);
    spillway_redis_try_barrier(hub);
    spillway_redis_try_repair(hub);
    if (r->sub.state == SW_LS_READY || r->sub.state == SW_LS_HANDSHAKE) spillway_link_write(hub, &r->sub);
    if (r->cmd.state == SW_LS_READY || r->cmd.state == SW_LS_HANDSHAKE) spillway_link_write(hub, &r->cmd);
}

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
    .handshake = spillway_link_handshake,
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
    .handshake = spillway_link_handshake,
};

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
    r->ctl_len = strlen(ns) + strlen(ctl);
    r->ctl = malloc(r->ctl_len + 1);
    if (r->ctl != NULL) snprintf(r->ctl, r->ctl_len + 1, "%s%s", ns, ctl);
    if (r->ctl == NULL || spillway_keys_init(&r->keys, ns) != 0) {
        free(r->ctl);
        free(r);
        goto oom;
    }
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
        spillway_redis_async_finish(hub, cmd, false);
    }
    r->aq_tail = NULL;
    for (size_t i = 0; i < r->held_len; i++) {
        spillway_frame_unref(r->held[i].f);
        free(r->held[i].name);
    }
    free(r->held);
    r->held = NULL;
    r->held_len = r->held_cap = 0;
    spillway_redis_acc_clear(&r->acc);
    spillway_redis_cache_drop_all(hub);
    update_connected(hub);
}

static void redis_free(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    redis_stop(hub);
    spillway_keys_free(&r->keys);
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

static spillway_hub *HUB(const void *self)
{
    return ((const spillway_redis *)self)->hub;
}

static void op_join(void *self, spillway_conn *c)
{
    spillway_redis_join(HUB(self), c);
}

static void op_publish_async(void *self, spillway_cmd_publish *cmd)
{
    spillway_redis_publish_async(HUB(self), cmd);
}

static void op_channel_wanted(void *self, spillway_channel *ch)
{
    spillway_redis_channel_wanted(HUB(self), ch);
}

static void op_channel_unwanted(void *self, spillway_channel *ch)
{
    spillway_redis_channel_unwanted(HUB(self), ch);
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
