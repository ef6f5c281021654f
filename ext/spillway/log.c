/*
 * The hub's log: one slot per kind under err_lock, rate-limited per kind
 * (log.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "hub_internal.h"

/* Every kind of spillway_log_kind, in its order: the name the log line
 * shows; whether it is an error (counted in stats errors and kept as
 * last_error); and its level. A Redis link that drops or cannot connect is
 * an error but only a warning in the log: the hub retries it on its own. */
static const struct {
    const char *name;
    bool error;
    bool warning;
    bool redis; /* also an event (events.h): redis_error.spillway */
} log_kinds[SW_LOG_KINDS] = {
    [SW_LOG_ERROR] = {"error", true, false, false},
    [SW_LOG_REDIS_LINK] = {"redis_link", true, true, true},
    [SW_LOG_REDIS_CONNECT] = {"redis_connect", true, true, true},
    [SW_LOG_PROTOCOL] = {"protocol", true, false, true},
    [SW_LOG_SUBSCRIBE] = {"subscribe", true, false, true},
    [SW_LOG_RESUME] = {"resume", true, false, true},
    [SW_LOG_REPAIR] = {"repair", true, false, true},
    [SW_LOG_ASYNC_PUBLISH] = {"async_publish", true, false, true},
    [SW_LOG_MEMORY] = {"memory", true, false, false},
    [SW_LOG_RESET] = {"reset", false, true, false},
    [SW_LOG_SLOW_CLIENT] = {"slow_client", false, true, false},
    [SW_LOG_PG_LINK] = {"postgres_link", true, true, true},
    [SW_LOG_PG_CONNECT] = {"postgres_connect", true, true, true},
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
    /* Every occurrence, not the log's summary (its own lock). */
    if (log_kinds[kind].redis) spillway_events_push(&hub->events, SW_EV_REDIS_ERROR, 0, log_kinds[kind].name, msg);
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

void spillway_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || errlen == 0) return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
