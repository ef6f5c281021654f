/*
 * The PostgreSQL backend's joins: a stream with a cursor is attached at
 * once (head written, heartbeats running) and holds live frames while its
 * own read (spillway_pg_read_sql over its channels, after its cursor) is
 * answered; then it gets what it missed, its resets, and what it held,
 * duplicates dropped by id. The read's snapshot is taken after every
 * notification the hub has processed, so the held frames and the read
 * overlap rather than leave a hole. Also the parsing of every read's answer.
 */
#ifdef SPILLWAY_HAVE_LIBPQ

#include <endian.h>
#include <stdlib.h>
#include <string.h>

#include "frames.h"
#include "pg_internal.h"

/* ---- answers ------------------------------------------------------------ */

static bool get_i64(const PGresult *res, int row, int col, uint64_t *out)
{
    uint64_t v;
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8) return false;
    memcpy(&v, PQgetvalue(res, row, col), 8);
    *out = be64toh(v);
    return true;
}

static bool get_i32(const PGresult *res, int row, int col, int32_t *out)
{
    uint32_t v;
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 4) return false;
    memcpy(&v, PQgetvalue(res, row, col), 4);
    *out = (int32_t)be32toh(v);
    return true;
}

spillway_frame *spillway_pg_frame(spillway_id id, const char *body, size_t len)
{
    char text[SPILLWAY_ID_TEXT_MAX];
    size_t idlen = spillway_id_format(id, text);
    const char *why;
    spillway_frame *f = spillway_frame_new(4 + idlen + 1 + len);
    if (f == NULL) return NULL;
    memcpy(f->data, "id: ", 4);
    memcpy(f->data + 4, text, idlen);
    f->data[4 + idlen] = '\n';
    if (len > 0) memcpy(f->data + 5 + idlen, body, len);
    f->id = id;
    if (spillway_targets_take(f, &f->targets, &why) != 0) {
        spillway_frame_unref(f);
        return NULL;
    }
    return f;
}

void spillway_pg_error_text(const PGresult *res, char *buf, size_t n)
{
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    snprintf(buf, n, "%s", msg && *msg ? msg : "no answer");
    for (char *p = buf; *p; p++)
        if (*p == '\n') *p = ' ';
}

void spillway_pg_answer_free(pg_answer *a)
{
    for (size_t i = 0; i < a->n; i++) spillway_frame_unref(a->frames[i]);
    free(a->frames);
    free(a->idx);
    free(a->reset);
    memset(a, 0, sizeof(*a));
}

/* One row of the answer: the position, a reset, or a message. */
static int answer_row(const PGresult *res, int row, uint32_t nch, pg_answer *a, const char **why)
{
    int32_t idx;
    uint64_t ms, n;
    if (!get_i32(res, row, 0, &idx)) return (*why = "a row without its channel"), -1;
    if (idx == -1 || idx >= 0) {
        bool has_id = get_i64(res, row, 1, &ms) && get_i64(res, row, 2, &n);
        if (idx == -1) {
            if (!has_id) return (*why = "a position without an id"), -1;
            a->now = (spillway_id){ms, n};
            return 0;
        }
        if ((uint32_t)idx >= nch) return (*why = "a row for a channel that was not asked for"), -1;
        if (!has_id) {
            a->reset[idx] = true;
            return 0;
        }
        a->frames[a->n] = spillway_pg_frame((spillway_id){ms, n}, PQgetvalue(res, row, 3),
                                            (size_t)PQgetlength(res, row, 3));
        if (a->frames[a->n] == NULL) return (*why = "out of memory or a malformed targets line"), -1;
        a->idx[a->n++] = (uint32_t)idx;
        return 0;
    }
    if (idx == -2) {
        a->all_reset = true;
        return 0;
    }
    return (*why = "a row of an unknown kind"), -1;
}

int spillway_pg_parse_answer(const PGresult *res, uint32_t nch, pg_answer *a, const char **why)
{
    int rows = PQntuples(res);
    memset(a, 0, sizeof(*a));
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != 4 || rows < 1)
        return (*why = "not the read function's answer"), -1;
    a->reset = calloc(nch ? nch : 1, sizeof(*a->reset));
    a->frames = malloc((size_t)rows * sizeof(*a->frames));
    a->idx = malloc((size_t)rows * sizeof(*a->idx));
    if (a->reset == NULL || a->frames == NULL || a->idx == NULL) {
        spillway_pg_answer_free(a);
        return (*why = "out of memory"), -1;
    }
    for (int i = 0; i < rows; i++) {
        if (answer_row(res, i, nch, a, why) != 0) {
            spillway_pg_answer_free(a);
            return -1;
        }
    }
    if (a->all_reset)
        for (uint32_t i = 0; i < nch; i++) a->reset[i] = true;
    return 0;
}

/* ---- a stream's own read ------------------------------------------------ */

/* The read that pointed at the stream is over. */
static bool conn_done(spillway_hub *hub, spillway_conn *c)
{
    c->inflight--;
    c->flags &= ~SW_CF_RESUME_SENT;
    if ((c->flags & SW_CF_ZOMBIE) && c->inflight == 0) {
        c->flags &= ~SW_CF_ZOMBIE;
        spillway_conn_release(hub, c);
        return false;
    }
    return !(c->flags & (SW_CF_ZOMBIE | SW_CF_DOOMED));
}

