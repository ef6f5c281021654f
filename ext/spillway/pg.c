/*
 * The PostgreSQL backend of a hub (backend.h): one connection per process
 * (pg_link.c), LISTENing on the namespace's channel and running the reads.
 * Every publish of the namespace notifies every process, in id order, with
 * ids whose second part counts publishes without holes (pg_sql.c), so the
 * hub knows when it missed one. What it does:
 *
 *   - On every connect, after LISTEN, a read positions the hub: where the
 *     namespace stands and, after a dropped connection, every message of
 *     the channels with streams after the last one delivered (gap repair),
 *     with resets where the table no longer reaches back. Notifications
 *     that come meanwhile are held and follow, duplicates dropped by id.
 *   - A notification whose n is not the next one (missed, or the tables
 *     were recreated) makes the same read from hub->last.
 *   - A notification without its body (over the 8000-byte payload limit)
 *     reads its row; later notifications wait for it, so order holds. A row
 *     trimmed before it could be read is a reset for its channel's streams.
 *
 * docs/design.md, "PostgreSQL", says why this is exact.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "hub_internal.h"

#ifndef SPILLWAY_HAVE_LIBPQ

int spillway_pg_backend_new(spillway_hub *hub, char *err, size_t errlen)
{
    SW_UNUSED(hub);
    snprintf(err, errlen, "Spillway was built without libpq, so it has no PostgreSQL backend: install libpq "
                          "(Debian/Ubuntu: apt-get install libpq-dev) and reinstall the gem");
    return -ENOTSUP;
}

#else

#include <endian.h>

#include "pg_internal.h"

/* A read that positions the hub (at connect, or after a gap), over the
 * channels that had streams when it was sent. */
struct sync_req {
    uint32_t nch;
    char **names;
};

static void drain(spillway_hub *hub);

static void note_free(struct pg_note *n)
{
    spillway_frame_unref(n->f);
    free(n);
}

static void pending_clear(spillway_pg *pg)
{
    while (pg->head != NULL) {
        struct pg_note *n = pg->head;
        pg->head = n->next;
        note_free(n);
    }
    pg->tail = NULL;
    pg->npending = 0;
}

static void pending_pop(spillway_pg *pg)
{
    struct pg_note *n = pg->head;
    pg->head = n->next;
    if (pg->head == NULL) pg->tail = NULL;
    pg->npending--;
    note_free(n);
}

/* ---- resets for live streams ------------------------------------------- */

/* Every live stream on a marked channel (ch->mark) gets a reset for those of
 * its channels; joining streams are left alone (their own read reports
 * their own resets). Clears the marks. */
static void reset_marked(spillway_hub *hub, spillway_id now, const char *reason)
{
    for (spillway_conn *c = hub->streams; c != NULL; c = c->anext) {
        bool any = false, *reset;
        if (c->flags & (SW_CF_JOINING | SW_CF_DOOMED)) continue;
        for (uint32_t i = 0; i < c->nmem; i++) any |= c->mem[i].ch->mark != 0;
        if (!any) continue;
        reset = malloc(c->nmem * sizeof(*reset));
        if (reset == NULL) {
            spillway_conn_doom(hub, c, false);
            continue;
        }
        for (uint32_t i = 0; i < c->nmem; i++) reset[i] = c->mem[i].ch->mark != 0;
        spillway_conn_send_reset(hub, c, reset, now, reason);
        free(reset);
    }
    for (uint32_t b = 0; b < hub->chans.nbuckets; b++)
        for (spillway_channel *ch = hub->chans.buckets[b]; ch != NULL; ch = ch->hnext) ch->mark = 0;
}

static void deliver(spillway_hub *hub, spillway_channel *ch, spillway_frame *f)
{
    STAT_ADD(hub, st_messages_in, 1);
    STAT_ADD(hub, st_redis_messages, 1);
    spillway_channel_fanout(hub, ch, f);
}

/* ---- the position read ------------------------------------------------- */

