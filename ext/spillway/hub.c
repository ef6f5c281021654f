/*
 * The hub: its thread, its epoll loop, the commands from Ruby, timers,
 * statistics, stop, and fork safety.
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

#include "hub_internal.h"
#include "idem.h"
#include "sse.h"


#define EVENTS_PER_WAIT 512
#define WHEEL_SLOTS 100u

/* ---- errors and the log ------------------------------------------------ */

/* Every kind of spillway_log_kind, in its order: the name the log line
 * shows; whether it is an error (counted in stats errors and kept as
 * last_error); and its level. A Redis link that drops or cannot connect is
 * an error but only a warning in the log: the hub retries it on its own. */
static const struct {
    const char *name;
    bool error;
    bool warning;
} log_kinds[SW_LOG_KINDS] = {
    [SW_LOG_ERROR] = {"error", true, false},
    [SW_LOG_REDIS_LINK] = {"redis_link", true, true},
    [SW_LOG_REDIS_CONNECT] = {"redis_connect", true, true},
    [SW_LOG_PROTOCOL] = {"protocol", true, false},
    [SW_LOG_SUBSCRIBE] = {"subscribe", true, false},
    [SW_LOG_RESUME] = {"resume", true, false},
    [SW_LOG_REPAIR] = {"repair", true, false},
    [SW_LOG_ASYNC_PUBLISH] = {"async_publish", true, false},
    [SW_LOG_MEMORY] = {"memory", true, false},
    [SW_LOG_RESET] = {"reset", false, true},
    [SW_LOG_SLOW_CLIENT] = {"slow_client", false, true},
};

static void vlog(spillway_hub *hub, spillway_log_kind kind, const char *fmt, va_list ap)
{
    char msg[sizeof(hub->log[0].message)];
    spillway_log_slot *slot;
    uint64_t now;
    bool error;

    if ((unsigned)kind >= SW_LOG_KINDS) kind = SW_LOG_ERROR;
    error = log_kinds[kind].error;
    /* Formatted before the lock: the Ruby thread that takes entries holds
     * it as briefly as the reactor does. */
    vsnprintf(msg, sizeof(msg), fmt, ap);
    now = spillway_mono_ms();
    slot = &hub->log[kind];
    pthread_mutex_lock(&hub->err_lock);
    if (error) memcpy(hub->last_error, msg, sizeof(hub->last_error));
    /* The first occurrence after a quiet interval starts what the entry
     * covers; one inside the interval adds to the summary, which covers the
     * time since the previous entry. */
    if (slot->count == 0 && now >= slot->quiet_until_ms) slot->since_ms = now;
    slot->count++;
    memcpy(slot->message, msg, sizeof(slot->message));
    /* The Ruby thread wakes for an occurrence that is due now, and for the
     * first one inside a quiet interval (its timed wait must now end when
     * the summary falls due). The rest of a flood costs it nothing. */
    if (now >= slot->quiet_until_ms || slot->count == 1) pthread_cond_signal(&hub->log_cond);
    pthread_mutex_unlock(&hub->err_lock);
    if (error) STAT_ADD(hub, st_errors, 1);
    sw_debug("%s: %s", log_kinds[kind].name, msg);
}

void spillway_hub_log(spillway_hub *hub, spillway_log_kind kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(hub, kind, fmt, ap);
    va_end(ap);
}

void spillway_hub_error(spillway_hub *hub, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(hub, SW_LOG_ERROR, fmt, ap);
    va_end(ap);
}

/* Under err_lock: moves the due entries (all pending ones when all) into
 * out; *next gets the earliest time a pending one falls due. */
static size_t log_take(spillway_hub *hub, spillway_log_entry *out, size_t max, uint64_t now, bool all,
                       uint64_t *next)
{
    size_t n = 0;
    *next = UINT64_MAX;
    for (int k = 0; k < SW_LOG_KINDS; k++) {
        spillway_log_slot *slot = &hub->log[k];
        if (slot->count == 0) continue;
        if (n == max || (!all && now < slot->quiet_until_ms)) {
            *next = SW_MIN(*next, n == max ? now : slot->quiet_until_ms);
            continue;
        }
        out[n].kind = log_kinds[k].name;
        out[n].warning = log_kinds[k].warning;
        out[n].count = slot->count;
        out[n].span_ms = now - slot->since_ms;
        memcpy(out[n].message, slot->message, sizeof(out[n].message));
        n++;
        slot->count = 0;
        slot->since_ms = now;
        slot->quiet_until_ms = now + hub->cfg.log_interval_ms;
    }
    return n;
}

static struct timespec mono_timespec(uint64_t ms)
{
    struct timespec t;
    t.tv_sec = (time_t)(ms / 1000);
    t.tv_nsec = (long)(ms % 1000) * 1000000L;
    return t;
}

