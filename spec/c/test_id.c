/*
 * id.c: the text form of message ids (parse/format) and the generator.
 */
#include "check.h"
#include "id.h"

static int parse(const char *s, spillway_id *out)
{
    return spillway_id_parse(s, strlen(s), out);
}

TEST(parse_accepts_both_forms)
{
    spillway_id id = {9, 9};
    REQUIRE_INT(parse("123-45", &id), ==, 0);
    CHECK_U64(id.ms, ==, 123);
    CHECK_U64(id.seq, ==, 45);
    /* A bare number is <ms>-0, like a Redis stream id. */
    REQUIRE_INT(parse("123", &id), ==, 0);
    CHECK_U64(id.ms, ==, 123);
    CHECK_U64(id.seq, ==, 0);
    REQUIRE_INT(parse("0-0", &id), ==, 0);
    CHECK(spillway_id_is_zero(id));
    /* Leading zeros are digits like any other, within 20 of them. */
    REQUIRE_INT(parse("00000000000000000007-00000000000000000008", &id), ==, 0);
    CHECK_U64(id.ms, ==, 7);
    CHECK_U64(id.seq, ==, 8);
}

TEST(parse_accepts_the_largest_values)
{
    spillway_id id;
    REQUIRE_INT(parse("18446744073709551615-18446744073709551615", &id), ==, 0);
    CHECK_U64(id.ms, ==, UINT64_MAX);
    CHECK_U64(id.seq, ==, UINT64_MAX);
    REQUIRE_INT(parse("18446744073709551615", &id), ==, 0);
    CHECK_U64(id.ms, ==, UINT64_MAX);
}

TEST(parse_rejects_what_is_not_an_id)
{
    static const char *bad[] = {
        "", "-", "1-", "-1", "1-2-3", "1--2", " 1-2", "1-2 ", "1 -2", "+1-2", "1-+2", "-1-2",
        "1-2\n", "0x10", "1.5", "a", "1-a", "１-2",
        "123456789012345678901",                     /* 21 digits */
        "1-123456789012345678901",                   /* 21 digits in seq */
        "18446744073709551616",                      /* UINT64_MAX + 1 */
        "18446744073709551616-0", "0-18446744073709551616",
        "99999999999999999999",                      /* 20 digits, over */
        "18446744073709551620",                      /* overflow on the last digit */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        spillway_id id = {42, 42};
        int rc = parse(bad[i], &id);
        if (rc != -1) fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
        CHECK_INT(rc, ==, -1);
        /* A rejected text leaves *out alone. */
        CHECK(id.ms == 42 && id.seq == 42);
    }
    {
        spillway_id id;
        CHECK_INT(spillway_id_parse(NULL, 0, &id), ==, -1);
        /* Exactly len bytes count: the text after them is not looked at, and
         * a NUL inside them is not a digit. */
        CHECK_INT(spillway_id_parse("12-3xyz", 4, &id), ==, 0);
        CHECK(id.ms == 12 && id.seq == 3);
        CHECK_INT(spillway_id_parse("12\0003", 4, &id), ==, -1);
    }
}

TEST(format_then_parse_round_trips)
{
    static const spillway_id ids[] = {
        {0, 0}, {1, 0}, {0, 1}, {1700000000000ull, 0}, {1700000000000ull, 12345},
        {UINT64_MAX, UINT64_MAX}, {UINT64_MAX, 0}, {9, 10}, {10, 9}, {1000000000000000000ull, 1},
    };
    check_rng r = {check_seed()};
    char buf[SPILLWAY_ID_TEXT_MAX + 8];

    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]) + 10000; i++) {
        spillway_id id, back = {0, 0};
        size_t n;
        if (i < sizeof(ids) / sizeof(ids[0])) {
            id = ids[i];
        } else {
            /* Random widths, so every digit count gets exercised. */
            id.ms = check_rand(&r) >> check_below(&r, 64);
            id.seq = check_rand(&r) >> check_below(&r, 64);
        }
        memset(buf, 'Z', sizeof(buf));
        n = spillway_id_format(id, buf);
        CHECK_U64(n, <, SPILLWAY_ID_TEXT_MAX);
        CHECK_U64(strlen(buf), ==, n);
        CHECK(buf[SPILLWAY_ID_TEXT_MAX] == 'Z');
        REQUIRE_INT(spillway_id_parse(buf, n, &back), ==, 0);
        CHECK_INT(spillway_id_cmp(id, back), ==, 0);
        {
            char want[64];
            snprintf(want, sizeof(want), "%llu-%llu", (unsigned long long)id.ms,
                     (unsigned long long)id.seq);
            CHECK_STR(buf, want);
        }
    }
    /* The longest text fills the buffer exactly. */
    CHECK_U64(spillway_id_format((spillway_id){UINT64_MAX, UINT64_MAX}, buf), ==,
              SPILLWAY_ID_TEXT_MAX - 1);
}

