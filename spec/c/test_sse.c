/*
 * sse.c against its contract (sse.h), with the reference parser in
 * sse_ref.h as the oracle: golden frames for the line-break corner cases,
 * error codes, exact sizes, ESPACE, and a seeded property test.
 */
#include "check.h"
#include "sse_ref.h"

/* Encodes into a buffer with guard bytes after cap and checks that nothing
 * past cap was touched. Returns the encoder's result; the frame in *out
 * (heap, the caller frees it) when it succeeded. */
static ssize_t encode_guarded(size_t cap, const char *id, size_t idlen, const char *ev,
                              size_t evlen, const char *data, size_t datalen, char **out)
{
    enum { GUARD = 32 };
    char *buf = malloc(cap + GUARD);
    ssize_t n;
    REQUIRE(buf != NULL);
    memset(buf, 0xA5, cap + GUARD);
    n = spillway_sse_encode(buf, cap, id, idlen, ev, evlen, data, datalen);
    for (size_t i = cap; i < cap + GUARD; i++) {
        if ((unsigned char)buf[i] != 0xA5) {
            CHECK(!"encode wrote past cap");
            break;
        }
    }
    if (n >= 0 && out != NULL) {
        *out = buf;
    } else {
        free(buf);
        if (out != NULL) *out = NULL;
    }
    return n;
}

/* The frame for (id, event, data) must be exactly `want`, its size must
 * agree, and it must round-trip. Data given with an explicit length so NULs
 * can be in it. */
static void golden(const char *id, const char *ev, const char *data, size_t datalen,
                   const char *want, size_t wantlen)
{
    size_t idlen = id ? strlen(id) : 0, evlen = ev ? strlen(ev) : 0;
    ssize_t size = spillway_sse_size(id, idlen, ev, evlen, data, datalen);
    char *frame = NULL;
    ssize_t n;
    const char *why;

    CHECK_INT(size, ==, (long long)wantlen);
    n = encode_guarded(wantlen, id, idlen, ev, evlen, data, datalen, &frame);
    CHECK_INT(n, ==, (long long)wantlen);
    if (frame != NULL) CHECK_MEM(frame, (size_t)(n > 0 ? n : 0), want, wantlen);
    free(frame);
    why = sse_roundtrip(id, idlen, ev, evlen, data, datalen);
    if (why != NULL) {
        CHECK(why == NULL);
        fprintf(stderr, "  round trip: %s for data ", why);
        check_escape(stderr, data, datalen);
        fputc('\n', stderr);
    }
}

#define GOLDEN(id, ev, data, want) golden(id, ev, data, sizeof(data) - 1, want, sizeof(want) - 1)

TEST(field_ok_rejects_cr_lf_nul_only)
{
    CHECK(spillway_sse_field_ok("", 0));
    CHECK(spillway_sse_field_ok("abc: def", 8));
    CHECK(spillway_sse_field_ok("\x7f\xff\x01\t", 4));
    CHECK(!spillway_sse_field_ok("a\rb", 3));
    CHECK(!spillway_sse_field_ok("a\nb", 3));
    CHECK(!spillway_sse_field_ok("a\0b", 3));
    CHECK(!spillway_sse_field_ok("\r", 1));
    /* Only len bytes are looked at: the NUL terminator is not part of it. */
    CHECK(spillway_sse_field_ok("ab\n", 2));
}