static void sync_free(struct sync_req *s)
{
    for (uint32_t i = 0; i < s->nch; i++) free(s->names[i]);
    free(s->names);
    free(s);
}

/* The answer's messages go out in id order, then its resets, at its
 * position; hub->last moves there, and the held notifications follow. */
static void sync_apply(spillway_hub *hub, struct sync_req *s, pg_answer *a)
{
    spillway_pg *pg = PG(hub);
    bool any_reset = false;
    for (size_t i = 0; i < a->n; i++) {
        const char *name = s->names[a->idx[i]];
        spillway_channel *ch = spillway_chtab_find(&hub->chans, name, strlen(name));
        if (ch != NULL) deliver(hub, ch, a->frames[i]);
    }
    for (uint32_t i = 0; i < s->nch; i++) {
        spillway_channel *ch;
        if (!a->reset[i]) continue;
        ch = spillway_chtab_find(&hub->chans, s->names[i], strlen(s->names[i]));
        if (ch != NULL) ch->mark = 1;
        any_reset = true;
    }
    if (any_reset)
        reset_marked(hub, spillway_id_max(a->now, hub->last),
                     a->all_reset ? "PostgreSQL's history no longer reaches back to what this process last saw "
                                    "(the tables were recreated or truncated)"
                                  : "the backlog no longer reaches back to what this process last saw");
    hub->last = spillway_id_max(hub->last, a->now);
    pg->last_n = a->now.seq;
    pg->positioned = true;
}

static void on_sync(spillway_hub *hub, spillway_pg_req *q, const PGresult *res)
{
    spillway_pg *pg = PG(hub);
    struct sync_req *s = q->privdata;
    pg_answer a;
    const char *why = NULL;
    char msg[300];

    if (res == NULL) { /* the connection dropped: on_lost plans the next read */
        sync_free(s);
        return;
    }
    if (spillway_pg_parse_answer(res, s->nch, &a, &why) != 0) {
        spillway_pg_error_text(res, msg, sizeof(msg));
        spillway_hub_log(hub, SW_LOG_REPAIR, "PostgreSQL position read failed: %s (%s); reconnecting",
                         PQresultStatus(res) == PGRES_TUPLES_OK ? why : msg, why);
        sync_free(s);
        spillway_pglink_drop(hub, &pg->link, "the position read failed");
        return;
    }
    if (pg->need_repair) STAT_ADD(hub, st_gap_repairs, 1);
    sync_apply(hub, s, &a);
    spillway_pg_answer_free(&a);
    sync_free(s);
    pg->need_repair = false;
    pg->blocked = false;
    drain(hub);
}

/* Sends the read from `from` over every channel with streams (none: only
 * the position). Notifications wait until it answers. */
static void send_sync(spillway_hub *hub, spillway_id from, bool with_channels)
{
    spillway_pg *pg = PG(hub);
    struct sync_req *s = calloc(1, sizeof(*s));
    spillway_pg_req *q = spillway_pglink_req(on_sync, s, pg->read_sql);
    uint32_t n = 0;
    size_t *lens = NULL;
    char *arr = NULL, ms[24], seq[24], ttl[16];
    bool bad = s == NULL || q == NULL;

    if (!bad && with_channels) {
        s->names = calloc(hub->chans.count ? hub->chans.count : 1, sizeof(*s->names));
        lens = calloc(hub->chans.count ? hub->chans.count : 1, sizeof(*lens));
        bad = s->names == NULL || lens == NULL;
        for (uint32_t b = 0; !bad && b < hub->chans.nbuckets; b++)
            for (spillway_channel *ch = hub->chans.buckets[b]; !bad && ch != NULL; ch = ch->hnext) {
                if (ch->nsubs == 0) continue;
                lens[n] = ch->namelen;
                bad = (s->names[n++] = strndup(ch->name, ch->namelen)) == NULL;
                s->nch = n;
            }
    }
    if (!bad) bad = (arr = spillway_pg_array((const char *const *)s->names, lens, s->nch)) == NULL;
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)from.ms);
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)from.seq);
    snprintf(ttl, sizeof(ttl), "%u", hub->cfg.pg.backlog_ttl_s);
    if (!bad)
        bad = spillway_pglink_param(q, arr, strlen(arr), false) || spillway_pglink_param(q, ms, strlen(ms), false) ||
              spillway_pglink_param(q, seq, strlen(seq), false) || spillway_pglink_param(q, ttl, strlen(ttl), false);
    free(arr);
    free(lens);
    if (bad) {
        if (s != NULL) sync_free(s);
        spillway_pg_req_free(q);
        spillway_hub_log(hub, SW_LOG_MEMORY, "PostgreSQL position read: out of memory; reconnecting");
        spillway_pglink_drop(hub, &pg->link, "out of memory");
        return;
    }
    pg->blocked = true;
    pg->need_gap = false;
    spillway_pglink_queue(hub, &pg->link, q);
}