int spillway_hub_log_wait(spillway_hub *hub, spillway_log_entry *out, size_t max, uint32_t timeout_ms,
                          spillway_waiter *w)
{
    uint64_t deadline = spillway_mono_ms() + timeout_ms;
    int rc;

    pthread_mutex_lock(&hub->err_lock);
    for (;;) {
        uint64_t now = spillway_mono_ms(), next;
        /* Read before the take: what the reactor logged before it stopped
         * is then in this take. */
        bool stopped = !atomic_load(&hub->running);
        size_t n = log_take(hub, out, max, now, stopped, &next);
        if (n > 0) {
            rc = (int)n;
            break;
        }
        if (stopped) {
            rc = -EPIPE;
            break;
        }
        if (w != NULL && w->interrupted) {
            rc = -EINTR;
            break;
        }
        if (now >= deadline) {
            rc = 0;
            break;
        }
        struct timespec until = mono_timespec(SW_MIN(deadline, next));
        pthread_cond_timedwait(&hub->log_cond, &hub->err_lock, &until);
    }
    pthread_mutex_unlock(&hub->err_lock);
    return rc;
}

void spillway_hub_log_interrupt(spillway_hub *hub, spillway_waiter *w)
{
    pthread_mutex_lock(&hub->err_lock);
    w->interrupted = true;
    pthread_cond_broadcast(&hub->log_cond);
    pthread_mutex_unlock(&hub->err_lock);
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || errlen == 0) return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- fork safety ------------------------------------------------------- */
/*
 * Every live hub is on a registry. Around fork() the forking thread waits
 * until each reactor is parked in epoll_wait (it holds loop_lock otherwise),
 * so the child inherits consistent structures. The child then closes every
 * descriptor it inherited from the hub (so the parent's clients still see
 * EOF when the parent closes them) and marks the hub abandoned; it frees no
 * memory (copy-on-write pages stay shared) and never writes to a socket.
 */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static spillway_hub *registry;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
    /* Same order as the reactor (loop_lock, then the queue's lock): the
     * queue, with streams not yet attached, is consistent too. */
    for (spillway_hub *h = registry; h != NULL; h = h->reg_next) {
        pthread_mutex_lock(&h->loop_lock);
        pthread_mutex_lock(&h->q.lock);
    }
}

