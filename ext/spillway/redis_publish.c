/*
 * Async publishes of the Redis backend: pipelined on the command link,
 * queued while it is down and sent again after a reconnect (the
 * idempotency key makes a repeat harmless), each ticket finished in order.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "redis_internal.h"

static spillway_rq_fn on_publish_rq;

static int queue_publish(spillway_hub *hub, spillway_cmd_publish *cmd, bool eval)
{
    spillway_redis *r = R(hub);
    spillway_rlink *l = &r->cmd;
    const spillway_redis_config *rc = &hub->cfg.redis;
    spillway_rq *q = spillway_rq_new(on_publish_rq, sizeof(struct publish_req));
    spillway_publish_args a = {
        .channel = cmd->channel,
        .chlen = cmd->chlen,
        .key = cmd->channel + cmd->chlen, /* the key follows the channel */
        .keylen = cmd->keylen,
        .body = cmd->frame->data,
        .bodylen = cmd->frame->len,
        .backlog_size = rc->backlog_size,
        .backlog_ttl_s = rc->backlog_ttl_s,
        .backlog_window_ms = rc->backlog_window_ms,
        .key_ttl_ms = cmd->key_ttl_ms,
    };
    struct publish_req *pr;

    if (q == NULL) return -1;
    pr = q->privdata;
    pr->cmd = cmd;
    pr->eval = eval;
    if (spillway_buf_publish(&l->out, &r->keys, &a, eval, l->sha[SCRIPT_PUBLISH]) != 0) {
        /* Nothing of it stays in the buffer: a half command would shift
         * every later reply. */
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

void spillway_redis_async_finish(spillway_hub *hub, spillway_cmd_publish *cmd, bool ok)
{
    spillway_hub_async_done(hub, cmd->seq, ok);
    spillway_frame_unref(cmd->frame);
    free(cmd);
}

void spillway_redis_send_async_queue(spillway_hub *hub)
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
            spillway_redis_async_finish(hub, cmd, false);
            continue;
        }
        if (queue_publish(hub, cmd, false) != 0) spillway_redis_async_finish(hub, cmd, false);
    }
}

void spillway_redis_publish_async(spillway_hub *hub, spillway_cmd_publish *cmd)
{
    spillway_redis *r = R(hub);
    if (r->cmd.state == SW_LS_READY && r->aq_head == NULL) {
        if (queue_publish(hub, cmd, false) != 0) spillway_redis_async_finish(hub, cmd, false);
        return;
    }
    cmd->base.node.next = NULL;
    if (r->aq_tail) r->aq_tail->base.node.next = &cmd->base.node;
    else r->aq_head = cmd;
    r->aq_tail = cmd;
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
    spillway_redis_async_finish(hub, cmd, v->type == SW_RV_STRING);
}
