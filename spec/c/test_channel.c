/*
 * The reactor's data structures without the reactor: the channel table,
 * subscriber lists, the backlog ring, and a connection's outbox (against a
 * real socketpair and a real epoll set), driven through hub_internal.h on a
 * hub built by hand with a stub backend (the memory backend's LRU is in
 * test_memory.c). Single-threaded on purpose: every
 * step is deterministic, and the end-to-end behaviour is in test_hub.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "fake_hub.h"

/* The channel table's backend: a channel without subscribers and without
 * a backlog goes at once (what memory.c does, without its LRU). */
static void stub_join(void *self, spillway_conn *c)
{
    SW_UNUSED(self);
    SW_UNUSED(c);
}

static void stub_channel_unwanted(void *self, spillway_channel *ch)
{
    if (ch->ring_len == 0) spillway_channel_drop(self, ch);
}

static uint64_t stub_next_timer(void *self)
{
    SW_UNUSED(self);
    return UINT64_MAX;
}

static void stub_nothing(void *self)
{
    SW_UNUSED(self);
}

static size_t stub_memsize(const void *self)
{
    SW_UNUSED(self);
    return 0;
}

static const spillway_backend_ops stub_ops = {
    .name = "stub",
    .join = stub_join,
    .channel_unwanted = stub_channel_unwanted,
    .next_timer = stub_next_timer,
    .timers = stub_nothing,
    .free = stub_nothing,
    .memsize = stub_memsize,
};

static spillway_hub *fake_hub(uint32_t backlog, uint32_t max_channels, uint32_t outbox)
{
    spillway_hub *hub = fake_hub_bare(backlog, max_channels, outbox);
    hub->backend.ops = &stub_ops;
    hub->backend.self = hub;
    return hub;
}

/* A connection on one end of a socketpair; *peer gets the other end. */
static spillway_conn *socket_conn(spillway_hub *hub, int *peer, int sndbuf)
{
    int sv[2];
    spillway_conn *c;
    REQUIRE_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), ==, 0);
    if (sndbuf > 0) setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    c = spillway_conn_new(hub, sv[0], 0);
    REQUIRE(c != NULL);
    atomic_fetch_add(&hub->reserved, 1); /* conn_close gives the place back */
    spillway_wheel_insert(hub, c);
    *peer = sv[1];
    return c;
}

/* Reads whatever the peer has now (non-blocking) and appends it. */
static void drain(int fd, tbuf *into)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            tbuf_put(into, buf, (size_t)n);
            continue;
        }
        break;
    }
}

/* ---- the table --------------------------------------------------------- */

static void check_table(spillway_chtab *t)
{
    uint32_t seen = 0;
    CHECK(t->nbuckets >= 64 && (t->nbuckets & (t->nbuckets - 1)) == 0);
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) {
            if ((ch->hash & (t->nbuckets - 1)) != b) CHECK(!"channel in the wrong bucket");
            if (ch->name[ch->namelen] != '\0') CHECK(!"name not terminated");
            seen++;
        }
    }
    CHECK_U64(seen, ==, t->count);
}

TEST(chtab_thousands_of_names_and_resizes)
{
    spillway_hub *hub = fake_hub(10, 100000, 1 << 20);
    enum { N = 5000 };
    char name[32];

    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof(name), "chan:%d", i);
        spillway_channel *ch = spillway_chtab_get(hub, name, (size_t)n);
        REQUIRE(ch != NULL);
        CHECK_MEM(ch->name, ch->namelen, name, (size_t)n);
        /* Asking again finds the same channel, never a second one. */
        CHECK(spillway_chtab_get(hub, name, (size_t)n) == ch);
    }
    CHECK_U64(hub->chans.count, ==, N);
    CHECK_U64(atomic_load(&hub->st_channels), ==, N);
    /* It grew: at most one channel per bucket on average. */
    CHECK_U64(hub->chans.nbuckets, >=, N);
    check_table(&hub->chans);
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof(name), "chan:%d", i);
        spillway_channel *ch = spillway_chtab_find(&hub->chans, name, (size_t)n);
        if (ch == NULL || ch->namelen != n || memcmp(ch->name, name, (size_t)n) != 0) {
            CHECK(!"a channel went missing after the resize");
            break;
        }
    }
    CHECK(spillway_chtab_find(&hub->chans, "chan:5000", 9) == NULL);
    CHECK(spillway_chtab_find(&hub->chans, "chan:", 5) == NULL);
    CHECK(spillway_chtab_find(&hub->chans, "chan:1", 5) != spillway_chtab_find(&hub->chans, "chan:1", 6));

    /* Drop every other one; the rest stay findable. */
    for (int i = 0; i < N; i += 2) {
        int n = snprintf(name, sizeof(name), "chan:%d", i);
        spillway_channel_drop(hub, spillway_chtab_find(&hub->chans, name, (size_t)n));
    }
    CHECK_U64(hub->chans.count, ==, N / 2);
    CHECK_U64(atomic_load(&hub->st_channels), ==, N / 2);
    check_table(&hub->chans);
    for (int i = 0; i < N; i++) {
        int n = snprintf(name, sizeof(name), "chan:%d", i);
        bool there = spillway_chtab_find(&hub->chans, name, (size_t)n) != NULL;
        if (there != (i % 2 == 1)) {
            CHECK(there == (i % 2 == 1));
            break;
        }
    }
    fake_hub_free(hub);
}

