/*
 * The hub's log (spillway_hub_log, spillway_hub_log_wait): one slot per
 * kind, the rate limit per kind, the wait a Ruby thread blocks in, its
 * interrupt, the stop, and the reset lines the reactor writes. A real hub
 * (memory backend, reactor thread); spillway_hub_log is called from the
 * test's threads, which its contract allows.
 */
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "hub_config.h"
#include "hub_internal.h"

#define INTERVAL_MS 300u

static spillway_hub *start(uint32_t interval_ms)
{
    spillway_config cfg;
    spillway_hub *hub = NULL;
    char err[256] = "";
    int rc;

    cfg = test_hub_config();
    cfg.log_interval_ms = interval_ms;
    rc = spillway_hub_new(&cfg, &hub, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "  spillway_hub_new: %d %s\n", rc, err);
    REQUIRE_INT(rc, ==, 0);
    return hub;
}

static void finish(spillway_hub *hub)
{
    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    spillway_hub_free(hub);
}

/* One wait with a generous timeout; the entries land in out. */
static int wait_log(spillway_hub *hub, spillway_log_entry *out, size_t max, uint32_t timeout_ms)
{
    return spillway_hub_log_wait(hub, out, max, timeout_ms * check_slow(), NULL);
}

static uint64_t errors(spillway_hub *hub)
{
    spillway_stats st;
    spillway_hub_stats(hub, &st);
    return st.errors;
}

/* A thousand identical errors: the first is due at once, the other 999
 * make one summary at the end of the interval. Nothing is lost from the
 * count, and stats still count every one. */
TEST(a_flood_is_one_entry_and_one_summary)
{
    spillway_hub *hub = start(INTERVAL_MS);
    spillway_log_entry out[16];
    uint64_t t0, total = 0;
    int n, entries = 0;

    t0 = check_now_ms();
    spillway_hub_log(hub, SW_LOG_PROTOCOL, "junk message %d", 0);
    n = wait_log(hub, out, 16, 5000);
    REQUIRE_INT(n, ==, 1);
    CHECK_STR(out[0].kind, "protocol");
    CHECK(!out[0].warning);
    CHECK_U64(out[0].count, ==, 1);
    CHECK_STR(out[0].message, "junk message 0");
    CHECK_U64(check_now_ms() - t0, <, (uint64_t)INTERVAL_MS * check_slow());
    total += out[0].count;
    entries++;

    for (int i = 1; i < 1000; i++) spillway_hub_log(hub, SW_LOG_PROTOCOL, "junk message %d", i);
    while (total < 1000) {
        n = wait_log(hub, out, 16, 5000);
        REQUIRE_INT(n, >=, 1);
        for (int i = 0; i < n; i++) total += out[i].count;
        entries += n;
    }
    CHECK_U64(total, ==, 1000);
    CHECK_INT(entries, ==, 2);
    CHECK_STR(out[n - 1].message, "junk message 999");
    /* The summary covers the interval since the first entry. */
    CHECK_U64(out[n - 1].span_ms, >=, INTERVAL_MS - 5);
    CHECK_U64(errors(hub), ==, 1000);
    {
        spillway_stats st;
        spillway_hub_stats(hub, &st);
        CHECK_STR(st.last_error, "junk message 999");
    }
    finish(hub);
}

/* A kind in its quiet interval holds back only itself. */
TEST(kinds_are_limited_each_on_its_own)
{
    spillway_hub *hub = start(60000);
    spillway_log_entry out[16];

    spillway_hub_log(hub, SW_LOG_REDIS_LINK, "link %d", 1);
    REQUIRE_INT(wait_log(hub, out, 16, 5000), ==, 1);
    CHECK_STR(out[0].kind, "redis_link");
    CHECK(out[0].warning); /* retried on its own: a warning, though an error */
    spillway_hub_log(hub, SW_LOG_REDIS_LINK, "link %d", 2); /* quiet for a minute */
    spillway_hub_log(hub, SW_LOG_RESET, "stream reset on x (%s)", "why");
    REQUIRE_INT(wait_log(hub, out, 16, 5000), ==, 1);
    CHECK_STR(out[0].kind, "reset");
    CHECK(out[0].warning);
    /* A reset is no error: stats count the two link errors only. */
    CHECK_U64(errors(hub), ==, 2);
    /* Nothing else is due: the wait times out. */
    CHECK_INT(wait_log(hub, out, 16, 50), ==, 0);
    finish(hub);
}

typedef struct log_waiter {
    spillway_hub *hub;
    spillway_waiter w;
    pthread_t thread;
    atomic_bool done;
    int rc;
    spillway_log_entry out[16];
} log_waiter;

static void *log_waiter_main(void *p)
{
    log_waiter *lw = p;
    lw->rc = spillway_hub_log_wait(lw->hub, lw->out, 16, 30000, &lw->w);
    atomic_store(&lw->done, true);
    return NULL;
}

static void log_waiter_start(log_waiter *lw, spillway_hub *hub)
{
    memset(lw, 0, sizeof(*lw));
    lw->hub = hub;
    lw->w = (spillway_waiter)SPILLWAY_WAITER_INIT;
    REQUIRE_INT(pthread_create(&lw->thread, NULL, log_waiter_main, lw), ==, 0);
}

