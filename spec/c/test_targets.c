/*
 * Targets and identities (targets.c): the text form, message_bus's
 * matching rule, and taking the targets line out of a frame from Redis.
 */
#include <string.h>

#include "check.h"
#include "frame.h"
#include "targets.h"

static spillway_targets *parse(const char *s, bool identity)
{
    const char *why = NULL;
    spillway_targets *t = spillway_targets_parse(s, strlen(s), identity, &why);
    if (t == NULL) fprintf(stderr, "  %s: %s\n", s, why);
    return t;
}

static const char *refused(const char *s, bool identity)
{
    const char *why = NULL;
    spillway_targets *t = spillway_targets_parse(s, strlen(s), identity, &why);
    spillway_targets_unref(t);
    return t == NULL ? why : NULL;
}

TEST(parse_counts_every_kind_and_refuses_what_is_malformed)
{
    spillway_targets *t = parse("u=7,8;g=admins;c=9f2c", false);
    REQUIRE(t != NULL);
    CHECK_U64(t->n[SW_TK_USER], ==, 2);
    CHECK_U64(t->n[SW_TK_GROUP], ==, 1);
    CHECK_U64(t->n[SW_TK_CLIENT], ==, 1);
    CHECK(memcmp(t->text + t->ids[t->first[SW_TK_USER] + 1].off, "8", 1) == 0);
    spillway_targets_unref(t);
    CHECK(refused("", false) != NULL);
    CHECK(refused("x=1", false) != NULL);
    CHECK(refused("u=", false) != NULL);
    CHECK(refused("u=1,", false) != NULL);
    CHECK(refused("u=1;u=2", false) != NULL);
    CHECK(refused("u=1;", false) != NULL);
    CHECK(refused("u=a b", false) != NULL);
    CHECK(refused("u=a\nb", false) != NULL);
    CHECK(refused("u=1,2", true) != NULL); /* an identity has one user */
    CHECK(refused("g=a,b;u=1;c=x", true) == NULL);
    {
        char longid[SPILLWAY_TARGET_ID_MAX + 4];
        memset(longid, 'a', sizeof(longid));
        memcpy(longid, "u=", 2);
        longid[2 + SPILLWAY_TARGET_ID_MAX] = '\0';
        CHECK(refused(longid, false) == NULL);
        longid[2 + SPILLWAY_TARGET_ID_MAX] = 'a';
        longid[3 + SPILLWAY_TARGET_ID_MAX] = '\0';
        CHECK(refused(longid, false) != NULL);
    }
}

TEST(match_is_user_or_group_and_client)
{
    spillway_targets *bob = parse("u=bob;g=admins,staff;c=tab2", true);
    spillway_targets *alice = parse("u=alice;g=staff", true);
    spillway_targets *t;
    REQUIRE(bob != NULL && alice != NULL);
    CHECK(spillway_targets_match(NULL, NULL));
    t = parse("u=bob", false);
    CHECK(spillway_targets_match(t, bob) && !spillway_targets_match(t, alice) && !spillway_targets_match(t, NULL));
    spillway_targets_unref(t);
    t = parse("u=alice;g=admins", false);
    CHECK(spillway_targets_match(t, bob) && spillway_targets_match(t, alice));
    spillway_targets_unref(t);
    t = parse("g=staff;c=tab2", false);
    CHECK(spillway_targets_match(t, bob) && !spillway_targets_match(t, alice));
    spillway_targets_unref(t);
    t = parse("c=tab2", false);
    CHECK(spillway_targets_match(t, bob) && !spillway_targets_match(t, alice));
    spillway_targets_unref(t);
    t = parse("u=bo", false); /* no prefix matches */
    CHECK(!spillway_targets_match(t, bob));
    spillway_targets_unref(t);
    spillway_targets_unref(bob);
    spillway_targets_unref(alice);
}

TEST(take_strips_the_targets_line_of_a_redis_frame)
{
    static const char with[] = "id: 5-1\nx-targets: u=7;c=x\nevent: e\ndata: d\n\n";
    static const char without[] = "id: 5-1\nevent: e\ndata: d\n\n";
    spillway_frame *f = spillway_frame_copy(with, sizeof(with) - 1);
    spillway_targets *t = NULL;
    const char *why = NULL;
    REQUIRE(f != NULL);
    CHECK_INT(spillway_targets_take(f, &t, &why), ==, 0);
    REQUIRE(t != NULL);
    CHECK_U64(t->n[SW_TK_USER], ==, 1);
    CHECK_U64(f->len, ==, sizeof(without) - 1);
    CHECK(memcmp(f->data, without, f->len) == 0);
    f->targets = t; /* freed with the frame */
    spillway_frame_unref(f);
    f = spillway_frame_copy(without, sizeof(without) - 1);
    CHECK_INT(spillway_targets_take(f, &t, &why), ==, 0);
    CHECK(t == NULL);
    CHECK_U64(f->len, ==, sizeof(without) - 1);
    spillway_frame_unref(f);
    f = spillway_frame_copy("id: 5-1\nx-targets: u=\n\n", strlen("id: 5-1\nx-targets: u=\n\n"));
    CHECK_INT(spillway_targets_take(f, &t, &why), ==, -1);
    CHECK(why != NULL);
    spillway_frame_unref(f);
}

CHECK_MAIN
