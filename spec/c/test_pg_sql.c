/*
 * pg_sql.c: namespaces, the expansion of the SQL templates, text[] literals
 * and NOTIFY payloads (no server needed).
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pg_sql.h"

TEST(ns_ok_takes_spillway_namespaces_only)
{
    char long_ns[80];
    CHECK(spillway_pg_ns_ok("spillway"));
    CHECK(spillway_pg_ns_ok("app-1.prod:eu/x=y+z@w_v"));
    CHECK(!spillway_pg_ns_ok(""));
    CHECK(!spillway_pg_ns_ok(NULL));
    CHECK(!spillway_pg_ns_ok("a\"b"));
    CHECK(!spillway_pg_ns_ok("a'b"));
    CHECK(!spillway_pg_ns_ok("a b"));
    CHECK(!spillway_pg_ns_ok("a$b"));
    memset(long_ns, 'x', sizeof(long_ns));
    long_ns[SPILLWAY_PG_NS_MAX] = '\0';
    CHECK(spillway_pg_ns_ok(long_ns));
    long_ns[SPILLWAY_PG_NS_MAX] = 'x';
    long_ns[SPILLWAY_PG_NS_MAX + 1] = '\0';
    CHECK(!spillway_pg_ns_ok(long_ns));
}

TEST(expand_quotes_the_schema_and_leaves_the_name_bare)
{
    char *s = spillway_pg_expand("SELECT @S.f('@N'), a@b, @@S", "my.ns");
    REQUIRE(s != NULL);
    CHECK(strcmp(s, "SELECT \"my.ns\".f('my.ns'), a@b, @\"my.ns\"") == 0);
    free(s);
    CHECK(spillway_pg_expand("@S", "bad\"ns") == NULL);
}

TEST(every_template_expands_without_a_placeholder_left)
{
    const char *all[] = {spillway_pg_setup_sql, spillway_pg_listen_sql, spillway_pg_publish_sql,
                         spillway_pg_read_sql, spillway_pg_fetch_sql, spillway_pg_cursor_sql,
                         spillway_pg_last_id_sql};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        char *s = spillway_pg_expand(all[i], "ns");
        REQUIRE(s != NULL);
        CHECK(strstr(s, "@S") == NULL);
        CHECK(strstr(s, "@N") == NULL);
        free(s);
    }
}

TEST(array_literal_quotes_each_name)
{
    const char *names[] = {"a", "b:c", "{x}"};
    size_t lens[] = {1, 3, 3};
    char *s = spillway_pg_array(names, lens, 3);
    REQUIRE(s != NULL);
    CHECK(strcmp(s, "{\"a\",\"b:c\",\"{x}\"}") == 0);
    free(s);
    s = spillway_pg_array(NULL, NULL, 0);
    REQUIRE(s != NULL);
    CHECK(strcmp(s, "{}") == 0);
    free(s);
}

static int note(const char *s, spillway_pg_note *n)
{
    return spillway_pg_parse_note(s, strlen(s), n);
}

TEST(parse_note_with_and_without_a_body)
{
    spillway_pg_note n;
    REQUIRE_INT(note("17-3\nchat\ndata: hi\n\n", &n), ==, 0);
    CHECK(n.has_body);
    CHECK(n.idlen == 4 && memcmp(n.id, "17-3", 4) == 0);
    CHECK(n.chlen == 4 && memcmp(n.channel, "chat", 4) == 0);
    CHECK(n.bodylen == 10 && memcmp(n.body, "data: hi\n\n", 10) == 0);
    /* Too big for the payload: id and channel only, the row is read. */
    REQUIRE_INT(note("17-4\nchat", &n), ==, 0);
    CHECK(!n.has_body);
    CHECK(n.chlen == 4);
    /* An empty body is still a body. */
    REQUIRE_INT(note("1-1\nc\n", &n), ==, 0);
    CHECK(n.has_body && n.bodylen == 0);
}

TEST(parse_note_rejects_other_shapes)
{
    spillway_pg_note n;
    CHECK_INT(note("", &n), ==, -1);
    CHECK_INT(note("17-3", &n), ==, -1);
    CHECK_INT(note("\nchat", &n), ==, -1);
    CHECK_INT(note("17-3\n", &n), ==, -1);
    CHECK_INT(note("17-3\n\nbody", &n), ==, -1);
}

CHECK_MAIN