/* ---- a row too big for its notification -------------------------------- */

static void on_fetch(spillway_hub *hub, spillway_pg_req *q, const PGresult *res)
{
    spillway_pg *pg = PG(hub);
    struct pg_note *n = pg->head;
    SW_UNUSED(q);
    if (res == NULL) return; /* lost: the repair after the reconnect reads it */
    if (n == NULL) return;
    pg->blocked = false;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char msg[300];
        spillway_pg_error_text(res, msg, sizeof(msg));
        spillway_hub_log(hub, SW_LOG_PG_LINK, "PostgreSQL refused to read a message: %s; reconnecting", msg);
        spillway_pglink_drop(hub, &pg->link, "a message could not be read");
        return;
    }
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
        n->f = spillway_pg_frame(n->id, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
        if (n->f == NULL) spillway_hub_log(hub, SW_LOG_PROTOCOL, "PostgreSQL message %llu-%llu: malformed or out of memory",
                                           (unsigned long long)n->id.ms, (unsigned long long)n->id.seq);
    }
    if (n->f == NULL) {
        /* Trimmed before it could be read: its channel's streams missed it. */
        spillway_channel *ch = spillway_chtab_find(&hub->chans, n->channel, n->chlen);
        if (ch != NULL) ch->mark = 1;
        reset_marked(hub, n->id, "a message too big for its notification was trimmed before it could be read");
        hub->last = spillway_id_max(hub->last, n->id);
        pg->last_n = n->id.seq;
        pending_pop(pg);
    }
    drain(hub);
}

static void send_fetch(spillway_hub *hub, struct pg_note *n)
{
    spillway_pg *pg = PG(hub);
    spillway_pg_req *q = spillway_pglink_req(on_fetch, NULL, pg->fetch_sql);
    char ms[24], seq[24];
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)n->id.ms);
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)n->id.seq);
    if (q == NULL || spillway_pglink_param(q, ms, strlen(ms), false) || spillway_pglink_param(q, seq, strlen(seq), false)) {
        spillway_pg_req_free(q);
        spillway_pglink_drop(hub, &pg->link, "out of memory");
        return;
    }
    pg->blocked = true;
    spillway_pglink_queue(hub, &pg->link, q);
}

/* ---- notifications ------------------------------------------------------ */

/* The held notifications, in order, as far as they can go now. */
static void drain(spillway_hub *hub)
{
    spillway_pg *pg = PG(hub);
    while (!pg->blocked && pg->positioned && pg->link.state == SW_PG_READY) {
        struct pg_note *n = pg->head;
        spillway_channel *ch;
        if (pg->need_gap) {
            send_sync(hub, hub->last, true);
            return;
        }
        if (n == NULL) return;
        if (spillway_id_cmp(n->id, hub->last) <= 0) {
            pending_pop(pg); /* the read before it had it */
            continue;
        }
        if (n->id.seq != pg->last_n + 1) {
            pg->need_gap = true; /* one was missed, or the counter started afresh */
            continue;
        }
        ch = spillway_chtab_find(&hub->chans, n->channel, n->chlen);
        if (ch != NULL && ch->nsubs > 0) {
            if (n->f == NULL) {
                send_fetch(hub, n);
                return;
            }
            deliver(hub, ch, n->f);
        }
        hub->last = n->id;
        pg->last_n = n->id.seq;
        pending_pop(pg);
    }
}