TEST(chtab_name_limits_and_binary_names)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    char longname[SPILLWAY_MAX_CHANNEL_LEN + 1];
    spillway_channel *a, *b;

    memset(longname, 'n', sizeof(longname));
    CHECK(spillway_chtab_get(hub, "", 0) == NULL);
    CHECK(spillway_chtab_get(hub, longname, SPILLWAY_MAX_CHANNEL_LEN + 1) == NULL);
    CHECK(spillway_chtab_get(hub, longname, SPILLWAY_MAX_CHANNEL_LEN) != NULL);
    /* The table compares bytes: a NUL inside a name is just a byte. */
    a = spillway_chtab_get(hub, "a\0b", 3);
    b = spillway_chtab_get(hub, "a\0c", 3);
    CHECK(a != NULL && b != NULL && a != b);
    CHECK(spillway_chtab_find(&hub->chans, "a", 1) == NULL);
    CHECK_U64(hub->chans.count, ==, 3);
    fake_hub_free(hub);
}

/* ---- subscribers ------------------------------------------------------- */

/* Every subscriber record and membership record point at each other. */
static void check_subs(spillway_channel *ch)
{
    for (uint32_t i = 0; i < ch->nsubs; i++) {
        spillway_sub s = ch->subs[i];
        if (s.conn->mem[s.slot].ch != ch || s.conn->mem[s.slot].idx != i) {
            CHECK(!"subscriber and membership records disagree");
            return;
        }
    }
}

/* Multisite names ("<site>|<channel>", hub.h): one separator, a site of 1
 * to SPILLWAY_MAX_SITE_LEN bytes, a public name after it; the public part
 * is what leaves the core. */
TEST(site_names_one_separator_and_their_public_part)
{
    char site[SPILLWAY_MAX_SITE_LEN + 2];
    char name[SPILLWAY_MAX_SITE_LEN + 8];
    size_t publen;
    const char *pub;

    CHECK(spillway_channel_name_ok("a|chat:1", 8));
    CHECK(spillway_channel_name_ok("/global/news", 12));
    CHECK(!spillway_channel_name_ok("|chat", 5));
    CHECK(!spillway_channel_name_ok("a|", 2));
    CHECK(!spillway_channel_name_ok("a|b|c", 5));
    memset(site, 's', sizeof(site));
    memcpy(name, site, SPILLWAY_MAX_SITE_LEN);
    memcpy(name + SPILLWAY_MAX_SITE_LEN, "|c", 2);
    CHECK(spillway_channel_name_ok(name, SPILLWAY_MAX_SITE_LEN + 2));
    memcpy(name, site, SPILLWAY_MAX_SITE_LEN + 1);
    memcpy(name + SPILLWAY_MAX_SITE_LEN + 1, "|c", 2);
    CHECK(!spillway_channel_name_ok(name, SPILLWAY_MAX_SITE_LEN + 3));
    pub = spillway_channel_public("a|chat:1", 8, &publen);
    CHECK(publen == 6 && memcmp(pub, "chat:1", 6) == 0);
    pub = spillway_channel_public("chat:1", 6, &publen);
    CHECK(publen == 6 && memcmp(pub, "chat:1", 6) == 0);
}

