/*
 * The end of a stream's join and its resets: what it missed (the backend's
 * replay), the reset frame for channels whose history does not reach back
 * to its cursor, the log line and the event naming them, then whatever
 * arrived live meanwhile, minus duplicates. The one part of a stream that
 * knows its channels by name (the rest of conn.c writes bytes).
 */
#include <stdlib.h>

#include "frames.h"
#include "hub_internal.h"

int spillway_frame_cmp_id(const void *a, const void *b)
{
    const spillway_frame *fa = *(spillway_frame *const *)a;
    const spillway_frame *fb = *(spillway_frame *const *)b;
    return spillway_id_cmp(fa->id, fb->id);
}

/* Every reset reaches the log: the channels it names (as many as fit in
 * the line; a first name too long for it is cut) and why; and, when
 * enabled, the events. */
static void log_reset(spillway_hub *hub, const spillway_conn *c, const bool *reset, const char *reason)
{
    char names[160];
    size_t len = 0;
    uint32_t total = 0, shown = 0;

    names[0] = '\0';
    for (uint32_t i = 0; i < c->nmem; i++) {
        const spillway_channel *ch = c->mem[i].ch;
        /* Room kept for a separator and " and N more". */
        size_t room = sizeof(names) - len - 20;
        if (!reset[i]) continue;
        total++;
        if (shown > 0 && 2u + ch->namelen > room) continue;
        len += (size_t)snprintf(names + len, sizeof(names) - len, "%s%.*s", shown ? ", " : "",
                                (int)SW_MIN((size_t)ch->namelen, room), ch->name);
        shown++;
    }
    if (shown < total) snprintf(names + len, sizeof(names) - len, " and %u more", total - shown);
    spillway_hub_log(hub, SW_LOG_RESET, "stream reset on %s (%s)", names,
                     reason ? reason : "no reason given");
    if (spillway_events_enabled(&hub->events)) {
        char all[SPILLWAY_EVENT_DETAIL];
        spillway_frame_channel_names(c, reset, all, sizeof(all));
        spillway_events_push(&hub->events, SW_EV_RESET, c->serial, reason ? reason : "no reason given", all);
    }
}

/*
 * Completes a join. The caller has set c->last to the stream's starting
 * point (its cursor). frames (sorted by id, newer than the cursor) are what the
 * stream missed; reset[i] is set for each membership slot whose backlog does
 * not reach back to the cursor; now is the newest id at the time of the read.
 * Then whatever arrived live while joining follows, minus duplicates.
 */
void spillway_conn_replay(spillway_hub *hub, spillway_conn *c, spillway_frame **frames, size_t n,
                          const bool *reset, spillway_id now, const char *reason)
{
    bool any_reset = false;
    spillway_frame **held = c->held;
    uint32_t held_len = c->held_len;

    if (c->flags & SW_CF_JOINING) STAT_SUB(hub, st_joining, 1);
    c->flags &= ~SW_CF_JOINING;
    c->held = NULL;
    c->held_len = c->held_cap = 0;

    for (size_t i = 0; i < n; i++) spillway_conn_deliver(hub, c, frames[i]);
    spillway_conn_exempt_queued(c);
    for (uint32_t i = 0; reset != NULL && i < c->nmem; i++) any_reset |= reset[i];
    if (any_reset) {
        spillway_frame *rf = spillway_frame_reset(c, reset, spillway_id_max(now, c->last));
        STAT_ADD(hub, st_resets, 1);
        log_reset(hub, c, reset, reason);
        if (rf != NULL) {
            if (spillway_conn_push(hub, c, rf) == 0) c->last = rf->id;
            spillway_frame_unref(rf);
        }
    }
    c->last = spillway_id_max(c->last, now);
    for (uint32_t i = 0; i < held_len; i++) spillway_conn_deliver(hub, c, held[i]);
    spillway_conn_held_free(hub, c, held, held_len);
    /* Everything held may have been a duplicate: nothing waits then. */
    if (c->out_len == 0) spillway_conn_queued_remove(hub, c);
    /* A poll is answered once joined (polls.c), with or without frames. */
    if (c->flags & SW_CF_POLL) spillway_conn_mark_dirty(hub, c);
}

/* A reset for a live stream (gap repair could not reach back far enough
 * for the flagged channels). */
void spillway_conn_send_reset(spillway_hub *hub, spillway_conn *c, const bool *reset,
                              spillway_id now, const char *reason)
{
    spillway_frame *rf = spillway_frame_reset(c, reset, spillway_id_max(now, c->last));
    STAT_ADD(hub, st_resets, 1);
    log_reset(hub, c, reset, reason);
    if (rf == NULL) return;
    if (spillway_conn_push(hub, c, rf) == 0) c->last = rf->id;
    spillway_frame_unref(rf);
}
