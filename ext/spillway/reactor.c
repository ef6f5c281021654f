/*
 * The reactor: the hub's thread. One iteration, in named phases (like
 * libuv's uv_run):
 *
 *   wait        epoll_wait, loop_lock released, until an event or the next timer
 *   events      each ready handle by kind: a stream (conn.c), the wake-up
 *               (the commands from Ruby's threads), the backend's own
 *   timers      the heartbeat wheel, the backend's timers
 *   end         flush the streams given frames, close the doomed, the
 *               memory budget (streams.c), then the backend's writes
 *
 * and at stop a last retry hint to every stream. docs/design.md, the loop.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "hub_internal.h"
#include "polls.h"
#include "reactor.h"
#include "tickets.h"

#define EVENTS_PER_WAIT 512

/* ---- commands ---------------------------------------------------------- */

/* The stream's memberships: each channel once, announced to the backend.
 * False when out of memory (the stream is doomed). */
static bool join_channels(spillway_hub *hub, spillway_conn *c, const spillway_cmd_attach *cmd)
{
    const spillway_backend *b = &hub->backend;
    const char *p = cmd->names;

    c->mem = calloc(cmd->nch ? cmd->nch : 1, sizeof(*c->mem));
    if (c->mem == NULL) {
        spillway_hub_log(hub, SW_LOG_MEMORY, "do_attach: out of memory");
        spillway_conn_doom(hub, c, false);
        return false;
    }
    for (uint32_t i = 0; i < cmd->nch; i++) {
        size_t len = cmd->lens[i];
        spillway_channel *ch = spillway_chtab_get(hub, p, len);
        bool dup = false;
        p += len;
        if (ch == NULL) {
            spillway_hub_log(hub, SW_LOG_MEMORY, "do_attach: cannot create channel (out of memory)");
            spillway_conn_doom(hub, c, false);
            return false;
        }
        for (uint32_t j = 0; j < c->nmem; j++) dup |= c->mem[j].ch == ch;
        if (dup) continue;
        if (spillway_channel_add_sub(ch, c, c->nmem) != 0) {
            spillway_hub_log(hub, SW_LOG_MEMORY, "do_attach: out of memory");
            spillway_channel_maybe_release(hub, ch);
            spillway_conn_doom(hub, c, false);
            return false;
        }
        c->nmem++;
        if (b->ops->channel_wanted != NULL) b->ops->channel_wanted(b->self, ch);
    }
    return true;
}

static void do_attach(spillway_hub *hub, spillway_cmd_attach *cmd)
{
    spillway_conn *c = spillway_conn_new(hub, cmd->fd, cmd->flags);
    const spillway_backend *b = &hub->backend;

    if (c == NULL) {
        close(cmd->fd);
        atomic_fetch_sub_explicit(&hub->reserved, 1, memory_order_relaxed);
        return;
    }
    cmd->fd = -1;
    c->ident = cmd->ident; /* the stream takes the command's reference */
    cmd->ident = NULL;
    STAT_ADD(hub, st_accepted, 1);
    if (c->flags & SW_CF_FALLBACK) {
        STAT_ADD(hub, st_fallback, 1);
        STAT_ADD(hub, st_fallback_total, 1);
    }
    spillway_wheel_insert(hub, c);
    if (c->flags & SW_CF_POLL) {
        /* Its head comes with its answer (polls.c). */
        spillway_poll_attach(hub, c);
    } else {
        if (c->flags & SW_CF_HEAD) spillway_conn_push(hub, c, hub->f_head);
        spillway_conn_push(hub, c, hub->f_open);
    }

    c->has_cursor = cmd->has_cursor;
    c->cursor_ok = cmd->cursor_ok;
    c->cursor = cmd->cursor;
    if (c->has_cursor) STAT_ADD(hub, st_resumes, 1);

    if (!join_channels(hub, c, cmd)) return;
    b->ops->join(b->self, c);
    /* Joined at once (memory, or a Redis stream without a cursor whose
     * channels were ACTIVE): a poll may be answered at the end of this
     * iteration. */
    if ((c->flags & SW_CF_POLL) && !(c->flags & SW_CF_JOINING)) spillway_conn_mark_dirty(hub, c);
}

static void run_commands(spillway_hub *hub)
{
    spillway_qnode *n = spillway_queue_take(&hub->q);
    while (n != NULL) {
        spillway_cmd *cmd = (spillway_cmd *)n;
        n = n->next;
        switch (cmd->kind) {
        case SW_CMD_ATTACH:
            if (hub->stopping) {
                close(((spillway_cmd_attach *)cmd)->fd);
                atomic_fetch_sub_explicit(&hub->reserved, 1, memory_order_relaxed);
            } else {
                do_attach(hub, (spillway_cmd_attach *)cmd);
            }
            break;
        case SW_CMD_PUBLISH:
            /* spillway_hub_publish queues these only for a backend that
             * takes them. */
            if (!hub->stopping) hub->backend.ops->publish(hub->backend.self, (spillway_cmd_publish *)cmd);
            break;
        case SW_CMD_PUBLISH_ASYNC:
            if (hub->backend.ops->publish_async != NULL && !hub->stopping) {
                /* The backend takes the command over. */
                hub->backend.ops->publish_async(hub->backend.self, (spillway_cmd_publish *)cmd);
                cmd = NULL;
            } else {
                spillway_hub_async_done(hub, ((spillway_cmd_publish *)cmd)->seq, false);
            }
            break;
        case SW_CMD_STOP:
            hub->stopping = true;
            cmd = NULL; /* hub->stop_cmd, not allocated */
            break;
        }
        if (cmd != NULL) spillway_cmd_free(cmd);
    }
}

/* ---- the loop ---------------------------------------------------------- */