static void resume_answered(spillway_hub *hub, spillway_conn *c, const PGresult *res)
{
    pg_answer a;
    spillway_frame **out;
    const char *why = NULL;
    if (spillway_pg_parse_answer(res, c->nmem, &a, &why) != 0) {
        spillway_hub_log(hub, SW_LOG_RESUME, "PostgreSQL resume read: %s; the stream is closed", why);
        spillway_conn_doom(hub, c, false);
        return;
    }
    /* The frames as this stream takes them (with their channel named when
     * it asked: borrowed copies that live as long as the answer's frames). */
    out = malloc((a.n ? a.n : 1) * sizeof(*out));
    if (out == NULL) {
        spillway_pg_answer_free(&a);
        spillway_conn_doom(hub, c, false);
        return;
    }
    for (size_t i = 0; i < a.n; i++) {
        out[i] = a.frames[i];
        if (!spillway_frames_for(hub, c, out + i, 1, c->mem[a.idx[i]].ch)) {
            free(out);
            spillway_pg_answer_free(&a);
            return; /* doomed */
        }
    }
    /* A cursor from the future must not hold back live frames. */
    c->last = a.all_reset && spillway_id_cmp(c->cursor, hub->last) > 0 ? hub->last : c->cursor;
    spillway_conn_replay(hub, c, out, a.n, a.reset, a.now,
                         a.all_reset ? "the Last-Event-ID is outside the namespace's history (newer than any id, "
                                       "or from before the tables were created)"
                                     : "the backlog no longer reaches back to the Last-Event-ID");
    free(out);
    spillway_pg_answer_free(&a);
}

static void on_resume(spillway_hub *hub, spillway_pg_req *q, const PGresult *res)
{
    spillway_conn *c = q->privdata;
    spillway_pg *pg = PG(hub);
    if (!conn_done(hub, c) || res == NULL) return; /* gone, or sent again once the link is back */
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char msg[300];
        spillway_pg_error_text(res, msg, sizeof(msg));
        spillway_hub_log(hub, SW_LOG_RESUME, "PostgreSQL refused a resume read: %s (tried again)", msg);
        pg->resume_backoff_ms = pg->resume_backoff_ms == 0 ? PG_RETRY_MIN_MS
                                                           : SW_MIN(pg->resume_backoff_ms * 2, PG_RETRY_MAX_MS);
        pg->resume_retry_at = hub->now + pg->resume_backoff_ms;
        return;
    }
    pg->resume_backoff_ms = 0;
    resume_answered(hub, c, res);
}

static void send_resume(spillway_hub *hub, spillway_conn *c)
{
    spillway_pg *pg = PG(hub);
    const char **names = malloc((c->nmem ? c->nmem : 1) * sizeof(*names));
    size_t *lens = malloc((c->nmem ? c->nmem : 1) * sizeof(*lens));
    spillway_pg_req *q = spillway_pglink_req(on_resume, c, pg->read_sql);
    char *arr = NULL, ms[24], seq[24], ttl[16];
    int bad = names == NULL || lens == NULL || q == NULL;

    for (uint32_t i = 0; !bad && i < c->nmem; i++) {
        names[i] = c->mem[i].ch->name;
        lens[i] = c->mem[i].ch->namelen;
    }
    if (!bad) bad = (arr = spillway_pg_array(names, lens, c->nmem)) == NULL;
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)c->cursor.ms);
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)c->cursor.seq);
    snprintf(ttl, sizeof(ttl), "%u", hub->cfg.pg.backlog_ttl_s);
    if (!bad)
        bad = spillway_pglink_param(q, arr, strlen(arr), false) || spillway_pglink_param(q, ms, strlen(ms), false) ||
              spillway_pglink_param(q, seq, strlen(seq), false) || spillway_pglink_param(q, ttl, strlen(ttl), false);
    free(arr);
    free(names);
    free(lens);
    if (bad) {
        spillway_pg_req_free(q);
        spillway_hub_log(hub, SW_LOG_MEMORY, "PostgreSQL resume read: out of memory");
        spillway_conn_doom(hub, c, false);
        return;
    }
    c->inflight++;
    c->flags |= SW_CF_RESUME_SENT;
    spillway_pglink_queue(hub, &pg->link, q);
}

static void join_if_ready(spillway_hub *hub, spillway_conn *c)
{
    spillway_pg *pg = PG(hub);
    if (!(c->flags & SW_CF_JOINING) || (c->flags & (SW_CF_RESUME_SENT | SW_CF_DOOMED))) return;
    if (pg->link.state != SW_PG_READY || hub->now < pg->resume_retry_at) return;
    send_resume(hub, c);
}

void spillway_pg_join_all_ready(spillway_hub *hub)
{
    for (spillway_conn *c = hub->streams; c != NULL; c = c->anext) join_if_ready(hub, c);
}

void spillway_pg_join(spillway_hub *hub, spillway_conn *c)
{
    spillway_pg *pg = PG(hub);
    if (!c->has_cursor && (pg->blocked || !pg->positioned) && !spillway_id_is_zero(hub->last)) {
        /* The hub is repairing or reconnecting: what the table gets after
         * hub->last may never arrive live, so the stream reads it itself,
         * from there (after the repair's read: requests answer in order). */
        c->cursor = hub->last;
        c->cursor_ok = true;
    } else if (!c->has_cursor) {
        /* Every notification of the namespace reaches this process, so a
         * stream without a cursor is live at once from where the hub is. */
        c->last = hub->last;
        return;
    }
    c->flags |= SW_CF_JOINING;
    STAT_ADD(hub, st_joining, 1);
    if (c->flags & SW_CF_DOOMED) return;
    if (!c->cursor_ok) {
        bool *reset = malloc((c->nmem ? c->nmem : 1) * sizeof(*reset));
        if (reset == NULL) {
            spillway_conn_doom(hub, c, false);
            return;
        }
        for (uint32_t i = 0; i < c->nmem; i++) reset[i] = true;
        c->last = hub->last;
        spillway_conn_replay(hub, c, NULL, 0, reset, hub->last, "the Last-Event-ID is not an event id");
        free(reset);
        return;
    }
    join_if_ready(hub, c);
}

#endif