static void on_notify(spillway_hub *hub, const PGnotify *pn)
{
    spillway_pg *pg = PG(hub);
    spillway_pg_note p;
    struct pg_note *n;
    size_t len = pn->extra ? strlen(pn->extra) : 0;

    if (strcmp(pn->relname, hub->cfg.pg.ns) != 0) return;
    if (spillway_pg_parse_note(pn->extra, len, &p) != 0 || p.chlen > SPILLWAY_MAX_CHANNEL_LEN) goto bad;
    n = calloc(1, sizeof(*n) + p.chlen + 1);
    if (n == NULL || spillway_id_parse(p.id, p.idlen, &n->id) != 0) {
        free(n);
        goto bad;
    }
    n->chlen = (uint16_t)p.chlen;
    memcpy(n->channel, p.channel, p.chlen);
    if (p.has_body && (n->f = spillway_pg_frame(n->id, p.body, p.bodylen)) == NULL) {
        free(n);
        goto bad;
    }
    if (pg->npending >= PG_PENDING_MAX) {
        /* Too many waiting: they are read back from the table instead (all
         * but the first, which a read in flight may be for). */
        note_free(n);
        while (pg->head != NULL && pg->head->next != NULL) {
            struct pg_note *second = pg->head->next;
            pg->head->next = second->next;
            note_free(second);
            pg->npending--;
        }
        pg->tail = pg->head;
        pg->need_gap = true;
        return;
    }
    if (pg->tail != NULL) pg->tail->next = n;
    else pg->head = n;
    pg->tail = n;
    pg->npending++;
    drain(hub);
    return;
bad:
    /* Only the publish function notifies here. Whatever it was, a message
     * it may have stood for is read back from the table. */
    spillway_hub_log(hub, SW_LOG_PROTOCOL, "PostgreSQL notification on %s that is not Spillway's (%.60s): "
                     "reading the table from the last message instead", pn->relname, pn->extra ? pn->extra : "");
    pg->need_gap = true;
    drain(hub);
}

/* ---- the link's hooks --------------------------------------------------- */

static void on_ready(spillway_hub *hub)
{
    spillway_pg *pg = PG(hub);
    /* The first connect only positions the hub; a reconnect also repairs
     * the gap from where the hub had delivered everything. */
    send_sync(hub, pg->need_repair ? pg->repair_cursor : hub->last, pg->need_repair);
    spillway_pg_join_all_ready(hub);
}

static void on_lost(spillway_hub *hub, bool was_ready)
{
    spillway_pg *pg = PG(hub);
    SW_UNUSED(was_ready);
    if (pg->positioned || pg->need_repair) {
        if (!pg->need_repair) pg->repair_cursor = hub->last;
        pg->need_repair = true;
    }
    pending_clear(pg); /* the repair reads them back */
    pg->positioned = false;
    pg->blocked = false;
    pg->need_gap = false;
}

static const spillway_pglink_hooks link_hooks = {
    .on_ready = on_ready,
    .on_notify = on_notify,
    .on_lost = on_lost,
};

/* ---- the operations ----------------------------------------------------- */

static void op_join(void *self, spillway_conn *c)
{
    spillway_pg_join(((spillway_pg *)self)->hub, c);
}

static void op_channel_unwanted(void *self, spillway_channel *ch)
{
    spillway_channel_drop(((spillway_pg *)self)->hub, ch);
}

static void op_on_event(void *self, spillway_handle *h, uint32_t events)
{
    spillway_pg *pg = self;
    if (h == &pg->link.h) spillway_pglink_on_event(pg->hub, &pg->link, events);
}

