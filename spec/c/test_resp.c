/*
 * resp.c: replies through hiredis's redisReader with our object hooks (every
 * bulk string becomes a spillway_frame), fed whole, byte by byte and in
 * random splits; and the command encoder, whose output must parse back.
 */
#include "check.h"
#include "resp.h"
#include "tbuf.h"

/* ---- a canonical text form of a reply, to compare trees in one go ------ */

static void sb_fmt(tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(tbuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    tbuf_put(b, tmp, (size_t)n);
}

/* Bytes, with anything unprintable as \xNN; long strings by length and a
 * checksum only, so expectations stay short. */
static void sb_bytes(tbuf *b, const char *s, size_t n)
{
    if (n > 64) {
        uint32_t h = 2166136261u;
        for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
        sb_fmt(b, "<%zu bytes %08x>", n, h);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 32 || c >= 127 || c == '\\') sb_fmt(b, "\\x%02x", c);
        else tbuf_put(b, (const char *)&c, 1);
    }
}

/* STRING s<len>:<bytes>  STATUS +<text>  ERROR -<text>  INTEGER :<n>
 * NIL _  ARRAY [a,b]. Also checks what every string must be: a fresh frame
 * with one reference and no id. */
static void describe(tbuf *b, const spillway_rv *v)
{
    if (v == NULL) {
        tbuf_put(b, "NULL", 4);
        return;
    }
    if (v->type == SW_RV_STRING || v->type == SW_RV_STATUS || v->type == SW_RV_ERROR) {
        CHECK(v->str != NULL);
        if (v->str == NULL) return;
        CHECK_U64(v->str->refs, ==, 1);
        CHECK(spillway_id_is_zero(v->str->id));
        CHECK_U64(v->elements, ==, 0);
    }
    switch (v->type) {
    case SW_RV_STRING:
        sb_fmt(b, "s%u:", v->str->len);
        sb_bytes(b, v->str->data, v->str->len);
        break;
    case SW_RV_STATUS:
        tbuf_put(b, "+", 1);
        sb_bytes(b, v->str->data, v->str->len);
        break;
    case SW_RV_ERROR:
        tbuf_put(b, "-", 1);
        sb_bytes(b, v->str->data, v->str->len);
        break;
    case SW_RV_INTEGER:
        CHECK(v->str == NULL);
        sb_fmt(b, ":%lld", v->integer);
        break;
    case SW_RV_NIL:
        CHECK(v->str == NULL && v->elements == 0);
        tbuf_put(b, "_", 1);
        break;
    case SW_RV_ARRAY:
        CHECK(v->str == NULL);
        tbuf_put(b, "[", 1);
        for (size_t i = 0; i < v->elements; i++) {
            if (i > 0) tbuf_put(b, ",", 1);
            describe(b, v->element[i]);
        }
        tbuf_put(b, "]", 1);
        break;
    default:
        sb_fmt(b, "?%d", v->type);
    }
}

/* ---- the replies ------------------------------------------------------- */

typedef struct sample {
    const char *wire;
    size_t len;
    const char *want;
} sample;

#define S(wire, want) {wire, sizeof(wire) - 1, want}

static const sample SAMPLES[] = {
    S("+OK\r\n", "+OK"),
    S("+\r\n", "+"),
    S("-ERR unknown command 'x'\r\n", "-ERR unknown command 'x'"),
    S("-NOSCRIPT No matching script\r\n", "-NOSCRIPT No matching script"),
    S(":0\r\n", ":0"),
    S(":-42\r\n", ":-42"),
    S(":9223372036854775807\r\n", ":9223372036854775807"),
    S("$5\r\nhello\r\n", "s5:hello"),
    S("$0\r\n\r\n", "s0:"),
    /* CR, LF and NUL inside a bulk string are data. */
    S("$8\r\na\r\nb\0c\rd\r\n", "s8:a\\x0d\\x0ab\\x00c\\x0dd"),
    S("$-1\r\n", "_"),
    S("*-1\r\n", "_"),
    S("*0\r\n", "[]"),
    S("*5\r\n$3\r\nfoo\r\n:1\r\n$-1\r\n+QUEUED\r\n-ERR x\r\n", "[s3:foo,:1,_,+QUEUED,-ERR x]"),
    S("*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n*1\r\n*0\r\n", "[[:1,:2],[[[]]]]"),
    /* Subscribe confirmation and a pub/sub message carrying a whole frame. */
    S("*3\r\n$9\r\nsubscribe\r\n$10\r\nspillway:a\r\n:1\r\n", "[s9:subscribe,s10:spillway:a,:1]"),
    S("*3\r\n$7\r\nmessage\r\n$10\r\nspillway:a\r\n$43\r\n"
      "id: 1700000000000-3\nevent: chat\ndata: hi\r\n\n\r\n",
      "[s7:message,s10:spillway:a,s43:id: 1700000000000-3\\x0aevent: chat\\x0adata: hi\\x0d\\x0a\\x0a]"),
    /* The shape of the resume script's answer. */
    S("*3\r\n$15\r\n1700000000000-9\r\n*2\r\n:0\r\n:1\r\n*4\r\n:0\r\n$3\r\nf-1\r\n:1\r\n$3\r\nf-2\r\n",
      "[s15:1700000000000-9,[:0,:1],[:0,s3:f-1,:1,s3:f-2]]"),
};
#define NSAMPLES (sizeof(SAMPLES) / sizeof(SAMPLES[0]))

