/*
 * The heartbeat wheel, and the list of every stream.
 *
 * A wheel of SLOTS lists that turns once per heartbeat period. A stream sits
 * in one slot for its whole life, so every stream gets a heartbeat exactly
 * once per period, spread evenly over the period, with O(1) insert and
 * remove and no per-stream timer.
 */
#include "hub_internal.h"

void spillway_wheel_insert(spillway_hub *hub, spillway_conn *c)
{
    /* The slot processed last in this turn: the first heartbeat comes one
     * period after the stream opened. */
    uint32_t slot = (hub->wheel_pos + hub->wheel_slots - 1) % hub->wheel_slots;
    c->wslot = slot;
    c->wprev = NULL;
    c->wnext = hub->wheel[slot];
    if (c->wnext != NULL) c->wnext->wprev = c;
    hub->wheel[slot] = c;
    c->aprev = NULL;
    c->anext = hub->streams;
    if (c->anext != NULL) c->anext->aprev = c;
    hub->streams = c;
}

void spillway_wheel_remove(spillway_hub *hub, spillway_conn *c)
{
    if (c->aprev != NULL || hub->streams == c) {
        if (c->aprev != NULL) c->aprev->anext = c->anext;
        else hub->streams = c->anext;
        if (c->anext != NULL) c->anext->aprev = c->aprev;
        c->aprev = c->anext = NULL;
    }
    if (c->wprev != NULL) c->wprev->wnext = c->wnext;
    else if (hub->wheel[c->wslot] == c) hub->wheel[c->wslot] = c->wnext;
    else return;
    if (c->wnext != NULL) c->wnext->wprev = c->wprev;
    c->wprev = c->wnext = NULL;
}

/* How long slot pos lasts. The slots of one turn add up to heartbeat_ms
 * exactly; heartbeat_ms / slots for every slot would drop the remainder (a
 * 150 ms heartbeat became 100 ms, a 50 ms one 100 ms). */
static uint64_t slot_len(const spillway_hub *hub, uint32_t pos)
{
    uint64_t hb = hub->cfg.heartbeat_ms, n = hub->wheel_slots;
    return (pos + 1) * hb / n - pos * hb / n;
}

/* Processes the slots that are due, then has the queued list judged
 * (spillway_conn_judge_queued). */
void spillway_wheel_tick(spillway_hub *hub)
{
    uint32_t budget = hub->wheel_slots;

    while (hub->now >= hub->wheel_next_ms && budget-- > 0) {
        for (spillway_conn *c = hub->wheel[hub->wheel_pos]; c != NULL; c = c->wnext) {
            /* Frames waiting are traffic enough; a heartbeat behind them
             * would only take another entry. A poll gets none (its answer
             * is one response). */
            if (c->flags & SW_CF_DOOMED) continue;
            if (spillway_conn_vanished(hub, c)) {
                spillway_conn_abandon_vanished(hub, c);
                continue;
            }
            if (c->out_len == 0 && !(c->flags & SW_CF_POLL)) spillway_conn_push(hub, c, hub->f_heartbeat);
        }
        hub->wheel_pos = (hub->wheel_pos + 1) % hub->wheel_slots;
        hub->wheel_next_ms += slot_len(hub, hub->wheel_pos);
    }
    if (hub->now >= hub->wheel_next_ms)
        hub->wheel_next_ms = hub->now + SW_MAX(1u, slot_len(hub, hub->wheel_pos));
    spillway_conn_judge_queued(hub);
}
