/*
 * spillway_hub_flush and its interrupt, with more than one waiter.
 *
 * The hub is a Redis hub pointed at a port nobody listens on: the link never
 * comes up (every connect is refused), so an async publish waits in the hub
 * and a flush blocks until its timeout, its interrupt or the stop. That is
 * a real condition (Redis down), not a fake server.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "hub_config.h"
#include "hub_internal.h"

/* A TCP port on 127.0.0.1 that nothing listens on: bound, then closed. */
static int dead_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    REQUIRE(fd >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE_INT(bind(fd, (struct sockaddr *)&a, sizeof(a)), ==, 0);
    REQUIRE_INT(getsockname(fd, (struct sockaddr *)&a, &len), ==, 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static spillway_hub *start_unreachable(void)
{
    spillway_config cfg;
    spillway_hub *hub = NULL;
    char err[256] = "";
    int rc;

    cfg = test_hub_config();
    cfg.redis.host = "127.0.0.1";
    cfg.redis.port = dead_port();
    cfg.redis.connect_timeout_ms = 1000;
    cfg.redis.command_timeout_ms = 1000;
    cfg.redis.health_interval_ms = 5000;
    cfg.redis.backlog_size = 100;
    cfg.redis.async_limit = 1000;
    cfg.redis.unsubscribe_linger_ms = 1000;
    rc = spillway_hub_new(&cfg, &hub, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "  spillway_hub_new: %d %s\n", rc, err);
    REQUIRE_INT(rc, ==, 0);
    return hub;
}

/* One async publish that cannot reach Redis: every flush after it waits. */
static void publish_pending(spillway_hub *hub)
{
    char err[256] = "";
    uint64_t seq = 0;
    REQUIRE_INT(spillway_hub_publish_async(hub, "c", 1, NULL, 0, "x", 1, NULL, 0, &seq, err, sizeof(err)), ==, 0);
}

typedef struct flusher {
    spillway_hub *hub;
    uint32_t timeout_ms;
    spillway_waiter w;
    pthread_t thread;
    atomic_bool done;
    int rc;
    atomic_bool started;
    uint64_t ended_ms;
} flusher;

static void *flusher_main(void *p)
{
    flusher *f = p;
    atomic_store(&f->started, true);
    f->rc = spillway_hub_flush(f->hub, f->timeout_ms, &f->w);
    f->ended_ms = check_now_ms();
    atomic_store(&f->done, true);
    return NULL;
}

static void flusher_start(flusher *f, spillway_hub *hub, uint32_t timeout_ms)
{
    memset(f, 0, sizeof(*f));
    f->hub = hub;
    f->timeout_ms = timeout_ms;
    f->w = (spillway_waiter)SPILLWAY_WAITER_INIT;
    REQUIRE_INT(pthread_create(&f->thread, NULL, flusher_main, f), ==, 0);
}

static uint32_t waiters(spillway_hub *hub)
{
    return (uint32_t)atomic_load(&hub->flush_waiters);
}

/* Two threads flush; one is interrupted (Thread#kill, Timeout): it returns
 * -EINTR at once, and the other one is not woken with it: it waits on
 * until its own end (here the stop, which is not an interrupt). Before the
 * fix the interrupt was one flag in the hub: both returned -EINTR. */
TEST(an_interrupt_ends_only_the_flush_it_is_for)
{
    spillway_hub *hub = start_unreachable();
    flusher a, b;
    uint64_t t0;

    publish_pending(hub);
    flusher_start(&a, hub, 30000);
    flusher_start(&b, hub, 30000);
    REQUIRE(WAIT_UNTIL(waiters(hub) == 2, 5000));

    t0 = check_now_ms();
    spillway_hub_flush_interrupt(hub, &a.w);
    CHECK(WAIT_UNTIL(atomic_load(&a.done), 2000));
    CHECK_INT(a.rc, ==, -EINTR);
    CHECK_U64(a.ended_ms - t0, <, 2000 * check_slow());

    /* b is still in its flush. The stop ends it: the publish it waits for
     * fails (the stop fails whatever never reached Redis). */
    CHECK(!atomic_load(&b.done));
    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    CHECK(WAIT_UNTIL(atomic_load(&b.done), 5000));
    CHECK_INT(b.rc, ==, -EIO);
    pthread_join(a.thread, NULL);
    pthread_join(b.thread, NULL);
    spillway_hub_free(hub);
}

/* Ruby may run the unblock function after it installed it and before the
 * flush is inside its wait: that interrupt must not be lost. Before the fix
 * every flush cleared the hub's flag on entry and so waited out its whole
 * timeout. */
TEST(an_interrupt_before_the_wait_is_not_lost)
{
    spillway_hub *hub = start_unreachable();
    spillway_waiter w = SPILLWAY_WAITER_INIT;
    uint64_t t0;
    int rc;

    publish_pending(hub);
    spillway_hub_flush_interrupt(hub, &w);
    t0 = check_now_ms();
    rc = spillway_hub_flush(hub, 3000, &w);
    CHECK_INT(rc, ==, -EINTR);
    CHECK_U64(check_now_ms() - t0, <, 1000 * check_slow());
    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    spillway_hub_free(hub);
}

static atomic_bool churn_stop;

/* Flush after flush, each with a zero timeout: with the shared flag, each
 * of them cleared an interrupt meant for someone else. */
static void *churn_main(void *p)
{
    spillway_hub *hub = p;
    while (!atomic_load(&churn_stop)) spillway_hub_flush(hub, 0, NULL);
    return NULL;
}

/* An interrupt lands while other threads keep entering flush: it still
 * ends its own flush promptly, every time. */
TEST(an_interrupt_survives_other_flushes_starting)
{
    spillway_hub *hub = start_unreachable();
    pthread_t churn[2];
    unsigned rounds = 200 / check_slow() + 1, lost = 0;

    publish_pending(hub);
    atomic_store(&churn_stop, false);
    for (int i = 0; i < 2; i++) REQUIRE_INT(pthread_create(&churn[i], NULL, churn_main, hub), ==, 0);
    for (unsigned r = 0; r < rounds && lost == 0; r++) {
        flusher a;
        flusher_start(&a, hub, 2000);
        /* Sometimes before a is waiting, sometimes after: both must work. */
        if (r % 2 == 0) WAIT_UNTIL(atomic_load(&a.started) && waiters(hub) >= 1, 1000);
        spillway_hub_flush_interrupt(hub, &a.w);
        if (!WAIT_UNTIL(atomic_load(&a.done), 1000)) lost++;
        pthread_join(a.thread, NULL);
        if (a.rc != -EINTR) lost++;
    }
    CHECK_INT(lost, ==, 0);
    atomic_store(&churn_stop, true);
    for (int i = 0; i < 2; i++) pthread_join(churn[i], NULL);
    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    spillway_hub_free(hub);
}

CHECK_MAIN