/* The whole conversation, plus one big bulk string (hiredis grows its buffer
 * and the reply spans many feeds). */
static char *stream_bytes(size_t *len, char **bigp, size_t *biglen)
{
    tbuf b = {0};
    size_t n = 200000;
    char *big = malloc(n);
    REQUIRE(big != NULL);
    for (size_t i = 0; i < n; i++) big[i] = (char)(i * 7 + 3);
    for (size_t i = 0; i < NSAMPLES; i++) tbuf_put(&b, SAMPLES[i].wire, SAMPLES[i].len);
    sb_fmt(&b, "$%zu\r\n", n);
    tbuf_put(&b, big, n);
    tbuf_put(&b, "\r\n", 2);
    *len = b.len;
    *bigp = big;
    *biglen = n;
    return b.p;
}

/* Checks the reply at position idx of the conversation. */
static void check_reply(size_t idx, spillway_rv *v, const char *big, size_t biglen)
{
    tbuf d = {0};
    if (idx < NSAMPLES) {
        describe(&d, v);
        if (d.p == NULL) tbuf_put(&d, "", 0);
        CHECK_STR(d.p, SAMPLES[idx].want);
    } else {
        CHECK(idx == NSAMPLES);
        REQUIRE(v->type == SW_RV_STRING && v->str != NULL);
        CHECK_U64(v->str->refs, ==, 1);
        CHECK_MEM(v->str->data, v->str->len, big, biglen);
    }
    free(d.p);
}

/* Feeds the stream in the chunk sizes chunk() picks, draining replies after
 * every feed; all replies must come out, in order, then nothing. */
static void run_split(size_t (*chunk)(void *ctx, size_t left), void *ctx)
{
    size_t len, biglen, off = 0, got = 0;
    char *big, *s = stream_bytes(&len, &big, &biglen);
    spillway_resp_reader *r = spillway_resp_reader_new();
    const char *err = NULL;

    REQUIRE(r != NULL);
    while (off < len) {
        size_t n = chunk(ctx, len - off);
        spillway_rv *v;
        int rc;
        if (n > len - off) n = len - off;
        REQUIRE_INT(spillway_resp_feed(r, s + off, n, &err), ==, 0);
        off += n;
        while ((rc = spillway_resp_next(r, &v, &err)) == 1) {
            check_reply(got++, v, big, biglen);
            spillway_rv_free(v);
        }
        REQUIRE_INT(rc, ==, 0);
    }
    CHECK_U64(got, ==, NSAMPLES + 1);
    spillway_resp_reader_free(r);
    free(s);
    free(big);
}

static size_t chunk_all(void *ctx, size_t left)
{
    (void)ctx;
    return left;
}

static size_t chunk_one(void *ctx, size_t left)
{
    (void)ctx;
    (void)left;
    return 1;
}

static size_t chunk_random(void *ctx, size_t left)
{
    check_rng *r = ctx;
    (void)left;
    switch (check_below(r, 4)) {
    case 0: return 1;
    case 1: return 1 + check_below(r, 8);
    case 2: return 1 + check_below(r, 100);
    default: return 1 + check_below(r, 20000);
    }
}

TEST(replies_whole)
{
    run_split(chunk_all, NULL);
}

TEST(replies_one_byte_at_a_time)
{
    run_split(chunk_one, NULL);
}