TEST(bad_id_and_event_codes)
{
    static const char *bad[] = {"a\rb", "a\nb", "a\0b", "\r\n", "x\n"};
    static const size_t badlen[] = {3, 3, 3, 2, 2};
    char out[256];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(spillway_sse_size(bad[i], badlen[i], NULL, 0, "d", 1), ==, SPILLWAY_SSE_EID);
        CHECK_INT(spillway_sse_encode(out, sizeof(out), bad[i], badlen[i], "ev", 2, "d", 1), ==,
                  SPILLWAY_SSE_EID);
        CHECK_INT(spillway_sse_size("1-0", 3, bad[i], badlen[i], "d", 1), ==, SPILLWAY_SSE_EEVENT);
        CHECK_INT(spillway_sse_size(NULL, 0, bad[i], badlen[i], "d", 1), ==, SPILLWAY_SSE_EEVENT);
        CHECK_INT(spillway_sse_encode(out, sizeof(out), NULL, 0, bad[i], badlen[i], "d", 1), ==,
                  SPILLWAY_SSE_EEVENT);
        /* Both bad: the id is reported. */
        CHECK_INT(spillway_sse_size(bad[i], badlen[i], bad[i], badlen[i], "d", 1), ==,
                  SPILLWAY_SSE_EID);
    }
    /* A field error wins over a buffer that is too small. */
    CHECK_INT(spillway_sse_encode(out, 0, "a\n", 2, NULL, 0, "d", 1), ==, SPILLWAY_SSE_EID);
}

TEST(strerror_names_every_code)
{
    CHECK(strstr(spillway_sse_strerror(SPILLWAY_SSE_EID), "id") != NULL);
    CHECK(strstr(spillway_sse_strerror(SPILLWAY_SSE_EEVENT), "event") != NULL);
    CHECK(strstr(spillway_sse_strerror(SPILLWAY_SSE_ESPACE), "small") != NULL);
    CHECK(strstr(spillway_sse_strerror(-99), "unknown") != NULL);
}

TEST(golden_fields)
{
    GOLDEN("1-0", "msg", "hello", "id: 1-0\nevent: msg\ndata: hello\n\n");
    GOLDEN(NULL, NULL, "hello", "data: hello\n\n");
    /* An empty event name is left out (the browser's default is "message"). */
    GOLDEN(NULL, "", "x", "data: x\n\n");
    /* An empty id is written: it resets the browser's last event id. */
    GOLDEN("", NULL, "x", "id: \ndata: x\n\n");
    /* A leading space survives: only the one after the colon is eaten. */
    GOLDEN(" 7", " ev", " x", "id:  7\nevent:  ev\ndata:  x\n\n");
    GOLDEN("a:b", "c:d", "e:f", "id: a:b\nevent: c:d\ndata: e:f\n\n");
}

TEST(golden_line_breaks)
{
    GOLDEN(NULL, NULL, "", "data: \n\n");
    GOLDEN(NULL, NULL, "a\nb", "data: a\ndata: b\n\n");
    GOLDEN(NULL, NULL, "a\rb", "data: a\ndata: b\n\n");
    GOLDEN(NULL, NULL, "a\r\nb", "data: a\ndata: b\n\n");
    /* A break at the end leaves an empty last line. */
    GOLDEN(NULL, NULL, "a\n", "data: a\ndata: \n\n");
    GOLDEN(NULL, NULL, "a\r", "data: a\ndata: \n\n");
    GOLDEN(NULL, NULL, "a\r\n", "data: a\ndata: \n\n");
    /* Only breaks. */
    GOLDEN(NULL, NULL, "\n", "data: \ndata: \n\n");
    GOLDEN(NULL, NULL, "\r", "data: \ndata: \n\n");
    GOLDEN(NULL, NULL, "\r\n", "data: \ndata: \n\n");
    GOLDEN(NULL, NULL, "\n\r", "data: \ndata: \ndata: \n\n");
    GOLDEN(NULL, NULL, "\r\r\n\n", "data: \ndata: \ndata: \ndata: \n\n");
    GOLDEN(NULL, NULL, "\n\n\n", "data: \ndata: \ndata: \ndata: \n\n");
    /* CR then CRLF: two breaks, not three. */
    GOLDEN(NULL, NULL, "a\r\r\nb", "data: a\ndata: \ndata: b\n\n");
    /* LF then CR: two breaks (only CR LF pairs up). */
    GOLDEN(NULL, NULL, "a\n\rb", "data: a\ndata: \ndata: b\n\n");
    /* NUL is data like any other byte. */
    GOLDEN(NULL, NULL, "a\0b", "data: a\0b\n\n");
    GOLDEN(NULL, NULL, "\0", "data: \0\n\n");
    GOLDEN(NULL, NULL, "\0\r\0", "data: \0\ndata: \0\n\n");
}