TEST(swap_remove_keeps_back_pointers)
{
    enum { N = 40 };
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    spillway_conn *conns[N];
    spillway_channel *x = spillway_chtab_get(hub, "x", 1), *y = spillway_chtab_get(hub, "y", 1);
    spillway_frame *f = msg(1, 4);
    check_rng r = {check_seed()};
    uint32_t order[N];

    REQUIRE(x != NULL && y != NULL);
    for (int i = 0; i < N; i++) {
        conns[i] = calloc(1, sizeof(spillway_conn));
        REQUIRE(conns[i] != NULL);
        conns[i]->mem = calloc(2, sizeof(spillway_member));
        REQUIRE(conns[i]->mem != NULL);
        REQUIRE_INT(spillway_channel_add_sub(x, conns[i], 0), ==, 0);
        REQUIRE_INT(spillway_channel_add_sub(y, conns[i], 1), ==, 0);
        conns[i]->nmem = 2;
        order[i] = (uint32_t)i;
    }
    CHECK_U64(x->nsubs, ==, N);
    check_subs(x);
    check_subs(y);
    /* y keeps a backlog, so it outlives its subscribers. */
    REQUIRE_INT(spillway_backlog_push(hub, y, f), ==, 0);

    for (int i = N - 1; i > 0; i--) {
        uint32_t j = check_below(&r, (uint32_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int k = 0; k < N; k++) {
        spillway_conn *c = conns[order[k]];
        spillway_channel_remove_sub(hub, x, c->mem[0].idx);
        c->mem[0].ch = NULL;
        if (k < N - 1) {
            CHECK_U64(x->nsubs, ==, (uint64_t)(N - 1 - k));
            check_subs(x);
        }
    }
    /* The last subscriber of a channel without a backlog takes it away. */
    CHECK(spillway_chtab_find(&hub->chans, "x", 1) == NULL);

    for (int k = 0; k < N; k++) {
        spillway_conn *c = conns[order[(k * 7) % N]];
        spillway_channel_remove_sub(hub, y, c->mem[1].idx);
        c->mem[1].ch = NULL;
        if (k < N - 1) check_subs(y);
    }
    CHECK(spillway_chtab_find(&hub->chans, "y", 1) == y);
    CHECK_U64(y->nsubs, ==, 0);
    /* A big subscriber array is given back once empty. */
    CHECK(y->subs == NULL && y->capsubs == 0);
    for (int i = 0; i < N; i++) {
        free(conns[i]->mem);
        free(conns[i]);
    }
    spillway_frame_unref(f);
    fake_hub_free(hub);
}

/* ---- the busiest channels --------------------------------------------- */

/* A channel with `subs` subscribers (fake streams that already have every
 * message, so fan-out queues nothing) that gets `msgs` messages now. */
static spillway_channel *busy(spillway_hub *hub, const char *name, uint32_t subs, uint32_t msgs,
                              spillway_conn **conns, uint32_t *nconns)
{
    spillway_channel *ch = spillway_chtab_get(hub, name, strlen(name));
    REQUIRE(ch != NULL);
    for (uint32_t i = 0; i < subs; i++) {
        spillway_conn *c = calloc(1, sizeof(*c));
        REQUIRE(c != NULL);
        c->mem = calloc(1, sizeof(spillway_member));
        REQUIRE(c->mem != NULL);
        c->last = (spillway_id){UINT64_MAX, 0};
        REQUIRE_INT(spillway_channel_add_sub(ch, c, 0), ==, 0);
        c->nmem = 1;
        conns[(*nconns)++] = c;
    }
    for (uint32_t i = 0; i < msgs; i++) {
        spillway_frame *f = msg(i + 1, 1);
        spillway_channel_fanout(hub, ch, f);
        spillway_frame_unref(f);
    }
    return ch;
}

static void check_order(spillway_channel_info *got, size_t n, const char *const *want)
{
    for (size_t i = 0; i < n; i++) {
        if (want[i] == NULL || strcmp(got[i].name, want[i]) != 0) {
            CHECK(!"busiest channels out of order");
            fprintf(stderr, "  at %zu: got %s, want %s\n", i, got[i].name, want[i] ? want[i] : "(end)");
        }
    }
    CHECK(want[n] == NULL);
}

TEST(busiest_channels_rank_by_deliveries_then_rate_then_streams)
{
    spillway_hub *hub = fake_hub(0, 100, 1 << 20);
    spillway_conn *conns[32];
    uint32_t nconns = 0;
    spillway_channel_info out[8];
    size_t n;

    hub->now = 7 * SPILLWAY_RATE_WINDOW_MS + 5000; /* 5 s into a window */
    busy(hub, "a", 1, 5, conns, &nconns);  /* 5 deliveries */
    busy(hub, "b", 4, 2, conns, &nconns);  /* 8 deliveries */
    busy(hub, "c", 10, 0, conns, &nconns); /* quiet, many streams */
    busy(hub, "d", 2, 0, conns, &nconns);
    busy(hub, "e", 0, 3, conns, &nconns);  /* messages, nobody listening */

    n = spillway_chtab_busiest(hub, out, 8);
    REQUIRE_U64(n, ==, 5);
    check_order(out, n, (const char *const[]){"b", "a", "e", "c", "d", NULL});
    CHECK_U64(out[0].subscribers, ==, 4);
    CHECK_U64(out[0].messages, ==, 2);
    /* 2 messages over the 15 s the current and the last window span. */
    CHECK(out[0].messages_per_s > 0.13 && out[0].messages_per_s < 0.14);
    CHECK_U64(out[0].namelen, ==, 1);

    /* Fewer places than channels: the busiest, still in order. */
    n = spillway_chtab_busiest(hub, out, 2);
    REQUIRE_U64(n, ==, 2);
    check_order(out, n, (const char *const[]){"b", "a", NULL});
    CHECK_U64(spillway_chtab_busiest(hub, out, 0), ==, 0);

    /* The next window still counts the last one; two windows on, the
     * rates are gone and the streams decide. */
    hub->now += SPILLWAY_RATE_WINDOW_MS;
    busy(hub, "d", 0, 1, conns, &nconns);
    n = spillway_chtab_busiest(hub, out, 8);
    check_order(out, n, (const char *const[]){"b", "a", "d", "e", "c", NULL});
    hub->now += 2 * SPILLWAY_RATE_WINDOW_MS;
    n = spillway_chtab_busiest(hub, out, 8);
    check_order(out, n, (const char *const[]){"c", "b", "d", "a", "e", NULL});
    CHECK(out[0].messages_per_s == 0.0);
    CHECK_U64(out[3].messages, ==, 5);

    for (uint32_t i = 0; i < nconns; i++) {
        spillway_channel_remove_sub(hub, conns[i]->mem[0].ch, conns[i]->mem[0].idx);
        free(conns[i]->mem);
        free(conns[i]);
    }
    fake_hub_free(hub);
}

/* ---- the backlog ------------------------------------------------------- */

static size_t collect_after(spillway_channel *ch, uint64_t seq, spillway_frame **out)
{
    return spillway_backlog_collect(ch, (spillway_id){1, seq}, out);
}

TEST(backlog_ring_trims_and_collects_after_a_cursor)
{
    spillway_hub *hub = fake_hub(5, 100, 1 << 20);
    spillway_channel *ch = spillway_chtab_get(hub, "b", 1);
    spillway_frame *f[13], *out[8];
    uint64_t bytes = 0;

    REQUIRE(ch != NULL);
    /* Ids 1-2, 1-4, ... 1-24: gaps, so cursors can fall between them. */
    for (int i = 1; i <= 12; i++) {
        f[i] = msg((uint64_t)i * 2, (size_t)i);
        REQUIRE_INT(spillway_backlog_push(hub, ch, f[i]), ==, 0);
        CHECK_U64(f[i]->refs, ==, 2);
    }
    CHECK_U64(ch->ring_len, ==, 5);
    CHECK_U64(ch->ring_cap, ==, 5);
    /* Trimmed: the newest dropped id, and the dropped frames let go. */
    CHECK(ch->trimmed.ms == 1 && ch->trimmed.seq == 14);
    for (int i = 1; i <= 7; i++) CHECK_U64(f[i]->refs, ==, 1);
    for (int i = 8; i <= 12; i++) bytes += spillway_frame_size(f[i]);
    CHECK_U64(atomic_load(&hub->st_backlog_messages), ==, 5);
    CHECK_U64(atomic_load(&hub->st_backlog_bytes), ==, bytes);

    /* The ring has wrapped (start != 0); the search must not care. */
    CHECK_U64(ch->ring_start, !=, 0);
    for (uint64_t cursor = 0; cursor <= 26; cursor++) {
        size_t n = collect_after(ch, cursor, out);
        /* Frames 8..12 hold ids 16..24: everything newer than cursor. */
        size_t want = cursor < 16 ? 5 : cursor >= 24 ? 0 : (size_t)((25 - cursor) / 2);
        CHECK_U64(n, ==, want);
        for (size_t i = 0; i < n; i++) CHECK_U64(out[i]->id.seq, ==, 24 - 2 * (n - 1 - i));
    }
    CHECK_U64(spillway_backlog_collect(ch, (spillway_id){2, 0}, out), ==, 0);
    CHECK_U64(spillway_backlog_collect(ch, (spillway_id){0, 999}, out), ==, 5);

    spillway_backlog_clear(hub, ch);
    CHECK_U64(ch->ring_len, ==, 0);
    CHECK(ch->ring == NULL);
    CHECK(ch->trimmed.seq == 24);
    CHECK_U64(atomic_load(&hub->st_backlog_messages), ==, 0);
    CHECK_U64(atomic_load(&hub->st_backlog_bytes), ==, 0);
    for (int i = 1; i <= 12; i++) {
        CHECK_U64(f[i]->refs, ==, 1);
        spillway_frame_unref(f[i]);
    }
    fake_hub_free(hub);
}

TEST(backlog_grows_in_order_up_to_its_limit)
{
    spillway_hub *hub = fake_hub(100, 100, 1 << 20);
    spillway_channel *ch = spillway_chtab_get(hub, "g", 1);
    spillway_frame *out[100];
    REQUIRE(ch != NULL);
    for (uint64_t i = 1; i <= 150; i++) {
        spillway_frame *f = msg(i, 1);
        REQUIRE_INT(spillway_backlog_push(hub, ch, f), ==, 0);
        spillway_frame_unref(f);
        CHECK_U64(ch->ring_cap, <=, 100);
    }
    CHECK_U64(ch->ring_len, ==, 100);
    REQUIRE_U64(collect_after(ch, 0, out), ==, 100);
    for (int i = 0; i < 100; i++) CHECK_U64(out[i]->id.seq, ==, 51 + i);
    CHECK_U64(ch->trimmed.seq, ==, 50);
    fake_hub_free(hub);
}

TEST(backlog_size_zero_keeps_nothing_but_remembers)
{
    spillway_hub *hub = fake_hub(0, 100, 1 << 20);
    spillway_channel *ch = spillway_chtab_get(hub, "z", 1);
    spillway_frame *f = msg(9, 3);
    REQUIRE(ch != NULL);
    REQUIRE_INT(spillway_backlog_push(hub, ch, f), ==, 0);
    CHECK_U64(ch->ring_len, ==, 0);
    CHECK_U64(f->refs, ==, 1);
    /* A resume from before it must be told it missed something. */
    CHECK(ch->trimmed.ms == 1 && ch->trimmed.seq == 9);
    spillway_frame_unref(f);
    fake_hub_free(hub);
}

/* ---- a connection's outbox --------------------------------------------- */

/* The outbox is written with partial writes into a small socket buffer;
 * EPOLLOUT (edge-triggered, registered once) must come each time the peer
 * drains, and the bytes must arrive complete and in order. */
TEST(outbox_partial_writes_resume_in_order)
{
    spillway_hub *hub = fake_hub(10, 100, 4u << 20);
    int peer;
    spillway_conn *c = socket_conn(hub, &peer, 4096);
    tbuf want = {0}, got = {0};
    uint64_t frames = 300, total = 0;
    int rounds = 0;

    for (uint64_t i = 1; i <= frames; i++) {
        /* Mostly small frames, and every 50th far bigger than the socket
         * buffer: it takes several partial writes on its own. */
        spillway_frame *f = msg(i, i % 50 == 0 ? 40000 : (size_t)(50 + (i * 37) % 1500));
        REQUIRE_INT(spillway_conn_push(hub, c, f), ==, 0);
        tbuf_put(&want, f->data, f->len);
        total += f->len;
        spillway_frame_unref(f); /* the outbox holds the only reference now */
    }
    CHECK(c->flags & SW_CF_DIRTY);
    CHECK(hub->dirty == c && c->dirty_next == NULL);
    CHECK_U64(c->out_bytes, ==, total);
    spillway_hub_flush_and_close(hub);
    CHECK(c->flags & SW_CF_BLOCKED);
    CHECK_U64(c->out_len, >, 0);

    while (c->out_len > 0 && rounds++ < 100000) {
        struct epoll_event ev[4];
        int n;
        drain(peer, &got);
        n = epoll_wait(hub->epfd, ev, 4, (int)(2000 * check_slow()));
        if (n <= 0) {
            CHECK(!"no EPOLLOUT after the peer drained: the stream would stall");
            break;
        }
        for (int i = 0; i < n; i++) {
            CHECK(ev[i].data.ptr == c);
            spillway_conn_on_event(hub, ev[i].data.ptr, ev[i].events);
        }
    }
    drain(peer, &got);
    CHECK_U64(c->out_len, ==, 0);
    CHECK_U64(c->out_bytes, ==, 0);
    CHECK_U64(c->out_off, ==, 0);
    CHECK(!(c->flags & SW_CF_DOOMED));
    CHECK_MEM(got.p, got.len, want.p, want.len);
    CHECK_U64(atomic_load(&hub->st_bytes_out), ==, total);
    CHECK_U64(atomic_load(&hub->st_delivered), ==, frames);
    /* The ring that a burst grew is given back once empty. */
    CHECK(c->out == NULL && c->out_cap == 0);
    tbuf_free(&want);
    tbuf_free(&got);
    close(peer);
    fake_hub_free(hub);
}

/* More pending frames than one iovec batch: several sendmsg calls in one
 * flush, nothing lost at the batch edges. */
TEST(outbox_flush_spans_iov_batches)
{
    spillway_hub *hub = fake_hub(10, 100, 4u << 20);
    int peer;
    spillway_conn *c = socket_conn(hub, &peer, 1 << 20);
    tbuf want = {0}, got = {0};
    uint64_t n = 3 * SPILLWAY_IOV_BATCH + 17;
    for (uint64_t i = 1; i <= n; i++) {
        spillway_frame *f = msg(i, 3);
        REQUIRE_INT(spillway_conn_push(hub, c, f), ==, 0);
        tbuf_put(&want, f->data, f->len);
        spillway_frame_unref(f);
    }
    spillway_conn_flush(hub, c);
    CHECK_U64(c->out_len, ==, 0);
    drain(peer, &got);
    CHECK_MEM(got.p, got.len, want.p, want.len);
    CHECK_U64(atomic_load(&hub->st_delivered), ==, n);
    tbuf_free(&want);
    tbuf_free(&got);
    hub->dirty = NULL;
    close(peer);
    fake_hub_free(hub);
}

/* outbox_limit applies after the flush at the end of the iteration, and to
 * what a stream alone keeps alive: a burst far bigger than the limit is fine
 * for a reader that takes it all, and for one whose frames another stream
 * still holds; a stream left alone with more than the limit is doomed, even
 * when nothing new is queued for it. */
TEST(outbox_limit_counts_what_a_stream_alone_keeps_alive)
{
    spillway_hub *hub = fake_hub(10, 100, 4096);
    int fast_peer, slow_peer, stuck_peer;
    spillway_conn *fast = socket_conn(hub, &fast_peer, 1 << 20);
    spillway_conn *slow = socket_conn(hub, &slow_peer, 4096);
    spillway_conn *stuck = socket_conn(hub, &stuck_peer, 4096);
    spillway_frame *g = spillway_frame_new(10);
    uint64_t left = 0;
    tbuf got = {0};
    REQUIRE(g != NULL);
    memset(g->data, 'y', g->len);

    /* 40 KB queued for all three within one iteration, ten times the limit. */
    for (int i = 0; i < 40; i++) {
        spillway_frame *f = spillway_frame_new(1000);
        REQUIRE(f != NULL);
        memset(f->data, 'x', f->len);
        CHECK_INT(spillway_conn_push(hub, fast, f), ==, 0);
        CHECK_INT(spillway_conn_push(hub, slow, f), ==, 0);
        CHECK_INT(spillway_conn_push(hub, stuck, f), ==, 0);
        CHECK_U64(f->refs, ==, 4);
        spillway_frame_unref(f); /* the outboxes hold it now */
    }
    /* The frames once, and an entry for each (queued together: one run,
     * kept in the stream itself). */
    CHECK_U64(hub->out_mem, ==, 40 * (sizeof(spillway_frame) + 1000) + 3 * 40 * 8);
    /* The flushes of the end of the iteration. */
    spillway_hub_flush_and_close(hub);
    CHECK(!(fast->flags & SW_CF_DOOMED));
    CHECK_U64(fast->out_len, ==, 0);
    CHECK(!(fast->flags & SW_CF_QUEUED));
    /* The slow ones' sockets took a few KB; the rest waits, shared by the
     * two: neither keeps anything alive alone. */
    CHECK(!(slow->flags & SW_CF_DOOMED) && !(stuck->flags & SW_CF_DOOMED));
    CHECK_U64(slow->out_len, >, 0);
    CHECK_U64(slow->excl, ==, 0);
    CHECK_U64(stuck->excl, ==, 0);
    CHECK(slow->flags & SW_CF_QUEUED && stuck->flags & SW_CF_QUEUED);
    for (uint32_t i = 0; i < slow->out_len; i++)
        left += spillway_frame_size(slow->out[(slow->out_start + i) % slow->out_cap]);

    /* stuck goes (its peer hung up, say): slow is the only holder left of
     * every frame it has not sent, over the limit. Being left alone is no
     * fault: it has a tenth of max_lag (50 ms) to take something. It takes
     * nothing, and the sweep of the next tick after that finds it, though
     * nothing new was queued for it. */
    spillway_conn_doom(hub, stuck, false);
    spillway_hub_flush_and_close(hub);
    CHECK_U64(slow->excl, ==, left);
    CHECK(!(slow->flags & SW_CF_DOOMED));
    hub->now = T0 + 50;
    spillway_wheel_tick(hub);
    CHECK(!(slow->flags & SW_CF_DOOMED));
    hub->now = T0 + 51;
    spillway_wheel_tick(hub);
    CHECK((slow->flags & (SW_CF_DOOMED | SW_CF_SLOW)) == (SW_CF_DOOMED | SW_CF_SLOW));
    CHECK(hub->doomed == slow);
    CHECK_U64(atomic_load(&hub->st_dropped_slow), ==, 1);
    /* Doomed: nothing more is taken, and dooming twice counts once. */
    CHECK_INT(spillway_conn_push(hub, slow, g), ==, -1);
    CHECK_U64(g->refs, ==, 1);
    spillway_conn_doom(hub, slow, true);
    CHECK_U64(atomic_load(&hub->st_dropped_slow), ==, 1);
    CHECK(slow->doomed_next == NULL);
    spillway_hub_flush_and_close(hub);

    /* Its references went (the frames with them), its fd closed, its place
     * was given back; the fast reader has all 40 KB. */
    CHECK_U64(hub->out_mem, ==, 0);
    CHECK(hub->queued == NULL);
    CHECK_U64(atomic_load(&hub->reserved), ==, 1);
    CHECK_U64(atomic_load(&hub->st_closed), ==, 2);
    drain(fast_peer, &got);
    CHECK_U64(got.len, ==, 40000);
    got.len = 0;
    drain(slow_peer, &got);
    CHECK_U64(got.len, <, 40000);
    /* Whatever the socket took (it may end inside a frame: a browser drops
     * an event that has no blank line yet), then EOF. */
    for (size_t i = 0; i < got.len; i++) {
        if (got.p[i] != 'x') {
            CHECK(!"the slow reader got bytes that were never queued");
            break;
        }
    }
    {
        char buf[16];
        CHECK_INT(read(slow_peer, buf, sizeof(buf)), ==, 0);
    }
    tbuf_free(&got);
    spillway_frame_unref(g);
    close(fast_peer);
    close(slow_peer);
    close(stuck_peer);
    fake_hub_free(hub);
}

/* The lag is the age of the oldest unsent frame, kept per run of entries
 * queued at one time: as the head moves from run to run, head_t follows. */
TEST(lag_follows_the_oldest_unsent_frame_across_runs)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    int peer;
    spillway_conn *c = socket_conn(hub, &peer, 4096);
    uint32_t want[4] = {T0, T0 + 100, T0 + 100, T0 + 300};
    size_t sizes[4] = {100000, 100000, 100000, 10};
    tbuf got = {0};
    int rounds = 0;

    for (int i = 0; i < 4; i++) {
        spillway_frame *f = msg((uint64_t)i + 1, sizes[i]);
        hub->now = want[i];
        REQUIRE_INT(spillway_conn_push(hub, c, f), ==, 0);
        spillway_frame_unref(f);
    }
    CHECK_U64(c->head_t, ==, T0);
    CHECK_U64(c->tail_t, ==, T0 + 300);
    CHECK_U64(c->runs_len, ==, 2); /* B's (with C) and D's */
    hub->now = T0 + 400;
    spillway_hub_flush_and_close(hub);
    while (c->out_len > 0 && rounds++ < 100000) {
        CHECK_U64(c->head_t, ==, want[4 - c->out_len]);
        drain(peer, &got);
        c->flags &= ~SW_CF_BLOCKED;
        spillway_conn_flush(hub, c);
    }
    CHECK_U64(c->out_len, ==, 0);
    CHECK_U64(c->runs_len, ==, 0);
    CHECK_U64(hub->out_mem, ==, 0);
    CHECK(!(c->flags & SW_CF_DOOMED)); /* 400 ms < max_lag */
    drain(peer, &got);
    CHECK_U64(got.len, >, 300000);
    tbuf_free(&got);
    close(peer);
    fake_hub_free(hub);
}

/* The accounts of exclusivity follow every kind of reference: an outbox's,
 * the backlog's, a held list's, the same frame twice in one outbox. */
TEST(exclusive_bytes_follow_every_reference)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    int pa, pb;
    spillway_conn *a = socket_conn(hub, &pa, 4096);
    spillway_conn *b = socket_conn(hub, &pb, 4096);
    spillway_frame *f = msg(1, 100);
    uint64_t size = spillway_frame_size(f), entry = 8;

    REQUIRE_INT(spillway_conn_push(hub, a, f), ==, 0);
    CHECK_U64(a->excl, ==, 0); /* the test still holds it */
    spillway_frame_unref(f);
    CHECK_U64(a->excl, ==, size);
    CHECK_U64(hub->out_mem, ==, size + entry);
    /* Another holder (the backlog, say) shares it; then lets go. */
    spillway_frame_ref(f);
    CHECK_U64(a->excl, ==, 0);
    spillway_frame_unref(f);
    CHECK_U64(a->excl, ==, size);
    /* A second stream takes it, then the first lets go (sent). */
    REQUIRE_INT(spillway_conn_push(hub, b, f), ==, 0);
    CHECK_U64(a->excl, ==, 0);
    CHECK_U64(b->excl, ==, 0);
    CHECK_U64(hub->out_mem, ==, size + 2 * entry); /* the frame counted once */
    spillway_hub_flush_and_close(hub);
    CHECK_U64(a->out_len, ==, 0);
    CHECK_U64(b->out_len, ==, 0);
    CHECK_U64(a->excl + b->excl, ==, 0);
    CHECK_U64(hub->out_mem, ==, 0);

    /* The same frame twice in one outbox (a heartbeat behind a heartbeat)
     * is still that stream's alone. */
    f = msg(2, 100);
    REQUIRE_INT(spillway_conn_push(hub, a, f), ==, 0);
    REQUIRE_INT(spillway_conn_push(hub, a, f), ==, 0);
    spillway_frame_unref(f);
    CHECK_U64(f->queued, ==, 2);
    CHECK_U64(a->excl, ==, 0); /* two references: not yet "the only one" */
    hub->dirty = NULL;
    a->flags &= ~SW_CF_DIRTY;
    spillway_conn_doom(hub, a, false);
    spillway_hub_flush_and_close(hub);
    CHECK_U64(hub->out_mem, ==, 0);
    close(pa);
    close(pb);
    fake_hub_free(hub);
}

