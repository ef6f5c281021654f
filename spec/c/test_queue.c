/*
 * queue.c: the MPSC command queue with its coalesced eventfd wake-up.
 *
 * The same file is built twice: with ASan+UBSan, and with TSan (where the
 * stress test is the point: four producers and a consumer that waits on the
 * eventfd with poll(), as the reactor does with epoll).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "check.h"
#include "queue.h"

typedef struct item {
    spillway_qnode node; /* first, as queue.h asks */
    uint32_t producer;
    uint32_t seq;
    uint64_t stamp;
} item;

static bool readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static size_t list_len(spillway_qnode *n)
{
    size_t k = 0;
    for (; n != NULL; n = n->next) k++;
    return k;
}

TEST(fifo_order_and_one_coalesced_wakeup)
{
    spillway_queue q;
    item it[5];
    uint64_t counter = 0;
    spillway_qnode *list;

    REQUIRE_INT(spillway_queue_init(&q, 100), ==, 0);
    CHECK(!readable(spillway_queue_fd(&q)));
    CHECK(spillway_queue_take(&q) == NULL);
    for (uint32_t i = 0; i < 5; i++) {
        it[i].seq = i;
        CHECK_INT(spillway_queue_push(&q, &it[i].node, 0, NULL, NULL), ==, 0);
    }
    /* Five pushes, one write: the counter is 1, not 5. Read it ourselves
     * (take's own read then finds nothing, which it must tolerate). */
    CHECK(readable(spillway_queue_fd(&q)));
    CHECK_INT(read(spillway_queue_fd(&q), &counter, sizeof(counter)), ==, sizeof(counter));
    CHECK_U64(counter, ==, 1);

    list = spillway_queue_take(&q);
    CHECK_U64(list_len(list), ==, 5);
    for (uint32_t i = 0; list != NULL; i++, list = list->next) CHECK_U64(((item *)list)->seq, ==, i);
    CHECK(!readable(spillway_queue_fd(&q)));
    CHECK(spillway_queue_take(&q) == NULL);

    /* After a take the next push must wake the consumer again. */
    CHECK_INT(spillway_queue_push(&q, &it[0].node, 0, NULL, NULL), ==, 0);
    CHECK(readable(spillway_queue_fd(&q)));
    list = spillway_queue_take(&q);
    CHECK(list == &it[0].node && list->next == NULL);
    CHECK(!readable(spillway_queue_fd(&q)));
    spillway_queue_destroy(&q);
    CHECK_INT(spillway_queue_fd(&q), ==, -1);
}

static unsigned stamp_calls;

static void stamp_counter(spillway_qnode *node, void *arg)
{
    spillway_queue *q = arg;
    /* The contract: the stamp runs with the queue lock held. */
    int rc = pthread_mutex_trylock(&q->lock);
    CHECK_INT(rc, ==, EBUSY);
    if (rc == 0) pthread_mutex_unlock(&q->lock);
    /* And before the node is linked: the queue does not hold it yet. */
    CHECK(q->head != node);
    ((item *)node)->stamp = ++stamp_calls;
}

TEST(limit_refuses_force_overrides_and_stamp_skips_refusals)
{
    spillway_queue q;
    item it[6];
    spillway_qnode *list;

    stamp_calls = 0;
    REQUIRE_INT(spillway_queue_init(&q, 3), ==, 0);
    for (int i = 0; i < 3; i++)
        CHECK_INT(spillway_queue_push(&q, &it[i].node, 0, stamp_counter, &q), ==, 0);
    CHECK_INT(spillway_queue_push(&q, &it[3].node, 0, stamp_counter, &q), ==, -EAGAIN);
    CHECK_U64(stamp_calls, ==, 3);
    /* FORCE gets past the limit (the stop command must always get in). */
    CHECK_INT(spillway_queue_push(&q, &it[4].node, SPILLWAY_QUEUE_FORCE, stamp_counter, &q), ==, 0);
    CHECK_U64(stamp_calls, ==, 4);
    list = spillway_queue_take(&q);
    REQUIRE_U64(list_len(list), ==, 4);
    /* The refused node is not in the list; the stamps follow queue order. */
    {
        item *want[] = {&it[0], &it[1], &it[2], &it[4]};
        for (int i = 0; list != NULL; i++, list = list->next) {
            CHECK(list == &want[i]->node);
            CHECK_U64(((item *)list)->stamp, ==, (uint64_t)i + 1);
        }
    }
    /* A take empties the count: the limit applies afresh. */
    for (int i = 0; i < 3; i++) CHECK_INT(spillway_queue_push(&q, &it[i].node, 0, NULL, NULL), ==, 0);
    CHECK_INT(spillway_queue_push(&q, &it[5].node, 0, NULL, NULL), ==, -EAGAIN);
    CHECK_U64(list_len(spillway_queue_take(&q)), ==, 3);
    spillway_queue_destroy(&q);
}

TEST(close_refuses_everything_and_returns_the_rest)
{
    spillway_queue q;
    item it[3];
    spillway_qnode *list;

    stamp_calls = 0;
    REQUIRE_INT(spillway_queue_init(&q, 10), ==, 0);
    CHECK_INT(spillway_queue_push(&q, &it[0].node, 0, NULL, NULL), ==, 0);
    CHECK_INT(spillway_queue_push(&q, &it[1].node, 0, NULL, NULL), ==, 0);
    list = spillway_queue_close(&q);
    CHECK(list == &it[0].node && list->next == &it[1].node && it[1].node.next == NULL);
    CHECK_INT(spillway_queue_push(&q, &it[2].node, 0, stamp_counter, &q), ==, -EPIPE);
    CHECK_INT(spillway_queue_push(&q, &it[2].node, SPILLWAY_QUEUE_FORCE, stamp_counter, &q), ==,
              -EPIPE);
    CHECK_U64(stamp_calls, ==, 0);
    CHECK(spillway_queue_take(&q) == NULL);
    CHECK(spillway_queue_close(&q) == NULL);
    spillway_queue_destroy(&q);
}

