/*
 * redis.c and redis_link.c against replies a real Redis never sends, on a
 * hub driven by hand (redis_fixture.h: the hub's own links, connected to a
 * fake Redis on a Unix socket). Every case ends the same way: the error is
 * logged, the process goes on, and the stream that was live before is still
 * served, without a loss and without a reset; where the reply could have
 * carried something (a message, a confirmation, an answer), the link was
 * dropped and reconnected and the gap repair read the backlog again.
 */
#include "check.h"
#include "redis_fixture.h"

/* The id of the first message the fake Redis issues. */
#define FIRST_ID "1700000000000-1"
/* A stream resuming "a" from FIRST_ID: the resume cache reads a page. */
#define FILL_A "EVALSHA " FX_SHA_RESUME " 3 fx:id fx:since fx:s:a c 0 512 " FIRST_ID "\n"
/* The gap repair of "a" from FIRST_ID: everything. */
#define REPAIR_A "EVALSHA " FX_SHA_RESUME " 3 fx:id fx:since fx:s:a c 0 0 " FIRST_ID "\n"

static bool has(const tbuf *b, const char *s)
{
    return b->p != NULL && strstr(b->p, s) != NULL;
}

static uint32_t count(const tbuf *b, const char *s)
{
    uint32_t n = 0;
    for (const char *p = b->p; p != NULL && (p = strstr(p, s)) != NULL; p += strlen(s)) n++;
    return n;
}

/* A fixture whose stream 0 on "a" is live and got one message (FIRST_ID),
 * then answering only what autos says. */
static fx *live(unsigned autos)
{
    fx *x = fx_new(FX_AUTO_ALL);
    const char *a[] = {"a"};
    REQUIRE_U64(fx_stats(x).redis_connected, ==, 1);
    REQUIRE_INT(fx_attach(x, a, 1, NULL), ==, 0);
    REQUIRE_U64(fx_stats(x).joining, ==, 0);
    fx_publish(x, "a", "m1");
    REQUIRE(has(&x->streams[0].got, "id: " FIRST_ID "\ndata: m1\n"));
    x->autos = autos;
    return x;
}

/* After a protocol error: logged (with `why` in the text), the link gone,
 * back after its backoff, and the stream served on. */
static void check_dropped_and_back(fx *x, const spillway_stats *before, const char *why)
{
    spillway_stats st = fx_stats(x);
    CHECK_U64(st.errors, >, before->errors);
    if (strstr(st.last_error, why) == NULL) {
        fprintf(stderr, "  last_error: %s\n  wanted: %s\n", st.last_error, why);
        CHECK(!"the error names what was wrong");
    }
    CHECK_U64(st.redis_reconnects, ==, before->redis_reconnects + 1);
    CHECK_U64(st.redis_connected, ==, 0);
    fx_advance(x, 100); /* the first protocol backoff: 50 ms +- 25% */
    CHECK_U64(fx_stats(x).redis_connected, ==, 1);
    CHECK(!x->streams[0].eof);
}

/* The stream still gets what is published, and was never told to reset. */
static void check_still_served(fx *x, const char *data)
{
    char want[64];
    unsigned autos = x->autos;
    snprintf(want, sizeof(want), "data: %s\n", data);
    x->autos = FX_AUTO_ALL;
    fx_publish(x, "a", data);
    x->autos = autos;
    CHECK(has(&x->streams[0].got, want));
    CHECK(!has(&x->streams[0].got, "event: reset"));
    CHECK(!x->streams[0].eof);
    CHECK_U64(fx_stats(x).joining, ==, 0);
}

TEST(fixture_streams_go_live_and_get_messages)
{
    fx *x = live(FX_AUTO_ALL);
    CHECK_U64(fx_stats(x).errors, ==, 0);
    CHECK_U64(x->accepted, ==, 2);
    check_still_served(x, "m2");
    CHECK_U64(fx_stats(x).errors, ==, 0);
    fx_free(x);
}

/* ---- the subscriber link ------------------------------------------------ */

typedef struct sub_case {
    const char *name;
    const char *wire;
    size_t len;
    const char *why;  /* in the logged error */
    bool reconnect;   /* false: logged and dropped, the link stays */
} sub_case;

#define SC(name, wire, why, reconnect) {name, wire, sizeof(wire) - 1, why, reconnect}