static void end_iteration(spillway_hub *hub)
{
    spillway_hub_flush_and_close(hub);
    if (hub->backend.ops->end_iteration != NULL) {
        hub->backend.ops->end_iteration(hub->backend.self);
        /* What the backend finished there (resets, held frames released)
         * queued frames: out with them now, not at the next wake-up. */
        if (hub->dirty != NULL || hub->doomed != NULL) spillway_hub_flush_and_close(hub);
    }
}

static int next_timeout(spillway_hub *hub)
{
    uint64_t next = SW_MIN(hub->wheel_next_ms, hub->backend.ops->next_timer(hub->backend.self));
    next = SW_MIN(next, spillway_poll_next_timer(hub));
    if (next <= hub->now) return 0;
    return (int)SW_MIN(next - hub->now, 60000u);
}

static void run_timers(spillway_hub *hub)
{
    if (hub->now >= hub->wheel_next_ms) spillway_wheel_tick(hub);
    spillway_poll_timers(hub);
    hub->backend.ops->timers(hub->backend.self);
}

/* Stop: a last retry hint to every stream (best effort, never blocking),
 * then everything closes. */
static void shutdown_streams(spillway_hub *hub)
{
    for (spillway_conn *c = hub->streams; c != NULL; c = c->anext) {
        if (c->flags & SW_CF_DOOMED) continue;
        if (c->flags & SW_CF_JOINING) atomic_fetch_sub_explicit(&hub->st_joining, 1, memory_order_relaxed);
        c->flags &= ~SW_CF_JOINING;
        /* A poll still collecting is answered with what it has (a complete
         * response); a stream gets a last retry hint. */
        if ((c->flags & (SW_CF_POLL | SW_CF_ANSWERED)) == SW_CF_POLL) spillway_poll_answer(hub, c);
        else spillway_conn_push(hub, c, hub->f_retry);
        spillway_conn_flush(hub, c);
        spillway_conn_doom_why(hub, c, false, "server stopping");
    }
    end_iteration(hub);
    /* Streams handed over but not yet attached. */
    for (spillway_qnode *n = spillway_queue_close(&hub->q); n != NULL;) {
        spillway_cmd *cmd = (spillway_cmd *)n;
        n = n->next;
        if (cmd->kind == SW_CMD_ATTACH) {
            close(((spillway_cmd_attach *)cmd)->fd);
            atomic_fetch_sub_explicit(&hub->reserved, 1, memory_order_relaxed);
        } else if (cmd->kind == SW_CMD_PUBLISH_ASYNC) {
            spillway_hub_async_done(hub, ((spillway_cmd_publish *)cmd)->seq, false);
        }
        if (cmd->kind != SW_CMD_STOP) spillway_cmd_free(cmd);
    }
    if (hub->backend.ops->stop != NULL) hub->backend.ops->stop(hub->backend.self);
}

/* Waits for events or the next timer with loop_lock released; the number of
 * events, or -1 when there are none to run (interrupted, or an error, logged
 * and slept over). */
static int wait_for_events(spillway_hub *hub, struct epoll_event *events)
{
    int timeout = next_timeout(hub);
    int n, e;

    /* The lag of streams counts only time spent waiting here: while the
     * loop works, it is the bottleneck, not the clients (conn.c). */
    hub->busy_ms += spillway_mono_ms() - hub->now;
    pthread_mutex_unlock(&hub->loop_lock);
    n = epoll_wait(hub->epfd, events, EVENTS_PER_WAIT, timeout);
    e = errno;
    pthread_mutex_lock(&hub->loop_lock);
    hub->now = spillway_mono_ms();
    STAT_ADD(hub, st_iterations, 1);
    if (n < 0 && e != EINTR) {
        spillway_hub_error(hub, "reactor: epoll_wait: %s", strerror(e));
        /* Not recoverable by retrying fast; do not spin. */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return n < 0 ? -1 : n;
}

/* Each ready handle, by its kind. */
static void run_events(spillway_hub *hub, const struct epoll_event *events, int n)
{
    for (int i = 0; i < n; i++) {
        spillway_handle *h = events[i].data.ptr;
        switch ((enum spillway_kind)h->kind) {
        case SW_KIND_CONN:
            spillway_conn_on_event(hub, (spillway_conn *)h, events[i].events);
            break;
        case SW_KIND_WAKE:
            run_commands(hub);
            break;
        case SW_KIND_BACKEND:
            hub->backend.ops->on_event(hub->backend.self, h, events[i].events);
            break;
        default:
            abort(); /* every kind is listed above */
        }
    }
}

void *spillway_reactor_main(void *arg)
{
    spillway_hub *hub = arg;
    struct epoll_event events[EVENTS_PER_WAIT];
    sigset_t all;

    /* Signals are for Ruby's threads, never this one. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    pthread_mutex_lock(&hub->loop_lock);
    hub->now = spillway_mono_ms();
    while (!hub->stopping) {
        int n = wait_for_events(hub, events);
        if (n < 0) continue;
        run_events(hub, events, n);
        run_timers(hub);
        end_iteration(hub);
    }
    shutdown_streams(hub);
    atomic_store(&hub->running, false);
    /* A flush waiting for Redis will not get its answer any more. */
    pthread_mutex_lock(&hub->flush_lock);
    pthread_cond_broadcast(&hub->flush_cond);
    pthread_mutex_unlock(&hub->flush_lock);
    /* The log's and the events' readers take what is left and end. */
    spillway_events_close(&hub->events);
    pthread_mutex_lock(&hub->err_lock);
    pthread_cond_broadcast(&hub->log_cond);
    pthread_mutex_unlock(&hub->err_lock);
    pthread_mutex_unlock(&hub->loop_lock);
    return NULL;
}

