/*
 * idem.c: idempotency keys (the app's checked, the generated ones unique),
 * the TTL of generated keys and when a lost publish may be sent again.
 */
#include <string.h>

#include "check.h"
#include "idem.h"

TEST(app_keys_are_checked)
{
    char longest[SPILLWAY_IDEM_KEY_MAX + 1];
    memset(longest, 'k', sizeof(longest));
    CHECK(spillway_idem_key_ok("order-42-shipped", 16));
    CHECK(spillway_idem_key_ok(longest, SPILLWAY_IDEM_KEY_MAX));
    CHECK(!spillway_idem_key_ok(longest, SPILLWAY_IDEM_KEY_MAX + 1));
    CHECK(!spillway_idem_key_ok("", 0));
    CHECK(!spillway_idem_key_ok(NULL, 3));
    CHECK(!spillway_idem_key_ok("a\rb", 3));
    CHECK(!spillway_idem_key_ok("a\nb", 3));
    CHECK(!spillway_idem_key_ok("a\0b", 3));
    /* Any other byte is fine: a Redis key is binary. */
    CHECK(spillway_idem_key_ok("\xc3\xa9 \t:*", 6));
}

TEST(generated_keys_are_hex_and_distinct)
{
    char keys[256][SPILLWAY_IDEM_GEN_LEN + 1];
    for (int i = 0; i < 256; i++) {
        spillway_idem_generate(keys[i]);
        REQUIRE_INT((int)strlen(keys[i]), ==, SPILLWAY_IDEM_GEN_LEN);
        CHECK(strspn(keys[i], "0123456789abcdef") == SPILLWAY_IDEM_GEN_LEN);
        CHECK(spillway_idem_key_ok(keys[i], SPILLWAY_IDEM_GEN_LEN));
        for (int j = 0; j < i; j++) CHECK(strcmp(keys[i], keys[j]) != 0);
    }
}

TEST(generated_keys_outlive_every_retry)
{
    spillway_redis_config rc;
    memset(&rc, 0, sizeof(rc));
    rc.connect_timeout_ms = 1000;
    rc.command_timeout_ms = 1000;
    CHECK_U64(spillway_idem_generated_ttl_ms(&rc), ==, SPILLWAY_IDEM_GEN_TTL_MIN_MS);
    /* Long timeouts: twice the longest retry window (connect + 2 x command). */
    rc.connect_timeout_ms = 60000;
    rc.command_timeout_ms = 60000;
    CHECK_U64(spillway_idem_generated_ttl_ms(&rc), ==, 360000);
}

TEST(a_lost_publish_is_sent_again_only_while_its_key_lives)
{
    /* Put on the wire at 1000 ms, key for 5000 ms, Redis answers within
     * 1000 ms: a repeat must start before 5000. */
    CHECK(spillway_idem_may_resend(1000, 5000, 1000, 1000));
    CHECK(spillway_idem_may_resend(1000, 5000, 4999, 1000));
    CHECK(!spillway_idem_may_resend(1000, 5000, 5000, 1000));
    CHECK(!spillway_idem_may_resend(1000, 5000, 60000, 1000));
    /* A key shorter than a command timeout: never. */
    CHECK(!spillway_idem_may_resend(1000, 500, 1000, 1000));
}

CHECK_MAIN