TEST(deliver_skips_what_the_stream_already_has)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    int peer;
    spillway_conn *c = socket_conn(hub, &peer, 0);
    spillway_frame *f3 = msg(3, 1), *f5 = msg(5, 1), *f6 = msg(6, 1);

    c->last = (spillway_id){1, 5};
    spillway_conn_deliver(hub, c, f3);
    spillway_conn_deliver(hub, c, f5);
    CHECK_U64(c->out_len, ==, 0);
    spillway_conn_deliver(hub, c, f6);
    CHECK_U64(c->out_len, ==, 1);
    CHECK(c->last.seq == 6);
    spillway_conn_deliver(hub, c, f6);
    CHECK_U64(c->out_len, ==, 1);
    CHECK_U64(f6->refs, ==, 2);
    spillway_frame_unref(f3);
    spillway_frame_unref(f5);
    spillway_frame_unref(f6);
    hub->dirty = NULL;
    close(peer);
    fake_hub_free(hub);
}

/* A joining stream holds live frames aside; the replay then sends the missed
 * frames, then the held ones, each id once, in order. */
TEST(replay_merges_missed_and_held_frames)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    int peer;
    spillway_conn *c = socket_conn(hub, &peer, 0);
    spillway_frame *f[8];
    spillway_frame *missed[3];

    for (int i = 1; i < 8; i++) f[i] = msg((uint64_t)i, 2);
    c->flags |= SW_CF_JOINING;
    c->last = (spillway_id){1, 2};
    spillway_conn_deliver(hub, c, f[5]);
    spillway_conn_deliver(hub, c, f[7]);
    CHECK_U64(c->out_len, ==, 0);
    CHECK_U64(c->held_len, ==, 2);
    missed[0] = f[3];
    missed[1] = f[4];
    missed[2] = f[5];
    spillway_conn_replay(hub, c, missed, 3, NULL, (spillway_id){1, 5}, NULL);
    CHECK(!(c->flags & SW_CF_JOINING));
    CHECK(c->held == NULL && c->held_len == 0);
    REQUIRE_U64(c->out_len, ==, 4);
    {
        uint64_t want[] = {3, 4, 5, 7};
        for (uint32_t i = 0; i < 4; i++)
            CHECK_U64(c->out[(c->out_start + i) % c->out_cap]->id.seq, ==, want[i]);
    }
    CHECK(c->last.seq == 7);
    for (int i = 1; i < 8; i++) spillway_frame_unref(f[i]);
    hub->dirty = NULL;
    close(peer);
    fake_hub_free(hub);
}

