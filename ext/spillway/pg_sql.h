/*
 * The SQL of the PostgreSQL backend (pg_sql.c): the schema and functions
 * both sides create on connect, and the statements they run. Plain text,
 * no libpq: the reactor's connection (pg.c) and the publisher
 * (pg_publisher.c) build their statements here, and spec/c/test_pg_sql.c
 * tests the expansion without a server.
 *
 * A namespace is one schema (its name, quoted) and one LISTEN channel (the
 * same name): tables meta (the id counter, one row), messages (the
 * backlog), channels (each channel's newest id), keys (idempotency keys);
 * functions publish, read, cursor. docs/design.md, "PostgreSQL", says why.
 */
#ifndef SPILLWAY_PG_SQL_H
#define SPILLWAY_PG_SQL_H

#include <stdbool.h>
#include <stddef.h>

/* The longest namespace: a PostgreSQL identifier (NAMEDATALEN - 1). */
#define SPILLWAY_PG_NS_MAX 63

/* Whether ns can name the schema and the channel: 1..63 bytes of
 * A-Z a-z 0-9 _ - . : @ / = + (what Spillway allows in a namespace: nothing
 * that needs escaping inside a quoted identifier or a string literal). */
bool spillway_pg_ns_ok(const char *ns);

/* The template with every "@S" replaced by the quoted schema ("ns") and
 * every "@N" by the bare name. The caller frees the result; NULL when out
 * of memory or ns is not spillway_pg_ns_ok. */
char *spillway_pg_expand(const char *tmpl, const char *ns);

/* Templates (expand them with spillway_pg_expand). */
/* Creates the schema, the tables and the functions (idempotent; several
 * processes may run it at once: an advisory lock orders them). */
extern const char spillway_pg_setup_sql[];
/* LISTEN on the namespace's channel. */
extern const char spillway_pg_listen_sql[];
/* $1 channel, $2 body (binary), $3 key or NULL, $4 key ttl ms,
 * $5 backlog size, $6 backlog ttl s -> one row, the id as text. */
extern const char spillway_pg_publish_sql[];
/* $1 channels (a text[] literal), $2 cursor ms, $3 cursor seq, $4 backlog
 * ttl s -> rows (idx, ms, n, body): first (-1, newest id) where the
 * namespace stands; (-2, NULL...) when nothing can be told (a cursor from
 * the future, from before the namespace's history, no history at all);
 * (i, NULL...) for each channel i whose backlog does not reach back to the
 * cursor; then (i, ms, n, body) for every message after the cursor, in id
 * order. */
extern const char spillway_pg_read_sql[];
/* $1 ms, $2 seq -> the body of that message, or no row. */
extern const char spillway_pg_fetch_sql[];
/* -> the namespace's newest id (created when it has none). */
extern const char spillway_pg_cursor_sql[];
/* $1 channel -> the id of its newest retained message, or no row. */
extern const char spillway_pg_last_id_sql[];

/* The text[] literal of n channel names ({"a","b"}): names hold no '"'
 * or '\\' (spillway_channel_name_ok). The caller frees it; NULL when out
 * of memory. */
char *spillway_pg_array(const char *const *names, const size_t *lens, size_t n);

/* A NOTIFY payload: "<id>\n<channel>[\n<body>]". Fills the parts (pointers
 * into payload) and returns 0, or -1 when it is not of that shape. has_body
 * false: the body did not fit the payload (or held a NUL), the row must be
 * read. */
typedef struct spillway_pg_note {
    const char *id, *channel, *body;
    size_t idlen, chlen, bodylen;
    bool has_body;
} spillway_pg_note;
int spillway_pg_parse_note(const char *payload, size_t len, spillway_pg_note *out);

#endif
