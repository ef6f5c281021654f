/*
 * The PostgreSQL backend's SQL (pg_sql.h). Why it is shaped this way:
 *
 * - Ids. meta holds the namespace's newest id (ms, n): n counts every
 *   publish of the namespace without holes, ms is the server's clock, never
 *   going back. The id is "<ms>-<n>": strictly increasing, Spillway's id
 *   format, and a listener that sees n jump knows it missed a notification.
 * - Order. publish locks the meta row first (FOR UPDATE) and holds it to
 *   its commit, so publishes of a namespace commit one at a time: id order
 *   is commit order is NOTIFY order (the notification queue is filled at
 *   commit, in commit order). A sequence would not do: concurrent
 *   transactions commit its values out of order.
 * - Trims. Each message records the id of its channel's previous message
 *   (prev); if the first message after a cursor has a prev newer than the
 *   cursor, something between was trimmed: a reset. channels keeps each
 *   channel's newest id, so a truncated messages table shows too (newer
 *   than the cursor but no row). A channel whose last message is older than
 *   the TTL loses its rows and its channels row (ten per publish); a
 *   channel that starts afresh records "now minus the TTL" as prev, as the
 *   Redis scripts do.
 * - History. meta also records since, where its history starts: created
 *   from nothing (a new namespace, or the tables were lost), a cursor from
 *   before it gets a reset.
 * - NOTIFY. "<id>\n<channel>\n<body>" when it fits PostgreSQL's 8000 bytes
 *   (and the server speaks UTF-8 and the body holds no NUL); otherwise
 *   "<id>\n<channel>" and the listener reads the row.
 */
#include "pg_sql.h"

#include <stdlib.h>
#include <string.h>

/* Bumped whenever the SQL below changes: a setup then replaces the functions. */
#define SPILLWAY_PG_SCHEMA_VERSION "1"

