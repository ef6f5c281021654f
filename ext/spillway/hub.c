/*
 * The hub's public API (hub.h): creation and checks, the calls Ruby's
 * threads make (attach, stats), stop and free. The publishes and the cursor
 * are hub_publish.c; the thread itself reactor.c; fork safety fork.c; the
 * log log.c; async-publish tickets and flush tickets.c.
 */
/* pthread_timedjoin_np needs _GNU_SOURCE, set by extconf.rb. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "fork.h"
#include "frames.h"
#include "hub_internal.h"
#include "idem.h"
#include "reactor.h"
#include "sse.h"
#include "targets.h"
#include "tickets.h"
#include "tls.h"

#define WHEEL_SLOTS 100u

/* Events kept for the notifications thread before the oldest are dropped. */
#define EVENTS_CAP 4096u

/* ---- creation ---------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void free_config_strings(spillway_config *cfg)
{
    free((char *)cfg->extra_headers);
    free((char *)cfg->redis.host);
    free((char *)cfg->redis.path);
    free((char *)cfg->redis.username);
    free((char *)cfg->redis.password);
    free((char *)cfg->redis.ns);
    free((char *)cfg->redis.sentinels);
    free((char *)cfg->redis.sentinel_master);
    free((char *)cfg->redis.sentinel_password);
    spillway_tls_ctx_unref(cfg->redis.tls);
    free((char *)cfg->pg.conninfo);
    free((char *)cfg->pg.ns);
}

static int check_config(const spillway_config *cfg, char *err, size_t errlen)
{
#define NEED(cond, msg)                                       \
    do {                                                      \
        if (!(cond)) {                                        \
            spillway_set_err(err, errlen, "spillway_hub_new: %s", msg); \
            return -EINVAL;                                   \
        }                                                     \
    } while (0)
    NEED(cfg->heartbeat_ms >= 10, "heartbeat must be at least 10 ms");
    NEED(cfg->max_connections >= 1, "max_connections must be at least 1");
    NEED(cfg->max_channels_per_conn >= 1 && cfg->max_channels_per_conn <= SPILLWAY_MAX_CHANNELS_PER_CONN,
         "max_channels_per_connection out of range (1.." SW_STR(SPILLWAY_MAX_CHANNELS_PER_CONN) ")");
    NEED(cfg->outbox_limit >= 1024, "outbox_limit must be at least 1024 bytes");
    NEED(cfg->max_lag_ms >= 10, "max_lag must be at least 10 ms");
    NEED(cfg->memory_limit >= 65536, "memory_limit must be at least 65536 bytes");
    NEED(cfg->queue_limit >= 16, "queue_limit must be at least 16");
    NEED(cfg->max_backlog_channels >= 1, "max_backlog_channels must be at least 1");
    if (cfg->extra_headers != NULL) {
        size_t n = strlen(cfg->extra_headers);
        NEED(n < 4096, "extra headers longer than 4096 bytes");
        NEED(n == 0 || (n >= 2 && cfg->extra_headers[n - 2] == '\r' && cfg->extra_headers[n - 1] == '\n'),
             "extra headers must end with CRLF");
    }
#undef NEED
    return 0;
}

/* The hub's copy of the configuration owns its strings. */
static void copy_config(spillway_config *to, const spillway_config *cfg)
{
    *to = *cfg;
    to->extra_headers = dup_or_null(cfg->extra_headers);
    to->redis.host = dup_or_null(cfg->redis.host);
    to->redis.path = dup_or_null(cfg->redis.path);
    to->redis.username = dup_or_null(cfg->redis.username);
    to->redis.password = dup_or_null(cfg->redis.password);
    to->redis.ns = dup_or_null(cfg->redis.ns ? cfg->redis.ns : "spillway");
    to->redis.sentinels = dup_or_null(cfg->redis.sentinels);
    to->redis.sentinel_master = dup_or_null(cfg->redis.sentinel_master);
    to->redis.sentinel_password = dup_or_null(cfg->redis.sentinel_password);
    to->redis.tls = spillway_tls_ctx_ref(cfg->redis.tls);
    to->pg.conninfo = dup_or_null(cfg->pg.conninfo);
    to->pg.ns = dup_or_null(cfg->pg.ns ? cfg->pg.ns : "spillway");
}

