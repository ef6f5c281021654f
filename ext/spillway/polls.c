/*
 * Poll and long-poll (SPILLWAY_ATTACH_POLL, SPILLWAY_ATTACH_LONG_POLL): a
 * stream that gets one answer and closes, for clients behind proxies that
 * buffer a stream. It joins like any stream (the same cursor, resume and
 * reset), but nothing is written while it collects: frames wait in its
 * outbox. At the end of an iteration (streams.c) a collecting stream that
 * is ready is answered: a poll once it has joined; a long-poll once it has
 * joined and holds a frame, or when its deadline passed. The answer is one
 * frame that replaces the outbox: the head with Content-Length (when the
 * hub writes the head), then the frames, in order, up to
 * SPILLWAY_POLL_BODY_MAX bytes. Once it is written the stream closes
 * (conn.c).
 *
 * Every long-poll waits the same long_poll_timeout_ms, so the deadlines
 * come in attach order: the held ones are a FIFO list whose head expires
 * first, and the timer phase looks at the head only.
 */
#include <stdio.h>
#include <string.h>

#include "polls.h"

static void held_remove(spillway_hub *hub, spillway_conn *c)
{
    if (c->pprev == NULL && hub->polls != c) return; /* not held */
    if (c->pprev != NULL) c->pprev->pnext = c->pnext;
    else hub->polls = c->pnext;
    if (c->pnext != NULL) c->pnext->pprev = c->pprev;
    else hub->polls_last = c->pprev;
    c->pprev = c->pnext = NULL;
    STAT_SUB(hub, st_long_polls, 1);
}

void spillway_poll_attach(spillway_hub *hub, spillway_conn *c)
{
    if (!(c->flags & SW_CF_LONG_POLL)) return;
    c->poll_deadline = hub->now + hub->cfg.long_poll_timeout_ms;
    c->pnext = NULL;
    c->pprev = hub->polls_last;
    if (hub->polls_last != NULL) hub->polls_last->pnext = c;
    else hub->polls = c;
    hub->polls_last = c;
    STAT_ADD(hub, st_long_polls, 1);
}

void spillway_poll_forget(spillway_hub *hub, spillway_conn *c)
{
    held_remove(hub, c);
}

bool spillway_poll_ready(const spillway_hub *hub, const spillway_conn *c)
{
    if (c->flags & (SW_CF_ANSWERED | SW_CF_DOOMED)) return false;
    if (c->flags & SW_CF_LONG_POLL) {
        /* Past the deadline it is answered even while joining (the Redis
         * links are down): empty, and the client asks again from the same
         * cursor. */
        if (hub->now >= c->poll_deadline) return true;
        return !(c->flags & SW_CF_JOINING) && c->out_len > 0;
    }
    return !(c->flags & SW_CF_JOINING);
}

/* How many of the outbox's frames go into the answer, and their bytes:
 * every one up to SPILLWAY_POLL_BODY_MAX, and at least the first. */
static uint32_t body_frames(const spillway_conn *c, size_t *bytes)
{
    uint32_t n = 0;
    *bytes = 0;
    while (n < c->out_len) {
        size_t len = spillway_conn_out(c, n)->len;
        if (n > 0 && *bytes + len > SPILLWAY_POLL_BODY_MAX) break;
        *bytes += len;
        n++;
    }
    return n;
}

#define HEAD_FORMAT                                      \
    "HTTP/1.1 200 OK\r\n"                               \
    "Content-Type: text/event-stream; charset=utf-8\r\n" \
    "Cache-Control: no-cache, no-transform\r\n"          \
    "Content-Length: %zu\r\n"                            \
    "Connection: close\r\n"                              \
    "%s\r\n"

void spillway_poll_answer(spillway_hub *hub, spillway_conn *c)
{
    const char *extra = hub->cfg.extra_headers ? hub->cfg.extra_headers : "";
    size_t body, hlen = 0;
    uint32_t n = body_frames(c, &body);
    spillway_frame *f;
    char *p;

    held_remove(hub, c);
    if (c->flags & SW_CF_HEAD) hlen = (size_t)snprintf(NULL, 0, HEAD_FORMAT, body, extra);
    f = spillway_frame_new(hlen + body + 1); /* + snprintf's NUL */
    if (f == NULL) {
        spillway_hub_log(hub, SW_LOG_MEMORY, "poll answer: out of memory (%zu bytes)", body);
        spillway_conn_doom_why(hub, c, false, "out of memory");
        return;
    }
    p = f->data;
    if (hlen > 0) p += snprintf(p, hlen + 1, HEAD_FORMAT, body, extra);
    for (uint32_t i = 0; i < n; i++) {
        const spillway_frame *part = spillway_conn_out(c, i);
        memcpy(p, part->data, part->len);
        p += part->len;
    }
    f->len = (uint32_t)(p - f->data);
    /* The frames past the cap are not lost: the client asks again from the
     * last id it got, and the backlog has them (or it gets a reset). */
    spillway_conn_drop_out(hub, c, c->out_len);
    /* Nothing may follow the answer: a delivery skips every id up to
     * c->last (conn.c), and every other push checks SW_CF_ANSWERED. */
    c->last = (spillway_id){UINT64_MAX, UINT64_MAX};
    if (spillway_conn_push(hub, c, f) == 0) STAT_ADD(hub, st_polls_answered, 1);
    c->flags |= SW_CF_ANSWERED;
    spillway_frame_unref(f);
}

void spillway_poll_timers(spillway_hub *hub)
{
    /* The head expires first; answering takes it off the list. */
    while (hub->polls != NULL && hub->now >= hub->polls->poll_deadline) {
        spillway_conn *c = hub->polls;
        held_remove(hub, c);
        spillway_conn_mark_dirty(hub, c);
    }
}

uint64_t spillway_poll_next_timer(const spillway_hub *hub)
{
    return hub->polls != NULL ? hub->polls->poll_deadline : UINT64_MAX;
}