static const sub_case SUB_CASES[] = {
    /* The report: this one killed the process (on_message read the channel
     * of a message without an id line through a NULL pointer). */
    SC("nil channel", "*3\r\n$7\r\nmessage\r\n$-1\r\n$10\r\nno id here\r\n",
       "a pub/sub message whose channel is nil", true),
    SC("integer channel", "*3\r\n$7\r\nmessage\r\n:7\r\n$10\r\nno id here\r\n",
       "a pub/sub message whose channel is an integer (7)", true),
    SC("array channel", "*3\r\n$7\r\nmessage\r\n*1\r\n:1\r\n$10\r\nno id here\r\n",
       "whose channel is an array of 1 element", true),
    SC("status channel", "*3\r\n$7\r\nmessage\r\n+fx:a\r\n$10\r\nno id here\r\n",
       "whose channel is a status (+fx:a)", true),
    SC("nil payload", "*3\r\n$7\r\nmessage\r\n$4\r\nfx:a\r\n$-1\r\n", "on fx:a whose payload is nil", true),
    SC("integer payload", "*3\r\n$7\r\nmessage\r\n$4\r\nfx:a\r\n:3\r\n", "whose payload is an integer (3)", true),
    SC("array payload", "*3\r\n$7\r\nmessage\r\n$4\r\nfx:a\r\n*0\r\n", "whose payload is an array of 0 elements", true),
    SC("error payload", "*3\r\n$7\r\nmessage\r\n$4\r\nfx:a\r\n-ERR x\r\n", "whose payload is an error (-ERR x)", true),
    SC("two elements", "*2\r\n$7\r\nmessage\r\n$4\r\nfx:a\r\n", "a pub/sub message of 2 elements", true),
    SC("four elements", "*4\r\n$7\r\nmessage\r\n$4\r\nfx:a\r\n$3\r\nabc\r\n:1\r\n", "a pub/sub message of 4 elements",
       true),
    SC("one element", "*1\r\n$7\r\nmessage\r\n", "a pub/sub message of 1 element", true),
    SC("nil channel of a confirmation", "*3\r\n$9\r\nsubscribe\r\n$-1\r\n:1\r\n",
       "a malformed subscribe confirmation (3 elements, channel nil)", true),
    SC("count of a confirmation is a string", "*3\r\n$11\r\nunsubscribe\r\n$4\r\nfx:a\r\n$1\r\n1\r\n",
       "a malformed unsubscribe confirmation", true),
    SC("short confirmation", "*2\r\n$9\r\nsubscribe\r\n$4\r\nfx:a\r\n",
       "a malformed subscribe confirmation (2 elements", true),
    SC("confirmation without channel", "*1\r\n$9\r\nsubscribe\r\n", "(1 element, channel missing)", true),
    SC("malformed pong", "*3\r\n$4\r\npong\r\n$0\r\n\r\n:1\r\n", "a malformed pong (3 elements)", true),
    SC("pattern message", "*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$4\r\nfx:a\r\n$3\r\nabc\r\n",
       "a push of a kind this hub never subscribes to (pmessage)", true),
    /* What the peer sent goes into the log with anything unprintable as '?'. */
    SC("kind with control bytes", "*3\r\n$5\r\nx\x1b\r\ny\r\n$4\r\nfx:a\r\n$3\r\nabc\r\n",
       "a push of a kind this hub never subscribes to (x???y)", true),
    SC("integer kind", "*3\r\n:1\r\n$4\r\nfx:a\r\n$3\r\nabc\r\n", "a push whose kind is an integer (1)", true),
    SC("nil kind", "*3\r\n$-1\r\n$4\r\nfx:a\r\n$3\r\nabc\r\n", "a push whose kind is nil", true),
    SC("error kind", "*3\r\n-message\r\n$4\r\nfx:a\r\n$3\r\nabc\r\n", "a push whose kind is an error (-message)", true),
    SC("empty array", "*0\r\n", "an array of 0 elements where only pushes", true),
    SC("nil array", "*-1\r\n", "nil where only pushes", true),
    SC("integer", ":42\r\n", "an integer (42) where only pushes", true),
    SC("bulk string", "$3\r\nabc\r\n", "a bulk string of 3 bytes where only pushes", true),
    SC("status", "+OK\r\n", "a status (+OK) where only pushes", true),
    SC("nested past the cap", "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*0\r\n", "nested more than 4 arrays deep", true),
    SC("not RESP", "?what\r\n", "Protocol error", true),
    /* RESP3, never asked for (no HELLO 3): hiredis 0.14 cannot parse it,
     * 1.x parses it into values the hub does not take. */
    SC("RESP3 push", ">3\r\n$7\r\nmessage\r\n$4\r\nfx:a\r\n$3\r\nabc\r\n", "subscriber link: protocol: ", true),
    SC("RESP3 map", "%1\r\n$1\r\na\r\n:1\r\n", "subscriber link: protocol: ", true),
    SC("RESP3 message parts", "*3\r\n$7\r\nmessage\r\n#t\r\n,1.5\r\n", "subscriber link: protocol: ", true),
    SC("RESP3 null", "_\r\n", "subscriber link: protocol: ", true),
    /* Well-formed but not Spillway's: dropped, nothing of ours is lost. */
    SC("message without an id", "*3\r\n$7\r\nmessage\r\n$4\r\nfx:a\r\n$10\r\nno id here\r\n",
       "Redis message without a Spillway id on fx:a", false),
    SC("confirmation nobody asked for", "*3\r\n$9\r\nsubscribe\r\n$6\r\nfx:zzz\r\n:1\r\n",
       "a subscribe confirmation for fx:zzz, which this hub did not ask for: ignored", false),
};

