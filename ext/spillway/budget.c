/*
 * The memory budget: after the doomed streams of an iteration are closed,
 * while the frames waiting in outboxes (counted once however many streams
 * hold them) take more than memory_limit, the laggiest streams are closed,
 * one at a time, so each one's memory is released before the next is
 * weighed (docs/design.md, the loop).
 */
#include <stdlib.h>

#include "hub_internal.h"
#include "lag.h"

typedef struct candidate {
    uint32_t lag, stalled;
    uint64_t excl;
    spillway_conn *c;
} candidate;

/* Laggiest first. Of equal lag (frames queued in the same iteration, or a
 * loop so busy that the lag clock stood still), the one that took nothing
 * for longest, then the one that alone keeps the most alive. */
static int cmp_laggiest(const void *a, const void *b)
{
    const candidate *x = a, *y = b;
    if (x->lag != y->lag) return x->lag > y->lag ? -1 : 1;
    if (x->stalled != y->stalled) return x->stalled > y->stalled ? -1 : 1;
    if (x->excl != y->excl) return x->excl > y->excl ? -1 : 1;
    return 0;
}

/* Dooms and closes c at once, so that what it held is released before the
 * budget is weighed again. Runs where the doomed list is closed (the end of
 * the iteration), so nothing later in the iteration sees c. */
static void close_now(spillway_hub *hub, spillway_conn *c, spillway_close_fn *close_fn)
{
    if (c->flags & SW_CF_DOOMED) return; /* never here: the doomed were closed before */
    spillway_conn_doom_why(hub, c, true, "slow (memory_limit)");
    hub->doomed = c->doomed_next; /* doom put it first */
    c->doomed_next = NULL;
    close_fn(hub, c);
}

void spillway_conn_budget(spillway_hub *hub, spillway_close_fn *close_fn)
{
    size_t n = 0, k = 0;
    candidate *v;

    if (!hub->stopping && hub->out_mem > hub->cfg.memory_limit) {
        for (spillway_conn *c = hub->queued; c != NULL; c = c->qnext) n++;
        v = malloc((n ? n : 1) * sizeof(*v));
        if (v == NULL) {
            /* No room to sort: close in list order; still bounded. */
            while (hub->queued != NULL && hub->out_mem > hub->cfg.memory_limit) close_now(hub, hub->queued, close_fn);
        } else {
            for (spillway_conn *c = hub->queued; c != NULL; c = c->qnext) {
                uint32_t held_lag = c->held_len > 0 ? lag_clock(hub) - c->held_t : 0;
                v[k].lag = SW_MAX(out_lag(hub, c), held_lag);
                v[k].stalled = (uint32_t)hub->now - c->progress_ms;
                v[k].excl = exclusive_bytes(c);
                v[k].c = c;
                k++;
            }
            qsort(v, k, sizeof(*v), cmp_laggiest);
            for (size_t i = 0; i < k && hub->out_mem > hub->cfg.memory_limit; i++) close_now(hub, v[i].c, close_fn);
            free(v);
        }
    }
    atomic_store_explicit(&hub->st_outbox_bytes, hub->out_mem, memory_order_relaxed);
}