TEST(replies_in_random_splits)
{
    check_rng r = {check_seed()};
    for (int i = 0; i < 60; i++) run_split(chunk_random, &r);
}

/* Every reply alone: with its last byte missing the reader must say "more"
 * and hold nothing back afterwards. */
TEST(partial_reply_waits_for_its_last_byte)
{
    for (size_t i = 0; i < NSAMPLES; i++) {
        spillway_resp_reader *r = spillway_resp_reader_new();
        spillway_rv *v = NULL;
        const char *err = NULL;
        REQUIRE(r != NULL);
        REQUIRE_INT(spillway_resp_feed(r, SAMPLES[i].wire, SAMPLES[i].len - 1, &err), ==, 0);
        CHECK_INT(spillway_resp_next(r, &v, &err), ==, 0);
        REQUIRE_INT(spillway_resp_feed(r, SAMPLES[i].wire + SAMPLES[i].len - 1, 1, &err), ==, 0);
        REQUIRE_INT(spillway_resp_next(r, &v, &err), ==, 1);
        check_reply(i, v, NULL, 0);
        spillway_rv_free(v);
        CHECK_INT(spillway_resp_next(r, &v, &err), ==, 0);
        spillway_resp_reader_free(r);
    }
}

TEST(protocol_error_after_good_replies)
{
    static const char wire[] = "+OK\r\n:5\r\n?what\r\n+LATER\r\n";
    spillway_resp_reader *r = spillway_resp_reader_new();
    spillway_rv *v = NULL;
    const char *err = NULL;
    REQUIRE(r != NULL);
    REQUIRE_INT(spillway_resp_feed(r, wire, sizeof(wire) - 1, &err), ==, 0);
    REQUIRE_INT(spillway_resp_next(r, &v, &err), ==, 1);
    CHECK(spillway_rv_is(v, "OK"));
    spillway_rv_free(v);
    REQUIRE_INT(spillway_resp_next(r, &v, &err), ==, 1);
    CHECK(v->type == SW_RV_INTEGER && v->integer == 5);
    spillway_rv_free(v);
    CHECK_INT(spillway_resp_next(r, &v, &err), ==, -1);
    REQUIRE(err != NULL);
    CHECK(strstr(err, "Protocol error") != NULL);
    /* The reader stays broken: the link has to be reconnected. */
    err = NULL;
    CHECK_INT(spillway_resp_feed(r, "+OK\r\n", 5, &err), ==, -1);
    CHECK(err != NULL);
    spillway_resp_reader_free(r);
}

/* A half-built nested reply is freed with the reader (LeakSanitizer checks). */
TEST(reader_freed_mid_reply)
{
    static const char wire[] = "*3\r\n$3\r\nabc\r\n*2\r\n$2\r\nxy\r\n$10\r\n12345";
    spillway_resp_reader *r = spillway_resp_reader_new();
    spillway_rv *v = NULL;
    const char *err = NULL;
    REQUIRE(r != NULL);
    REQUIRE_INT(spillway_resp_feed(r, wire, sizeof(wire) - 1, &err), ==, 0);
    CHECK_INT(spillway_resp_next(r, &v, &err), ==, 0);
    spillway_resp_reader_free(r);
    spillway_resp_reader_free(NULL);
    spillway_rv_free(NULL);
}

TEST(rv_is_and_starts)
{
    spillway_resp_reader *r = spillway_resp_reader_new();
    static const char wire[] = "+OK\r\n-ERR boom\r\n:1\r\n$0\r\n\r\n";
    spillway_rv *v[4];
    const char *err;
    REQUIRE(r != NULL);
    REQUIRE_INT(spillway_resp_feed(r, wire, sizeof(wire) - 1, &err), ==, 0);
    for (int i = 0; i < 4; i++) REQUIRE_INT(spillway_resp_next(r, &v[i], &err), ==, 1);
    CHECK(spillway_rv_is(v[0], "OK"));
    CHECK(!spillway_rv_is(v[0], "OKAY"));
    CHECK(!spillway_rv_is(v[0], "O"));
    CHECK(spillway_rv_starts(v[0], "O"));
    CHECK(spillway_rv_starts(v[0], ""));
    CHECK(!spillway_rv_starts(v[0], "OKAY"));
    CHECK(spillway_rv_starts(v[1], "ERR "));
    CHECK(!spillway_rv_is(v[2], "1"));
    CHECK(!spillway_rv_starts(v[2], ""));
    CHECK(spillway_rv_is(v[3], ""));
    CHECK(!spillway_rv_is(NULL, ""));
    CHECK(!spillway_rv_starts(NULL, ""));
    for (int i = 0; i < 4; i++) spillway_rv_free(v[i]);
    spillway_resp_reader_free(r);
}