/* The reset event names the channels whose backlog does not reach back, as
 * a JSON array in its data, and moves the client's cursor to `now`. */
TEST(reset_frame_names_the_channels)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    int peer;
    spillway_conn *c = socket_conn(hub, &peer, 0);
    const char *names[] = {"alpha", "beta", "site-a|chat:42"};
    bool reset[] = {true, false, true};
    sse_parser p;
    spillway_frame *rf;

    c->mem = calloc(3, sizeof(spillway_member));
    REQUIRE(c->mem != NULL);
    for (uint32_t i = 0; i < 3; i++) {
        spillway_channel *ch = spillway_chtab_get(hub, names[i], strlen(names[i]));
        REQUIRE(ch != NULL);
        REQUIRE_INT(spillway_channel_add_sub(ch, c, i), ==, 0);
        c->nmem++;
    }
    c->last = (spillway_id){1, 3};
    spillway_conn_send_reset(hub, c, reset, (spillway_id){1700000000000ull, 12}, "a test");
    REQUIRE_U64(c->out_len, ==, 1);
    rf = c->out[c->out_start];
    CHECK(rf->id.ms == 1700000000000ull && rf->id.seq == 12);
    CHECK(c->last.ms == 1700000000000ull);
    CHECK_U64(atomic_load(&hub->st_resets), ==, 1);
    sse_parser_init(&p);
    sse_parser_feed(&p, rf->data, rf->len);
    REQUIRE_U64(p.nevents, ==, 1);
    CHECK(sse_parser_idle(&p));
    CHECK_STR(p.events[0].type.p, "reset");
    CHECK_STR(p.events[0].id.p, "1700000000000-12");
    /* A site's channel goes out under its public name. */
    CHECK_STR(p.events[0].data.p, "{\"channels\":[\"alpha\",\"chat:42\"]}");
    sse_parser_free(&p);
    /* The log has it, with the same channels and the reason; a reset is a
     * warning, not an error. */
    CHECK_U64(hub->log[SW_LOG_RESET].count, ==, 1);
    /* The log names the site: it is the operator's view. */
    CHECK_STR(hub->log[SW_LOG_RESET].message, "stream reset on alpha, site-a|chat:42 (a test)");
    CHECK_U64(atomic_load(&hub->st_errors), ==, 0);
    CHECK_STR(hub->last_error, "");
    hub->dirty = NULL;
    close(peer);
    fake_hub_free(hub); /* closes c: leaves the channels, which go */
}