TEST(every_cap_below_size_is_espace)
{
    static const char data[] = "one\r\ntwo\rthree\nfour\r";
    ssize_t size = spillway_sse_size("12-3", 4, "tick", 4, data, sizeof(data) - 1);
    REQUIRE_INT(size, >, 0);
    for (size_t cap = 0; cap < (size_t)size; cap++) {
        ssize_t n = encode_guarded(cap, "12-3", 4, "tick", 4, data, sizeof(data) - 1, NULL);
        CHECK_INT(n, ==, SPILLWAY_SSE_ESPACE);
    }
    /* And any cap at or above the size works and writes exactly size bytes. */
    for (size_t cap = (size_t)size; cap < (size_t)size + 4; cap++) {
        char *frame = NULL;
        ssize_t n = encode_guarded(cap, "12-3", 4, "tick", 4, data, sizeof(data) - 1, &frame);
        CHECK_INT(n, ==, size);
        free(frame);
    }
}

/* The oracle itself, against the examples of the WHATWG standard, so a bug
 * in the parser cannot hide one in the encoder. */
TEST(reference_parser_follows_the_standard)
{
    sse_parser p;
    static const char stock[] = "data: YHOO\ndata: +2\ndata: 10\n\n";
    static const char blocks[] = "data\n\ndata\ndata\n\ndata:";
    static const char spaces[] = "data:test\n\ndata: test\n\n";
    static const char mixed[] = ": comment\r\nid: 7\r\nevent: add\r\ndata: x\r\n\r\n"
                                "retry: 250\rretry: 2x\rdata: y\r\rid: a\0b\ndata: z\n\n";

    sse_parser_init(&p);
    sse_parser_feed(&p, stock, sizeof(stock) - 1);
    REQUIRE_U64(p.nevents, ==, 1);
    CHECK_STR(p.events[0].data.p, "YHOO\n+2\n10");
    CHECK_STR(p.events[0].type.p, "message");
    sse_parser_free(&p);

    /* Empty data, a single LF, and a last block that is never dispatched. */
    sse_parser_init(&p);
    sse_parser_feed(&p, blocks, sizeof(blocks) - 1);
    REQUIRE_U64(p.nevents, ==, 2);
    CHECK_STR(p.events[0].data.p, "");
    CHECK_STR(p.events[1].data.p, "\n");
    CHECK(!sse_parser_idle(&p));
    sse_parser_free(&p);

    sse_parser_init(&p);
    sse_parser_feed(&p, spaces, sizeof(spaces) - 1);
    REQUIRE_U64(p.nevents, ==, 2);
    CHECK_STR(p.events[0].data.p, "test");
    CHECK_STR(p.events[1].data.p, "test");
    sse_parser_free(&p);

    /* CRLF and CR line ends, comments, retry, an id with NUL (ignored: the
     * last id stays), and the id carried over to a later event. Fed one byte
     * at a time, so every CR LF pair is split across two feeds. */
    sse_parser_init(&p);
    for (size_t i = 0; i < sizeof(mixed) - 1; i++) sse_parser_feed(&p, mixed + i, 1);
    REQUIRE_U64(p.nevents, ==, 3);
    CHECK_STR(p.events[0].id.p, "7");
    CHECK_STR(p.events[0].type.p, "add");
    CHECK_STR(p.events[0].data.p, "x");
    CHECK_STR(p.events[1].id.p, "7");
    CHECK(!p.events[1].id_field);
    CHECK_STR(p.events[1].data.p, "y");
    CHECK_STR(p.events[2].id.p, "7");
    CHECK_STR(p.events[2].data.p, "z");
    CHECK_U64(p.comments, ==, 1);
    CHECK_U64(p.retries, ==, 1);
    CHECK_INT(p.retry, ==, 250);
    CHECK_U64(p.unknown, ==, 1);
    CHECK(sse_parser_idle(&p));
    sse_parser_free(&p);
}

