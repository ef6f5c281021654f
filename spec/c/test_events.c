/*
 * events.c: the hub's event ring for a Ruby thread. Built with ASan+UBSan and
 * with TSan (a producer thread against a consumer that waits, as the reactor
 * and the notifications thread do).
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "check.h"
#include "events.h"

TEST(nothing_recorded_until_enabled_then_every_event_in_order)
{
    spillway_events e;
    spillway_event out[8];
    uint64_t dropped = 99;
    REQUIRE_INT(spillway_events_init(&e, 8), ==, 0);
    spillway_events_push(&e, SW_EV_RESET, 1, "off", "a");
    CHECK_INT(spillway_events_wait(&e, out, 8, 0, NULL, &dropped), ==, 0);
    CHECK_U64(dropped, ==, 0);
    spillway_events_enable(&e, true);
    spillway_events_push(&e, SW_EV_STREAM_CLOSE, 7, "client gone", "chat:1\nchat:2");
    spillway_events_push(&e, SW_EV_RESET, 8, "backlog trimmed", "x");
    spillway_events_push(&e, SW_EV_REDIS_ERROR, 0, "redis_link", NULL);
    REQUIRE_INT(spillway_events_wait(&e, out, 8, 0, NULL, NULL), ==, 3);
    CHECK_INT(out[0].kind, ==, SW_EV_STREAM_CLOSE);
    CHECK_U64(out[0].id, ==, 7);
    CHECK_STR(out[0].reason, "client gone");
    CHECK_STR(out[0].detail, "chat:1\nchat:2");
    CHECK(out[0].wall_ms > 0);
    CHECK_INT(out[1].kind, ==, SW_EV_RESET);
    CHECK_INT(out[2].kind, ==, SW_EV_REDIS_ERROR);
    CHECK_STR(out[2].detail, "");
    spillway_events_enable(&e, false);
    spillway_events_push(&e, SW_EV_RESET, 9, "off again", "x");
    CHECK_INT(spillway_events_wait(&e, out, 8, 0, NULL, NULL), ==, 0);
    spillway_events_destroy(&e);
}

TEST(a_full_ring_drops_the_oldest_and_counts_them_and_texts_are_cut_to_fit)
{
    spillway_events e;
    spillway_event out[4];
    char long_text[1000];
    uint64_t dropped = 0;
    REQUIRE_INT(spillway_events_init(&e, 4), ==, 0);
    spillway_events_enable(&e, true);
    for (uint64_t i = 1; i <= 10; i++) spillway_events_push(&e, SW_EV_RESET, i, "r", "d");
    REQUIRE_INT(spillway_events_wait(&e, out, 4, 0, NULL, &dropped), ==, 4);
    CHECK_U64(dropped, ==, 6);
    for (int i = 0; i < 4; i++) CHECK_U64(out[i].id, ==, (uint64_t)(7 + i));
    memset(long_text, 'x', sizeof(long_text) - 1);
    long_text[sizeof(long_text) - 1] = '\0';
    spillway_events_push(&e, SW_EV_REDIS_ERROR, 0, long_text, long_text);
    REQUIRE_INT(spillway_events_wait(&e, out, 4, 0, NULL, NULL), ==, 1);
    CHECK_U64(strlen(out[0].reason), ==, SPILLWAY_EVENT_TEXT - 1);
    CHECK_U64(strlen(out[0].detail), ==, SPILLWAY_EVENT_DETAIL - 1);
    spillway_events_destroy(&e);
}

struct interrupter {
    spillway_events *e;
    bool *flag;
};

static void *interrupt_later(void *p)
{
    struct interrupter *it = p;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    spillway_events_interrupt(it->e, it->flag);
    return NULL;
}

TEST(a_wait_ends_on_timeout_on_interrupt_and_on_close)
{
    spillway_events e;
    spillway_event out[2];
    bool interrupted = false;
    pthread_t th;
    struct interrupter it = {&e, &interrupted};
    uint64_t t0;
    REQUIRE_INT(spillway_events_init(&e, 2), ==, 0);
    spillway_events_enable(&e, true);
    t0 = spillway_mono_ms();
    CHECK_INT(spillway_events_wait(&e, out, 2, 30, &interrupted, NULL), ==, 0);
    CHECK(spillway_mono_ms() - t0 >= 25);
    REQUIRE_INT(pthread_create(&th, NULL, interrupt_later, &it), ==, 0);
    CHECK_INT(spillway_events_wait(&e, out, 2, 10000, &interrupted, NULL), ==, -EINTR);
    pthread_join(th, NULL);
    CHECK(!interrupted); /* taken by the wait it ended */
    spillway_events_push(&e, SW_EV_RESET, 1, "r", "d");
    spillway_events_close(&e);
    spillway_events_push(&e, SW_EV_RESET, 2, "after close", "d");
    CHECK_INT(spillway_events_wait(&e, out, 2, 10000, NULL, NULL), ==, 1); /* what was left */
    CHECK_U64(out[0].id, ==, 1);
    CHECK_INT(spillway_events_wait(&e, out, 2, 10000, NULL, NULL), ==, -EPIPE);
    spillway_events_destroy(&e);
}

#define PRODUCED 20000u

static void *produce(void *p)
{
    spillway_events *e = p;
    for (uint64_t i = 1; i <= PRODUCED; i++) spillway_events_push(e, SW_EV_STREAM_CLOSE, i, "gone", "c");
    return NULL;
}

TEST(a_producer_against_a_waiting_consumer_loses_nothing_it_does_not_count)
{
    spillway_events e;
    spillway_event out[64];
    pthread_t th;
    uint64_t got = 0, last = 0, dropped = 0;
    bool order_ok = true;
    REQUIRE_INT(spillway_events_init(&e, 256), ==, 0);
    spillway_events_enable(&e, true);
    REQUIRE_INT(pthread_create(&th, NULL, produce, &e), ==, 0);
    while (last < PRODUCED) {
        int n = spillway_events_wait(&e, out, 64, 2000, NULL, &dropped);
        if (n <= 0) break;
        for (int i = 0; i < n; i++) {
            if (out[i].id <= last) order_ok = false;
            last = out[i].id;
            got++;
        }
    }
    pthread_join(th, NULL);
    CHECK(order_ok);
    CHECK_U64(last, ==, PRODUCED);
    CHECK_U64(got + dropped, ==, PRODUCED);
    spillway_events_destroy(&e);
}

CHECK_MAIN