/* ---- hostile shapes ---------------------------------------------------- */

/* n arrays, each holding the next, the innermost empty: "*1\r\n" x (n-1)
 * then "*0\r\n". The caller frees it. */
static char *nested(size_t n, size_t *len)
{
    char *s = malloc(4 * n);
    REQUIRE(s != NULL && n > 0);
    for (size_t i = 0; i + 1 < n; i++) memcpy(s + 4 * i, "*1\r\n", 4);
    memcpy(s + 4 * (n - 1), "*0\r\n", 4);
    *len = 4 * n;
    return s;
}

/* Feeds s whole, then asks for a reply: what spillway_resp_next said. */
static int parse_whole(const char *s, size_t len, spillway_rv **v, const char **err)
{
    spillway_resp_reader *r = spillway_resp_reader_new();
    int rc;
    REQUIRE(r != NULL);
    *v = NULL;
    *err = NULL;
    rc = spillway_resp_feed(r, s, len, err);
    if (rc == 0) rc = spillway_resp_next(r, v, err);
    spillway_resp_reader_free(r);
    return rc;
}

TEST(nesting_up_to_the_cap_parses)
{
    size_t len;
    char *s = nested(SPILLWAY_RESP_MAX_DEPTH, &len);
    spillway_rv *v;
    const char *err;
    tbuf d = {0};
    REQUIRE_INT(parse_whole(s, len, &v, &err), ==, 1);
    describe(&d, v);
    CHECK_STR(d.p, "[[[[]]]]");
    spillway_rv_free(v);
    free(d.p);
    free(s);
}

/* One array more than the cap is a protocol error that names the cap, with
 * any hiredis: 0.14 refuses nine arrays on its own (with its own message),
 * so the cap has to be below that to be the one that speaks. */
TEST(nesting_past_the_cap_is_a_protocol_error)
{
    size_t sizes[] = {SPILLWAY_RESP_MAX_DEPTH + 1, 8, 9, 100};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t len;
        char *s = nested(sizes[k], &len);
        spillway_rv *v;
        const char *err;
        CHECK_INT(parse_whole(s, len, &v, &err), ==, -1);
        CHECK(v == NULL);
        REQUIRE(err != NULL);
        CHECK_STR(err, "Protocol error: a reply nested more than 4 arrays deep");
        free(s);
    }
}

/* hiredis 1.x does not cap nesting: 200,000 nested arrays (800 KB) used to be
 * built in full and then freed by recursion, which overflows the stack
 * (under ASan at once). Now the reader refuses them at the cap, fed whole or
 * in pieces, and frees what it built. */
TEST(two_hundred_thousand_nested_arrays_through_the_reader)
{
    size_t len;
    char *s = nested(200000, &len);
    for (size_t step = 4; step <= len; step *= 1000) {
        spillway_resp_reader *r = spillway_resp_reader_new();
        spillway_rv *v = NULL;
        const char *err = NULL;
        int rc = 0;
        REQUIRE(r != NULL);
        for (size_t off = 0; off < len && rc == 0; off += step) {
            rc = spillway_resp_feed(r, s + off, SW_MIN(step, len - off), &err);
            while (rc == 0 && (rc = spillway_resp_next(r, &v, &err)) == 1) spillway_rv_free(v);
        }
        CHECK_INT(rc, ==, -1);
        REQUIRE(err != NULL);
        CHECK_STR(err, "Protocol error: a reply nested more than 4 arrays deep");
        spillway_resp_reader_free(r);
    }
    free(s);
}

/* The free path on its own, whatever the reader lets through: a chain
 * 200,000 deep and a wide, deep tree, built by hand, freed without
 * recursion (ASan's stack is small; LeakSanitizer checks that all of it
 * went). */