TEST(abandon_closes_only_the_eventfd)
{
    spillway_queue q;
    item it;
    int fd;
    REQUIRE_INT(spillway_queue_init(&q, 10), ==, 0);
    fd = spillway_queue_fd(&q);
    CHECK_INT(spillway_queue_push(&q, &it.node, 0, NULL, NULL), ==, 0);
    spillway_queue_abandon(&q);
    CHECK_INT(spillway_queue_fd(&q), ==, -1);
    CHECK_INT(fcntl(fd, F_GETFD), ==, -1);
    /* The nodes are left alone (a fork child must not touch them). */
    CHECK(q.head == &it.node);
    /* destroy after abandon must not close a second time. */
    spillway_queue_destroy(&q);
}

/* ---- the stress test ---------------------------------------------------- */

enum { PRODUCERS = 4 };

typedef struct stress {
    spillway_queue q;
    uint32_t per_producer;
    item *items[PRODUCERS];
    uint64_t next_stamp; /* guarded by the queue lock (it is only touched by the stamp) */
    atomic_uint_fast64_t refused;
} stress;

typedef struct producer_arg {
    stress *s;
    uint32_t id;
} producer_arg;

static void stamp_global(spillway_qnode *node, void *arg)
{
    stress *s = arg;
    ((item *)node)->stamp = ++s->next_stamp;
}

static void *producer_main(void *arg)
{
    producer_arg *pa = arg;
    stress *s = pa->s;
    for (uint32_t i = 0; i < s->per_producer; i++) {
        item *it = &s->items[pa->id][i];
        int rc;
        it->producer = pa->id;
        it->seq = i;
        /* A full queue refuses: back off by yielding and try again (the
         * binding raises instead; here every node must get through). */
        while ((rc = spillway_queue_push(&s->q, &it->node, 0, stamp_global, s)) == -EAGAIN) {
            atomic_fetch_add(&s->refused, 1);
            sched_yield();
        }
        if (rc != 0) {
            CHECK_INT(rc, ==, 0);
            return NULL;
        }
    }
    return NULL;
}

TEST(stress_four_producers_one_polling_consumer)
{
    stress s;
    pthread_t th[PRODUCERS];
    producer_arg pa[PRODUCERS];
    uint32_t expect[PRODUCERS] = {0};
    uint64_t got = 0, total, takes = 0, last_stamp = 0;
    bool order_ok = true;

    memset(&s, 0, sizeof(s));
    s.per_producer = 100000 / check_slow();
    total = (uint64_t)s.per_producer * PRODUCERS;
    atomic_init(&s.refused, 0);
    /* A limit well below the burst, so the -EAGAIN path runs concurrently. */
    REQUIRE_INT(spillway_queue_init(&s.q, 4096), ==, 0);
    for (int p = 0; p < PRODUCERS; p++) {
        s.items[p] = calloc(s.per_producer, sizeof(item));
        REQUIRE(s.items[p] != NULL);
    }
    for (int p = 0; p < PRODUCERS; p++) {
        pa[p] = (producer_arg){&s, (uint32_t)p};
        REQUIRE_INT(pthread_create(&th[p], NULL, producer_main, &pa[p]), ==, 0);
    }

    /* The consumer: wait on the eventfd like the reactor, take everything.
     * A lost wake-up shows as a poll that times out with work left. */
    while (got < total) {
        struct pollfd pfd = {.fd = spillway_queue_fd(&s.q), .events = POLLIN};
        int n = poll(&pfd, 1, (int)(5000 * check_slow()));
        spillway_qnode *list;
        if (n <= 0) {
            CHECK(!"poll timed out (or failed): a wake-up was lost");
            /* Let the producers out: a closed queue refuses with -EPIPE. */
            spillway_queue_close(&s.q);
            break;
        }
        list = spillway_queue_take(&s.q);
        takes++;
        for (; list != NULL; list = list->next) {
            item *it = (item *)list;
            /* Per producer, nodes come out in the order they went in. */
            if (it->seq != expect[it->producer]) order_ok = false;
            expect[it->producer] = it->seq + 1;
            /* Stamps taken under the lock follow queue order globally. */
            if (it->stamp != last_stamp + 1) order_ok = false;
            last_stamp = it->stamp;
            got++;
        }
    }
    for (int p = 0; p < PRODUCERS; p++) pthread_join(th[p], NULL);
    /* Anything that slipped in after the last poll (there must be nothing). */
    CHECK(spillway_queue_take(&s.q) == NULL || got < total);
    CHECK(order_ok);
    CHECK_U64(got, ==, total);
    for (int p = 0; p < PRODUCERS; p++) CHECK_U64(expect[p], ==, s.per_producer);
    CHECK_U64(last_stamp, ==, total);
    /* Coalescing: far fewer takes than pushes (one wake-up serves a burst). */
    CHECK_U64(takes, <, total);
    if (getenv("CHECK_VERBOSE"))
        printf("    %llu nodes in %llu takes, %llu refusals\n", (unsigned long long)got,
               (unsigned long long)takes, (unsigned long long)atomic_load(&s.refused));
    spillway_queue_destroy(&s.q);
    for (int p = 0; p < PRODUCERS; p++) free(s.items[p]);
}

CHECK_MAIN