static uint64_t op_next_timer(void *self)
{
    spillway_pg *pg = self;
    uint64_t next = SW_MIN(pg->hub->now + 1000, spillway_pglink_next_timer(&pg->link));
    if (pg->resume_retry_at != 0) next = SW_MIN(next, pg->resume_retry_at);
    return next;
}

static void op_timers(void *self)
{
    spillway_pg *pg = self;
    spillway_pglink_timers(pg->hub, &pg->link);
    if (pg->resume_retry_at != 0 && pg->hub->now >= pg->resume_retry_at) {
        pg->resume_retry_at = 0;
        spillway_pg_join_all_ready(pg->hub);
    }
}

static void op_stop(void *self)
{
    spillway_pg *pg = self;
    spillway_pglink_teardown(pg->hub, &pg->link);
    pending_clear(pg);
}

static void op_abandon(void *self)
{
    spillway_pglink_abandon(&((spillway_pg *)self)->link);
}

static void op_free(void *self)
{
    spillway_pg *pg = self;
    op_stop(pg);
    free(pg->setup_sql);
    free(pg->read_sql);
    free(pg->fetch_sql);
    pg->hub->backend.self = NULL;
    free(pg);
}

static size_t op_memsize(const void *self)
{
    const spillway_pg *pg = self;
    return sizeof(*pg) + (size_t)pg->npending * sizeof(struct pg_note);
}

static const spillway_backend_ops pg_ops = {
    .name = "PostgreSQL",
    .join = op_join,
    .channel_unwanted = op_channel_unwanted,
    .on_event = op_on_event,
    .next_timer = op_next_timer,
    .timers = op_timers,
    .stop = op_stop,
    .abandon = op_abandon,
    .free = op_free,
    .memsize = op_memsize,
};

/* The setup script and the LISTEN, as one string. */
static char *setup_and_listen(const char *ns)
{
    char *setup = spillway_pg_expand(spillway_pg_setup_sql, ns);
    char *listen = spillway_pg_expand(spillway_pg_listen_sql, ns);
    char *both = NULL;
    if (setup != NULL && listen != NULL && (both = malloc(strlen(setup) + strlen(listen) + 2)) != NULL)
        sprintf(both, "%s%s;", setup, listen);
    free(setup);
    free(listen);
    return both;
}

int spillway_pg_backend_new(spillway_hub *hub, char *err, size_t errlen)
{
    const char *ns = hub->cfg.pg.ns;
    spillway_pg *pg;
    if (!spillway_pg_ns_ok(ns)) {
        snprintf(err, errlen, "spillway_pg_backend_new: the namespace %.80s cannot name a PostgreSQL schema "
                              "(1 to %d of A-Z a-z 0-9 _ - . : @ / = +)", ns, SPILLWAY_PG_NS_MAX);
        return -EINVAL;
    }
    pg = calloc(1, sizeof(*pg));
    if (pg != NULL) {
        pg->setup_sql = setup_and_listen(ns);
        pg->read_sql = spillway_pg_expand(spillway_pg_read_sql, ns);
        pg->fetch_sql = spillway_pg_expand(spillway_pg_fetch_sql, ns);
    }
    if (pg == NULL || pg->setup_sql == NULL || pg->read_sql == NULL || pg->fetch_sql == NULL) {
        if (pg != NULL) {
            free(pg->setup_sql);
            free(pg->read_sql);
            free(pg->fetch_sql);
        }
        free(pg);
        snprintf(err, errlen, "spillway_pg_backend_new: out of memory");
        return -ENOMEM;
    }
    pg->hub = hub;
    spillway_pglink_init(&pg->link, hub->cfg.pg.conninfo, pg->setup_sql, hub->cfg.pg.connect_timeout_ms, &link_hooks);
    /* PostgreSQL issues the ids: no local clock may seed the position. */
    hub->last = (spillway_id){0, 0};
    hub->backend.ops = &pg_ops;
    hub->backend.self = pg;
    return 0;
}

#endif
