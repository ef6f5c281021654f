/*
 * What conn.c and budget.c both judge streams by: the lag clock, a stream's
 * lag and the memory it alone keeps alive (docs/design.md, the loop).
 * Private to those two files.
 */
#ifndef SPILLWAY_LAG_H
#define SPILLWAY_LAG_H

#include "hub_internal.h"

/* Bytes of one outbox entry. */
#define OUT_SLOT sizeof(spillway_frame *)

/* The lag clock (reactor.c: the loop's time outside epoll_wait does not
 * count), truncated to 32 bits of ms: differences are right up to 49 days,
 * far beyond any lag a stream is allowed. */
static inline uint32_t lag_clock(const spillway_hub *hub)
{
    return (uint32_t)(hub->now - hub->busy_ms);
}

/* How long the oldest unsent frame has waited, on the lag clock (0: none). */
static inline uint32_t out_lag(const spillway_hub *hub, const spillway_conn *c)
{
    return c->out_len > 0 ? lag_clock(hub) - c->head_t : 0;
}

/* The memory only this stream keeps alive: the frames nobody else holds
 * and its entries that point at frames. (What the rings have allocated
 * beyond their entries is at most as much again, and is given back when
 * they empty; it counts neither here nor in the process's out_mem, so that
 * idle streams weigh nothing.) */
static inline uint64_t exclusive_bytes(const spillway_conn *c)
{
    return c->excl + (uint64_t)c->out_len * OUT_SLOT + (uint64_t)c->runs_len * sizeof(*c->runs) +
           (uint64_t)c->held_len * sizeof(*c->held);
}

#endif
