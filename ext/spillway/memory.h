/*
 * The memory backend (memory.c): spillway_memory_backend_new (backend.h)
 * installs it. The two functions below are its LRU and TTL sweep, exported
 * for the unit tests (spec/c/test_channel.c); the hub reaches them only
 * through the backend's operations.
 */
#ifndef SPILLWAY_MEMORY_H
#define SPILLWAY_MEMORY_H

#include "hub_internal.h"

/* A message for ch: it becomes the most recently published backlog; the
 * least recently published ones beyond max_backlog_channels are dropped. */
void spillway_lru_touch(spillway_hub *hub, spillway_channel *ch);
/* Drops the backlogs whose last message is older than backlog_ttl_s. */
void spillway_backlog_sweep(spillway_hub *hub);

#endif