/* ---- the heartbeat wheel and the lag ----------------------------------- */

TEST(wheel_heartbeat_once_per_period_then_lag)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    int peer;
    spillway_conn *c = socket_conn(hub, &peer, 4096);
    tbuf got = {0};
    spillway_frame *big;

    /* heartbeat 1000 ms over 100 slots: one slot per 10 ms, and a new stream
     * sits in the slot processed last in the current turn. */
    hub->now = T0 + 500;
    spillway_wheel_tick(hub);
    CHECK_U64(c->out_len, ==, 0);
    hub->now = T0 + 1000;
    spillway_wheel_tick(hub);
    CHECK_U64(c->out_len, ==, 1);
    spillway_hub_flush_and_close(hub);
    drain(peer, &got);
    CHECK_MEM(got.p, got.len, ":\n\n", 3);
    CHECK_U64(atomic_load(&hub->st_delivered), ==, 0); /* a comment is not a message */

    /* Once per period, not once per tick. */
    hub->now = T0 + 1990;
    spillway_wheel_tick(hub);
    CHECK_U64(c->out_len, ==, 0);
    hub->now = T0 + 2000;
    spillway_wheel_tick(hub);
    CHECK_U64(c->out_len, ==, 1);
    spillway_hub_flush_and_close(hub);
    drain(peer, &got);

    /* The client stops reading with a frame far bigger than its socket
     * half sent: the frame waits, and no heartbeat queues behind it when
     * the stream's slot comes round. */
    hub->now = T0 + 2600;
    big = msg(1, 256 * 1024);
    REQUIRE_INT(spillway_conn_push(hub, c, big), ==, 0);
    spillway_frame_unref(big);
    spillway_hub_flush_and_close(hub);
    CHECK_U64(c->out_len, ==, 1);
    CHECK(c->flags & SW_CF_QUEUED);
    hub->now = T0 + 3000;
    spillway_wheel_tick(hub);
    CHECK_U64(c->out_len, ==, 1);
    CHECK(!(c->flags & SW_CF_DOOMED));
    /* Waited exactly max_lag (500 ms): kept; a ms more: doomed as slow by
     * the next tick, though nothing new was queued for it. */
    hub->now = T0 + 3100;
    spillway_wheel_tick(hub);
    CHECK(!(c->flags & SW_CF_DOOMED));
    hub->now = T0 + 3101;
    spillway_wheel_tick(hub);
    CHECK(c->flags & SW_CF_DOOMED);
    CHECK(c->flags & SW_CF_SLOW);
    CHECK_U64(atomic_load(&hub->st_dropped_slow), ==, 1);
    spillway_hub_flush_and_close(hub);
    CHECK(hub->wheel[99] == NULL);
    CHECK(hub->queued == NULL);
    CHECK_U64(hub->out_mem, ==, 0);
    tbuf_free(&got);
    close(peer);
    fake_hub_free(hub);
}