TEST(every_malformed_frame_on_the_subscriber_link)
{
    for (size_t i = 0; i < sizeof(SUB_CASES) / sizeof(SUB_CASES[0]); i++) {
        const sub_case *k = &SUB_CASES[i];
        fx *x = live(FX_AUTO_ALL);
        spillway_stats before = fx_stats(x);
        fprintf(stderr, "  case: %s\n", k->name);
        fx_send(x, 'S', k->wire, k->len);
        if (k->reconnect) {
            check_dropped_and_back(x, &before, k->why);
            /* The repair read the backlog from the last message seen. */
            CHECK(has(&x->log, REPAIR_A));
        } else {
            spillway_stats st = fx_stats(x);
            CHECK_U64(st.errors, ==, before.errors + 1);
            CHECK(strstr(st.last_error, k->why) != NULL);
            CHECK_U64(st.redis_reconnects, ==, 0);
            CHECK_U64(st.redis_connected, ==, 1);
        }
        check_still_served(x, "m2");
        fx_free(x);
    }
}

TEST(pong_as_a_status_is_fine)
{
    fx *x = live(FX_AUTO_ALL);
    fx_sends(x, 'S', "+PONG\r\n");
    CHECK_U64(fx_stats(x).errors, ==, 0);
    CHECK_U64(fx_stats(x).redis_reconnects, ==, 0);
    fx_free(x);
}

/* hiredis 1.x builds a reply nested as deep as the peer likes (0.14 stops at
 * 8): 200,000 nested arrays, 800 KB, on a live link. */
TEST(two_hundred_thousand_nested_arrays_on_the_subscriber_link)
{
    fx *x = live(FX_AUTO_ALL);
    spillway_stats before = fx_stats(x);
    size_t n = 200000;
    char *s = malloc(4 * n);
    REQUIRE(s != NULL);
    for (size_t i = 0; i + 1 < n; i++) memcpy(s + 4 * i, "*1\r\n", 4);
    memcpy(s + 4 * (n - 1), "*0\r\n", 4);
    fx_send(x, 'S', s, 4 * n);
    free(s);
    check_dropped_and_back(x, &before, "nested more than 4 arrays deep");
    check_still_served(x, "m2");
    fx_free(x);
}

/* ---- the control channel ------------------------------------------------ */

/* Stream 1 joins channel "b": SUBSCRIBE is confirmed, the barrier script
 * (number 2: the first covered "a") is left unanswered. */
static fx *waiting_for_barrier(void)
{
    fx *x = live(FX_AUTO_ALL & ~FX_AUTO_BARRIER);
    const char *b[] = {"b"};
    REQUIRE_INT(fx_attach(x, b, 1, NULL), ==, 1);
    REQUIRE_U64(fx_stats(x).joining, ==, 1);
    REQUIRE(has(&x->log, "EVALSHA " FX_SHA_BARRIER " 2 fx:id fx:since"));
    return x;
}

TEST(a_barrier_goes_through)
{
    fx *x = waiting_for_barrier();
    fx_sends(x, 'C', "$15\r\n" FIRST_ID "\r\n");
    fx_ctl_message(x, "2 " FIRST_ID, strlen("2 " FIRST_ID));
    CHECK_U64(fx_stats(x).joining, ==, 0);
    CHECK_U64(fx_stats(x).errors, ==, 0);
    fx_free(x);
}

