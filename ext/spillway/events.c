/*
 * The hub's event ring (events.h).
 */
#include "events.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int spillway_events_init(spillway_events *e, uint32_t cap)
{
    int rc;
    memset(e, 0, sizeof(*e));
    if (cap == 0) cap = 1;
    e->ring = calloc(cap, sizeof(*e->ring));
    if (e->ring == NULL) return -ENOMEM;
    e->cap = cap;
    atomic_init(&e->enabled, false);
    if ((rc = pthread_mutex_init(&e->lock, NULL)) != 0) goto fail;
    if ((rc = pthread_cond_init(&e->cond, NULL)) != 0) {
        pthread_mutex_destroy(&e->lock);
        goto fail;
    }
    return 0;
fail:
    free(e->ring);
    e->ring = NULL;
    return -rc;
}

void spillway_events_destroy(spillway_events *e)
{
    if (e->ring == NULL) return;
    pthread_cond_destroy(&e->cond);
    pthread_mutex_destroy(&e->lock);
    free(e->ring);
    e->ring = NULL;
}

void spillway_events_enable(spillway_events *e, bool on)
{
    atomic_store_explicit(&e->enabled, on, memory_order_relaxed);
}

bool spillway_events_enabled(spillway_events *e)
{
    return atomic_load_explicit(&e->enabled, memory_order_relaxed);
}

/* Copies src into dst (size n), cut to fit, always terminated. */
static void copy_text(char *dst, size_t n, const char *src)
{
    size_t len = src ? strnlen(src, n - 1) : 0;
    if (len) memcpy(dst, src, len);
    dst[len] = '\0';
}

void spillway_events_push(spillway_events *e, spillway_event_kind kind, uint64_t id, const char *reason,
                          const char *detail)
{
    spillway_event *ev;
    uint64_t wall;
    if (!spillway_events_enabled(e)) return;
    wall = spillway_wall_ms(); /* outside the lock */
    pthread_mutex_lock(&e->lock);
    if (e->closed) {
        pthread_mutex_unlock(&e->lock);
        return;
    }
    if (e->len == e->cap) {
        /* Full: the oldest goes. */
        e->head = (e->head + 1) % e->cap;
        e->len--;
        e->dropped++;
    }
    ev = &e->ring[(e->head + e->len) % e->cap];
    ev->kind = kind;
    ev->id = id;
    ev->wall_ms = wall;
    copy_text(ev->reason, sizeof(ev->reason), reason);
    copy_text(ev->detail, sizeof(ev->detail), detail);
    e->len++;
    /* The consumer sleeps only on an empty ring: one signal per refill. */
    if (e->len == 1) pthread_cond_signal(&e->cond);
    pthread_mutex_unlock(&e->lock);
}

static void deadline_after(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int spillway_events_wait(spillway_events *e, spillway_event *out, size_t max, uint32_t timeout_ms,
                         bool *interrupted, uint64_t *dropped)
{
    struct timespec until;
    size_t n = 0;
    int rc = 0;
    deadline_after(&until, timeout_ms);
    pthread_mutex_lock(&e->lock);
    while (e->len == 0 && !e->closed && !(interrupted && *interrupted) && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&e->cond, &e->lock, &until);
    if (interrupted && *interrupted && e->len == 0) {
        *interrupted = false;
        pthread_mutex_unlock(&e->lock);
        return -EINTR;
    }
    while (n < max && e->len > 0) {
        out[n++] = e->ring[e->head];
        e->head = (e->head + 1) % e->cap;
        e->len--;
    }
    if (dropped) *dropped = e->dropped;
    rc = n == 0 && e->closed ? -EPIPE : (int)n;
    pthread_mutex_unlock(&e->lock);
    return rc;
}

void spillway_events_interrupt(spillway_events *e, bool *interrupted)
{
    pthread_mutex_lock(&e->lock);
    *interrupted = true;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
}

void spillway_events_close(spillway_events *e)
{
    pthread_mutex_lock(&e->lock);
    e->closed = true;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
}