static void atfork_parent(void)
{
    for (spillway_hub *h = registry; h != NULL; h = h->reg_next) {
        pthread_mutex_unlock(&h->q.lock);
        pthread_mutex_unlock(&h->loop_lock);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void abandon(spillway_hub *hub)
{
    atomic_store(&hub->abandoned, true);
    atomic_store(&hub->running, false);
    for (uint32_t s = 0; hub->wheel != NULL && s < hub->wheel_slots; s++)
        for (spillway_conn *c = hub->wheel[s]; c != NULL; c = c->wnext)
            if (c->h.fd >= 0) close(c->h.fd);
    /* Streams handed over but not attached yet. */
    for (spillway_qnode *n = hub->q.head; n != NULL; n = n->next)
        if (((spillway_cmd *)n)->kind == SW_CMD_ATTACH) close(((spillway_cmd_attach *)n)->fd);
    if (hub->backend.ops != NULL && hub->backend.ops->abandon != NULL) hub->backend.ops->abandon(hub->backend.self);
    spillway_queue_abandon(&hub->q);
    if (hub->epfd >= 0) close(hub->epfd);
    hub->epfd = -1;
}

static void atfork_child(void)
{
    spillway_hub *h = registry;
    registry = NULL;
    while (h != NULL) {
        spillway_hub *next = h->reg_next;
        abandon(h);
        /* atfork_prepare locked these in the thread that forked, which is the
         * child's only thread: release them, or the first call in the child
         * that takes one (spillway_hub_flush takes the queue lock) blocks
         * forever. */
        pthread_mutex_unlock(&h->q.lock);
        pthread_mutex_unlock(&h->loop_lock);
        h->reg_next = NULL;
        h = next;
    }
    pthread_mutex_unlock(&registry_lock);
}

static void install_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void registry_add(spillway_hub *hub)
{
    pthread_once(&atfork_once, install_atfork);
    pthread_mutex_lock(&registry_lock);
    hub->reg_next = registry;
    registry = hub;
    pthread_mutex_unlock(&registry_lock);
}

static void registry_remove(spillway_hub *hub)
{
    pthread_mutex_lock(&registry_lock);
    for (spillway_hub **pp = &registry; *pp != NULL; pp = &(*pp)->reg_next) {
        if (*pp == hub) {
            *pp = hub->reg_next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

/* ---- fixed frames ------------------------------------------------------ */

static spillway_frame *text_frame(const char *s)
{
    return spillway_frame_copy(s, strlen(s));
}

static int build_frames(spillway_hub *hub)
{
    static const char head[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/event-stream; charset=utf-8\r\n"
                               "Cache-Control: no-cache, no-transform\r\n"
                               "X-Accel-Buffering: no\r\n"
                               "Connection: close\r\n";
    const char *extra = hub->cfg.extra_headers ? hub->cfg.extra_headers : "";
    char retry[64];
    size_t hlen = strlen(head), elen = strlen(extra);

    hub->f_head = spillway_frame_new(hlen + elen + 2);
    if (hub->f_head == NULL) return -1;
    memcpy(hub->f_head->data, head, hlen);
    memcpy(hub->f_head->data + hlen, extra, elen);
    memcpy(hub->f_head->data + hlen + elen, "\r\n", 2);

    /* An opening comment (some proxies wait for the first body byte before
     * they pass the head on) and the reconnection delay. */
    snprintf(retry, sizeof(retry), ": spillway\n\nretry: %u\n\n", hub->cfg.retry_ms);
    hub->f_open = text_frame(retry);
    snprintf(retry, sizeof(retry), "retry: %u\n\n", hub->cfg.retry_ms);
    hub->f_retry = text_frame(retry);
    hub->f_heartbeat = text_frame(":\n\n");
    if (hub->f_open == NULL || hub->f_retry == NULL || hub->f_heartbeat == NULL) return -1;
    return 0;
}

/* ---- commands ---------------------------------------------------------- */

static void free_cmd(spillway_cmd *cmd)
{
    if (cmd->kind == SW_CMD_PUBLISH || cmd->kind == SW_CMD_PUBLISH_ASYNC)
        spillway_frame_unref(((spillway_cmd_publish *)cmd)->frame);
    free(cmd);
}

static void do_attach(spillway_hub *hub, spillway_cmd_attach *cmd)
{
    spillway_conn *c = spillway_conn_new(hub, cmd->fd, cmd->flags);
    const spillway_backend *b = &hub->backend;
    const char *p = cmd->names;

    if (c == NULL) {
        close(cmd->fd);
        atomic_fetch_sub_explicit(&hub->reserved, 1, memory_order_relaxed);
        return;
    }
    cmd->fd = -1;
    STAT_ADD(hub, st_accepted, 1);
    if (c->flags & SW_CF_FALLBACK) {
        STAT_ADD(hub, st_fallback, 1);
        STAT_ADD(hub, st_fallback_total, 1);
    }
    spillway_wheel_insert(hub, c);
    if (cmd->flags & SPILLWAY_ATTACH_HEAD) spillway_conn_push(hub, c, hub->f_head);
    spillway_conn_push(hub, c, hub->f_open);

    c->has_cursor = cmd->has_cursor;
    c->cursor_ok = cmd->cursor_ok;
    c->cursor = cmd->cursor;
    if (c->has_cursor) STAT_ADD(hub, st_resumes, 1);

    c->mem = calloc(cmd->nch ? cmd->nch : 1, sizeof(*c->mem));
    if (c->mem == NULL) {
        spillway_hub_log(hub, SW_LOG_MEMORY, "do_attach: out of memory");
        spillway_conn_doom(hub, c, false);
        return;
    }
    for (uint32_t i = 0; i < cmd->nch; i++) {
        size_t len = cmd->lens[i];
        spillway_channel *ch = spillway_chtab_get(hub, p, len);
        bool dup = false;
        p += len;
        if (ch == NULL) {
            spillway_hub_log(hub, SW_LOG_MEMORY, "do_attach: cannot create channel (out of memory)");
            spillway_conn_doom(hub, c, false);
            return;
        }
        for (uint32_t j = 0; j < c->nmem; j++) dup |= c->mem[j].ch == ch;
        if (dup) continue;
        if (spillway_channel_add_sub(ch, c, c->nmem) != 0) {
            spillway_hub_log(hub, SW_LOG_MEMORY, "do_attach: out of memory");
            spillway_channel_maybe_release(hub, ch);
            spillway_conn_doom(hub, c, false);
            return;
        }
        c->nmem++;
        if (b->ops->channel_wanted != NULL) b->ops->channel_wanted(b->self, ch);
    }
    b->ops->join(b->self, c);
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
        if (cmd != NULL) free_cmd(cmd);
    }
}

/* ---- the loop ---------------------------------------------------------- */

void spillway_hub_flush_and_close(spillway_hub *hub)
{
    spillway_conn *c;
    while ((c = hub->dirty) != NULL) {
        hub->dirty = c->lnext;
        c->lnext = NULL;
        c->flags &= ~SW_CF_DIRTY;
        if (!(c->flags & SW_CF_DOOMED)) spillway_conn_flush(hub, c);
    }
    while ((c = hub->doomed) != NULL) {
        hub->doomed = c->dnext;
        c->dnext = NULL;
        epoll_ctl(hub->epfd, EPOLL_CTL_DEL, c->h.fd, NULL);
        spillway_conn_close(hub, c);
    }
    spillway_conn_budget(hub);
}

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
    if (next <= hub->now) return 0;
    return (int)SW_MIN(next - hub->now, 60000u);
}

static void run_timers(spillway_hub *hub)
{
    if (hub->now >= hub->wheel_next_ms) spillway_wheel_tick(hub);
    hub->backend.ops->timers(hub->backend.self);
}

/* Stop: a last retry hint to every stream (best effort, never blocking),
 * then everything closes. */
static void shutdown_streams(spillway_hub *hub)
{
    for (uint32_t s = 0; s < hub->wheel_slots; s++) {
        for (spillway_conn *c = hub->wheel[s]; c != NULL; c = c->wnext) {
            if (c->flags & SW_CF_DOOMED) continue;
            if (c->flags & SW_CF_JOINING) atomic_fetch_sub_explicit(&hub->st_joining, 1, memory_order_relaxed);
            c->flags &= ~SW_CF_JOINING;
            spillway_conn_push(hub, c, hub->f_retry);
            spillway_conn_flush(hub, c);
            spillway_conn_doom(hub, c, false);
        }
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
        if (cmd->kind != SW_CMD_STOP) free_cmd(cmd);
    }
    if (hub->backend.ops->stop != NULL) hub->backend.ops->stop(hub->backend.self);
}

static void *reactor_main(void *arg)
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
        int timeout = next_timeout(hub);
        int n, e;

        /* The lag of streams counts only time spent waiting here: while
         * the loop works, it is the bottleneck, not the clients (conn.c). */
        hub->busy_ms += spillway_mono_ms() - hub->now;
        pthread_mutex_unlock(&hub->loop_lock);
        n = epoll_wait(hub->epfd, events, EVENTS_PER_WAIT, timeout);
        e = errno;
        pthread_mutex_lock(&hub->loop_lock);
        hub->now = spillway_mono_ms();
        STAT_ADD(hub, st_iterations, 1);
        if (n < 0) {
            if (e == EINTR) continue;
            spillway_hub_error(hub, "reactor: epoll_wait: %s", strerror(e));
            /* Not recoverable by retrying fast; do not spin. */
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        for (int i = 0; i < n; i++) {
            spillway_handle *h = events[i].data.ptr;
            switch (h->kind) {
            case SW_KIND_CONN:
                spillway_conn_on_event(hub, (spillway_conn *)h, events[i].events);
                break;
            case SW_KIND_WAKE:
                run_commands(hub);
                break;
            case SW_KIND_REDIS:
            case SW_KIND_RESOLVER:
                /* The backend's own descriptors. */
                hub->backend.ops->on_event(hub->backend.self, h, events[i].events);
                break;
            default:
                abort(); /* every kind is listed above */
            }
        }
        run_timers(hub);
        end_iteration(hub);
    }
    shutdown_streams(hub);
    atomic_store(&hub->running, false);
    /* A flush waiting for Redis will not get its answer any more. */
    pthread_mutex_lock(&hub->flush_lock);
    pthread_cond_broadcast(&hub->flush_cond);
    pthread_mutex_unlock(&hub->flush_lock);
    /* The log's reader takes what is left and ends. */
    pthread_mutex_lock(&hub->err_lock);
    pthread_cond_broadcast(&hub->log_cond);
    pthread_mutex_unlock(&hub->err_lock);
    pthread_mutex_unlock(&hub->loop_lock);
    return NULL;
}

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
}

static int check_config(const spillway_config *cfg, char *err, size_t errlen)
{
#define NEED(cond, msg)                                       \
    do {                                                      \
        if (!(cond)) {                                        \
            set_err(err, errlen, "spillway_hub_new: %s", msg); \
            return -EINVAL;                                   \
        }                                                     \
    } while (0)
    NEED(cfg->heartbeat_ms >= 10, "heartbeat must be at least 10 ms");
    NEED(cfg->max_connections >= 1, "max_connections must be at least 1");
    NEED(cfg->max_channels_per_conn >= 1 && cfg->max_channels_per_conn <= SPILLWAY_MAX_CHANNELS_PER_CONN,
         "max_channels_per_connection out of range (1..1024)");
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

int spillway_hub_new(const spillway_config *cfg, spillway_hub **out, char *err, size_t errlen)
{
    spillway_hub *hub;
    struct epoll_event ev;
    int rc;

    rc = check_config(cfg, err, errlen);
    if (rc != 0) return rc;
    hub = calloc(1, sizeof(*hub));
    if (hub == NULL) {
        set_err(err, errlen, "spillway_hub_new: out of memory");
        return -ENOMEM;
    }
    hub->epfd = -1;
    hub->q.efd = -1;
    hub->cfg = *cfg;
    hub->cfg.extra_headers = dup_or_null(cfg->extra_headers);
    hub->cfg.redis.host = dup_or_null(cfg->redis.host);
    hub->cfg.redis.path = dup_or_null(cfg->redis.path);
    hub->cfg.redis.username = dup_or_null(cfg->redis.username);
    hub->cfg.redis.password = dup_or_null(cfg->redis.password);
    hub->cfg.redis.ns = dup_or_null(cfg->redis.ns ? cfg->redis.ns : "spillway");
    hub->owner = getpid();
    pthread_mutex_init(&hub->loop_lock, NULL);
    pthread_mutex_init(&hub->err_lock, NULL);
    pthread_mutex_init(&hub->flush_lock, NULL);
    pthread_cond_init(&hub->flush_cond, NULL);
    {
        /* The log's waits are timed in CLOCK_MONOTONIC, like its rate limit. */
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&hub->log_cond, &attr);
        pthread_condattr_destroy(&attr);
    }

    hub->now = spillway_mono_ms();
    /* Every id this hub issues is above origin; a cursor below it comes
     * from before this process and gets a reset. */
    hub->origin = (spillway_id){spillway_wall_ms(), 0};
    hub->gen_last = hub->origin;
    hub->last = hub->origin;
    hub->wheel_slots = WHEEL_SLOTS;
    hub->wheel_next_ms = hub->now + SW_MAX(1u, cfg->heartbeat_ms / WHEEL_SLOTS);

    hub->wheel = calloc(hub->wheel_slots, sizeof(*hub->wheel));
    if (hub->wheel == NULL || build_frames(hub) != 0 || spillway_chtab_init(&hub->chans) != 0) {
        set_err(err, errlen, "spillway_hub_new: out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    hub->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (hub->epfd < 0) {
        rc = -errno;
        set_err(err, errlen, "spillway_hub_new: epoll_create1: %s", strerror(errno));
        goto fail;
    }
    rc = spillway_queue_init(&hub->q, cfg->queue_limit);
    if (rc != 0) {
        set_err(err, errlen, "spillway_hub_new: eventfd: %s", strerror(-rc));
        goto fail;
    }
    hub->wake.kind = SW_KIND_WAKE;
    hub->wake.fd = spillway_queue_fd(&hub->q);
    ev.events = EPOLLIN;
    ev.data.ptr = &hub->wake;
    if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, hub->wake.fd, &ev) != 0) {
        rc = -errno;
        set_err(err, errlen, "spillway_hub_new: epoll_ctl(ADD, eventfd): %s", strerror(errno));
        goto fail;
    }
    /* The only place that chooses: everything else calls hub->backend. */
    if (hub->cfg.redis.host != NULL || hub->cfg.redis.path != NULL) rc = spillway_redis_backend_new(hub, err, errlen);
    else rc = spillway_memory_backend_new(hub, err, errlen);
    if (rc != 0) goto fail;

    atomic_store(&hub->running, true);
    {
        /* The thread starts with every signal blocked (it unblocks none):
         * no signal can land on it before reactor_main runs. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        rc = pthread_create(&hub->thread, NULL, reactor_main, hub);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (rc != 0) {
        atomic_store(&hub->running, false);
        set_err(err, errlen, "spillway_hub_new: pthread_create: %s", strerror(rc));
        rc = -rc;
        goto fail;
    }
    hub->thread_started = true;
    registry_add(hub);
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

/* Names go unescaped into the JSON of the reset event (and into Redis keys):
 * besides CR, LF and NUL, refuse what a JSON string would need escaped. */
static bool channel_name_ok(const char *s, size_t len)
{
    if (len == 0 || len > SPILLWAY_MAX_CHANNEL_LEN) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') return false;
    }
    return true;
}

int spillway_hub_attach(spillway_hub *hub, int fd, unsigned flags, const char *const *channels,
                        const size_t *lens, size_t n, const char *cursor, size_t cursorlen,
                        char *err, size_t errlen)
{
    spillway_cmd_attach *cmd;
    size_t names = 0;
    char *p;
    int rc;

    if (!atomic_load(&hub->running)) {
        set_err(err, errlen, "spillway_hub_attach: the hub is not running");
        return -EPIPE;
    }
    if (n == 0 || n > hub->cfg.max_channels_per_conn) {
        set_err(err, errlen, "spillway_hub_attach: %zu channels (allowed: 1..%u)", n,
                hub->cfg.max_channels_per_conn);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!channel_name_ok(channels[i], lens[i])) {
            set_err(err, errlen, "spillway_hub_attach: invalid channel name");
            return -EINVAL;
        }
        names += lens[i];
    }
    cmd = malloc(sizeof(*cmd) + n * sizeof(uint16_t) + names);
    if (cmd == NULL) {
        set_err(err, errlen, "spillway_hub_attach: out of memory");
        return -ENOMEM;
    }
    cmd->base.kind = SW_CMD_ATTACH;
    cmd->fd = fd;
    cmd->flags = flags;
    cmd->nch = (uint32_t)n;
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

    rc = spillway_queue_push(&hub->q, &cmd->base.node, SPILLWAY_QUEUE_FORCE, NULL, NULL);
    if (rc == -EPIPE || rc == -EAGAIN) {
        free(cmd);
        set_err(err, errlen, "spillway_hub_attach: the hub is stopping");
        return rc;
    }
    /* A failed wake-up write leaves the command queued: the next wake-up
     * (or the stop) handles it, and the hub owns the fd either way. */
    return 0;
}

/* What both publish paths check first. */
static int check_publish(spillway_hub *hub, const char *fn, const char *channel, size_t chlen, char *err,
                         size_t errlen)
{
    if (!atomic_load(&hub->running)) {
        set_err(err, errlen, "%s: the hub is not running", fn);
        return -EPIPE;
    }
    if (!channel_name_ok(channel, chlen)) {
        set_err(err, errlen, "%s: invalid channel name", fn);
        return -EINVAL;
    }
    return 0;
}

struct publish_stamp {
    spillway_hub *hub;
    spillway_frame *frame;
    size_t cap;
    const char *event, *data;
    size_t evlen, datalen;
    char *idbuf;
};

/* Under the queue lock: the id, and the frame around it. */
static void stamp_publish(spillway_qnode *node, void *arg)
{
    struct publish_stamp *st = arg;
    spillway_hub *hub = st->hub;
    spillway_id id = spillway_id_next(hub->gen_last, spillway_wall_ms());
    size_t idlen;
    ssize_t len;

    SW_UNUSED(node);
    hub->gen_last = id;
    idlen = spillway_id_format(id, st->idbuf);
    len = spillway_sse_encode(st->frame->data, st->cap, st->idbuf, idlen, st->event, st->evlen,
                              st->data, st->datalen);
    /* The caller sized the frame for the longest id and checked the fields,
     * so this cannot fail. */
    st->frame->len = len > 0 ? (uint32_t)len : 0;
    st->frame->id = id;
}

/* keyspace: bytes after the channel for the async idempotency key. */
static spillway_cmd_publish *new_publish_cmd(int kind, const char *channel, size_t chlen,
                                             spillway_frame *frame, size_t keyspace)
{
    spillway_cmd_publish *cmd = malloc(sizeof(*cmd) + chlen + keyspace);
    if (cmd == NULL) return NULL;
    cmd->base.kind = kind;
    cmd->frame = frame;
    cmd->seq = 0;
    cmd->keylen = 0;
    cmd->key_ttl_ms = 0;
    cmd->first_ms = 0;
    cmd->maybe_ran = false;
    cmd->chlen = (uint32_t)chlen;
    memcpy(cmd->channel, channel, chlen);
    return cmd;
}

int spillway_hub_publish(spillway_hub *hub, const char *channel, size_t chlen, const char *event,
                         size_t evlen, const char *data, size_t datalen, char *idbuf, char *err,
                         size_t errlen)
{
    char longest[SPILLWAY_ID_TEXT_MAX];
    struct publish_stamp st;
    spillway_cmd_publish *cmd;
    ssize_t need;
    int rc;

    if (hub->backend.ops->publish == NULL) {
        set_err(err, errlen, "spillway_hub_publish: this hub uses %s (publish through %s)", hub->backend.ops->name,
                hub->backend.ops->name);
        return -EINVAL;
    }
    rc = check_publish(hub, "spillway_hub_publish", channel, chlen, err, errlen);
    if (rc != 0) return rc;
    memset(longest, '9', SPILLWAY_ID_TEXT_MAX - 1);
    longest[20] = '-';
    need = spillway_sse_size(longest, SPILLWAY_ID_TEXT_MAX - 1, event, evlen, data, datalen);
    if (need < 0) {
        set_err(err, errlen, "spillway_hub_publish: %s", spillway_sse_strerror(need));
        return -EINVAL;
    }
    if ((size_t)need > SPILLWAY_FRAME_MAX) {
        set_err(err, errlen, "spillway_hub_publish: a frame of %zd bytes is over SPILLWAY_FRAME_MAX (%u)", need,
                SPILLWAY_FRAME_MAX);
        return -EINVAL;
    }
    st.frame = spillway_frame_new((size_t)need);
    if (st.frame == NULL) {
        set_err(err, errlen, "spillway_hub_publish: out of memory (%zd bytes)", need);
        return -ENOMEM;
    }
    cmd = new_publish_cmd(SW_CMD_PUBLISH, channel, chlen, st.frame, 0);
    if (cmd == NULL) {
        spillway_frame_unref(st.frame);
        set_err(err, errlen, "spillway_hub_publish: out of memory");
        return -ENOMEM;
    }
    st.hub = hub;
    st.cap = (size_t)need;
    st.event = event;
    st.evlen = evlen;
    st.data = data;
    st.datalen = datalen;
    st.idbuf = idbuf;
    rc = spillway_queue_push(&hub->q, &cmd->base.node, 0, stamp_publish, &st);
    if (rc == -EAGAIN || rc == -EPIPE) {
        free_cmd(&cmd->base);
        set_err(err, errlen, rc == -EAGAIN
                                 ? "spillway_hub_publish: the hub's queue is full (queue_limit %u)"
                                 : "spillway_hub_publish: the hub is stopping (queue_limit %u)",
                hub->cfg.queue_limit);
        return rc;
    }
    return 0;
}

void spillway_hub_cursor(spillway_hub *hub, char *idbuf)
{
    spillway_id id;
    pthread_mutex_lock(&hub->q.lock);
    id = hub->gen_last;
    pthread_mutex_unlock(&hub->q.lock);
    spillway_id_format(id, idbuf);
}

struct async_stamp {
    spillway_hub *hub;
    uint64_t seq;
};

static void stamp_async(spillway_qnode *node, void *arg)
{
    struct async_stamp *st = arg;
    st->seq = ++st->hub->async_issued;
    ((spillway_cmd_publish *)node)->seq = st->seq;
}

int spillway_hub_publish_async(spillway_hub *hub, const char *channel, size_t chlen,
                               const char *event, size_t evlen, const char *data,
                               size_t datalen, const char *key, size_t keylen, uint64_t *seq,
                               char *err, size_t errlen)
{
    struct async_stamp st = {hub, 0};
    spillway_cmd_publish *cmd;
    spillway_frame *body;
    char genkey[SPILLWAY_IDEM_GEN_LEN + 1];
    const char *ns = hub->cfg.redis.ns;
    size_t nslen;
    ssize_t need;
    int rc;
    uint_fast32_t waiting;

    if (hub->backend.ops->publish_async == NULL) {
        set_err(err, errlen, "spillway_hub_publish_async: no Redis configured");
        return -EINVAL;
    }
    rc = check_publish(hub, "spillway_hub_publish_async", channel, chlen, err, errlen);
    if (rc != 0) return rc;
    if (key != NULL && !spillway_idem_key_ok(key, keylen)) {
        set_err(err, errlen, "spillway_hub_publish_async: invalid idempotency key (1 to %d bytes, no CR, LF or NUL)",
                SPILLWAY_IDEM_KEY_MAX);
        return -EINVAL;
    }
    if (key == NULL) {
        /* Made up here, on the caller's thread: the reactor's time goes to I/O. */
        spillway_idem_generate(genkey);
        key = genkey;
        keylen = SPILLWAY_IDEM_GEN_LEN;
    }
    nslen = strlen(ns);
    need = spillway_sse_size(NULL, 0, event, evlen, data, datalen);
    if (need < 0) {
        set_err(err, errlen, "spillway_hub_publish_async: %s", spillway_sse_strerror(need));
        return -EINVAL;
    }
    waiting = atomic_fetch_add(&hub->async_waiting_count, 1);
    if (waiting >= hub->cfg.redis.async_limit) {
        atomic_fetch_sub(&hub->async_waiting_count, 1);
        set_err(err, errlen,
                "spillway_hub_publish_async: %u async publishes are waiting for Redis "
                "(async_limit)",
                hub->cfg.redis.async_limit);
        return -EAGAIN;
    }
    body = spillway_frame_new((size_t)need);
    cmd = body ? new_publish_cmd(SW_CMD_PUBLISH_ASYNC, channel, chlen, body, nslen + 3 + keylen) : NULL;
    if (cmd == NULL) {
        spillway_frame_unref(body);
        atomic_fetch_sub(&hub->async_waiting_count, 1);
        set_err(err, errlen, "spillway_hub_publish_async: out of memory");
        return -ENOMEM;
    }
    /* The whole Redis key "NS:k:<key>" (scripts.h), so the reactor only
     * copies it into the command. */
    memcpy(cmd->channel + chlen, ns, nslen);
    memcpy(cmd->channel + chlen + nslen, ":k:", 3);
    memcpy(cmd->channel + chlen + nslen + 3, key, keylen);
    cmd->keylen = (uint32_t)(nslen + 3 + keylen);
    cmd->key_ttl_ms = key == genkey ? spillway_idem_generated_ttl_ms(&hub->cfg.redis)
                                    : SW_MAX(hub->cfg.redis.idempotency_ttl_ms, 1u);
    spillway_sse_encode(body->data, (size_t)need, NULL, 0, event, evlen, data, datalen);
    rc = spillway_queue_push(&hub->q, &cmd->base.node, SPILLWAY_QUEUE_FORCE, stamp_async, &st);
    if (rc == -EPIPE) {
        free_cmd(&cmd->base);
        atomic_fetch_sub(&hub->async_waiting_count, 1);
        set_err(err, errlen, "spillway_hub_publish_async: the hub is stopping");
        return rc;
    }
    *seq = st.seq;
    return 0;
}

/* Reactor: an async publish is finished (acknowledged, or failed for good).
 * Tickets finish in order, so `done` is a high-water mark. */
/* CLOCK_REALTIME now + ms, for pthread_cond_timedwait and timedjoin. */
static struct timespec deadline_after(uint32_t ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

void spillway_hub_async_done(spillway_hub *hub, uint64_t seq, bool ok)
{
    atomic_fetch_sub(&hub->async_waiting_count, 1);
    if (!ok) {
        STAT_ADD(hub, st_async_failed, 1);
        pthread_mutex_lock(&hub->flush_lock);
        hub->failed_ring[hub->failed_count++ % 64] = seq;
        pthread_mutex_unlock(&hub->flush_lock);
    }
    if (seq > atomic_load(&hub->async_done)) atomic_store(&hub->async_done, seq);
    if (atomic_load(&hub->flush_waiters) > 0) {
        pthread_mutex_lock(&hub->flush_lock);
        pthread_cond_broadcast(&hub->flush_cond);
        pthread_mutex_unlock(&hub->flush_lock);
    }
}

/* Each flush waits on its own spillway_waiter: with one flag in the hub, a
 * flush starting in another thread cleared an interrupt not yet seen by
 * the thread it was for (which then waited out its whole timeout), and an
 * interrupt ended every flush at once. The waiter is the caller's; the
 * interrupt reaches it through the unblock function's argument, so the hub
 * keeps no list of waiters. */
int spillway_hub_flush(spillway_hub *hub, uint32_t timeout_ms, spillway_waiter *w)
{
    uint64_t target, since = atomic_load(&hub->async_reported);
    struct timespec deadline;
    int rc = 0;

    pthread_mutex_lock(&hub->q.lock);
    target = hub->async_issued;
    pthread_mutex_unlock(&hub->q.lock);

    deadline = deadline_after(timeout_ms);
    atomic_fetch_add(&hub->flush_waiters, 1);
    pthread_mutex_lock(&hub->flush_lock);
    while (atomic_load(&hub->async_done) < target && !(w != NULL && w->interrupted) &&
           atomic_load(&hub->running)) {
        if (pthread_cond_timedwait(&hub->flush_cond, &hub->flush_lock, &deadline) == ETIMEDOUT) break;
    }
    if (atomic_load(&hub->async_done) < target) {
        rc = w != NULL && w->interrupted ? -EINTR : -ETIMEDOUT;
    } else {
        /* Everything is finished: did any publish since the last flush
         * that reported, and up to this one, fail? When more failed than
         * the ring keeps, assume so. */
        uint64_t kept = SW_MIN(hub->failed_count, 64u);
        bool lost = hub->failed_count > 64;
        for (uint64_t i = 0; i < kept; i++) {
            uint64_t t = hub->failed_ring[(hub->failed_count - 1 - i) % 64];
            if (t > since && t <= target) rc = -EIO;
            if (lost && t <= since) lost = false; /* the ring reaches back far enough */
        }
        if (lost) rc = -EIO;
        if (target > atomic_load(&hub->async_reported)) atomic_store(&hub->async_reported, target);
    }
    pthread_mutex_unlock(&hub->flush_lock);
    atomic_fetch_sub(&hub->flush_waiters, 1);
    return rc;
}

void spillway_hub_flush_interrupt(spillway_hub *hub, spillway_waiter *w)
{
    pthread_mutex_lock(&hub->flush_lock);
    w->interrupted = true;
    pthread_cond_broadcast(&hub->flush_cond);
    pthread_mutex_unlock(&hub->flush_lock);
}

void spillway_hub_stats(spillway_hub *hub, spillway_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->connections = atomic_load_explicit(&hub->reserved, memory_order_relaxed);
    out->channels = STAT_GET(hub, st_channels);
    out->published = STAT_GET(hub, st_published);
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
    deadline = deadline_after(timeout_ms);
    rc = pthread_timedjoin_np(hub->thread, NULL, &deadline);
    if (rc != 0) return -rc;
    hub->thread_started = false;
    registry_remove(hub);
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
    registry_remove(hub);
    if (hub->wheel != NULL) {
        for (uint32_t s = 0; s < hub->wheel_slots; s++) {
            spillway_conn *c = hub->wheel[s];
            while (c != NULL) {
                spillway_conn *next = c->wnext;
                spillway_conn_close(hub, c);
                c = next;
            }
        }
    }
    if (hub->backend.ops != NULL) hub->backend.ops->free(hub->backend.self);
    hub->backend.ops = NULL;
    if (hub->chans.buckets != NULL) spillway_chtab_free(&hub->chans);
    free(hub->wheel);
    spillway_frame_unref(hub->f_head);
    spillway_frame_unref(hub->f_open);
    spillway_frame_unref(hub->f_retry);
    spillway_frame_unref(hub->f_heartbeat);
    if (hub->q.efd >= 0) {
        for (spillway_qnode *n = spillway_queue_close(&hub->q); n != NULL;) {
            spillway_cmd *cmd = (spillway_cmd *)n;
            n = n->next;
            if (cmd->kind == SW_CMD_ATTACH) close(((spillway_cmd_attach *)cmd)->fd);
            if (cmd->kind != SW_CMD_STOP) free_cmd(cmd);
        }
        spillway_queue_destroy(&hub->q);
    }
    if (hub->epfd >= 0) close(hub->epfd);
    pthread_mutex_destroy(&hub->loop_lock);
    pthread_mutex_destroy(&hub->err_lock);
    pthread_mutex_destroy(&hub->flush_lock);
    pthread_cond_destroy(&hub->flush_cond);
    pthread_cond_destroy(&hub->log_cond);
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
