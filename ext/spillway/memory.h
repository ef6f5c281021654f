/*
 * The memory backend (memory.c): spillway_memory_backend_new (backend.h)
 * installs it. Its state and the two functions below (its LRU and TTL
 * sweep) are exported for the unit tests (spec/c/test_memory.c); the hub
 * reaches them only through the backend's operations.
 */
#ifndef SPILLWAY_MEMORY_H
#define SPILLWAY_MEMORY_H

#include "hub_internal.h"

typedef struct spillway_memory {
    spillway_hub *hub;
    /* The id generator, guarded by the hub's queue lock: publishes get
     * their ids in the order they enter the queue. */
    spillway_id gen_last;
    /* ---- reactor only ---- */
    spillway_id origin;  /* no id below this was ever issued here */
    spillway_id evicted; /* highest id of a backlog that was dropped */
    spillway_channel *lru_head, *lru_tail; /* the channels with a backlog, least recently published first */
    uint32_t lru_count;
    uint64_t next_sweep_ms;
} spillway_memory;

/* A message for ch: it becomes the most recently published backlog; the
 * least recently published ones beyond max_backlog_channels are dropped. */
void spillway_lru_touch(spillway_memory *m, spillway_channel *ch);
/* Drops the backlogs whose last message is older than backlog_ttl_s. */
void spillway_backlog_sweep(spillway_memory *m);

#endif