TEST(compare_orders_by_ms_then_seq)
{
    spillway_id a = {5, 9}, b = {6, 0}, c = {6, 1};
    CHECK_INT(spillway_id_cmp(a, b), ==, -1);
    CHECK_INT(spillway_id_cmp(b, a), ==, 1);
    CHECK_INT(spillway_id_cmp(b, c), ==, -1);
    CHECK_INT(spillway_id_cmp(c, c), ==, 0);
    CHECK_INT(spillway_id_cmp(spillway_id_max(a, c), c), ==, 0);
    CHECK_INT(spillway_id_cmp(spillway_id_max(c, a), c), ==, 0);
}

TEST(next_follows_the_clock)
{
    spillway_id last = {1000, 7}, id;
    id = spillway_id_next(last, 1001);
    CHECK(id.ms == 1001 && id.seq == 0);
    /* Same millisecond: the sequence counts up. */
    id = spillway_id_next(id, 1001);
    CHECK(id.ms == 1001 && id.seq == 1);
}

TEST(next_never_goes_backwards_when_the_clock_does)
{
    check_rng r = {check_seed()};
    spillway_id last = {5000, 0};
    uint64_t clock = 5000;

    for (int i = 0; i < 100000; i++) {
        spillway_id id;
        /* A clock that mostly moves on, sometimes stands still and sometimes
         * jumps back by up to a few seconds (NTP step, VM migration). */
        uint32_t k = check_below(&r, 10);
        if (k < 5) clock += check_below(&r, 3);
        else if (k < 8) clock -= SW_MIN(clock, check_below(&r, 3000));
        id = spillway_id_next(last, clock);
        if (spillway_id_cmp(id, last) <= 0) {
            CHECK(spillway_id_cmp(id, last) > 0);
            return;
        }
        /* While the clock is behind, the ms part stays put. */
        CHECK_U64(id.ms, ==, SW_MAX(clock, last.ms));
        last = id;
    }
}

/* The generator's contract (id.h) says it never goes backwards. At the top
 * of the sequence range seq + 1 wraps to 0 and the id goes back in time.
 * Only reachable when a generator starts near the top of the range (nothing
 * in the core seeds one there today), so this is a contract bug rather than a
 * live one; the fix is one line (see spec/c/README.md). */
TEST(next_at_seq_max_still_increases)
{
    spillway_id last = {7000, UINT64_MAX};
    spillway_id id = spillway_id_next(last, 6000);
    CHECK_INT(spillway_id_cmp(id, last), ==, 1);
    id = spillway_id_next(last, 7000);
    CHECK_INT(spillway_id_cmp(id, last), ==, 1);
}

TEST(wall_and_mono_clocks_are_in_milliseconds)
{
    uint64_t w = spillway_wall_ms(), m1 = spillway_mono_ms(), m2;
    /* 2020-01-01 .. 2100-01-01 in ms: a seconds or microseconds mix-up
     * would land far outside. */
    CHECK_U64(w, >, 1577836800000ull);
    CHECK_U64(w, <, 4102444800000ull);
    m2 = spillway_mono_ms();
    CHECK_U64(m2, >=, m1);
}

CHECK_MAIN