TEST(rv_free_is_iterative)
{
    spillway_rv *root = NULL;
    for (int i = 0; i < 200000; i++) {
        spillway_rv *v = calloc(1, sizeof(*v));
        REQUIRE(v != NULL);
        v->type = SW_RV_ARRAY;
        if (root != NULL) {
            v->element = malloc(sizeof(*v->element));
            REQUIRE(v->element != NULL);
            v->element[0] = root;
            v->elements = v->cap = 1;
        }
        root = v;
    }
    spillway_rv_free(root);

    /* Every node three children (one a frame, one NULL slot), 12 levels. */
    root = NULL;
    for (int level = 0; level < 12; level++) {
        spillway_rv *v = calloc(1, sizeof(*v));
        REQUIRE(v != NULL);
        v->type = SW_RV_ARRAY;
        v->element = calloc(3, sizeof(*v->element));
        REQUIRE(v->element != NULL);
        v->elements = v->cap = 3;
        v->element[0] = root;
        v->element[1] = calloc(1, sizeof(*v));
        REQUIRE(v->element[1] != NULL);
        v->element[1]->type = SW_RV_STRING;
        v->element[1]->str = spillway_frame_copy("x", 1);
        root = v;
    }
    spillway_rv_free(root);
}

/* An array's memory follows what arrives, not what it announces: hiredis
 * 1.x allows 2^32-1 elements, 0.14 INT_MAX; neither is allocated up front. */
TEST(huge_announced_array_costs_only_what_arrived)
{
    static const char wire[] = "*2147483647\r\n:1\r\n:2\r\n$1\r\nx\r\n";
    spillway_resp_reader *r = spillway_resp_reader_new();
    spillway_rv *v = NULL;
    const char *err = NULL;
    REQUIRE(r != NULL);
    REQUIRE_INT(spillway_resp_feed(r, wire, sizeof(wire) - 1, &err), ==, 0);
    CHECK_INT(spillway_resp_next(r, &v, &err), ==, 0);
    spillway_resp_reader_free(r); /* frees the three elements that came */
}

/* Arrays that grow past their first slots keep every element in order. */
TEST(big_array_grows_in_order)
{
    tbuf b = {0};
    size_t n = 5000;
    spillway_resp_reader *r = spillway_resp_reader_new();
    spillway_rv *v = NULL;
    const char *err = NULL;
    REQUIRE(r != NULL);
    sb_fmt(&b, "*%zu\r\n", n);
    for (size_t i = 0; i < n; i++) sb_fmt(&b, ":%zu\r\n", i);
    for (size_t off = 0; off < b.len; off += 7) {
        REQUIRE_INT(spillway_resp_feed(r, b.p + off, SW_MIN(7u, b.len - off), &err), ==, 0);
        if (off + 7 < b.len) REQUIRE_INT(spillway_resp_next(r, &v, &err), ==, 0);
    }
    REQUIRE_INT(spillway_resp_next(r, &v, &err), ==, 1);
    REQUIRE(v->type == SW_RV_ARRAY);
    REQUIRE_U64(v->elements, ==, n);
    for (size_t i = 0; i < n; i++) {
        if (v->element[i] == NULL || v->element[i]->type != SW_RV_INTEGER || v->element[i]->integer != (long long)i) {
            CHECK(!"element out of place");
            break;
        }
    }
    spillway_rv_free(v);
    spillway_resp_reader_free(r);
    free(b.p);
}

/* A bulk string over SPILLWAY_FRAME_MAX is a value of its own kind (with its
 * length), not a parse error and not confused with RESP3 types. */
TEST(oversized_bulk_is_toobig)
{
    size_t n = SPILLWAY_FRAME_MAX + 1;
    char head[32];
    int k = snprintf(head, sizeof(head), "$%zu\r\n", n);
    char *body = calloc(1, n + 2);
    spillway_resp_reader *r = spillway_resp_reader_new();
    spillway_rv *v = NULL;
    const char *err = NULL;
    REQUIRE(body != NULL && r != NULL);
    memcpy(body + n, "\r\n", 2);
    REQUIRE_INT(spillway_resp_feed(r, head, (size_t)k, &err), ==, 0);
    REQUIRE_INT(spillway_resp_feed(r, body, n + 2, &err), ==, 0);
    REQUIRE_INT(spillway_resp_next(r, &v, &err), ==, 1);
    CHECK_INT(v->type, ==, SW_RV_TOOBIG);
    CHECK_INT(v->integer, ==, (long long)n);
    CHECK(v->str == NULL);
    spillway_rv_free(v);
    spillway_resp_reader_free(r);
    free(body);
}

/* ---- commands ---------------------------------------------------------- */