static void init_locks(spillway_hub *hub)
{
    pthread_condattr_t attr;
    pthread_mutex_init(&hub->loop_lock, NULL);
    pthread_mutex_init(&hub->err_lock, NULL);
    pthread_mutex_init(&hub->flush_lock, NULL);
    pthread_cond_init(&hub->flush_cond, NULL);
    /* The log's waits are timed in CLOCK_MONOTONIC, like its rate limit. */
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&hub->log_cond, &attr);
    pthread_condattr_destroy(&attr);
}

/* The epoll set and the command queue, its eventfd in the set. 0, or
 * -errno with err set. */
static int open_loop(spillway_hub *hub, char *err, size_t errlen)
{
    struct epoll_event ev;
    int rc;

    hub->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (hub->epfd < 0) {
        rc = -errno;
        spillway_set_err(err, errlen, "spillway_hub_new: epoll_create1: %s", strerror(errno));
        return rc;
    }
    rc = spillway_queue_init(&hub->q, hub->cfg.queue_limit);
    if (rc != 0) {
        spillway_set_err(err, errlen, "spillway_hub_new: eventfd: %s", strerror(-rc));
        return rc;
    }
    hub->wake.kind = SW_KIND_WAKE;
    hub->wake.fd = spillway_queue_fd(&hub->q);
    ev.events = EPOLLIN;
    ev.data.ptr = &hub->wake;
    if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, hub->wake.fd, &ev) != 0) {
        rc = -errno;
        spillway_set_err(err, errlen, "spillway_hub_new: epoll_ctl(ADD, eventfd): %s", strerror(errno));
        return rc;
    }
    return 0;
}

/* The reactor thread starts with every signal blocked (it unblocks none):
 * no signal can land on it before spillway_reactor_main runs. */
static int start_thread(spillway_hub *hub)
{
    sigset_t all, old;
    int rc;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&hub->thread, NULL, spillway_reactor_main, hub);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