/* Every split of an encoded frame into two feeds parses the same. */
TEST(frames_parse_the_same_in_any_split)
{
    static const char data[] = "l1\r\nl2\rl3\n\r\n";
    char *frame = NULL;
    ssize_t n = spillway_sse_size("5-5", 3, "e", 1, data, sizeof(data) - 1);
    REQUIRE_INT(n, >, 0);
    n = encode_guarded((size_t)n, "5-5", 3, "e", 1, data, sizeof(data) - 1, &frame);
    REQUIRE(frame != NULL);
    for (ssize_t cut = 0; cut <= n; cut++) {
        sse_parser p;
        sse_parser_init(&p);
        sse_parser_feed(&p, frame, (size_t)cut);
        sse_parser_feed(&p, frame + cut, (size_t)(n - cut));
        CHECK_U64(p.nevents, ==, 1);
        if (p.nevents == 1) CHECK_STR(p.events[0].data.p, "l1\nl2\nl3\n\n");
        sse_parser_free(&p);
    }
    free(frame);
}

TEST(large_data_round_trips)
{
    size_t len = 1u << 20;
    char *data = malloc(len);
    check_rng r = {check_seed()};
    const char *why;
    REQUIRE(data != NULL);
    for (size_t i = 0; i < len; i++) {
        uint32_t k = check_below(&r, 64);
        data[i] = k == 0 ? '\r' : k == 1 ? '\n' : (char)('a' + k % 26);
    }
    why = sse_roundtrip("1-1", 3, "big", 3, data, len);
    if (why != NULL) fprintf(stderr, "  %s\n", why);
    CHECK(why == NULL);
    free(data);
}

/* Bytes that matter to the format, often; anything else sometimes. */
static char random_byte(check_rng *r)
{
    static const char special[] = "\r\n\0 :a";
    uint32_t k = check_below(r, 10);
    if (k < 6) return special[k];
    return (char)check_below(r, 256);
}

static size_t random_len(check_rng *r)
{
    uint32_t k = check_below(r, 100);
    if (k < 10) return 0;
    if (k < 90) return check_below(r, 16);
    return check_below(r, 600);
}

TEST(property_random_inputs_round_trip)
{
    check_rng r = {check_seed()};
    unsigned rounds = 40000 / check_slow();
    char id[600], ev[600], data[600];

    for (unsigned round = 0; round < rounds; round++) {
        size_t idlen = random_len(&r), evlen = random_len(&r), datalen = random_len(&r);
        bool has_id = check_below(&r, 4) != 0, has_ev = check_below(&r, 4) != 0;
        /* Fields that are valid most of the time, so the encoding paths get
         * the bulk of the rounds and the rejects still get their share. */
        bool clean = check_below(&r, 4) != 0;
        const char *why;
        for (size_t i = 0; i < idlen; i++) {
            id[i] = random_byte(&r);
            if (clean && (id[i] == '\r' || id[i] == '\n' || id[i] == '\0')) id[i] = '.';
        }
        for (size_t i = 0; i < evlen; i++) {
            ev[i] = random_byte(&r);
            if (clean && (ev[i] == '\r' || ev[i] == '\n' || ev[i] == '\0')) ev[i] = '.';
        }
        for (size_t i = 0; i < datalen; i++) data[i] = random_byte(&r);
        why = sse_roundtrip(has_id ? id : NULL, idlen, has_ev ? ev : NULL, evlen, data, datalen);
        if (why != NULL) {
            CHECK(why == NULL);
            fprintf(stderr, "  round %u (CHECK_SEED=%#llx): %s\n  id ", round,
                    (unsigned long long)check_seed(), why);
            if (has_id) check_escape(stderr, id, idlen);
            fputs("\n  event ", stderr);
            if (has_ev) check_escape(stderr, ev, evlen);
            fputs("\n  data ", stderr);
            check_escape(stderr, data, datalen);
            fputc('\n', stderr);
            return;
        }
    }
}

CHECK_MAIN