/* Parses b's unsent bytes as exactly one reply and returns its description
 * (the caller frees it). */
static char *parse_back(const spillway_buf *b)
{
    spillway_resp_reader *r = spillway_resp_reader_new();
    spillway_rv *v = NULL;
    const char *err = NULL;
    tbuf d = {0};
    if (r == NULL) abort();
    if (spillway_resp_feed(r, b->data + b->off, b->len - b->off, &err) != 0 ||
        spillway_resp_next(r, &v, &err) != 1) {
        CHECK(!"the command did not parse back");
        spillway_resp_reader_free(r);
        return strdup("<unparsable>");
    }
    describe(&d, v);
    spillway_rv_free(v);
    /* Nothing left over after the one command. */
    CHECK_INT(spillway_resp_next(r, &v, &err), ==, 0);
    spillway_resp_reader_free(r);
    return d.p;
}

TEST(command_exact_bytes)
{
    spillway_buf b = {0};
    const char *argv[] = {"SUBSCRIBE", "spillway:a", ""};
    static const char want[] = "*3\r\n$9\r\nSUBSCRIBE\r\n$10\r\nspillway:a\r\n$0\r\n\r\n";
    char *d;
    REQUIRE_INT(spillway_buf_command(&b, 3, argv, NULL), ==, 0);
    CHECK_MEM(b.data, b.len, want, sizeof(want) - 1);
    d = parse_back(&b);
    CHECK_STR(d, "[s9:SUBSCRIBE,s10:spillway:a,s0:]");
    free(d);
    spillway_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
}

TEST(command_binary_args_with_lengths)
{
    spillway_buf b = {0};
    const char *argv[] = {"PUBLISH", "ch", "a\r\n\0b"};
    const size_t lens[] = {7, 2, 5};
    char *d;
    REQUIRE_INT(spillway_buf_command(&b, 3, argv, lens), ==, 0);
    d = parse_back(&b);
    CHECK_STR(d, "[s7:PUBLISH,s2:ch,s5:a\\x0d\\x0a\\x00b]");
    free(d);
    spillway_buf_free(&b);
}

TEST(command_incremental_with_arg2)
{
    spillway_buf b = {0};
    char *d;
    REQUIRE_INT(spillway_buf_begin(&b, 4), ==, 0);
    REQUIRE_INT(spillway_buf_arg(&b, "UNSUBSCRIBE", 11), ==, 0);
    REQUIRE_INT(spillway_buf_arg2(&b, "ns:", 3, "one", 3), ==, 0);
    REQUIRE_INT(spillway_buf_arg2(&b, "ns:", 3, NULL, 0), ==, 0);
    REQUIRE_INT(spillway_buf_arg2(&b, NULL, 0, "two", 3), ==, 0);
    d = parse_back(&b);
    CHECK_STR(d, "[s11:UNSUBSCRIBE,s6:ns:one,s3:ns:,s3:two]");
    free(d);
    spillway_buf_free(&b);
}

/* Arguments far beyond the first 1 KiB block, many of them: the buffer grows
 * and every byte must still be where it belongs. */
TEST(command_large_and_many_args)
{
    spillway_buf b = {0};
    size_t big = 300000;
    char *payload = malloc(big);
    spillway_resp_reader *r = spillway_resp_reader_new();
    spillway_rv *v = NULL;
    const char *err;
    REQUIRE(payload != NULL && r != NULL);
    for (size_t i = 0; i < big; i++) payload[i] = (char)(i * 13);
    REQUIRE_INT(spillway_buf_begin(&b, 1002), ==, 0);
    REQUIRE_INT(spillway_buf_arg(&b, "EVALSHA", 7), ==, 0);
    for (int i = 0; i < 1000; i++) {
        char tmp[16];
        int n = snprintf(tmp, sizeof(tmp), "k%d", i);
        REQUIRE_INT(spillway_buf_arg(&b, tmp, (size_t)n), ==, 0);
    }
    REQUIRE_INT(spillway_buf_arg(&b, payload, big), ==, 0);
    REQUIRE_INT(spillway_resp_feed(r, b.data, b.len, &err), ==, 0);
    REQUIRE_INT(spillway_resp_next(r, &v, &err), ==, 1);
    REQUIRE(v->type == SW_RV_ARRAY && v->elements == 1002);
    CHECK(spillway_rv_is(v->element[0], "EVALSHA"));
    CHECK(spillway_rv_is(v->element[1], "k0"));
    CHECK(spillway_rv_is(v->element[1000], "k999"));
    CHECK_MEM(v->element[1001]->str->data, v->element[1001]->str->len, payload, big);
    spillway_rv_free(v);
    spillway_resp_reader_free(r);
    free(payload);
    spillway_buf_free(&b);
}

