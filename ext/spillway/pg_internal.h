/*
 * The PostgreSQL backend's private header: its state and what its files
 * call in each other. Layered like the core:
 *
 *   pg.c        lifecycle, the backend's table, notifications, the reads
 *               that position the hub and repair gaps   -> pg_join.c, pg_link.c
 *   pg_join.c   joining streams (their resume reads) and the parsing of
 *               every read's answer                     -> pg_link.c
 *   pg_link.c   the libpq connection (pg_link.h)
 *   pg_sql.c    the SQL (pg_sql.h)
 *
 * docs/design.md, "PostgreSQL", says why it works the way it does.
 */
#ifndef SPILLWAY_PG_INTERNAL_H
#define SPILLWAY_PG_INTERNAL_H

#include "hub_internal.h"
#include "pg_link.h"
#include "pg_sql.h"

/* Notifications held while a read they wait for is in flight; beyond, they
 * are dropped and read back from the table instead. */
#define PG_PENDING_MAX 200000u

#define PG_RETRY_MIN_MS 50u
#define PG_RETRY_MAX_MS 2000u

/* A notification, in the order they came. */
struct pg_note {
    struct pg_note *next;
    spillway_id id;
    spillway_frame *f; /* NULL: the payload had no room for it, read the row */
    uint16_t chlen;
    char channel[];
};

typedef struct spillway_pg {
    spillway_hub *hub;
    spillway_pglink link;
    char *setup_sql, *read_sql, *fetch_sql; /* expanded for the namespace */
    /* n of hub->last: the next notification must be n + 1, or some were
     * missed (a gap read). Valid once positioned. */
    uint64_t last_n;
    bool positioned;  /* a position read answered on this connection */
    bool blocked;     /* a read the notifications wait for is in flight */
    bool need_repair; /* the LISTEN connection dropped: read from repair_cursor */
    bool need_gap;    /* notifications were dropped or missed: read from hub->last */
    spillway_id repair_cursor;
    struct pg_note *head, *tail;
    uint32_t npending;
    uint64_t resume_retry_at; /* after PostgreSQL refused a resume read */
    uint32_t resume_backoff_ms;
} spillway_pg;

static inline spillway_pg *PG(spillway_hub *hub)
{
    return hub->backend.self;
}

/* What a read (pg_sql.h, spillway_pg_read_sql) answered, over nch
 * channels: where the namespace stands, whether nothing can be told, the
 * channels without a way back, and the frames in id order (one reference
 * each, idx: the channel of each). */
typedef struct pg_answer {
    spillway_id now;
    bool all_reset;
    bool *reset; /* nch entries */
    spillway_frame **frames;
    uint32_t *idx;
    size_t n;
} pg_answer;

/* pg_join.c */
/* 0, or -1 with why set (a malformed answer, out of memory). */
int spillway_pg_parse_answer(const PGresult *res, uint32_t nch, pg_answer *a, const char **why);
void spillway_pg_answer_free(pg_answer *a);
/* The frame "id: <id>\n<body>" (its targets line taken out); NULL when out
 * of memory or the targets line is malformed. */
spillway_frame *spillway_pg_frame(spillway_id id, const char *body, size_t len);
/* The text form of the error in res, on one line. */
void spillway_pg_error_text(const PGresult *res, char *buf, size_t n);
void spillway_pg_join(spillway_hub *hub, spillway_conn *c);
void spillway_pg_join_all_ready(spillway_hub *hub);

#endif