bool spillway_pg_ns_ok(const char *ns)
{
    size_t n = ns ? strlen(ns) : 0;
    if (n == 0 || n > SPILLWAY_PG_NS_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = ns[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  strchr("_-.:@/=+", c) != NULL;
        if (!ok) return false;
    }
    return true;
}

char *spillway_pg_expand(const char *tmpl, const char *ns)
{
    size_t nslen, len = 0, cap;
    char *out;
    if (!spillway_pg_ns_ok(ns)) return NULL;
    nslen = strlen(ns);
    cap = strlen(tmpl) + 1;
    for (const char *p = tmpl; (p = strchr(p, '@')) != NULL; p++) cap += nslen + 2;
    out = malloc(cap);
    if (out == NULL) return NULL;
    for (const char *p = tmpl; *p != '\0'; p++) {
        if (p[0] == '@' && (p[1] == 'S' || p[1] == 'N')) {
            if (p[1] == 'S') out[len++] = '"';
            memcpy(out + len, ns, nslen);
            len += nslen;
            if (p[1] == 'S') out[len++] = '"';
            p++;
        } else {
            out[len++] = *p;
        }
    }
    out[len] = '\0';
    return out;
}

char *spillway_pg_array(const char *const *names, const size_t *lens, size_t n)
{
    size_t cap = 3, len = 0;
    char *out;
    for (size_t i = 0; i < n; i++) cap += lens[i] + 3;
    out = malloc(cap);
    if (out == NULL) return NULL;
    out[len++] = '{';
    for (size_t i = 0; i < n; i++) {
        if (i > 0) out[len++] = ',';
        out[len++] = '"';
        memcpy(out + len, names[i], lens[i]);
        len += lens[i];
        out[len++] = '"';
    }
    out[len++] = '}';
    out[len] = '\0';
    return out;
}

int spillway_pg_parse_note(const char *payload, size_t len, spillway_pg_note *out)
{
    const char *nl1 = memchr(payload, '\n', len), *nl2;
    if (nl1 == NULL || nl1 == payload) return -1;
    out->id = payload;
    out->idlen = (size_t)(nl1 - payload);
    out->channel = nl1 + 1;
    nl2 = memchr(out->channel, '\n', len - out->idlen - 1);
    out->has_body = nl2 != NULL;
    out->chlen = nl2 ? (size_t)(nl2 - out->channel) : len - out->idlen - 1;
    out->body = nl2 ? nl2 + 1 : NULL;
    out->bodylen = nl2 ? len - (size_t)(nl2 + 1 - payload) : 0;
    return out->chlen == 0 ? -1 : 0;
}

const char spillway_pg_listen_sql[] = "LISTEN @S";

const char spillway_pg_setup_sql[] =
    "SET client_min_messages = warning;\n"
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED;\n"
    /* One DO block: nothing happens when this version's functions are
     * there (DDL on the tables would take locks that deadlock with
     * publishes in flight), and creators are ordered by an advisory lock. */
    "DO $do$ DECLARE v int;\n"
    "BEGIN\n"
    "  IF to_regprocedure('@S.version()') IS NOT NULL THEN\n"
    "    EXECUTE 'SELECT @S.version()' INTO v;\n"
    "    IF v = " SPILLWAY_PG_SCHEMA_VERSION " THEN RETURN; END IF;\n"
    "  END IF;\n"
    "PERFORM pg_advisory_xact_lock(hashtext('spillway setup @N'));\n"
    "CREATE SCHEMA IF NOT EXISTS @S;\n"
    "CREATE TABLE IF NOT EXISTS @S.meta (one int PRIMARY KEY CHECK (one = 1), ms bigint NOT NULL,\n"
    "  n bigint NOT NULL, since_ms bigint NOT NULL, since_n bigint NOT NULL);\n"
    "CREATE TABLE IF NOT EXISTS @S.messages (n bigint PRIMARY KEY, ms bigint NOT NULL, channel text NOT NULL,\n"
    "  prev_ms bigint NOT NULL, prev_n bigint NOT NULL, body bytea NOT NULL);\n"
    "CREATE INDEX IF NOT EXISTS messages_channel ON @S.messages (channel, ms, n);\n"
    "CREATE TABLE IF NOT EXISTS @S.channels (name text PRIMARY KEY, ms bigint NOT NULL, n bigint NOT NULL);\n"
    "CREATE INDEX IF NOT EXISTS channels_ms ON @S.channels (ms);\n"
    "CREATE TABLE IF NOT EXISTS @S.keys (k text PRIMARY KEY, id text NOT NULL, expires bigint NOT NULL);\n"
    "CREATE INDEX IF NOT EXISTS keys_expires ON @S.keys (expires);\n"
    "CREATE OR REPLACE FUNCTION @S.now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS\n"
    "  $f$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $f$;\n"
    /* The meta row, locked to the end of the transaction; created (once:
     * the advisory lock orders creators) after the newest message left, or
     * now. */
    "CREATE OR REPLACE FUNCTION @S.meta_row() RETURNS @S.meta LANGUAGE plpgsql AS $f$\n"
    "DECLARE m @S.meta; t bigint := @S.now_ms();\n"
    "BEGIN\n"
    "  SELECT * INTO m FROM @S.meta x WHERE x.one = 1 FOR UPDATE;\n"
    "  IF FOUND THEN RETURN m; END IF;\n"
    "  PERFORM pg_advisory_xact_lock(hashtext('spillway meta @N'));\n"
    "  SELECT * INTO m FROM @S.meta x WHERE x.one = 1 FOR UPDATE;\n"
    "  IF FOUND THEN RETURN m; END IF;\n"
    "  SELECT 1, greatest(coalesce(max(x.ms), 0), t), coalesce(max(x.n), 0), 0, 0 INTO m FROM @S.messages x;\n"
    "  m.since_ms := m.ms; m.since_n := m.n;\n"
    "  INSERT INTO @S.meta VALUES (1, m.ms, m.n, m.since_ms, m.since_n);\n"
    "  RETURN m;\n"
    "END $f$;\n"
    "CREATE OR REPLACE FUNCTION @S.publish(p_channel text, p_body bytea, p_key text, p_key_ttl_ms bigint,\n"
    "  p_size int, p_ttl_s int) RETURNS text LANGUAGE plpgsql AS $f$\n"
    "DECLARE t bigint := @S.now_ms(); m @S.meta; v_id text; pm bigint := 0; pn bigint := 0;\n"
    "  payload text; c record;\n"
    "BEGIN\n"
    "  m := @S.meta_row();\n"
    "  IF p_key IS NOT NULL THEN\n"
    "    SELECT k.id INTO v_id FROM @S.keys k WHERE k.k = p_key AND k.expires > t;\n"
    "    IF FOUND THEN RETURN v_id; END IF;\n"
    "  END IF;\n"
    "  m.ms := greatest(m.ms, t); m.n := m.n + 1;\n"
    "  UPDATE @S.meta x SET ms = m.ms, n = m.n WHERE x.one = 1;\n"
    "  v_id := m.ms || '-' || m.n;\n"
    "  SELECT ch.ms, ch.n INTO c FROM @S.channels ch WHERE ch.name = p_channel;\n"
    "  IF FOUND THEN\n"
    "    pm := c.ms; pn := c.n;\n"
    "    UPDATE @S.channels ch SET ms = m.ms, n = m.n WHERE ch.name = p_channel;\n"
    "  ELSE\n"
    "    IF p_ttl_s > 0 THEN pm := t - p_ttl_s * 1000::bigint; END IF;\n"
    "    INSERT INTO @S.channels VALUES (p_channel, m.ms, m.n);\n"
    "  END IF;\n"
    "  INSERT INTO @S.messages VALUES (m.n, m.ms, p_channel, pm, pn, p_body);\n"
    "  DELETE FROM @S.messages x WHERE x.channel = p_channel AND x.n <= (SELECT y.n FROM @S.messages y\n"
    "    WHERE y.channel = p_channel ORDER BY y.ms DESC, y.n DESC OFFSET greatest(p_size, 1) LIMIT 1);\n"
    "  IF p_ttl_s > 0 THEN\n"
    "    FOR c IN DELETE FROM @S.channels ch WHERE ch.name IN (SELECT e.name FROM @S.channels e\n"
    "        WHERE e.ms <= t - p_ttl_s * 1000::bigint LIMIT 10) RETURNING ch.name LOOP\n"
    "      DELETE FROM @S.messages x WHERE x.channel = c.name;\n"
    "    END LOOP;\n"
    "  END IF;\n"
    "  IF p_key IS NOT NULL THEN\n"
    "    INSERT INTO @S.keys VALUES (p_key, v_id, t + p_key_ttl_ms)\n"
    "      ON CONFLICT (k) DO UPDATE SET id = EXCLUDED.id, expires = EXCLUDED.expires;\n"
    "    DELETE FROM @S.keys k WHERE k.k IN (SELECT e.k FROM @S.keys e WHERE e.expires <= t LIMIT 10);\n"
    "  END IF;\n"
    "  payload := v_id || E'\\n' || p_channel;\n"
    "  IF current_setting('server_encoding') = 'UTF8' AND position('\\x00'::bytea IN p_body) = 0\n"
    "     AND octet_length(p_body) + octet_length(payload) < 7990 THEN\n"
    "    payload := payload || E'\\n' || convert_from(p_body, 'UTF8');\n"
    "  END IF;\n"
    "  PERFORM pg_notify('@N', payload);\n"
    "  RETURN v_id;\n"
    "END $f$;\n"
    /* STABLE: every statement sees the calling query's snapshot, so the
     * position, the trim checks and the rows agree. */
    "CREATE OR REPLACE FUNCTION @S.read(p_channels text[], p_ms bigint, p_n bigint, p_ttl_s int)\n"
    "  RETURNS TABLE(o_idx int, o_ms bigint, o_n bigint, o_body bytea) LANGUAGE plpgsql STABLE AS $f$\n"
    "DECLARE t bigint := @S.now_ms(); m record; f record; c record; resets int[] := '{}';\n"
    "BEGIN\n"
    "  SELECT x.ms, x.n, x.since_ms, x.since_n INTO m FROM @S.meta x WHERE x.one = 1;\n"
    "  IF NOT FOUND THEN\n"
    "    o_idx := -1; o_ms := t; o_n := 0; RETURN NEXT;\n"
    "    o_idx := -2; o_ms := NULL; o_n := NULL; RETURN NEXT; RETURN;\n"
    "  END IF;\n"
    "  o_idx := -1; o_ms := m.ms; o_n := m.n; RETURN NEXT;\n"
    "  IF (p_ms, p_n) > (m.ms, m.n) OR (p_ms, p_n) < (m.since_ms, m.since_n) THEN\n"
    "    o_idx := -2; o_ms := NULL; o_n := NULL; RETURN NEXT; RETURN;\n"
    "  END IF;\n"
    "  FOR i IN 1 .. coalesce(array_length(p_channels, 1), 0) LOOP\n"
    "    SELECT x.prev_ms, x.prev_n INTO f FROM @S.messages x WHERE x.channel = p_channels[i]\n"
    "      AND (x.ms, x.n) > (p_ms, p_n) ORDER BY x.ms, x.n LIMIT 1;\n"
    "    IF FOUND THEN\n"
    "      IF (f.prev_ms, f.prev_n) > (p_ms, p_n) THEN resets := resets || i; END IF;\n"
    "    ELSE\n"
    "      SELECT ch.ms, ch.n INTO c FROM @S.channels ch WHERE ch.name = p_channels[i];\n"
    "      IF FOUND THEN\n"
    "        IF (c.ms, c.n) > (p_ms, p_n) THEN resets := resets || i; END IF;\n"
    "      ELSIF p_ttl_s > 0 AND p_ms + p_ttl_s * 1000::bigint <= t THEN\n"
    "        resets := resets || i;\n"
    "      END IF;\n"
    "    END IF;\n"
    "  END LOOP;\n"
    "  RETURN QUERY SELECT r - 1, NULL::bigint, NULL::bigint, NULL::bytea FROM unnest(resets) r;\n"
    "  RETURN QUERY SELECT (u.i - 1)::int, x.ms, x.n, x.body FROM unnest(p_channels) WITH ORDINALITY u(name, i)\n"
    "    JOIN @S.messages x ON x.channel = u.name WHERE (x.ms, x.n) > (p_ms, p_n)\n"
    "    AND NOT (u.i::int = ANY(resets)) ORDER BY x.ms, x.n;\n"
    "END $f$;\n"
    "CREATE OR REPLACE FUNCTION @S.cursor() RETURNS text LANGUAGE plpgsql AS $f$\n"
    "DECLARE m @S.meta;\n"
    "BEGIN\n"
    "  SELECT * INTO m FROM @S.meta x WHERE x.one = 1;\n"
    "  IF NOT FOUND THEN m := @S.meta_row(); END IF;\n"
    "  RETURN m.ms || '-' || m.n;\n"
    "END $f$;\n"
    "CREATE OR REPLACE FUNCTION @S.version() RETURNS int LANGUAGE sql IMMUTABLE AS\n"
    "  $f$ SELECT " SPILLWAY_PG_SCHEMA_VERSION " $f$;\n"
    "END $do$;\n";

const char spillway_pg_publish_sql[] = "SELECT @S.publish($1, $2, $3, $4, $5, $6)";
const char spillway_pg_read_sql[] = "SELECT o_idx, o_ms, o_n, o_body FROM @S.read($1::text[], $2, $3, $4)";
const char spillway_pg_fetch_sql[] = "SELECT x.body FROM @S.messages x WHERE x.ms = $1 AND x.n = $2";
const char spillway_pg_cursor_sql[] = "SELECT @S.cursor()";
const char spillway_pg_last_id_sql[] =
    "SELECT x.ms || '-' || x.n FROM @S.messages x WHERE x.channel = $1 ORDER BY x.ms DESC, x.n DESC LIMIT 1";
