/*
 * Async-publish tickets: spillway_hub_publish_async issues one per publish
 * under the queue lock (hub.c), the backend finishes each in order
 * (spillway_hub_async_done), and spillway_hub_flush waits until every ticket
 * issued before it is finished, reporting whether any of them failed.
 */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "hub_internal.h"
#include "tickets.h"

/* Tickets finish in order, so `done` is a high-water mark. */
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

    deadline = spillway_timespec_after(CLOCK_REALTIME, timeout_ms);
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
