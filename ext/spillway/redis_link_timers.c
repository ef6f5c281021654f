/*
 * The Redis links' deadlines and health checks (redis_link.h): connect and
 * command timeouts, PINGs on a pub/sub link, the reconnect after backoff.
 * Above redis_link.c: it calls the link's public functions.
 */
#include "redis_link.h"

/* How long Redis may take on the request at the head of the FIFO (a
 * request that reads much, like a gap repair, asks for more time). */
static uint64_t head_limit(const spillway_hub *hub, const spillway_rq *q)
{
    return (uint64_t)hub->cfg.redis.command_timeout_ms * q->timeout_scale;
}

void spillway_link_timers(spillway_hub *hub, spillway_rlink *l)
{
    const spillway_redis_config *rc = &hub->cfg.redis;
    switch (l->state) {
    case SW_LS_IDLE:
        if (hub->now >= l->retry_at) spillway_link_start(hub, l);
        break;
    case SW_LS_RESOLVING:
    case SW_LS_CONNECTING:
    case SW_LS_TLS:
    case SW_LS_HANDSHAKE:
        if (hub->now >= l->deadline) spillway_link_fail(hub, l, "connect", "timed out (connect_timeout)");
        break;
    case SW_LS_READY:
        if (rc->sentinels != NULL && l->resolving == NULL && hub->now >= l->next_check) spillway_link_start_check(hub, l);
        if (!l->opt.health_ping && l->head != NULL) {
            if (hub->now >= l->head->sent_ms + head_limit(hub, l->head))
                spillway_link_fail(hub, l, "command", "Redis did not answer in time (command_timeout)");
        } else if (l->opt.health_ping) {
            if (l->ping_out && hub->now >= l->ping_deadline) {
                spillway_link_fail(hub, l, "health check", "no PONG in time");
            } else if (!l->ping_out && hub->now >= l->next_ping) {
                const char *argv[] = {"PING"};
                spillway_link_queue(hub, l, NULL, 1, argv, NULL);
                l->ping_out = true;
                l->ping_deadline = hub->now + rc->command_timeout_ms + 1000;
                l->next_ping = hub->now + rc->health_interval_ms;
            }
        }
        break;
    }
}

uint64_t spillway_link_next_timer(const spillway_hub *hub, const spillway_rlink *l)
{
    switch (l->state) {
    case SW_LS_IDLE: return l->retry_at;
    case SW_LS_READY: {
        uint64_t t = hub->cfg.redis.sentinels != NULL && l->resolving == NULL ? l->next_check : UINT64_MAX;
        if (l->opt.health_ping) return SW_MIN(t, l->ping_out ? l->ping_deadline : l->next_ping);
        return SW_MIN(t, l->head != NULL ? l->head->sent_ms + head_limit(hub, l->head) : UINT64_MAX);
    }
    default: return l->deadline;
    }
}
