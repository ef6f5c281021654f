/*
 * The streams' part of the end of an iteration: every stream given frames
 * in it is flushed once (conn.c), the doomed are closed (deferred so that no
 * later event of the same epoll batch sees freed memory), and the memory
 * budget is weighed. Above conn.c and channel.c: closing a stream makes it
 * leave its channels first.
 */
#include <sys/epoll.h>

#include "frames.h"
#include "hub_internal.h"
#include "polls.h"

/* The stream_close event (events.h), while the memberships still name the
 * stream's channels. */
static void report_close(spillway_hub *hub, const spillway_conn *c)
{
    char names[SPILLWAY_EVENT_DETAIL];
    if (!spillway_events_enabled(&hub->events)) return;
    spillway_frame_channel_names(c, NULL, names, sizeof(names));
    spillway_events_push(&hub->events, SW_EV_STREAM_CLOSE, c->serial,
                         c->why ? c->why : (c->flags & SW_CF_SLOW) ? "slow" : "error", names);
}

/* A doomed stream goes: out of the epoll set explicitly (a copy of its
 * descriptor may live elsewhere, e.g. in a fork child), out of its
 * channels and off the wheel, closed. */
static void close_doomed(spillway_hub *hub, spillway_conn *c)
{
    epoll_ctl(hub->epfd, EPOLL_CTL_DEL, c->h.fd, NULL);
    report_close(hub, c);
    spillway_wheel_remove(hub, c);
    spillway_poll_forget(hub, c);
    spillway_channel_leave_all(hub, c);
    spillway_conn_close(hub, c);
}

void spillway_hub_flush_and_close(spillway_hub *hub)
{
    spillway_conn *c;
    while ((c = hub->dirty) != NULL) {
        hub->dirty = c->dirty_next;
        c->dirty_next = NULL;
        c->flags &= ~SW_CF_DIRTY;
        if (c->flags & SW_CF_DOOMED) continue;
        if ((c->flags & (SW_CF_POLL | SW_CF_ANSWERED)) == SW_CF_POLL) {
            /* A poll writes nothing until it is answered (polls.c). */
            if (!spillway_poll_ready(hub, c)) continue;
            spillway_poll_answer(hub, c);
        }
        spillway_conn_flush(hub, c);
    }
    while ((c = hub->doomed) != NULL) {
        hub->doomed = c->doomed_next;
        c->doomed_next = NULL;
        close_doomed(hub, c);
    }
    spillway_conn_budget(hub, close_doomed);
}

void spillway_streams_close_all(spillway_hub *hub)
{
    while (hub->streams != NULL) {
        spillway_conn *c = hub->streams;
        spillway_wheel_remove(hub, c);
        spillway_poll_forget(hub, c);
        spillway_channel_leave_all(hub, c);
        spillway_conn_close(hub, c);
    }
}
