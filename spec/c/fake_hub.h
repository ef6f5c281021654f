/*
 * A hub built by hand for the single-threaded tests of the reactor's data
 * structures (test_channel.c, test_memory.c): no thread, no queue, a fake
 * clock; and message frames with ids 1-<seq>. Include after check.h.
 */
#ifndef SPILLWAY_FAKE_HUB_H
#define SPILLWAY_FAKE_HUB_H

#include <sys/epoll.h>
#include <unistd.h>

#include "check.h"
#include "hub_internal.h"
#include "sse_ref.h"

#define T0 1000000u /* the fake clock's start, in ms */

/* A hub with what the reactor's data structures need and no thread, no
 * queue; the caller installs a backend (hub->backend) before using it.
 * fake_hub_free() tears it down. */
CHECK_API spillway_hub *fake_hub_bare(uint32_t backlog, uint32_t max_channels, uint32_t outbox)
{
    spillway_hub *hub = calloc(1, sizeof(*hub));
    REQUIRE(hub != NULL);
    hub->cfg.heartbeat_ms = 1000;
    hub->cfg.max_lag_ms = 500;
    hub->cfg.memory_limit = 1ull << 30;
    hub->cfg.outbox_limit = outbox;
    hub->cfg.backlog_size = backlog;
    hub->cfg.max_backlog_channels = max_channels;
    pthread_mutex_init(&hub->loop_lock, NULL);
    pthread_mutex_init(&hub->err_lock, NULL);
    pthread_mutex_init(&hub->flush_lock, NULL);
    pthread_cond_init(&hub->flush_cond, NULL);
    pthread_cond_init(&hub->log_cond, NULL);
    hub->q.efd = -1;
    hub->epfd = epoll_create1(EPOLL_CLOEXEC);
    REQUIRE(hub->epfd >= 0);
    hub->now = T0;
    hub->wheel_slots = 100;
    hub->wheel = calloc(hub->wheel_slots, sizeof(*hub->wheel));
    hub->wheel_next_ms = hub->now + hub->cfg.heartbeat_ms / hub->wheel_slots;
    hub->f_heartbeat = spillway_frame_copy(":\n\n", 3);
    REQUIRE(hub->wheel != NULL && hub->f_heartbeat != NULL);
    REQUIRE_INT(spillway_chtab_init(&hub->chans), ==, 0);
    return hub;
}

/* What spillway_hub_free does with a hub fake_hub built. */
CHECK_API void fake_hub_free(spillway_hub *hub)
{
    spillway_streams_close_all(hub);
    hub->backend.ops->free(hub->backend.self);
    spillway_chtab_free(&hub->chans);
    free(hub->wheel);
    spillway_frame_unref(hub->f_heartbeat);
    close(hub->epfd);
    pthread_mutex_destroy(&hub->loop_lock);
    pthread_mutex_destroy(&hub->err_lock);
    pthread_mutex_destroy(&hub->flush_lock);
    pthread_cond_destroy(&hub->flush_cond);
    pthread_cond_destroy(&hub->log_cond);
    free(hub);
}

/* A message frame with id 1-seq and `pad` bytes of data. The caller owns it. */
CHECK_API spillway_frame *msg(uint64_t seq, size_t pad)
{
    char id[SPILLWAY_ID_TEXT_MAX], *data = malloc(pad + 1);
    spillway_id sid = {1, seq};
    size_t idlen = spillway_id_format(sid, id);
    ssize_t need;
    spillway_frame *f;
    REQUIRE(data != NULL);
    for (size_t i = 0; i < pad; i++) data[i] = (char)('a' + (seq + i) % 26);
    need = spillway_sse_size(id, idlen, NULL, 0, data, pad);
    f = spillway_frame_new((size_t)need);
    REQUIRE(f != NULL);
    REQUIRE_INT(spillway_sse_encode(f->data, (size_t)need, id, idlen, NULL, 0, data, pad), ==, need);
    f->id = sid;
    free(data);
    return f;
}

#endif