/* The id part is Redis's id key, which something else may have spoilt: the
 * barrier still counts (as before), only the hub's position stays. */
TEST(a_barrier_with_a_spoilt_id_still_counts)
{
    fx *x = waiting_for_barrier();
    fx_sends(x, 'C', "$4\r\njunk\r\n");
    fx_ctl_message(x, "2 junk", 6);
    CHECK_U64(fx_stats(x).joining, ==, 0);
    CHECK_U64(fx_stats(x).redis_reconnects, ==, 0);
    fx_free(x);
}

TEST(control_messages_that_are_not_this_hubs_barriers)
{
    static const char *const bad[] = {"", "2", "2x 1-1", "x 1-1", " 1-1", "0 1-1", "3 1-1", "99 1-1",
                                      "18446744073709551617 1-1", "123456789012345678901 1-1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fx *x = waiting_for_barrier();
        spillway_stats before;
        fprintf(stderr, "  case: \"%s\"\n", bad[i]);
        fx_sends(x, 'C', "$15\r\n" FIRST_ID "\r\n"); /* the script's answer; its PUBLISH never comes */
        before = fx_stats(x);
        fx_ctl_message(x, bad[i], strlen(bad[i]));
        /* The stream on "b" did not go live on a barrier that was not one. */
        CHECK_U64(fx_stats(x).joining, ==, 1);
        x->autos = FX_AUTO_ALL;
        check_dropped_and_back(x, &before, "a control message that is not one of this hub's barriers");
        /* After the reconnect "b" is synced by a real barrier. */
        CHECK_U64(fx_stats(x).joining, ==, 0);
        check_still_served(x, "m2");
        fx_free(x);
    }
}

/* ---- the command link --------------------------------------------------- */

typedef struct cmd_case {
    const char *wire;
    const char *why;
} cmd_case;

/* Stream 1 comes back on "a" with a cursor: its resume read is left
 * unanswered. */
static fx *waiting_for_resume(void)
{
    fx *x = live(FX_AUTO_ALL & ~FX_AUTO_RESUME);
    const char *a[] = {"a"};
    REQUIRE_INT(fx_attach(x, a, 1, FIRST_ID), ==, 1);
    REQUIRE(has(&x->log, FILL_A));
    REQUIRE_U64(fx_stats(x).joining, ==, 1);
    return x;
}

static const cmd_case RESUME_CASES[] = {
    {":1\r\n", "got an integer (1), not the resume script's answer"},
    {"$-1\r\n", "got nil"},
    {"+OK\r\n", "got a status (+OK)"},
    {"*0\r\n", "got an array of 0 elements"},
    {"*2\r\n$1\r\nx\r\n*1\r\n:0\r\n", "got an array of 2 elements"},
    {"*3\r\n:5\r\n*1\r\n:0\r\n*0\r\n", "got an array of 3 elements"},           /* last id not a string */
    {"*3\r\n$1\r\nx\r\n*0\r\n*0\r\n", "over 1 channels"},                       /* no flag for the channel */
    {"*3\r\n$1\r\nx\r\n*2\r\n:0\r\n:0\r\n*0\r\n", "over 1 channels"},           /* two flags */
    {"*3\r\n$1\r\nx\r\n*1\r\n$1\r\n0\r\n*0\r\n", "over 1 channels"},            /* a flag that is a string */
    {"*3\r\n$1\r\nx\r\n*1\r\n:0\r\n:7\r\n", "over 1 channels"},                 /* frames not an array */
    {"*3\r\n$1\r\nx\r\n*1\r\n:0\r\n*2\r\n:1\r\n$12\r\nid: 9-9\ndata\n\r\n", "over 1 channels"}, /* index 1 of 1 */
    {"*3\r\n$1\r\nx\r\n*1\r\n:0\r\n*2\r\n:-1\r\n$12\r\nid: 9-9\ndata\n\r\n", "over 1 channels"},
};

/* The stream joins without a reset once the link is back: a malformed
 * answer is a failure to read, not a lost backlog. (It needs no second read:
 * the resume cache of "a" started collecting when the read was sent, at the
 * stream's cursor.) */
