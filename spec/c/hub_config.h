/*
 * The hub settings the C tests start from (memory backend, limits far from
 * what a test reaches); each test changes what it is about.
 */
#ifndef SPILLWAY_TEST_HUB_CONFIG_H
#define SPILLWAY_TEST_HUB_CONFIG_H

#include <string.h>

#include "hub.h"

static inline spillway_config test_hub_config(void)
{
    spillway_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.heartbeat_ms = 30000;
    cfg.retry_ms = 1500;
    cfg.max_connections = 100;
    cfg.max_channels_per_conn = 8;
    cfg.outbox_limit = 1u << 20;
    cfg.max_lag_ms = 30000;
    cfg.memory_limit = 1ull << 30;
    cfg.backlog_size = 100;
    cfg.max_backlog_channels = 1000;
    cfg.queue_limit = 10000;
    return cfg; /* redis.host NULL: the memory backend */
}

#endif
