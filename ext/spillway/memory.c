/*
 * The memory backend: everything is in this process. The hub stamps the ids
 * (hub.c, under the queue lock); each channel keeps a backlog ring
 * (channel.c) of the last backlog_size messages; at most
 * max_backlog_channels channels keep one, the least recently published
 * dropped first (an LRU list), and a backlog whose last message is older
 * than backlog_ttl_s goes on a sweep about once a second.
 */
#include <errno.h>
#include <stdlib.h>

#include "frames.h"
#include "hub_internal.h"
#include "memory.h"

#define SWEEP_INTERVAL_MS 1000u

/* ---- the LRU of backlogs ----------------------------------------------- */

static void lru_unlink(spillway_memory *m, spillway_channel *ch)
{
    if (ch->lru_prev != NULL) ch->lru_prev->lru_next = ch->lru_next;
    else if (m->lru_head == ch) m->lru_head = ch->lru_next;
    else return; /* not linked */
    if (ch->lru_next != NULL) ch->lru_next->lru_prev = ch->lru_prev;
    else m->lru_tail = ch->lru_prev;
    ch->lru_prev = ch->lru_next = NULL;
    m->lru_count--;
}

/* What a channel's backlog held is gone for good: a channel created later
 * under any name assumes it lost everything up to here. */
static void forget(spillway_memory *m, const spillway_channel *ch)
{
    if (!spillway_id_is_zero(ch->last)) m->evicted = spillway_id_max(m->evicted, ch->last);
}

/* Drops the backlog of the least recently published channel. */
static void evict_oldest(spillway_memory *m)
{
    spillway_channel *ch = m->lru_head;
    lru_unlink(m, ch);
    forget(m, ch);
    spillway_backlog_clear(m->hub, ch);
    spillway_channel_maybe_release(m->hub, ch);
}

void spillway_lru_touch(spillway_memory *m, spillway_channel *ch)
{
    ch->lru_touched_ms = m->hub->now;
    lru_unlink(m, ch);
    ch->lru_prev = m->lru_tail;
    ch->lru_next = NULL;
    if (m->lru_tail != NULL) m->lru_tail->lru_next = ch;
    else m->lru_head = ch;
    m->lru_tail = ch;
    m->lru_count++;
    while (m->lru_count > m->hub->cfg.max_backlog_channels && m->lru_head != ch) evict_oldest(m);
}

/* Backlogs whose last message is older than the TTL are dropped (the LRU
 * list is in order of last message, so the scan stops at the first young
 * one). */
void spillway_backlog_sweep(spillway_memory *m)
{
    uint64_t ttl_ms = (uint64_t)m->hub->cfg.backlog_ttl_s * 1000u;
    if (ttl_ms == 0) return;
    while (m->lru_head != NULL && m->lru_head->lru_touched_ms + ttl_ms <= m->hub->now) evict_oldest(m);
}

/* ---- the operations ---------------------------------------------------- */

/* Why memory_join resets a stream, for the log (the same tests, in order). */
static const char *reset_reason(const spillway_memory *m, const spillway_conn *c, spillway_id known)
{
    if (!c->cursor_ok) return "the Last-Event-ID is not an event id";
    if (spillway_id_cmp(c->cursor, known) > 0) return "the Last-Event-ID is newer than any id issued here";
    if (spillway_id_cmp(c->cursor, m->origin) < 0)
        return "the Last-Event-ID is from before this process started";
    return "the backlog no longer reaches back to the Last-Event-ID";
}

/* The resume: every channel's backlog after the cursor, merged in id order;
 * a reset where it does not reach back. */
static void memory_join(void *self, spillway_conn *c)
{
    spillway_memory *m = self;
    spillway_hub *hub = m->hub;
    spillway_id now = hub->last, issued;
    bool all_reset;
    bool *reset;
    spillway_frame **frames;
    size_t total = 0, n = 0;

    if (!c->has_cursor) {
        c->last = now;
        return;
    }
    /* Not an id, an id this hub never issued (from the future: another
     * process or a restart), or from before this process started: nothing
     * here can tell what was missed. Issued but not yet processed here
     * counts as known (Spillway.cursor may hand out an id whose publish is
     * still in the queue). */
    pthread_mutex_lock(&hub->q.lock);
    issued = m->gen_last;
    pthread_mutex_unlock(&hub->q.lock);
    all_reset = !c->cursor_ok || spillway_id_cmp(c->cursor, spillway_id_max(now, issued)) > 0 ||
                spillway_id_cmp(c->cursor, m->origin) < 0;
    for (uint32_t i = 0; i < c->nmem; i++) total += c->mem[i].ch->ring_len;
    reset = calloc(c->nmem ? c->nmem : 1, sizeof(*reset));
    frames = malloc((total ? total : 1) * sizeof(*frames));
    if (reset == NULL || frames == NULL) {
        free(reset);
        free(frames);
        spillway_hub_log(hub, SW_LOG_MEMORY, "memory_join: out of memory");
        spillway_conn_doom(hub, c, false);
        return;
    }
    for (uint32_t i = 0; i < c->nmem; i++) {
        spillway_channel *ch = c->mem[i].ch;
        reset[i] = all_reset || spillway_id_cmp(ch->trimmed, c->cursor) > 0;
        if (!reset[i]) {
            size_t got = spillway_backlog_collect(ch, c->cursor, frames + n);
            if (!spillway_frames_for(hub, c, frames + n, got, ch)) break; /* doomed */
            n += got;
        }
    }
    qsort(frames, n, sizeof(*frames), spillway_frame_cmp_id);
    c->last = all_reset ? now : c->cursor;
    spillway_conn_replay(hub, c, frames, n, reset, now, reset_reason(m, c, spillway_id_max(now, issued)));
    free(reset);
    free(frames);
}