TEST(malformed_resume_answers_are_read_again)
{
    for (size_t i = 0; i < sizeof(RESUME_CASES) / sizeof(RESUME_CASES[0]); i++) {
        fx *x = waiting_for_resume();
        spillway_stats before = fx_stats(x);
        fprintf(stderr, "  case: ");
        check_escape(stderr, RESUME_CASES[i].wire, strlen(RESUME_CASES[i].wire));
        fputc('\n', stderr);
        fx_sends(x, 'C', RESUME_CASES[i].wire);
        x->autos = FX_AUTO_ALL;
        check_dropped_and_back(x, &before, RESUME_CASES[i].why);
        CHECK(strstr(fx_stats(x).last_error, "Redis command link: protocol:") != NULL);
        CHECK_U64(count(&x->log, FILL_A), ==, 1);
        CHECK_U64(fx_stats(x).joining, ==, 0);
        CHECK(!has(&x->streams[1].got, "event: reset"));
        CHECK_U64(fx_stats(x).resets, ==, 0);
        check_still_served(x, "m2");
        CHECK(has(&x->streams[1].got, "data: m2\n"));
        fx_free(x);
    }
}

/* A resume answer of the right shape whose frames something else spoilt (an
 * entry without an id line: XADD by hand) comes back the same every time:
 * the stream is told (reset) instead of the link looping. */
TEST(spoilt_backlog_entry_gives_a_reset_not_a_reconnect)
{
    fx *x = waiting_for_resume();
    fx_sends(x, 'C', "*3\r\n$15\r\n" FIRST_ID "\r\n*1\r\n:0\r\n*2\r\n:0\r\n$5\r\nhello\r\n");
    CHECK_U64(fx_stats(x).redis_reconnects, ==, 0);
    CHECK_U64(fx_stats(x).joining, ==, 0);
    CHECK(has(&x->streams[1].got, "event: reset"));
    CHECK(strstr(fx_stats(x).last_error, "resume read failed") != NULL);
    fx_free(x);
}

/* An error reply is Redis's answer: handled as before (not a reconnect). */
TEST(an_error_answer_is_not_a_protocol_error)
{
    fx *x = waiting_for_resume();
    fx_sends(x, 'C', "-BUSY Redis is busy running a script\r\n");
    CHECK_U64(fx_stats(x).redis_reconnects, ==, 0);
    CHECK_U64(fx_stats(x).redis_connected, ==, 1);
    fx_free(x);
}

static const cmd_case ID_CASES[] = {
    {":1\r\n", "got an integer (1) instead of an id"},
    {"$-1\r\n", "got nil instead of an id"},
    {"+OK\r\n", "got a status (+OK) instead of an id"},
    {"*1\r\n$1\r\nx\r\n", "got an array of 1 element instead of an id"},
};

/* A publish whose answer is not an id: Redis may or may not have run it, so
 * it is reported failed (never sent twice); later ones go out on the new
 * link. */
TEST(malformed_publish_answers)
{
    for (size_t i = 0; i < sizeof(ID_CASES) / sizeof(ID_CASES[0]); i++) {
        fx *x = live(FX_AUTO_ALL & ~FX_AUTO_PUBLISH);
        spillway_stats before;
        fx_publish(x, "a", "lost?");
        before = fx_stats(x);
        CHECK_U64(before.async_pending, ==, 1);
        fx_sends(x, 'C', ID_CASES[i].wire);
        check_dropped_and_back(x, &before, "a publish script");
        CHECK(strstr(fx_stats(x).last_error, "may not have been published") != NULL ||
              strstr(fx_stats(x).last_error, ID_CASES[i].why) != NULL);
        CHECK_U64(fx_stats(x).async_pending, ==, 0);
        CHECK_U64(fx_stats(x).async_failed, ==, 1);
        check_still_served(x, "m2");
        fx_free(x);
    }
}

/* A barrier whose answer is not an id: sent again on the new link, and its
 * channel goes live then. */
TEST(malformed_barrier_answers)
{
    for (size_t i = 0; i < sizeof(ID_CASES) / sizeof(ID_CASES[0]); i++) {
        fx *x = waiting_for_barrier();
        spillway_stats before = fx_stats(x);
        fx_sends(x, 'C', ID_CASES[i].wire);
        x->autos = FX_AUTO_ALL;
        check_dropped_and_back(x, &before, ID_CASES[i].why);
        CHECK(strstr(fx_stats(x).last_error, "a barrier script") != NULL);
        CHECK_U64(fx_stats(x).joining, ==, 0);
        check_still_served(x, "m2");
        fx_free(x);
    }
}

