/*
 * Async-publish tickets and spillway_hub_flush (tickets.c).
 */
#ifndef SPILLWAY_TICKETS_H
#define SPILLWAY_TICKETS_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "hub.h"

/* Reactor: the async publish with ticket seq is finished (acknowledged, or
 * failed for good). Wakes the flushes that wait. */
void spillway_hub_async_done(spillway_hub *hub, uint64_t seq, bool ok);

#endif