/* Time the loop spends working is not the clients' lag: only time it
 * waited with nothing to do (hub->busy_ms, kept by the reactor) counts. A
 * loop busy for seconds writing a burst to other streams must not close
 * the stream it is about to serve. */
TEST(lag_counts_only_time_the_loop_waited)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    int peer;
    spillway_conn *c = socket_conn(hub, &peer, 4096);
    spillway_frame *big = msg(1, 256 * 1024);

    REQUIRE_INT(spillway_conn_push(hub, c, big), ==, 0);
    spillway_frame_unref(big);
    spillway_hub_flush_and_close(hub);
    REQUIRE(c->flags & SW_CF_QUEUED);
    /* Three seconds later, all of it spent working: no lag. */
    hub->now += 3000;
    hub->busy_ms += 3000;
    spillway_wheel_tick(hub);
    CHECK(!(c->flags & SW_CF_DOOMED));
    /* Then max_lag (500 ms) of waiting, and one ms more. */
    hub->now += 500;
    spillway_wheel_tick(hub);
    CHECK(!(c->flags & SW_CF_DOOMED));
    hub->now += 1;
    spillway_wheel_tick(hub);
    CHECK(c->flags & SW_CF_DOOMED);
    spillway_hub_flush_and_close(hub);
    close(peer);
    fake_hub_free(hub);
}

