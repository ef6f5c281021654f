/*
 * Connections: one per open stream. Each holds a ring of references to
 * shared frames (its outbox) and writes them with one send()/sendmsg() per
 * flush, every pending frame gathered into the iovec. A stream is closed as
 * too slow (too_slow) by its lag and by what it alone keeps alive, never by
 * bytes queued, and always after the end-of-iteration flush: docs/design.md,
 * "The loop", says why and what was measured.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frames.h"
#include "hub_internal.h"
#include "lag.h"


/* Bytes an SSE client may send us before we call it abuse and hang up
 * (a browser sends nothing after its request). */
#define INBOUND_LIMIT 8192

static void set_socket_options(spillway_hub *hub, spillway_conn *c)
{
    int domain = 0, one = 1;
    socklen_t len = sizeof(domain);

    if (getsockopt(c->h.fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return;
    if (domain != AF_INET && domain != AF_INET6) return;
    c->flags |= SW_CF_TCP;
    /* We batch ourselves (one sendmsg per flush); Nagle would only add
     * latency on top. */
    setsockopt(c->h.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
#ifdef TCP_USER_TIMEOUT
    {
        /* Since Linux 5.11 the user timeout also ends a connection whose
         * window stayed shut that long (probes answered or not): bytes the
         * kernel holds for a stream that stopped reading are then dropped
         * after max_lag and a heartbeat, as an outbox of ours would be
         * after max_lag (on_error counts it slow). A peer gone with bytes in
         * flight is caught sooner, by the wheel (spillway_conn_vanished). */
        uint64_t ms = (uint64_t)hub->cfg.max_lag_ms + hub->cfg.heartbeat_ms;
        unsigned int uto = ms > UINT_MAX ? UINT_MAX : (unsigned int)ms;
        setsockopt(c->h.fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof(uto));
    }
#endif
}

spillway_conn *spillway_conn_new(spillway_hub *hub, int fd, unsigned flags)
{
    struct epoll_event ev;
    spillway_conn *c = calloc(1, sizeof(*c));

    if (c == NULL) return NULL;
    c->h.kind = SW_KIND_CONN;
    c->h.fd = fd;
    c->serial = ++hub->conn_serial;
    if (flags & SPILLWAY_ATTACH_FALLBACK) c->flags |= SW_CF_FALLBACK;
    if (flags & SPILLWAY_ATTACH_TURBO) c->flags |= SW_CF_TURBO;
    if (flags & SPILLWAY_ATTACH_HEAD) c->flags |= SW_CF_HEAD;
    if (flags & SPILLWAY_ATTACH_CHANNEL) c->flags |= SW_CF_CHANNEL;
    if (flags & SPILLWAY_ATTACH_ALL) c->flags |= SW_CF_ALL;
    if (flags & (SPILLWAY_ATTACH_POLL | SPILLWAY_ATTACH_LONG_POLL)) c->flags |= SW_CF_POLL;
    if (flags & SPILLWAY_ATTACH_LONG_POLL) c->flags |= SW_CF_LONG_POLL;
    set_socket_options(hub, c);

    /* Edge-triggered, registered once: no epoll_ctl on the hot path. */
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        int e = errno;
        spillway_hub_error(hub, "spillway_conn_new: epoll_ctl(ADD, fd %d): %s", fd, strerror(e));
        free(c);
        errno = e;
        return NULL;
    }
    return c;
}

/* ---- the outbox -------------------------------------------------------- */

/* The ring index of the i-th entry from the head. out_cap is a power of
 * two (4, doubled as needed): a mask, not a division, on every push, iovec
 * and pop. */
static uint32_t out_at(const spillway_conn *c, uint32_t i)
{
    return (c->out_start + i) & (c->out_cap - 1);
}

static void progress(const spillway_hub *hub, spillway_conn *c)
{
    c->progress_t = lag_clock(hub);
    c->progress_ms = (uint32_t)hub->now;
}

/* Too slow to keep: its oldest unsent frame waited longer than max_lag, or
 * the frames only it keeps alive (frame.h: exclusivity) and its entries
 * take more than outbox_limit while its socket takes nothing for a tenth
 * of max_lag. Those times run on the lag clock (lag.h), which stands still
 * while the loop works.
 *
 * Being alone with more than outbox_limit is not enough on its own: a
 * stream becomes the only holder when others send or drop what it still
 * has, through no fault of its own (the never-reader beside it is closed,
 * and the reader that keeps up is left alone with the rest of a burst).
 * What it must not do is hold that much and take nothing. A resume replay
 * may go over outbox_limit by its own size (spillway_conn_replay). */
static bool too_slow(const spillway_hub *hub, const spillway_conn *c)
{
    uint32_t stall = SW_MAX(hub->cfg.max_lag_ms / 10, 1u);
    if (out_lag(hub, c) > hub->cfg.max_lag_ms) return true;
    return exclusive_bytes(c) > hub->cfg.outbox_limit + c->replay_bytes &&
           lag_clock(hub) - c->progress_t > stall;
}

/* The queued list: streams that have frames waiting after their flush
 * (or held while joining). Only they can lag or hold memory, so only they
 * are swept and weighed against the budget; a stream whose writes keep up
 * never joins it. */
static void queued_add(spillway_hub *hub, spillway_conn *c)
{
    if (c->flags & SW_CF_QUEUED) return;
    c->flags |= SW_CF_QUEUED;
    c->qprev = NULL;
    c->qnext = hub->queued;
    if (hub->queued != NULL) hub->queued->qprev = c;
    hub->queued = c;
}

void spillway_conn_queued_remove(spillway_hub *hub, spillway_conn *c)
{
    if (!(c->flags & SW_CF_QUEUED)) return;
    c->flags &= ~SW_CF_QUEUED;
    if (c->qprev != NULL) c->qprev->qnext = c->qnext;
    else hub->queued = c->qnext;
    if (c->qnext != NULL) c->qnext->qprev = c->qprev;
    c->qprev = c->qnext = NULL;
}

/* Doubles the ring. */
static int out_grow(spillway_conn *c)
{
    uint32_t n = c->out_cap ? c->out_cap * 2 : 4;
    spillway_frame **r = malloc((size_t)n * sizeof(*r));

    if (r == NULL) return -1;
    for (uint32_t i = 0; i < c->out_len; i++) r[i] = c->out[out_at(c, i)];
    free(c->out);
    c->out = r;
    c->out_cap = n;
    c->out_start = 0;
    return 0;
}

static void out_free(spillway_conn *c)
{
    free(c->out);
    c->out = NULL;
    c->out_cap = c->out_start = 0;
    free(c->runs);
    c->runs = NULL;
    c->runs_cap = c->runs_start = c->runs_len = 0;
}

/*
 * Enqueue times, by run. Entries queued in one iteration share the lag
 * clock's value, so the outbox keeps one time per run of them instead of
 * one per entry: head_t for the run the head is in, tail_t for the newest,
 * and the runs in between, by the number of their first entry, in `runs`.
 * A stream that keeps up has one run at most (its outbox empties at every
 * flush) and never allocates `runs`; a push costs a comparison. A frame
 * time per entry cost 20% more CPU per delivery in bursts of 100.
 */
static int runs_push(spillway_conn *c, uint32_t t)
{
    if (c->runs_len == c->runs_cap) {
        uint32_t n = c->runs_cap ? c->runs_cap * 2 : 4;
        spillway_run *r = malloc((size_t)n * sizeof(*r));
        if (r == NULL) return -1;
        for (uint32_t i = 0; i < c->runs_len; i++) r[i] = c->runs[(c->runs_start + i) & (c->runs_cap - 1)];
        free(c->runs);
        c->runs = r;
        c->runs_cap = n;
        c->runs_start = 0;
    }
    c->runs[(c->runs_start + c->runs_len) & (c->runs_cap - 1)] = (spillway_run){c->pushed, t};
    c->runs_len++;
    return 0;
}

/* Releases the head entry (sent, or the stream is closing). */
static void out_pop(spillway_hub *hub, spillway_conn *c)
{
    spillway_frame *f = c->out[c->out_start];
    if (c->replay_n > 0) {
        c->replay_n--;
        c->replay_bytes -= SW_MIN(c->replay_bytes, (uint64_t)spillway_frame_size(f));
    }
    c->out_start = out_at(c, 1);
    c->out_len--;
    hub->out_mem -= OUT_SLOT + spillway_frame_dequeue(f, &c->excl);
    if (c->runs_len > 0) {
        /* The new head's number is pushed - out_len: the next run starts there? */
        spillway_run *next = &c->runs[c->runs_start];
        if (next->first == c->pushed - c->out_len) {
            c->head_t = next->t;
            c->runs_start = (c->runs_start + 1) & (c->runs_cap - 1);
            c->runs_len--;
            hub->out_mem -= sizeof(*next);
        }
    }
}

/* Queues a reference to f (taking a new reference). Returns -1 when the
 * stream was doomed instead (out of memory).
 *
 * Nothing is judged here but after the end-of-iteration flush: a burst
 * processed in one iteration may queue far more than outbox_limit for a
 * client that then takes it all in one write. The queue holds references to
 * frames that exist anyway, so the cost of waiting is an entry per frame;
 * what counts is how long the oldest waits and what only this stream keeps
 * alive. */
int spillway_conn_push(spillway_hub *hub, spillway_conn *c, spillway_frame *f)
{
    uint32_t i, t;

    /* A poll's answer (polls.c) is the last thing it writes. */
    if (c->flags & (SW_CF_DOOMED | SW_CF_ANSWERED)) return -1;
    if (c->out_len == c->out_cap && out_grow(c) != 0) {
        spillway_hub_error(hub, "spillway_conn_push: out of memory (fd %d)", c->h.fd);
        spillway_conn_doom(hub, c, false);
        return -1;
    }
    t = lag_clock(hub);
    if (c->out_len == 0) {
        progress(hub, c); /* waiting from now on */
        c->head_t = c->tail_t = t;
    } else if (t != c->tail_t) {
        if (runs_push(c, t) != 0) {
            spillway_hub_error(hub, "spillway_conn_push: out of memory (fd %d)", c->h.fd);
            spillway_conn_doom(hub, c, false);
            return -1;
        }
        hub->out_mem += sizeof(*c->runs);
        c->tail_t = t;
    }
    i = out_at(c, c->out_len);
    c->out[i] = f;
    c->out_len++;
    c->pushed++;
    hub->out_mem += OUT_SLOT + spillway_frame_enqueue(f, &c->excl);
    c->out_bytes += f->len;
    spillway_conn_mark_dirty(hub, c);
    return 0;
}

void spillway_conn_mark_dirty(spillway_hub *hub, spillway_conn *c)
{
    if (c->flags & (SW_CF_DIRTY | SW_CF_DOOMED)) return;
    c->flags |= SW_CF_DIRTY;
    /* Appended, so streams are flushed in the order they were given frames
     * (the fan-out order, first subscriber first): measured 2-3% less CPU
     * per delivery than newest first (bench/PROFILE-NOTES.md). dirty_last
     * means something only while dirty is not NULL. */
    c->dirty_next = NULL;
    if (hub->dirty == NULL) hub->dirty = c;
    else hub->dirty_last->dirty_next = c;
    hub->dirty_last = c;
}

/* A message for this stream: only when newer than what the stream already
 * has, so overlapping sources (live, backlog, gap repair) never produce a
 * duplicate. Control frames (heartbeat, head, reset) are pushed directly
 * with spillway_conn_push, not through here. */
void spillway_conn_deliver(spillway_hub *hub, spillway_conn *c, spillway_frame *f)
{
    if (c->flags & SW_CF_DOOMED) return;
    if (c->flags & SW_CF_JOINING) {
        /* Held until the resume read answers. Held frames are waiting
         * frames like the outbox's: the same accounts, the same limits (the
         * lag only counts from when they reach the outbox). */
        if (c->held_len == c->held_cap) {
            uint32_t n = c->held_cap ? c->held_cap * 2 : 4;
            spillway_frame **h = realloc(c->held, n * sizeof(*h));
            if (h == NULL) {
                spillway_conn_doom(hub, c, false);
                return;
            }
            c->held = h;
            c->held_cap = n;
        }
        if (c->held_len == 0) c->held_t = lag_clock(hub);
        c->held[c->held_len++] = f;
        hub->out_mem += sizeof(*c->held) + spillway_frame_enqueue(f, &c->excl);
        queued_add(hub, c);
        /* Nothing of it can be written yet: no grace for being alone. */
        if (exclusive_bytes(c) > hub->cfg.outbox_limit) spillway_conn_doom_why(hub, c, true, "slow (outbox_limit)");
        return;
    }
    if (spillway_id_cmp(f->id, c->last) <= 0) return;
    /* Not for this stream: skipped, but its id still moves the cursor (a
     * resume from there must not be told it missed anything). */
    if (f->targets != NULL && !(c->flags & SW_CF_ALL) && !spillway_targets_match(f->targets, c->ident)) {
        c->last = f->id;
        return;
    }
    if (spillway_conn_push(hub, c, f) == 0) c->last = f->id;
}

/* Everything queued so far may go over outbox_limit by its own size: a
 * resume replay is frames the stream asked for, often shared with the
 * backlog, and a client that reads takes it all; the lag still catches one
 * that stops reading in the middle of it. Replayed frames are shared like
 * any other, so lag and the budget judge them the same way. O(queued). */
void spillway_conn_exempt_queued(spillway_conn *c)
{
    c->replay_n = c->out_len;
    c->replay_bytes = 0;
    for (uint32_t i = 0; i < c->out_len; i++)
        c->replay_bytes += spillway_frame_size(c->out[out_at(c, i)]);
}

/* Drops the held list (its frames were delivered, or the stream closes). */
void spillway_conn_held_free(spillway_hub *hub, spillway_conn *c, spillway_frame **held, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        hub->out_mem -= sizeof(*held) + spillway_frame_dequeue(held[i], &c->excl);
    free(held);
}

void spillway_conn_drop_out(spillway_hub *hub, spillway_conn *c, uint32_t n)
{
    while (n-- > 0 && c->out_len > 0) out_pop(hub, c);
    c->out_bytes = 0;
    for (uint32_t i = 0; i < c->out_len; i++) c->out_bytes += spillway_conn_out(c, i)->len;
}

/* ---- writing ----------------------------------------------------------- */

/* n bytes of the outbox were written: the frames they complete leave it.
 * Returns how many of those were messages (not control frames). */
static uint64_t out_sent(spillway_hub *hub, spillway_conn *c, size_t n)
{
    uint64_t messages = 0;
    c->out_bytes -= (uint64_t)n;
    while (c->out_len > 0) {
        spillway_frame *f = c->out[c->out_start];
        size_t rest = f->len - c->out_off;
        if (n < rest) {
            c->out_off += (uint32_t)n;
            break;
        }
        n -= rest;
        c->out_off = 0;
        if (!spillway_id_is_zero(f->id)) messages++;
        out_pop(hub, c);
    }
    return messages;
}

/* What a flush leaves: an answered poll closes, an idle stream gives its
 * ring back, a stream with frames waiting is judged and kept on the
 * queued list. */
static void after_flush(spillway_hub *hub, spillway_conn *c)
{
    if (c->flags & SW_CF_DOOMED) return;
    if (c->out_len == 0) {
        if (c->flags & SW_CF_ANSWERED) {
            spillway_conn_doom_why(hub, c, false, "answered");
            return;
        }
        /* A burst made the ring big; give the memory back while idle. */
        if (c->out_cap > 64) out_free(c);
        if (c->held_len == 0) spillway_conn_queued_remove(hub, c);
        return;
    }
    if (!hub->stopping && too_slow(hub, c)) {
        spillway_conn_doom_why(hub, c, true, "slow (max_lag or outbox_limit)");
        return;
    }
    queued_add(hub, c);
}

/* A socket error: EPIPE, ECONNRESET and the like mean the client is gone;
 * ETIMEDOUT is the user timeout, which (the wheel having caught a vanished
 * peer a heartbeat earlier) means the window stayed shut past max_lag: slow. */
static void on_error(spillway_hub *hub, spillway_conn *c, int e)
{
    if (e == ETIMEDOUT) spillway_conn_doom_why(hub, c, true, "slow (max_lag)");
    else spillway_conn_doom_why(hub, c, false, "client gone");
}

/* Writes as much of the outbox as the socket takes: one sendmsg per batch of
 * up to SPILLWAY_IOV_BATCH frames. Errors doom the stream. */
void spillway_conn_flush(spillway_hub *hub, spillway_conn *c)
{
    /* A poll still collecting writes nothing: its head comes with its
     * answer (polls.c). Checked here, not only at the end of the iteration:
     * a socket's first EPOLLOUT may come in the same batch of events as the
     * read that filled its outbox. */
    if ((c->flags & (SW_CF_POLL | SW_CF_ANSWERED)) == SW_CF_POLL) return;
    while (c->out_len > 0 && !(c->flags & (SW_CF_DOOMED | SW_CF_BLOCKED))) {
        uint32_t cnt = SW_MIN(c->out_len, (uint32_t)SPILLWAY_IOV_BATCH);
        size_t want = 0;
        ssize_t n;
        uint64_t frames_done = 0;

        for (uint32_t i = 0; i < cnt; i++) {
            spillway_frame *f = c->out[out_at(c, i)];
            uint32_t off = i == 0 ? c->out_off : 0;
            hub->iov[i].iov_base = f->data + off;
            hub->iov[i].iov_len = f->len - off;
            want += f->len - off;
        }
        /* One frame (the common case when messages do not overlap): send()
         * skips the msghdr and iovec copy-in sendmsg pays on every call
         * (~0.2 us per delivery, bench/PROFILE-NOTES.md). */
        do {
            if (cnt == 1) {
                n = send(c->h.fd, hub->iov[0].iov_base, hub->iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT);
            } else {
                struct msghdr msg = {.msg_iov = hub->iov, .msg_iovlen = cnt};
                n = sendmsg(c->h.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            }
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                c->flags |= SW_CF_BLOCKED;
                break;
            }
            sw_debug("sendmsg(fd %d): %s", c->h.fd, strerror(e));
            on_error(hub, c, e);
            return;
        }
        STAT_ADD(hub, st_bytes_out, (uint64_t)n);
        progress(hub, c);
        frames_done = out_sent(hub, c, (size_t)n);
        if (frames_done > 0) STAT_ADD(hub, st_delivered, frames_done);
        if ((size_t)n < want) {
            /* A short write: the socket buffer is full. With edge-triggered
             * epoll, EPOLLOUT arrives once it drains. */
            c->flags |= SW_CF_BLOCKED;
            break;
        }
    }
    after_flush(hub, c);
}

void spillway_conn_on_event(spillway_hub *hub, spillway_conn *c, uint32_t events)
{
    if (c->flags & (SW_CF_DOOMED | SW_CF_ZOMBIE)) return;
    if (events & (EPOLLERR | EPOLLHUP)) {
        int e = 0;
        socklen_t len = sizeof(e);
        if (getsockopt(c->h.fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0) e = 0;
        on_error(hub, c, e);
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP)) {
        char buf[1024];
        for (;;) {
            ssize_t n = recv(c->h.fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (n > 0) {
                /* Counted over the stream's life, not per wake-up. */
                c->inbound += (uint32_t)n;
                if (c->inbound > INBOUND_LIMIT) {
                    spillway_conn_doom_why(hub, c, false, "client sent data");
                    return;
                }
                continue;
            }
            if (n == 0) {
                spillway_conn_doom_why(hub, c, false, "client gone");
                return;
            }
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                spillway_conn_doom_why(hub, c, false, "client gone");
                return;
            }
            break;
        }
        if (events & EPOLLRDHUP) {
            spillway_conn_doom_why(hub, c, false, "client gone");
            return;
        }
    }
    if (events & EPOLLOUT) {
        c->flags &= ~SW_CF_BLOCKED;
        if (c->out_len > 0) spillway_conn_flush(hub, c);
    }
}

/* ---- vanished peers ---------------------------------------------------- */

/* Whether the peer stopped acknowledging: bytes in flight and no ACK for
 * three quarters of a heartbeat. The wheel asks once per period, just before
 * the stream's heartbeat; the previous heartbeat left one period ago, so a
 * live peer acknowledged it (or a window probe) long since, even one that
 * stopped reading (it acknowledges with a zero window, and then nothing is in
 * flight). A peer gone at any moment has its next heartbeat unacknowledged,
 * and is caught at the tick after: within two heartbeats. TCP_USER_TIMEOUT
 * alone gives the kernel's last retransmission, a few hundred ms past its
 * timeout (1.4 s for 1 s, 15.6 s for 15 s here), so past two heartbeats. */
bool spillway_conn_vanished(const spillway_hub *hub, const spillway_conn *c)
{
#ifdef TCP_INFO
    struct tcp_info ti;
    socklen_t len = sizeof(ti);

    if (!(c->flags & SW_CF_TCP) || c->h.fd < 0) return false;
    memset(&ti, 0, sizeof(ti));
    if (getsockopt(c->h.fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return false;
    return ti.tcpi_unacked > 0 && (uint64_t)ti.tcpi_last_ack_recv * 4 >= (uint64_t)hub->cfg.heartbeat_ms * 3;
#else
    SW_UNUSED(hub);
    SW_UNUSED(c);
    return false;
#endif
}

/* Closes a vanished peer with a reset: nothing sent could arrive, and an
 * orderly close would leave the kernel retransmitting an orphan. */
void spillway_conn_abandon_vanished(spillway_hub *hub, spillway_conn *c)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    setsockopt(c->h.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    sw_debug("fd %d: no acknowledgement for a heartbeat, peer vanished", c->h.fd);
    spillway_conn_doom_why(hub, c, false, "client gone");
}

/* ---- closing ----------------------------------------------------------- */

void spillway_conn_doom_why(spillway_hub *hub, spillway_conn *c, bool slow, const char *why)
{
    if (c->why == NULL) c->why = why;
    spillway_conn_doom(hub, c, slow);
}

void spillway_conn_doom(spillway_hub *hub, spillway_conn *c, bool slow)
{
    if (c->flags & SW_CF_DOOMED) return;
    c->flags |= SW_CF_DOOMED;
    if (slow) {
        c->flags |= SW_CF_SLOW;
        STAT_ADD(hub, st_dropped_slow, 1);
    }
    c->doomed_next = hub->doomed;
    hub->doomed = c;
}

/* Frees the memory of a closed stream (now, or when its last Redis request
 * answers). */
void spillway_conn_release(spillway_hub *hub, spillway_conn *c)
{
    SW_UNUSED(hub);
    if (c->inflight > 0) {
        c->flags |= SW_CF_ZOMBIE;
        return;
    }
    free(c);
}

/* Closes the socket and frees what the stream holds; the caller took it off
 * the wheel and made it leave its channels (streams.c). Runs at the end of an
 * iteration, for the doomed list, or at stop. */
void spillway_conn_close(spillway_hub *hub, spillway_conn *c)
{
    if (c->flags & SW_CF_JOINING) {
        c->flags &= ~SW_CF_JOINING;
        STAT_SUB(hub, st_joining, 1);
    }
    free(c->mem);
    c->mem = NULL;
    c->nmem = 0;
    spillway_targets_unref(c->ident);
    c->ident = NULL;
    spillway_conn_queued_remove(hub, c);
    while (c->out_len > 0) out_pop(hub, c);
    out_free(c);
    c->out_bytes = 0;
    spillway_conn_held_free(hub, c, c->held, c->held_len);
    free(c->pend_reset);
    c->held = NULL;
    c->held_len = c->held_cap = 0;
    /* The caller removed the fd from the epoll set (a copy of it may live
     * elsewhere, e.g. in a fork child that has not closed it yet). */
    close(c->h.fd);
    c->h.fd = -1;
    if (c->flags & SW_CF_FALLBACK) STAT_SUB(hub, st_fallback, 1);
    STAT_ADD(hub, st_closed, 1);
    atomic_fetch_sub_explicit(&hub->reserved, 1, memory_order_relaxed);
    spillway_conn_release(hub, c);
}

/* ---- judging the waiting ---------------------------------------------- */

/* A stream that gets nothing new is never flushed, yet its lag grows and
 * others' releases may leave it alone with frames: the wheel's tick has the
 * queued list judged (so a stream is judged at most one slot, heartbeat /
 * 100, after it went over a limit). */
void spillway_conn_judge_queued(spillway_hub *hub)
{
    for (spillway_conn *c = hub->queued; c != NULL; c = c->qnext)
        if (!(c->flags & SW_CF_DOOMED) && too_slow(hub, c))
            spillway_conn_doom_why(hub, c, true, "slow (max_lag or outbox_limit)");
}