/* The reader blocks without spinning and wakes for a due entry at once; an
 * interrupt ends its wait and no other. */
TEST(the_wait_wakes_for_an_entry_and_for_its_interrupt_only)
{
    spillway_hub *hub = start(INTERVAL_MS);
    log_waiter a, b;
    uint64_t t0;

    log_waiter_start(&a, hub);
    t0 = check_now_ms();
    spillway_hub_log(hub, SW_LOG_REDIS_CONNECT, "refused");
    CHECK(WAIT_UNTIL(atomic_load(&a.done), 2000));
    pthread_join(a.thread, NULL);
    CHECK_INT(a.rc, ==, 1);
    CHECK_STR(a.out[0].message, "refused");
    CHECK_U64(check_now_ms() - t0, <, 2000 * check_slow());

    log_waiter_start(&a, hub);
    log_waiter_start(&b, hub);
    spillway_hub_log_interrupt(hub, &a.w);
    CHECK(WAIT_UNTIL(atomic_load(&a.done), 2000));
    pthread_join(a.thread, NULL);
    CHECK_INT(a.rc, ==, -EINTR);
    CHECK(!atomic_load(&b.done));
    /* b waits on until the stop, which ends every wait. */
    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    CHECK(WAIT_UNTIL(atomic_load(&b.done), 2000));
    pthread_join(b.thread, NULL);
    CHECK_INT(b.rc, ==, -EPIPE);
    spillway_hub_free(hub);
}

/* After the stop, what waited for its summary is due at once, and then the
 * log says it is over. */
TEST(the_stop_hands_over_every_pending_entry)
{
    spillway_hub *hub = start(60000);
    spillway_log_entry out[16];

    spillway_hub_log(hub, SW_LOG_ASYNC_PUBLISH, "failed %d", 1);
    REQUIRE_INT(wait_log(hub, out, 16, 5000), ==, 1);
    for (int i = 2; i <= 5; i++) spillway_hub_log(hub, SW_LOG_ASYNC_PUBLISH, "failed %d", i);
    spillway_hub_error(hub, "something %s", "else"); /* the kind "error" */
    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    {
        int n = wait_log(hub, out, 16, 5000);
        bool seen_async = false, seen_error = false;
        REQUIRE_INT(n, ==, 2);
        for (int i = 0; i < n; i++) {
            if (strcmp(out[i].kind, "async_publish") == 0) {
                seen_async = true;
                CHECK_U64(out[i].count, ==, 4);
                CHECK_STR(out[i].message, "failed 5");
            } else if (strcmp(out[i].kind, "error") == 0) {
                seen_error = true;
                CHECK_STR(out[i].message, "something else");
            }
        }
        CHECK(seen_async && seen_error);
    }
    CHECK_INT(wait_log(hub, out, 16, 5000), ==, -EPIPE);
    spillway_hub_free(hub);
}

/* A stream that comes back with a Last-Event-ID that is not an id gets a
 * reset (memory backend): the log names its channels, as many as fit in a
 * line, and why. */
TEST(a_reset_is_logged_with_its_channels_and_reason)
{
    spillway_hub *hub = start(INTERVAL_MS);
    spillway_log_entry out[16];
    char names[5][64];
    const char *chans[5];
    size_t lens[5];
    char err[256] = "";
    int sv[2];

    for (int i = 0; i < 5; i++) {
        /* 60 characters each: two fit in the line, three do not. */
        snprintf(names[i], sizeof(names[i]), "%c%059d", 'a' + i, i);
        chans[i] = names[i];
        lens[i] = strlen(names[i]);
    }
    REQUIRE_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), ==, 0);
    REQUIRE_INT(spillway_hub_reserve(hub), ==, 0);
    REQUIRE_INT(spillway_hub_attach(hub, sv[0], 0, chans, lens, 5, "junk", 4, err, sizeof(err)), ==, 0);
    REQUIRE_INT(wait_log(hub, out, 16, 5000), ==, 1);
    CHECK_STR(out[0].kind, "reset");
    {
        char want[256];
        snprintf(want, sizeof(want), "stream reset on %s, %s and 3 more (the Last-Event-ID is not an event id)",
                 names[0], names[1]);
        CHECK_STR(out[0].message, want);
    }
    close(sv[1]);

    /* One name longer than the line: cut, not left out. */
    {
        char longname[301], want[256];
        const char *one[1] = {longname};
        size_t onelen[1] = {300};
        memset(longname, 'x', 300);
        longname[300] = '\0';
        REQUIRE_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), ==, 0);
        REQUIRE_INT(spillway_hub_reserve(hub), ==, 0);
        REQUIRE_INT(spillway_hub_attach(hub, sv[0], 0, one, onelen, 1, "junk", 4, err, sizeof(err)), ==, 0);
        /* Inside the interval: it comes as the summary, at its end. */
        REQUIRE_INT(wait_log(hub, out, 16, 5000), ==, 1);
        CHECK_U64(out[0].count, ==, 1);
        snprintf(want, sizeof(want), "stream reset on %.140s (the Last-Event-ID is not an event id)", longname);
        CHECK_STR(out[0].message, want);
        close(sv[1]);
    }
    finish(hub);
}

CHECK_MAIN