/* `off` marks what the reactor already wrote; the unsent bytes are
 * data[off..len). A new command goes after them. When everything was written
 * and the new command does not fit behind it, the buffer starts over from
 * its beginning instead of growing. */
TEST(command_buffer_reuse_after_writes)
{
    spillway_buf b = {0};
    const char *ping[] = {"PING"};
    char *d;
    size_t first, cap;

    REQUIRE_INT(spillway_buf_command(&b, 1, ping, NULL), ==, 0);
    first = b.len;
    b.off = b.len; /* all of it went out */
    REQUIRE_INT(spillway_buf_command(&b, 1, ping, NULL), ==, 0);
    CHECK_U64(b.len, ==, 2 * first);
    d = parse_back(&b);
    CHECK_STR(d, "[s4:PING]");
    free(d);

    /* Fill up to two bytes short of the capacity, write it all, then a
     * command whose first piece does not fit behind it: it starts over at
     * offset 0 of the same block. */
    cap = b.cap;
    {
        char fill[2048];
        /* "*1\r\n" + "$NNN\r\n" + NNN bytes + "\r\n", NNN of three digits. */
        size_t k = cap - 2 - (b.len + 4) - 8;
        memset(fill, 'f', sizeof(fill));
        REQUIRE(k >= 100 && k <= 999);
        REQUIRE_INT(spillway_buf_begin(&b, 1), ==, 0);
        REQUIRE_INT(spillway_buf_arg(&b, fill, k), ==, 0);
        REQUIRE_U64(b.len, ==, cap - 2);
        b.off = b.len;
        REQUIRE_INT(spillway_buf_begin(&b, 2), ==, 0);
        REQUIRE_INT(spillway_buf_arg(&b, "ECHO", 4), ==, 0);
        REQUIRE_INT(spillway_buf_arg(&b, fill, 3), ==, 0);
        CHECK_U64(b.cap, ==, cap);
        CHECK_U64(b.off, ==, 0);
        d = parse_back(&b);
        CHECK_STR(d, "[s4:ECHO,s3:fff]");
        free(d);
    }
    /* The same with five bytes not yet sent: they must stay, in front of
     * the new command, and the buffer grows instead. */
    spillway_buf_reset(&b);
    {
        char fill[2048];
        size_t k, unsent_at;
        memset(fill, 'g', sizeof(fill));
        REQUIRE_INT(spillway_buf_command(&b, 1, ping, NULL), ==, 0);
        k = cap - 2 - (b.len + 4) - 8;
        REQUIRE(k >= 100 && k <= 999);
        REQUIRE_INT(spillway_buf_begin(&b, 1), ==, 0);
        REQUIRE_INT(spillway_buf_arg(&b, fill, k), ==, 0);
        REQUIRE_U64(b.len, ==, cap - 2);
        b.off = b.len - 5; /* "ggg\r\n" of the filler is still unsent */
        unsent_at = b.off;
        REQUIRE_INT(spillway_buf_begin(&b, 1), ==, 0);
        REQUIRE_INT(spillway_buf_arg(&b, "PING", 4), ==, 0);
        CHECK_U64(b.off, ==, unsent_at);
        CHECK_U64(b.cap, >, cap);
        CHECK_MEM(b.data + b.off, b.len - b.off, "ggg\r\n*1\r\n$4\r\nPING\r\n", 19);
    }

    /* reset keeps a small buffer and gives a big one back. */
    spillway_buf_reset(&b);
    CHECK(b.data != NULL && b.len == 0 && b.off == 0);
    {
        size_t n = 3u << 20;
        char *huge = calloc(1, n);
        REQUIRE(huge != NULL);
        REQUIRE_INT(spillway_buf_begin(&b, 1), ==, 0);
        REQUIRE_INT(spillway_buf_arg(&b, huge, n), ==, 0);
        free(huge);
        spillway_buf_reset(&b);
        CHECK(b.data == NULL && b.cap == 0);
    }
    spillway_buf_free(&b);
}

CHECK_MAIN