/* After the subscriber link dropped, the repair read is left unanswered. */
static fx *waiting_for_repair(void)
{
    fx *x = live(FX_AUTO_ALL & ~FX_AUTO_RESUME);
    fx_kill(x, 'S');
    fx_advance(x, 10);
    REQUIRE_U64(fx_stats(x).redis_connected, ==, 1);
    REQUIRE_U64(count(&x->log, REPAIR_A), ==, 1);
    return x;
}

TEST(malformed_repair_answers_are_read_again)
{
    for (size_t i = 0; i < sizeof(RESUME_CASES) / sizeof(RESUME_CASES[0]); i++) {
        fx *x = waiting_for_repair();
        spillway_stats before = fx_stats(x);
        fprintf(stderr, "  case: ");
        check_escape(stderr, RESUME_CASES[i].wire, strlen(RESUME_CASES[i].wire));
        fputc('\n', stderr);
        fx_sends(x, 'C', RESUME_CASES[i].wire);
        x->autos = FX_AUTO_ALL;
        check_dropped_and_back(x, &before, RESUME_CASES[i].why);
        CHECK_U64(count(&x->log, REPAIR_A), ==, 2);
        CHECK_U64(fx_stats(x).gap_repairs, ==, 1);
        check_still_served(x, "m2");
        fx_free(x);
    }
}

TEST(a_reply_nobody_asked_for)
{
    fx *x = live(FX_AUTO_ALL);
    spillway_stats before = fx_stats(x);
    fx_sends(x, 'C', "+OK\r\n");
    check_dropped_and_back(x, &before, "a reply nobody asked for");
    check_still_served(x, "m2");
    fx_free(x);
}

/* ---- the handshake ------------------------------------------------------ */

TEST(malformed_handshake_answers)
{
    static const char *const replies[] = {"$2\r\nOK\r\n", ":1\r\n", "*0\r\n", "+KO\r\n"};
    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        fx *x = live(FX_AUTO_ALL);
        spillway_stats before = fx_stats(x);
        x->setname_reply = replies[i];
        fx_kill(x, 'C');
        fx_advance(x, 10); /* reconnects at once: it was up */
        CHECK(strstr(fx_stats(x).last_error, "the handshake got") != NULL);
        CHECK(strstr(fx_stats(x).last_error, "instead of +OK") != NULL);
        CHECK_U64(fx_stats(x).redis_connected, ==, 0);
        x->setname_reply = NULL;
        fx_advance(x, 100);
        CHECK_U64(fx_stats(x).redis_connected, ==, 1);
        CHECK_U64(fx_stats(x).errors, >, before.errors);
        check_still_served(x, "m2");
        fx_free(x);
    }
}

TEST(a_script_sha_that_is_not_one)
{
    static const char *const replies[] = {"+OK\r\n", "$3\r\nabc\r\n",
                                          "$40\r\nzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\r\n", ":1\r\n"};
    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        fx *x = live(FX_AUTO_ALL);
        x->script_reply = replies[i];
        fx_kill(x, 'C');
        fx_advance(x, 10);
        CHECK(strstr(fx_stats(x).last_error, "instead of a script's SHA1") != NULL);
        CHECK_U64(fx_stats(x).redis_connected, ==, 0);
        x->script_reply = NULL;
        fx_advance(x, 100);
        CHECK_U64(fx_stats(x).redis_connected, ==, 1);
        check_still_served(x, "m2");
        fx_free(x);
    }
}

/* ---- backoff ------------------------------------------------------------ */

/* A peer that keeps breaking the protocol right after each handshake is
 * retried after 50, 100, 200, 400 ms (+-25%), not in a tight loop; a minute
 * later without one, the backoff starts over. */
TEST(protocol_errors_back_off)
{
    fx *x = live(FX_AUTO_ALL);
    uint32_t backoff = 50;
    for (int round = 0; round < 5; round++) {
        uint32_t accepted;
        fx_sends(x, 'S', ":1\r\n");
        accepted = x->accepted;
        fx_advance(x, backoff * 3 / 4 - 1);
        CHECK_U64(x->accepted, ==, accepted);
        fx_advance(x, backoff / 2 + 2);
        CHECK_U64(x->accepted, ==, accepted + 1);
        CHECK_U64(fx_stats(x).redis_connected, ==, 1);
        backoff *= 2;
    }
    fx_advance(x, 61000);
    fx_sends(x, 'S', ":1\r\n");
    fx_advance(x, 63);
    CHECK_U64(fx_stats(x).redis_connected, ==, 1);
    check_still_served(x, "m2");
    fx_free(x);
}

CHECK_MAIN