/* A reactor that slept through many periods does a bounded amount of work
 * and then catches up with the clock instead of replaying every tick. */
TEST(wheel_catches_up_after_a_long_stall)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    int peer;
    spillway_conn *c = socket_conn(hub, &peer, 0);
    hub->now = T0 + 3600000;
    spillway_wheel_tick(hub);
    /* At most one heartbeat for the whole stall. */
    CHECK_U64(c->out_len, ==, 1);
    CHECK_U64(hub->wheel_next_ms, >, hub->now);
    hub->dirty = NULL;
    close(peer);
    fake_hub_free(hub);
}

/* ---- input from the client --------------------------------------------- */

static void wait_event(spillway_hub *hub)
{
    struct epoll_event ev[4];
    int n = epoll_wait(hub->epfd, ev, 4, (int)(2000 * check_slow()));
    CHECK_INT(n, >, 0);
    for (int i = 0; i < n; i++) spillway_conn_on_event(hub, ev[i].data.ptr, ev[i].events);
}

TEST(client_input_eof_and_abuse_doom_the_stream)
{
    spillway_hub *hub = fake_hub(10, 100, 1 << 20);
    int p1, p2, p3;
    spillway_conn *quiet = socket_conn(hub, &p1, 0);
    spillway_conn *gone = socket_conn(hub, &p2, 0);
    spillway_conn *noisy = socket_conn(hub, &p3, 0);
    char junk[9000];

    /* The first EPOLLOUT of each new socket. */
    wait_event(hub);
    CHECK(!(quiet->flags & SW_CF_DOOMED));
    /* A few stray bytes are read and dropped. */
    memset(junk, 'j', sizeof(junk));
    CHECK_INT(write(p1, junk, 100), ==, 100);
    wait_event(hub);
    CHECK(!(quiet->flags & SW_CF_DOOMED));
    /* EOF from the peer. */
    shutdown(p2, SHUT_WR);
    wait_event(hub);
    CHECK(gone->flags & SW_CF_DOOMED);
    CHECK(!(gone->flags & SW_CF_SLOW));
    /* More than the inbound limit in one go. */
    CHECK_INT(write(p3, junk, sizeof(junk)), ==, (ssize_t)sizeof(junk));
    wait_event(hub);
    CHECK(noisy->flags & SW_CF_DOOMED);
    CHECK(!(quiet->flags & SW_CF_DOOMED));
    spillway_hub_flush_and_close(hub);
    CHECK_U64(atomic_load(&hub->st_closed), ==, 2);
    CHECK_U64(atomic_load(&hub->reserved), ==, 1);
    close(p1);
    close(p2);
    close(p3);
    fake_hub_free(hub);
}

CHECK_MAIN