static void memory_publish(void *self, spillway_cmd_publish *cmd)
{
    spillway_memory *m = self;
    spillway_hub *hub = m->hub;
    spillway_frame *f = cmd->frame;
    spillway_channel *ch = spillway_chtab_get(hub, cmd->channel, cmd->chlen);

    hub->last = spillway_id_max(hub->last, f->id);
    STAT_ADD(hub, st_messages_in, 1);
    if (ch == NULL) {
        spillway_hub_log(hub, SW_LOG_MEMORY, "do_publish: cannot create channel (out of memory)");
        return;
    }
    if (hub->cfg.backlog_size > 0) spillway_lru_touch(m, ch);
    if (spillway_backlog_push(hub, ch, f) != 0)
        spillway_hub_log(hub, SW_LOG_MEMORY, "do_publish: backlog out of memory, message not kept");
    spillway_channel_fanout(hub, ch, f);
    spillway_channel_maybe_release(hub, ch);
}

/* Without subscribers a channel lives on while it keeps a backlog. */
static void memory_channel_unwanted(void *self, spillway_channel *ch)
{
    spillway_memory *m = self;
    if (ch->ring_len > 0) return;
    lru_unlink(m, ch);
    forget(m, ch);
    spillway_channel_drop(m->hub, ch);
}

/* A channel new to the table may have lived before and lost its backlog;
 * it assumes it lost everything up to the newest id evicted anywhere
 * (conservative: a resume from before that gets a reset). */
static void memory_channel_new(void *self, spillway_channel *ch)
{
    ch->trimmed = ((spillway_memory *)self)->evicted;
}

/* Under the queue lock: the id of the next publish, and the last one. */
static spillway_id memory_issue_id(void *self, uint64_t wall_ms)
{
    spillway_memory *m = self;
    m->gen_last = spillway_id_next(m->gen_last, wall_ms);
    return m->gen_last;
}

static spillway_id memory_issued(void *self)
{
    return ((spillway_memory *)self)->gen_last;
}

static uint64_t memory_next_timer(void *self)
{
    return ((spillway_memory *)self)->next_sweep_ms;
}

static void memory_timers(void *self)
{
    spillway_memory *m = self;
    if (m->hub->now < m->next_sweep_ms) return;
    spillway_backlog_sweep(m);
    m->next_sweep_ms = m->hub->now + SWEEP_INTERVAL_MS;
}

static void memory_free(void *self)
{
    free(self);
}

static size_t memory_memsize(const void *self)
{
    SW_UNUSED(self);
    return sizeof(spillway_memory);
}

static const spillway_backend_ops memory_ops = {
    .name = "memory",
    .join = memory_join,
    .publish = memory_publish,
    .issue_id = memory_issue_id,
    .issued = memory_issued,
    .channel_new = memory_channel_new,
    .channel_unwanted = memory_channel_unwanted,
    .next_timer = memory_next_timer,
    .timers = memory_timers,
    .free = memory_free,
    .memsize = memory_memsize,
};

int spillway_memory_backend_new(spillway_hub *hub, char *err, size_t errlen)
{
    spillway_memory *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        if (err != NULL && errlen > 0) snprintf(err, errlen, "spillway_memory_backend_new: out of memory");
        return -ENOMEM;
    }
    m->hub = hub;
    /* Every id this backend issues is above origin (the hub's start); a
     * cursor below it comes from before this process and gets a reset. */
    m->origin = hub->start;
    m->gen_last = m->origin;
    m->next_sweep_ms = hub->now + SWEEP_INTERVAL_MS;
    hub->backend.ops = &memory_ops;
    hub->backend.self = m;
    return 0;
}