int spillway_hub_new(const spillway_config *cfg, spillway_hub **out, char *err, size_t errlen)
{
    spillway_hub *hub;
    int rc;

    rc = check_config(cfg, err, errlen);
    if (rc != 0) return rc;
    hub = calloc(1, sizeof(*hub));
    if (hub == NULL) {
        spillway_set_err(err, errlen, "spillway_hub_new: out of memory");
        return -ENOMEM;
    }
    hub->epfd = -1;
    hub->q.efd = -1;
    copy_config(&hub->cfg, cfg);
    hub->owner = getpid();
    init_locks(hub);
    if (spillway_events_init(&hub->events, EVENTS_CAP) != 0) {
        spillway_set_err(err, errlen, "spillway_hub_new: out of memory");
        free_config_strings(&hub->cfg);
        free(hub);
        return -ENOMEM;
    }

    hub->now = spillway_mono_ms();
    hub->start = (spillway_id){spillway_wall_ms(), 0};
    hub->last = hub->start;
    hub->wheel_slots = WHEEL_SLOTS;
    hub->wheel_next_ms = hub->now + SW_MAX(1u, cfg->heartbeat_ms / WHEEL_SLOTS);

    hub->wheel = calloc(hub->wheel_slots, sizeof(*hub->wheel));
    if (hub->wheel == NULL || spillway_frames_build(hub) != 0 || spillway_chtab_init(&hub->chans) != 0) {
        spillway_set_err(err, errlen, "spillway_hub_new: out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    rc = open_loop(hub, err, errlen);
    if (rc != 0) goto fail;
    /* The only place that chooses: everything else calls hub->backend. */
    if (hub->cfg.pg.conninfo != NULL) rc = spillway_pg_backend_new(hub, err, errlen);
    else if (hub->cfg.redis.host != NULL || hub->cfg.redis.path != NULL) rc = spillway_redis_backend_new(hub, err, errlen);
    else rc = spillway_memory_backend_new(hub, err, errlen);
    if (rc != 0) goto fail;

    atomic_store(&hub->running, true);
    rc = start_thread(hub);
    if (rc != 0) {
        atomic_store(&hub->running, false);
        spillway_set_err(err, errlen, "spillway_hub_new: pthread_create: %s", strerror(rc));
        rc = -rc;
        goto fail;
    }
    hub->thread_started = true;
    spillway_fork_register(hub);
    *out = hub;
    return 0;

fail:
    spillway_hub_free(hub);
    return rc;
}

/* ---- the API for Ruby threads ------------------------------------------ */

int spillway_hub_reserve(spillway_hub *hub)
{
    uint_fast32_t cur = atomic_load_explicit(&hub->reserved, memory_order_relaxed);
    do {
        if (cur >= hub->cfg.max_connections) return -EBUSY;
    } while (!atomic_compare_exchange_weak_explicit(&hub->reserved, &cur, cur + 1,
                                                    memory_order_relaxed, memory_order_relaxed));
    return 0;
}

void spillway_hub_unreserve(spillway_hub *hub)
{
    atomic_fetch_sub_explicit(&hub->reserved, 1, memory_order_relaxed);
}

int spillway_hub_attach(spillway_hub *hub, int fd, unsigned flags, const char *const *channels,
                        const size_t *lens, size_t n, const char *cursor, size_t cursorlen,
                        char *err, size_t errlen)
{
    return spillway_hub_attach_as(hub, fd, flags, channels, lens, n, cursor, cursorlen, NULL, 0, err, errlen);
}

/* The attach command: the names copied after it in one allocation. */
static spillway_cmd_attach *attach_cmd(int fd, unsigned flags, const char *const *channels, const size_t *lens,
                                       size_t n, size_t names, const char *cursor, size_t cursorlen)
{
    spillway_cmd_attach *cmd = malloc(sizeof(*cmd) + n * sizeof(uint16_t) + names);
    char *p;

    if (cmd == NULL) return NULL;
    cmd->base.kind = SW_CMD_ATTACH;
    cmd->fd = fd;
    cmd->flags = flags;
    cmd->nch = (uint32_t)n;
    cmd->ident = NULL;
    cmd->lens = (uint16_t *)(cmd + 1);
    cmd->names = (char *)(cmd->lens + n);
    p = cmd->names;
    for (size_t i = 0; i < n; i++) {
        cmd->lens[i] = (uint16_t)lens[i];
        memcpy(p, channels[i], lens[i]);
        p += lens[i];
    }
    cmd->has_cursor = cursor != NULL;
    cmd->cursor_ok = cursor != NULL && spillway_id_parse(cursor, cursorlen, &cmd->cursor) == 0;
    if (!cmd->cursor_ok) cmd->cursor = (spillway_id){0, 0};
    return cmd;
}

int spillway_hub_attach_as(spillway_hub *hub, int fd, unsigned flags, const char *const *channels,
                           const size_t *lens, size_t n, const char *cursor, size_t cursorlen, const char *ident,
                           size_t identlen, char *err, size_t errlen)
{
    spillway_cmd_attach *cmd;
    size_t names = 0;
    const char *why = NULL;
    int rc;

    if (!atomic_load(&hub->running)) {
        spillway_set_err(err, errlen, "spillway_hub_attach: the hub is not running");
        return -EPIPE;
    }
    if (n == 0 || n > hub->cfg.max_channels_per_conn) {
        spillway_set_err(err, errlen, "spillway_hub_attach: %zu channels (allowed: 1..%u)", n,
                         hub->cfg.max_channels_per_conn);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!spillway_channel_name_ok(channels[i], lens[i])) {
            spillway_set_err(err, errlen, "spillway_hub_attach: invalid channel name");
            return -EINVAL;
        }
        names += lens[i];
    }
    cmd = attach_cmd(fd, flags, channels, lens, n, names, cursor, cursorlen);
    if (cmd != NULL && ident != NULL && (cmd->ident = spillway_targets_parse(ident, identlen, true, &why)) == NULL) {
        free(cmd);
        spillway_set_err(err, errlen, "spillway_hub_attach: identity %s", why);
        return strcmp(why, "out of memory") == 0 ? -ENOMEM : -EINVAL;
    }
    if (cmd == NULL) {
        spillway_set_err(err, errlen, "spillway_hub_attach: out of memory");
        return -ENOMEM;
    }
    rc = spillway_queue_push(&hub->q, &cmd->base.node, SPILLWAY_QUEUE_FORCE, NULL, NULL);
    if (rc == -EPIPE || rc == -EAGAIN) {
        spillway_cmd_free(&cmd->base);
        spillway_set_err(err, errlen, "spillway_hub_attach: the hub is stopping");
        return rc;
    }
    /* A failed wake-up write leaves the command queued: the next wake-up
     * (or the stop) handles it, and the hub owns the fd either way. */
    return 0;
}

void spillway_hub_stats(spillway_hub *hub, spillway_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->connections = atomic_load_explicit(&hub->reserved, memory_order_relaxed);
    out->channels = STAT_GET(hub, st_channels);
    out->messages_in = STAT_GET(hub, st_messages_in);
    out->delivered = STAT_GET(hub, st_delivered);
    out->dropped_slow = STAT_GET(hub, st_dropped_slow);
    out->bytes_out = STAT_GET(hub, st_bytes_out);
    out->accepted = STAT_GET(hub, st_accepted);
    out->closed = STAT_GET(hub, st_closed);
    out->fallback_streams = STAT_GET(hub, st_fallback);
    out->fallback_total = STAT_GET(hub, st_fallback_total);
    out->resumes = STAT_GET(hub, st_resumes);
    out->resets = STAT_GET(hub, st_resets);
    out->joining = STAT_GET(hub, st_joining);
    out->long_polls = STAT_GET(hub, st_long_polls);
    out->polls_answered = STAT_GET(hub, st_polls_answered);
    out->backlog_messages = STAT_GET(hub, st_backlog_messages);
    out->backlog_bytes = STAT_GET(hub, st_backlog_bytes);
    out->redis_connected = STAT_GET(hub, st_redis_connected);
    out->redis_reconnects = STAT_GET(hub, st_redis_reconnects);
    out->redis_messages = STAT_GET(hub, st_redis_messages);
    out->gap_repairs = STAT_GET(hub, st_gap_repairs);
    out->async_pending = atomic_load(&hub->async_waiting_count);
    out->async_failed = STAT_GET(hub, st_async_failed);
    out->errors = STAT_GET(hub, st_errors);
    out->loop_iterations = STAT_GET(hub, st_iterations);
    out->outbox_bytes = STAT_GET(hub, st_outbox_bytes);
    pthread_mutex_lock(&hub->err_lock);
    memcpy(out->last_error, hub->last_error, sizeof(out->last_error));
    pthread_mutex_unlock(&hub->err_lock);
}

size_t spillway_hub_memsize(const spillway_hub *hub)
{
    size_t n = sizeof(*hub) + hub->wheel_slots * sizeof(*hub->wheel);
    n += (size_t)atomic_load_explicit(&((spillway_hub *)hub)->reserved, memory_order_relaxed) *
         (sizeof(spillway_conn) + sizeof(spillway_member) + sizeof(spillway_sub));
    n += (size_t)atomic_load_explicit(&((spillway_hub *)hub)->st_channels, memory_order_relaxed) *
         (sizeof(spillway_channel) + 32);
    n += (size_t)atomic_load_explicit(&((spillway_hub *)hub)->st_backlog_bytes, memory_order_relaxed);
    n += (size_t)hub->events.cap * sizeof(*hub->events.ring); /* untouched pages cost no RSS */
    if (hub->backend.ops != NULL) n += hub->backend.ops->memsize(hub->backend.self);
    return n;
}

int spillway_hub_stop(spillway_hub *hub, uint32_t timeout_ms)
{
    struct timespec deadline;
    int rc;

    if (!hub->thread_started || atomic_load(&hub->abandoned)) return 0;
    /* The stop command lives in the hub and is queued at most once. */
    if (!atomic_exchange(&hub->stop_queued, true)) {
        hub->stop_cmd.kind = SW_CMD_STOP;
        spillway_queue_push(&hub->q, &hub->stop_cmd.node, SPILLWAY_QUEUE_FORCE, NULL, NULL);
    }
    deadline = spillway_timespec_after(CLOCK_REALTIME, timeout_ms);
    rc = pthread_timedjoin_np(hub->thread, NULL, &deadline);
    if (rc != 0) return -rc;
    hub->thread_started = false;
    spillway_fork_unregister(hub);
    return 0;
}

void spillway_hub_free(spillway_hub *hub)
{
    if (hub == NULL) return;
    if (atomic_load(&hub->abandoned)) {
        /* Fork child: the structures belong to the parent's threads; only
         * the descriptors were ours to close, and they are closed. */
        return;
    }
    if (hub->thread_started) return; /* still running: never free under it */
    spillway_fork_unregister(hub);
    spillway_streams_close_all(hub);
    if (hub->backend.ops != NULL) hub->backend.ops->free(hub->backend.self);
    hub->backend.ops = NULL;
    if (hub->chans.buckets != NULL) spillway_chtab_free(&hub->chans);
    free(hub->wheel);
    spillway_frames_free(hub);
    if (hub->q.efd >= 0) {
        for (spillway_qnode *n = spillway_queue_close(&hub->q); n != NULL;) {
            spillway_cmd *cmd = (spillway_cmd *)n;
            n = n->next;
            if (cmd->kind == SW_CMD_ATTACH) close(((spillway_cmd_attach *)cmd)->fd);
            if (cmd->kind != SW_CMD_STOP) spillway_cmd_free(cmd);
        }
        spillway_queue_destroy(&hub->q);
    }
    if (hub->epfd >= 0) close(hub->epfd);
    pthread_mutex_destroy(&hub->loop_lock);
    pthread_mutex_destroy(&hub->err_lock);
    pthread_mutex_destroy(&hub->flush_lock);
    pthread_cond_destroy(&hub->flush_cond);
    pthread_cond_destroy(&hub->log_cond);
    spillway_events_destroy(&hub->events);
    free_config_strings(&hub->cfg);
    free(hub);
}

pid_t spillway_hub_owner(const spillway_hub *hub)
{
    return hub->owner;
}

bool spillway_hub_running(const spillway_hub *hub)
{
    return atomic_load(&((spillway_hub *)hub)->running) &&
           !atomic_load(&((spillway_hub *)hub)->abandoned);
}

/* ---- events (events.h) -------------------------------------------------- */

int spillway_hub_busiest_channels(spillway_hub *hub, spillway_channel_info *out, size_t max, uint32_t timeout_ms)
{
    struct timespec until = spillway_timespec_after(CLOCK_REALTIME, timeout_ms);
    size_t n;
    int rc = pthread_mutex_timedlock(&hub->loop_lock, &until);
    if (rc != 0) return -rc;
    n = spillway_chtab_busiest(hub, out, max);
    pthread_mutex_unlock(&hub->loop_lock);
    return (int)SW_MIN(n, (size_t)INT32_MAX);
}

/* Server-side subscribe (Spillway.last_id): the newest id this process's
 * table knows for the channel. Any thread but the reactor's. */
int spillway_hub_channel_last(spillway_hub *hub, const char *name, size_t len, char *out, uint32_t timeout_ms)
{
    struct timespec until = spillway_timespec_after(CLOCK_REALTIME, timeout_ms);
    const spillway_channel *ch;
    int found = 0;
    int rc = pthread_mutex_timedlock(&hub->loop_lock, &until);
    if (rc != 0) return -rc;
    ch = spillway_chtab_find(&hub->chans, name, len);
    if (ch != NULL && !spillway_id_is_zero(ch->last)) {
        spillway_id_format(ch->last, out);
        found = 1;
    }
    pthread_mutex_unlock(&hub->loop_lock);
    return found;
}

void spillway_hub_events_enable(spillway_hub *hub, bool on)
{
    spillway_events_enable(&hub->events, on);
}

int spillway_hub_events_wait(spillway_hub *hub, spillway_event *out, size_t max, uint32_t timeout_ms,
                             spillway_waiter *w, uint64_t *dropped)
{
    return spillway_events_wait(&hub->events, out, max, timeout_ms, w ? &w->interrupted : NULL, dropped);
}

void spillway_hub_events_interrupt(spillway_hub *hub, spillway_waiter *w)
{
    spillway_events_interrupt(&hub->events, &w->interrupted);
}
