/*
 * The hub's own state (struct spillway_hub), for the files of the core that
 * run on its thread. Everything in here belongs to the reactor thread unless
 * a field says otherwise. Each module's interface is its own header:
 * channel.h, conn.h, backend.h, commands.h, log.h, frames.h, ...
 */
#ifndef SPILLWAY_HUB_INTERNAL_H
#define SPILLWAY_HUB_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/uio.h>

#include "backend.h"
#include "channel.h"
#include "commands.h"
#include "conn.h"
#include "frame.h"
#include "handle.h"
#include "events.h"
#include "hub.h"
#include "log.h"
#include "queue.h"

/* Relaxed atomics: the statistics (hub.h, spillway_stats), written by the
 * reactor, read by any thread. */
#define STAT_ADD(hub, field, n) atomic_fetch_add_explicit(&(hub)->field, (n), memory_order_relaxed)
#define STAT_SUB(hub, field, n) atomic_fetch_sub_explicit(&(hub)->field, (n), memory_order_relaxed)
#define STAT_SET(hub, field, v) atomic_store_explicit(&(hub)->field, (v), memory_order_relaxed)
#define STAT_GET(hub, field) atomic_load_explicit(&(hub)->field, memory_order_relaxed)

/* ---- the hub ----------------------------------------------------------- */

struct spillway_hub {
    spillway_config cfg; /* strings owned by the hub */
    pid_t owner;
    spillway_id start; /* the wall clock at creation, as an id (never changes) */
    pthread_t thread;
    bool thread_started;
    atomic_bool running;
    atomic_bool abandoned; /* fork child: never touch anything again */
    int epfd;
    spillway_handle wake;
    spillway_queue q;
    pthread_mutex_t loop_lock; /* held by the reactor except in epoll_wait */
    struct spillway_hub *reg_next;
    spillway_cmd stop_cmd;
    atomic_bool stop_queued;

    /* ---- reactor only ---- */
    uint64_t now;
    bool stopping;
    spillway_chtab chans;
    spillway_frame *f_head, *f_open, *f_heartbeat, *f_retry;
    spillway_conn *dirty, *dirty_last; /* streams to flush, in the order they were marked */
    spillway_conn *doomed;
    /* Streams with frames waiting (outbox leftovers after a flush, or held
     * while joining): the ones the lag sweep and the memory budget look at.
     * out_mem: heap bytes of every frame in an outbox or held list, counted
     * once however many streams hold it, plus the entries pointing at them. */
    spillway_conn *queued;
    uint64_t out_mem;
    /* ms the loop spent outside epoll_wait: now - busy_ms is the clock of
     * lags, which stands still while the loop works (conn.c). */
    uint64_t busy_ms;
    spillway_conn *streams; /* every attached stream, newest first (wheel.c) */
    spillway_conn *polls, *polls_last; /* held long-polls, by deadline (polls.c) */
    spillway_conn **wheel;
    uint32_t wheel_slots, wheel_pos;
    uint64_t wheel_next_ms;
    spillway_id last; /* highest message id this hub has seen (from the start) */
    struct iovec iov[SPILLWAY_IOV_BATCH];
    spillway_backend backend; /* backend.h: the hub calls it through this only */

    /* ---- shared, atomics ---- */
    atomic_uint_fast32_t reserved; /* open + being handed over */
    atomic_uint_fast64_t st_channels, st_messages_in, st_delivered, st_dropped_slow,
        st_bytes_out, st_accepted, st_closed, st_fallback, st_fallback_total, st_resumes,
        st_resets, st_joining, st_backlog_messages, st_backlog_bytes, st_redis_connected,
        st_redis_reconnects, st_redis_messages, st_gap_repairs, st_async_failed, st_errors,
        st_iterations, st_outbox_bytes, st_long_polls, st_polls_answered;
    /* async publish tickets: issued under the queue lock, done by the reactor */
    uint64_t async_issued;
    atomic_uint_fast64_t async_done;
    atomic_uint_fast64_t async_reported;   /* tickets up to here were reported by a flush */
    uint64_t failed_ring[64];              /* the latest failed tickets (flush_lock) */
    uint64_t failed_count;                 /* failed tickets ever (flush_lock) */
    atomic_uint_fast32_t async_waiting_count;
    atomic_uint_fast32_t flush_waiters;
    pthread_mutex_t flush_lock;
    pthread_cond_t flush_cond;
    /* last error */
    pthread_mutex_t err_lock;
    char last_error[256];

    /* the log, for the Ruby thread that writes it (err_lock) */
    spillway_log_slot log[SW_LOG_KINDS];
    pthread_cond_t log_cond; /* CLOCK_MONOTONIC; signalled when an entry is due, and at the stop */

    /* every stream close, reset and Redis error, for the notifications
     * thread (events.h; its own lock) */
    spillway_events events;
    uint64_t conn_serial; /* numbers the streams (reactor) */
};

/* streams.c */
/* The end of a loop iteration for the streams: flush the dirty ones, close
 * the doomed (out of epoll, out of their channels), weigh the memory budget. */
void spillway_hub_flush_and_close(spillway_hub *hub);
/* Closes every stream (hub free; no last frames). */
void spillway_streams_close_all(spillway_hub *hub);

#endif
