/*
 * The memory backend's bookkeeping without the reactor (memory.c): the LRU
 * of backlogs (at most max_backlog_channels keep one), the TTL sweep, and
 * what a channel new to the table assumes it lost. On a hub built by hand
 * (fake_hub.h); the backend's resume is covered end to end in test_hub.c.
 */
#include <string.h>

#include "check.h"
#include "fake_hub.h"
#include "memory.h"

static spillway_hub *fake_hub(uint32_t backlog, uint32_t max_channels, uint32_t outbox)
{
    spillway_hub *hub = fake_hub_bare(backlog, max_channels, outbox);
    REQUIRE_INT(spillway_memory_backend_new(hub, NULL, 0), ==, 0);
    return hub;
}

/* The LRU list is a consistent doubly linked list of lru_count channels,
 * each with a backlog. */
static void check_lru(spillway_memory *m)
{
    uint32_t n = 0;
    spillway_channel *prev = NULL;
    for (spillway_channel *ch = m->lru_head; ch != NULL; ch = ch->lru_next) {
        if (ch->lru_prev != prev) CHECK(!"LRU back pointer broken");
        if (ch->ring_len == 0) CHECK(!"a channel without backlog on the LRU");
        prev = ch;
        if (++n > 100000) break;
    }
    CHECK(m->lru_tail == prev);
    CHECK_U64(n, ==, m->lru_count);
    CHECK_U64(n, <=, m->hub->cfg.max_backlog_channels);
}

/* What the memory backend's publish (memory.c) does with a message. */
static void publish(spillway_hub *hub, const char *name, uint64_t seq)
{
    spillway_memory *m = hub->backend.self;
    spillway_channel *ch = spillway_chtab_get(hub, name, strlen(name));
    spillway_frame *f = msg(seq, 8);
    REQUIRE(ch != NULL);
    if (hub->cfg.backlog_size > 0) spillway_lru_touch(m, ch);
    REQUIRE_INT(spillway_backlog_push(hub, ch, f), ==, 0);
    spillway_channel_fanout(hub, ch, f);
    spillway_channel_maybe_release(hub, ch);
    spillway_frame_unref(f);
}

static spillway_channel *find(spillway_hub *hub, const char *name)
{
    return spillway_chtab_find(&hub->chans, name, strlen(name));
}

TEST(lru_evicts_the_least_recently_published)
{
    spillway_hub *hub = fake_hub(4, 3, 1 << 20);
    spillway_memory *m = hub->backend.self;
    spillway_conn *c = calloc(1, sizeof(*c));
    spillway_channel *c3;

    REQUIRE(c != NULL);
    publish(hub, "c0", 1);
    publish(hub, "c1", 2);
    publish(hub, "c2", 3);
    check_lru(m);
    CHECK_U64(m->lru_count, ==, 3);
    /* A fourth channel pushes out the oldest, which had nothing else to live
     * for: it leaves the table, and the hub remembers what it lost. */
    publish(hub, "c3", 4);
    check_lru(m);
    CHECK(find(hub, "c0") == NULL);
    CHECK(m->evicted.ms == 1 && m->evicted.seq == 1);
    CHECK_U64(atomic_load(&hub->st_backlog_messages), ==, 3);

    /* Publishing again makes a channel young: c2 goes before c1. */
    publish(hub, "c1", 5);
    publish(hub, "c4", 6);
    check_lru(m);
    CHECK(find(hub, "c1") != NULL);
    CHECK(find(hub, "c2") == NULL);
    CHECK(m->evicted.seq == 3);

    /* A channel with a subscriber loses its backlog but stays. */
    c->mem = calloc(1, sizeof(spillway_member));
    REQUIRE(c->mem != NULL);
    c3 = find(hub, "c3");
    REQUIRE(c3 != NULL);
    REQUIRE_INT(spillway_channel_add_sub(c3, c, 0), ==, 0);
    c->nmem = 1;
    c->last = (spillway_id){1, 1000}; /* so fanout queues nothing on this fake */
    publish(hub, "c5", 7);
    publish(hub, "c6", 8);
    check_lru(m);
    CHECK(find(hub, "c3") == c3);
    CHECK_U64(c3->ring_len, ==, 0);
    CHECK(c3->trimmed.seq == 4);
    CHECK(c3->lru_prev == NULL && c3->lru_next == NULL && m->lru_head != c3);
    CHECK(m->evicted.seq == 5); /* c1, last published as 1-5 */

    /* A channel new to the table assumes it lost what was evicted anywhere. */
    {
        spillway_channel *fresh = spillway_chtab_get(hub, "fresh", 5);
        REQUIRE(fresh != NULL);
        CHECK_INT(spillway_id_cmp(fresh->trimmed, m->evicted), ==, 0);
    }
    spillway_channel_remove_sub(hub, c3, c->mem[0].idx);
    free(c->mem);
    free(c);
    fake_hub_free(hub);
}

TEST(sweep_drops_backlogs_older_than_the_ttl)
{
    spillway_hub *hub = fake_hub(4, 100, 1 << 20);
    spillway_memory *m = hub->backend.self;
    hub->cfg.backlog_ttl_s = 2;
    publish(hub, "old", 1);
    hub->now = T0 + 1000;
    publish(hub, "mid", 2);
    hub->now = T0 + 1999;
    publish(hub, "new", 3);

    spillway_backlog_sweep(m);
    CHECK(find(hub, "old") != NULL);
    hub->now = T0 + 2000; /* exactly the TTL after "old" */
    spillway_backlog_sweep(m);
    CHECK(find(hub, "old") == NULL);
    CHECK(find(hub, "mid") != NULL);
    CHECK(m->evicted.seq == 1);
    hub->now = T0 + 3500;
    spillway_backlog_sweep(m);
    CHECK(find(hub, "mid") == NULL && find(hub, "new") != NULL);
    hub->now = T0 + 1000000;
    spillway_backlog_sweep(m);
    CHECK_U64(hub->chans.count, ==, 0);
    CHECK_U64(m->lru_count, ==, 0);
    CHECK(m->lru_head == NULL && m->lru_tail == NULL);
    CHECK_U64(atomic_load(&hub->st_backlog_messages), ==, 0);

    /* TTL 0: kept forever. */
    hub->cfg.backlog_ttl_s = 0;
    publish(hub, "kept", 4);
    hub->now += 1000000000u;
    spillway_backlog_sweep(m);
    CHECK(find(hub, "kept") != NULL);
    fake_hub_free(hub);
}

CHECK_MAIN
