/*
 * The hub end to end, memory backend: a real reactor thread, streams on one
 * end of socketpair()s, publishes through spillway_hub_publish, and the
 * other end read with poll() against deadlines and decoded by the reference
 * SSE parser. Every wait is for a condition (bytes, EOF, a counter) with a
 * deadline; none is a fixed sleep.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "hub_config.h"
#include "hub_internal.h"
#include "sse_ref.h"

#define DEADLINE_MS 5000

static const char HEAD[] = "HTTP/1.1 200 OK\r\n"
                           "Content-Type: text/event-stream; charset=utf-8\r\n"
                           "Cache-Control: no-cache, no-transform\r\n"
                           "X-Accel-Buffering: no\r\n"
                           "Connection: close\r\n";

static spillway_hub *start(const spillway_config *cfg)
{
    spillway_hub *hub = NULL;
    char err[256] = "";
    int rc = spillway_hub_new(cfg, &hub, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "  spillway_hub_new: %d %s\n", rc, err);
    REQUIRE_INT(rc, ==, 0);
    REQUIRE(hub != NULL);
    return hub;
}

static void finish(spillway_hub *hub)
{
    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    spillway_hub_free(hub);
}

static spillway_stats stats(spillway_hub *hub)
{
    spillway_stats st;
    spillway_hub_stats(hub, &st);
    return st;
}

/* ---- publishing -------------------------------------------------------- */

typedef struct sent {
    char id[SPILLWAY_ID_TEXT_MAX];
} sent;

static sent pub(spillway_hub *hub, const char *channel, const char *event, const char *data)
{
    sent s;
    char err[256] = "";
    int rc = spillway_hub_publish(hub, channel, strlen(channel), event, event ? strlen(event) : 0,
                                  data, strlen(data), s.id, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "  publish(%s): %d %s\n", channel, rc, err);
    REQUIRE_INT(rc, ==, 0);
    return s;
}

/* ---- the client side --------------------------------------------------- */

typedef struct client {
    int fd;           /* our end of the pair */
    bool want_head;   /* attached with SPILLWAY_ATTACH_HEAD */
    bool head_done;
    tbuf head;     /* the HTTP head, through its blank line */
    tbuf body;     /* every byte after the head */
    sse_parser p;
    bool eof;
} client;

/*
 * Opens a stream: a socketpair, a reservation, an attach of one end. sndbuf
 * (when > 0) shrinks the hub side's send buffer, to make a slow reader
 * without waiting for megabytes. Returns the attach code.
 */
static int open_stream(spillway_hub *hub, client *c, unsigned flags, const char *const *chans,
                       size_t n, const char *cursor, int sndbuf)
{
    int sv[2], rc;
    size_t lens[16];
    char err[256] = "";

    memset(c, 0, sizeof(*c));
    sse_parser_init(&c->p);
    c->fd = -1;
    c->want_head = flags & SPILLWAY_ATTACH_HEAD;
    REQUIRE_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), ==, 0);
    if (sndbuf > 0) setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    for (size_t i = 0; i < n; i++) lens[i] = strlen(chans[i]);
    REQUIRE_INT(spillway_hub_reserve(hub), ==, 0);
    rc = spillway_hub_attach(hub, sv[1], flags, chans, lens, n, cursor, cursor ? strlen(cursor) : 0,
                             err, sizeof(err));
    if (rc != 0) {
        /* The caller keeps the fd and the reservation on failure. */
        spillway_hub_unreserve(hub);
        close(sv[1]);
        close(sv[0]);
        return rc;
    }
    c->fd = sv[0];
    return 0;
}

static int open1(spillway_hub *hub, client *c, const char *chan, const char *cursor)
{
    const char *chans[] = {chan};
    return open_stream(hub, c, 0, chans, 1, cursor, 0);
}

static void client_close(client *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    sse_parser_free(&c->p);
    tbuf_free(&c->head);
    tbuf_free(&c->body);
}

static void client_feed(client *c, const char *s, size_t n)
{
    if (c->want_head && !c->head_done) {
        char *end;
        tbuf_put(&c->head, s, n);
        end = memmem(c->head.p, c->head.len, "\r\n\r\n", 4);
        if (end == NULL) return;
        {
            size_t headlen = (size_t)(end - c->head.p) + 4, rest = c->head.len - headlen;
            c->head_done = true;
            c->head.len = headlen;
            s = c->head.p + headlen;
            n = rest;
            tbuf_put(&c->body, s, n);
            sse_parser_feed(&c->p, s, n);
            c->head.p[headlen] = '\0';
            return;
        }
    }
    tbuf_put(&c->body, s, n);
    sse_parser_feed(&c->p, s, n);
}

/* Waits up to ms for bytes (or EOF), then reads all there is. */
static void client_pump(client *c, int ms)
{
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    char buf[65536];
    if (c->eof || poll(&pfd, 1, ms) <= 0) return;
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n > 0) {
            client_feed(c, buf, (size_t)n);
        } else if (n == 0) {
            c->eof = true;
            return;
        } else {
            CHECK(errno == EAGAIN || errno == EINTR || errno == ECONNRESET);
            if (errno == ECONNRESET) c->eof = true;
            return;
        }
    }
}

/* Reads until cond holds, EOF, or the deadline; the value of cond. */
#define CLIENT_UNTIL(c, cond, ms)                                               \
    ({                                                                          \
        uint64_t cu_deadline_ = check_deadline(ms);                             \
        uint64_t cu_now_;                                                       \
        while (!(cond) && !(c)->eof && (cu_now_ = check_now_ms()) < cu_deadline_) \
            client_pump((c), (int)(cu_deadline_ - cu_now_));                    \
        (bool)(cond);                                                           \
    })

#define EVENTS(c) ((c)->p.nevents)
#define EV(c, i) (&(c)->p.events[i])

/* Reads until EOF; true when it came in time. */
static bool client_until_eof(client *c, uint64_t ms)
{
    return CLIENT_UNTIL(c, c->eof, ms);
}

/* The data of every event, joined with '|', for short order assertions. */
static char *datas(client *c)
{
    tbuf b = {0};
    for (size_t i = 0; i < EVENTS(c); i++) {
        if (i > 0) tbuf_put(&b, "|", 1);
        tbuf_put(&b, EV(c, i)->data.p, EV(c, i)->data.len);
    }
    tbuf_put(&b, "", 0);
    return b.p;
}

#define CHECK_DATAS(c, want)                                                    \
    do {                                                                        \
        char *d_ = datas(c);                                                    \
        CHECK_STR(d_, want);                                                    \
        free(d_);                                                               \
    } while (0)

/* ---- tests ------------------------------------------------------------- */

TEST(config_and_arguments_are_checked)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = NULL;
    char err[256];

    cfg.heartbeat_ms = 5;
    CHECK_INT(spillway_hub_new(&cfg, &hub, err, sizeof(err)), ==, -EINVAL);
    CHECK(strstr(err, "heartbeat") != NULL);
    cfg = test_hub_config();
    cfg.extra_headers = "X-No-Crlf: 1";
    CHECK_INT(spillway_hub_new(&cfg, &hub, err, sizeof(err)), ==, -EINVAL);
    CHECK(strstr(err, "CRLF") != NULL);
    cfg = test_hub_config();
    cfg.max_channels_per_conn = 2000;
    CHECK_INT(spillway_hub_new(&cfg, &hub, err, sizeof(err)), ==, -EINVAL);
    CHECK(hub == NULL);

    cfg = test_hub_config();
    cfg.max_connections = 2;
    hub = start(&cfg);
    CHECK(spillway_hub_running(hub));
    CHECK_INT(spillway_hub_owner(hub), ==, getpid());
    {
        const char *none[] = {NULL};
        const char *many[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
        const char *bad[] = {"ok", "bad\nname"};
        size_t lens[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, badlens[] = {2, 8};
        CHECK_INT(spillway_hub_attach(hub, -1, 0, none, lens, 0, NULL, 0, err, sizeof(err)), ==,
                  -EINVAL);
        CHECK_INT(spillway_hub_attach(hub, -1, 0, many, lens, 9, NULL, 0, err, sizeof(err)), ==,
                  -EINVAL);
        CHECK(strstr(err, "1..8") != NULL);
        CHECK_INT(spillway_hub_attach(hub, -1, 0, bad, badlens, 2, NULL, 0, err, sizeof(err)), ==,
                  -EINVAL);
    }
    {
        char id[SPILLWAY_ID_TEXT_MAX];
        CHECK_INT(spillway_hub_publish(hub, "", 0, NULL, 0, "d", 1, id, err, sizeof(err)), ==, -EINVAL);
        CHECK_INT(spillway_hub_publish(hub, "a\rb", 3, NULL, 0, "d", 1, id, err, sizeof(err)), ==,
                  -EINVAL);
        CHECK_INT(spillway_hub_publish(hub, "a", 1, "e\n", 2, "d", 1, id, err, sizeof(err)), ==,
                  -EINVAL);
        CHECK(strstr(err, "event") != NULL);
        /* The memory backend has no async publish. */
        {
            uint64_t seq;
            CHECK_INT(spillway_hub_publish_async(hub, "a", 1, NULL, 0, "d", 1, NULL, 0, &seq, err, sizeof(err)),
                      ==, -EINVAL);
        }
    }
    /* Admission: max_connections places. */
    CHECK_INT(spillway_hub_reserve(hub), ==, 0);
    CHECK_INT(spillway_hub_reserve(hub), ==, 0);
    CHECK_INT(spillway_hub_reserve(hub), ==, -EBUSY);
    CHECK_U64(stats(hub).connections, ==, 2);
    spillway_hub_unreserve(hub);
    spillway_hub_unreserve(hub);
    CHECK_U64(stats(hub).connections, ==, 0);
    /* Nothing async is pending: flush returns at once. */
    CHECK_INT(spillway_hub_flush(hub, 1000, NULL), ==, 0);
    finish(hub);
}

TEST(head_opening_and_frames_in_order)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client a, b;
    const char *chans[] = {"news"};
    sent s[3];

    cfg.extra_headers = "X-Test: yes\r\n";
    hub = start(&cfg);
    REQUIRE_INT(open_stream(hub, &a, SPILLWAY_ATTACH_HEAD, chans, 1, NULL, 0), ==, 0);
    REQUIRE_INT(open_stream(hub, &b, 0, chans, 1, NULL, 0), ==, 0);
    s[0] = pub(hub, "news", NULL, "first");
    s[1] = pub(hub, "news", "update", "two\r\nlines");
    s[2] = pub(hub, "news", "update", "");

    CHECK(CLIENT_UNTIL(&a, EVENTS(&a) >= 3, DEADLINE_MS));
    CHECK(CLIENT_UNTIL(&b, EVENTS(&b) >= 3, DEADLINE_MS));
    CHECK(a.head_done);
    {
        tbuf want = {0};
        tbuf_put(&want, HEAD, sizeof(HEAD) - 1);
        tbuf_put(&want, "X-Test: yes\r\n\r\n", 15);
        CHECK_MEM(a.head.p, a.head.len, want.p, want.len);
        tbuf_free(&want);
    }
    /* The opening: a comment (for proxies that wait for body bytes) and the
     * reconnection delay, before any event. */
    CHECK(a.body.len > 24 && memcmp(a.body.p, ": spillway\n\nretry: 1500\n\n", 25) == 0);
    CHECK(b.body.len > 24 && memcmp(b.body.p, ": spillway\n\nretry: 1500\n\n", 25) == 0);
    CHECK_INT(a.p.retry, ==, 1500);
    CHECK_U64(a.p.comments, ==, 1);
    REQUIRE_U64(EVENTS(&a), ==, 3);
    for (int i = 0; i < 3; i++) {
        CHECK_STR(EV(&a, i)->id.p, s[i].id);
        CHECK(EV(&a, i)->id_field);
        CHECK_STR(EV(&b, i)->id.p, s[i].id);
    }
    CHECK_STR(EV(&a, 0)->type.p, "message");
    CHECK_STR(EV(&a, 1)->type.p, "update");
    CHECK_DATAS(&a, "first|two\nlines|");
    /* Both streams got the very same bytes after their heads. */
    CHECK_MEM(a.body.p, a.body.len, b.body.p, b.body.len);
    CHECK(WAIT_UNTIL(stats(hub).delivered == 6, DEADLINE_MS));
    {
        spillway_stats st = stats(hub);
        CHECK_U64(st.messages_in, ==, 3);
        CHECK_U64(st.accepted, ==, 2);
        CHECK_U64(st.connections, ==, 2);
        CHECK_U64(st.channels, ==, 1);
        CHECK_U64(st.backlog_messages, ==, 3);
        CHECK_U64(st.bytes_out, ==, a.head.len + a.body.len + b.body.len);
        CHECK_U64(st.errors, ==, 0);
    }
    client_close(&a);
    client_close(&b);
    finish(hub);
}

TEST(channels_route_and_duplicates_collapse)
{
    spillway_hub *hub;
    spillway_config cfg = test_hub_config();
    client x, y;
    const char *both[] = {"a", "b", "a"};
    const char *bonly[] = {"b"};

    hub = start(&cfg);
    REQUIRE_INT(open_stream(hub, &x, 0, both, 3, NULL, 0), ==, 0);
    REQUIRE_INT(open_stream(hub, &y, 0, bonly, 1, NULL, 0), ==, 0);
    pub(hub, "a", NULL, "a1");
    pub(hub, "b", NULL, "b1");
    pub(hub, "c", NULL, "c1");
    pub(hub, "a", NULL, "a2");
    pub(hub, "b", NULL, "b2");
    /* A last message on b: once it is in, everything before it is too, so
     * the counts below are exact, not "at least". */
    pub(hub, "b", NULL, "end");
    CHECK(CLIENT_UNTIL(&x, EVENTS(&x) >= 5, DEADLINE_MS));
    CHECK(CLIENT_UNTIL(&y, EVENTS(&y) >= 3, DEADLINE_MS));
    CHECK_DATAS(&x, "a1|b1|a2|b2|end");
    CHECK_DATAS(&y, "b1|b2|end");
    client_close(&x);
    client_close(&y);
    finish(hub);
}

TEST(ids_strictly_increase_and_match_the_frames)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    client c;
    enum { N = 2000 };
    static sent s[N];
    spillway_id prev = {0, 0};

    REQUIRE_INT(open1(hub, &c, "ids", NULL), ==, 0);
    for (int i = 0; i < N; i++) {
        char data[32];
        spillway_id id;
        snprintf(data, sizeof(data), "m%d", i);
        s[i] = pub(hub, "ids", NULL, data);
        REQUIRE_INT(spillway_id_parse(s[i].id, strlen(s[i].id), &id), ==, 0);
        CHECK_INT(spillway_id_cmp(id, prev), ==, 1);
        prev = id;
    }
    CHECK(CLIENT_UNTIL(&c, EVENTS(&c) >= N, DEADLINE_MS));
    REQUIRE_U64(EVENTS(&c), ==, N);
    for (int i = 0; i < N; i++) {
        char data[32];
        snprintf(data, sizeof(data), "m%d", i);
        if (strcmp(EV(&c, i)->id.p, s[i].id) != 0 || strcmp(EV(&c, i)->data.p, data) != 0) {
            CHECK_STR(EV(&c, i)->id.p, s[i].id);
            CHECK_STR(EV(&c, i)->data.p, data);
            break;
        }
    }
    client_close(&c);
    finish(hub);
}

/* Publishers on several threads at once: ids are stamped under the queue
 * lock, so the one stream that listens to every channel sees ids strictly
 * increasing, and each thread's messages in the order it sent them. */
enum { PUB_THREADS = 4, PUB_EACH = 2000 };

typedef struct pub_arg {
    spillway_hub *hub;
    int n;
    atomic_int *refused;
} pub_arg;

static void *publisher_main(void *p)
{
    pub_arg *a = p;
    char ch[8], data[32], id[SPILLWAY_ID_TEXT_MAX], err[128];
    snprintf(ch, sizeof(ch), "p%d", a->n);
    for (int i = 0; i < PUB_EACH; i++) {
        int rc, len = snprintf(data, sizeof(data), "%d:%d", a->n, i);
        /* A full queue refuses; this test wants every message in. */
        while ((rc = spillway_hub_publish(a->hub, ch, strlen(ch), NULL, 0, data, (size_t)len, id,
                                          err, sizeof(err))) == -EAGAIN) {
            atomic_fetch_add(a->refused, 1);
            sched_yield();
        }
        if (rc != 0) {
            CHECK_INT(rc, ==, 0);
            return NULL;
        }
    }
    return NULL;
}

TEST(concurrent_publishers_keep_id_and_thread_order)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client c;
    const char *chans[PUB_THREADS] = {"p0", "p1", "p2", "p3"};
    pthread_t th[PUB_THREADS];
    pub_arg args[PUB_THREADS];
    atomic_int refused;
    int next[PUB_THREADS] = {0};
    spillway_id prev = {0, 0};
    bool ordered = true;

    cfg.queue_limit = 256;
    hub = start(&cfg);
    atomic_init(&refused, 0);
    REQUIRE_INT(open_stream(hub, &c, 0, chans, PUB_THREADS, NULL, 0), ==, 0);
    CHECK(CLIENT_UNTIL(&c, c.p.retries >= 1, DEADLINE_MS)); /* attached */
    for (int i = 0; i < PUB_THREADS; i++) {
        args[i] = (pub_arg){hub, i, &refused};
        REQUIRE_INT(pthread_create(&th[i], NULL, publisher_main, &args[i]), ==, 0);
    }
    CHECK(CLIENT_UNTIL(&c, EVENTS(&c) >= PUB_THREADS * PUB_EACH, DEADLINE_MS * 4));
    for (int i = 0; i < PUB_THREADS; i++) pthread_join(th[i], NULL);
    CHECK_U64(EVENTS(&c), ==, PUB_THREADS * PUB_EACH);
    for (size_t i = 0; i < EVENTS(&c); i++) {
        spillway_id id;
        int t = -1, k = -1;
        if (spillway_id_parse(EV(&c, i)->id.p, EV(&c, i)->id.len, &id) != 0 ||
            spillway_id_cmp(id, prev) <= 0 || sscanf(EV(&c, i)->data.p, "%d:%d", &t, &k) != 2 ||
            t < 0 || t >= PUB_THREADS || k != next[t]) {
            ordered = false;
            break;
        }
        prev = id;
        next[t]++;
    }
    CHECK(ordered);
    CHECK_U64(stats(hub).messages_in, ==, PUB_THREADS * PUB_EACH);
    client_close(&c);
    finish(hub);
}

TEST(resume_from_a_cursor_replays_what_was_missed)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    client c, m;
    sent s[6], a1;
    const char *two[] = {"ra", "rb"};

    for (int i = 0; i < 5; i++) {
        char data[16];
        snprintf(data, sizeof(data), "m%d", i + 1);
        s[i] = pub(hub, "r", NULL, data);
    }
    REQUIRE_INT(open1(hub, &c, "r", s[1].id), ==, 0);
    s[5] = pub(hub, "r", NULL, "m6");
    CHECK(CLIENT_UNTIL(&c, EVENTS(&c) >= 4, DEADLINE_MS));
    /* Exactly what came after the cursor, then live, no duplicate, no reset. */
    CHECK_DATAS(&c, "m3|m4|m5|m6");
    if (EVENTS(&c) == 4) CHECK_STR(EV(&c, 3)->id.p, s[5].id);

    /* Two channels: the missed messages of both, merged in id order. */
    a1 = pub(hub, "ra", NULL, "a1");
    pub(hub, "rb", NULL, "b1");
    pub(hub, "ra", NULL, "a2");
    pub(hub, "rb", NULL, "b2");
    REQUIRE_INT(open_stream(hub, &m, 0, two, 2, a1.id, 0), ==, 0);
    pub(hub, "ra", NULL, "live");
    CHECK(CLIENT_UNTIL(&m, EVENTS(&m) >= 4, DEADLINE_MS));
    CHECK_DATAS(&m, "b1|a2|b2|live");
    CHECK(WAIT_UNTIL(stats(hub).resumes == 2, DEADLINE_MS));
    CHECK_U64(stats(hub).resets, ==, 0);
    client_close(&c);
    client_close(&m);
    finish(hub);
}

/* spillway_hub_cursor: "now" for a page that renders state and then
 * subscribes. Resuming from it replays nothing and resets nothing; only what
 * is published after it arrives. */
TEST(hub_cursor_is_now)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    client c, early;
    char now[SPILLWAY_ID_TEXT_MAX], start_id[SPILLWAY_ID_TEXT_MAX];
    spillway_id id;
    sent last;

    /* Before any publish: the hub's start, which is not a reset either. */
    spillway_hub_cursor(hub, start_id);
    REQUIRE_INT(spillway_id_parse(start_id, strlen(start_id), &id), ==, 0);
    CHECK_U64(id.seq, ==, 0);
    pub(hub, "cur", NULL, "old1");
    last = pub(hub, "cur", NULL, "old2");
    spillway_hub_cursor(hub, now);
    CHECK_STR(now, last.id);
    REQUIRE_INT(open1(hub, &c, "cur", now), ==, 0);
    REQUIRE_INT(open1(hub, &early, "cur", start_id), ==, 0);
    pub(hub, "cur", NULL, "new");
    CHECK(CLIENT_UNTIL(&c, EVENTS(&c) >= 1, DEADLINE_MS));
    CHECK_DATAS(&c, "new");
    CHECK(CLIENT_UNTIL(&early, EVENTS(&early) >= 3, DEADLINE_MS));
    CHECK_DATAS(&early, "old1|old2|new");
    CHECK_U64(stats(hub).resets, ==, 0);
    client_close(&c);
    client_close(&early);
    finish(hub);
}

/* The first event of a stream whose cursor the backlog cannot serve is a
 * reset naming the channels; its id moves the client to "now". */
static void check_reset_first(client *c, const char *channels_json, const char *now_id)
{
    REQUIRE_U64(EVENTS(c), >=, 1);
    CHECK_STR(EV(c, 0)->type.p, "reset");
    CHECK_STR(EV(c, 0)->data.p, channels_json);
    if (now_id != NULL) CHECK_STR(EV(c, 0)->id.p, now_id);
}

TEST(reset_when_the_backlog_does_not_reach_the_cursor)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client old, edge, junk, past, future, fresh;
    sent s[7];

    cfg.backlog_size = 3;
    hub = start(&cfg);
    for (int i = 0; i < 6; i++) {
        char data[16];
        snprintf(data, sizeof(data), "m%d", i + 1);
        s[i] = pub(hub, "t", NULL, data);
    }
    /* The ring holds m4..m6: from m1 the client missed m2 and m3 for good. */
    REQUIRE_INT(open1(hub, &old, "t", s[0].id), ==, 0);
    /* From m3 nothing was lost: m3 is the newest trimmed one, the client has it. */
    REQUIRE_INT(open1(hub, &edge, "t", s[2].id), ==, 0);
    REQUIRE_INT(open1(hub, &junk, "t", "not-an-id"), ==, 0);
    REQUIRE_INT(open1(hub, &past, "t", "1-0"), ==, 0);
    REQUIRE_INT(open1(hub, &future, "t", "99999999999999-0"), ==, 0);
    REQUIRE_INT(open1(hub, &fresh, "t", NULL), ==, 0);
    s[6] = pub(hub, "t", NULL, "m7");

    CHECK(CLIENT_UNTIL(&old, EVENTS(&old) >= 2, DEADLINE_MS));
    check_reset_first(&old, "{\"channels\":[\"t\"]}", s[5].id);
    CHECK_DATAS(&old, "{\"channels\":[\"t\"]}|m7");

    CHECK(CLIENT_UNTIL(&edge, EVENTS(&edge) >= 4, DEADLINE_MS));
    CHECK_DATAS(&edge, "m4|m5|m6|m7");

    CHECK(CLIENT_UNTIL(&junk, EVENTS(&junk) >= 2, DEADLINE_MS));
    check_reset_first(&junk, "{\"channels\":[\"t\"]}", s[5].id);
    CHECK(CLIENT_UNTIL(&past, EVENTS(&past) >= 2, DEADLINE_MS));
    check_reset_first(&past, "{\"channels\":[\"t\"]}", s[5].id);
    CHECK(CLIENT_UNTIL(&future, EVENTS(&future) >= 2, DEADLINE_MS));
    check_reset_first(&future, "{\"channels\":[\"t\"]}", s[5].id);
    CHECK_DATAS(&future, "{\"channels\":[\"t\"]}|m7");

    CHECK(CLIENT_UNTIL(&fresh, EVENTS(&fresh) >= 1, DEADLINE_MS));
    CHECK_DATAS(&fresh, "m7");
    CHECK_U64(stats(hub).resets, ==, 4);
    CHECK_U64(stats(hub).resumes, ==, 5);

    client_close(&old);
    client_close(&edge);
    client_close(&junk);
    client_close(&past);
    client_close(&future);
    client_close(&fresh);
    finish(hub);
}

TEST(lru_eviction_turns_into_a_reset)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client c1, c2, c3;
    sent p0;

    cfg.max_backlog_channels = 2;
    hub = start(&cfg);
    p0 = pub(hub, "c0", NULL, "p0");
    pub(hub, "c1", NULL, "x1");
    pub(hub, "c2", NULL, "y1"); /* evicts c0 */
    pub(hub, "c3", NULL, "z1"); /* evicts c1 */
    REQUIRE_INT(open1(hub, &c1, "c1", p0.id), ==, 0);
    REQUIRE_INT(open1(hub, &c2, "c2", p0.id), ==, 0);
    REQUIRE_INT(open1(hub, &c3, "c3", p0.id), ==, 0);
    pub(hub, "c1", NULL, "x2");
    pub(hub, "c2", NULL, "y2");
    pub(hub, "c3", NULL, "z2");
    CHECK(CLIENT_UNTIL(&c1, EVENTS(&c1) >= 2, DEADLINE_MS));
    check_reset_first(&c1, "{\"channels\":[\"c1\"]}", NULL);
    CHECK_DATAS(&c1, "{\"channels\":[\"c1\"]}|x2");
    CHECK(CLIENT_UNTIL(&c2, EVENTS(&c2) >= 2, DEADLINE_MS));
    CHECK_DATAS(&c2, "y1|y2");
    CHECK(CLIENT_UNTIL(&c3, EVENTS(&c3) >= 2, DEADLINE_MS));
    CHECK_DATAS(&c3, "z1|z2");
    CHECK_U64(stats(hub).backlog_messages, <=, 4);
    client_close(&c1);
    client_close(&c2);
    client_close(&c3);
    finish(hub);
}

/* A reader that never reads fills its socket, then is left alone with the
 * frames the fast reader sent and the backlog (100 messages) let go: over
 * the cap and taking nothing, it is closed long before its lag would close
 * it. A reader on the same channel that keeps up gets everything. */
TEST(slow_reader_closed_at_the_cap_fast_reader_gets_everything)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client fast, slow;
    const char *chans[] = {"burst"};
    char data[1001];
    int total = 0;

    cfg.outbox_limit = 32768;
    cfg.max_lag_ms = 5000;
    hub = start(&cfg);
    REQUIRE_INT(open_stream(hub, &fast, 0, chans, 1, NULL, 0), ==, 0);
    REQUIRE_INT(open_stream(hub, &slow, 0, chans, 1, NULL, 4096), ==, 0);
    memset(data, 'd', 1000);
    data[1000] = '\0';
    /* Batches of 10 KB, each read by the fast reader before the next: its
     * outbox never nears the cap. The slow one's grows by 10 KB a batch. */
    for (int batch = 0; batch < 20; batch++) {
        for (int i = 0; i < 10; i++) {
            pub(hub, "burst", NULL, data);
            total++;
        }
        if (!CLIENT_UNTIL(&fast, EVENTS(&fast) >= (size_t)total, DEADLINE_MS)) break;
    }
    CHECK_U64(EVENTS(&fast), ==, 200);
    CHECK(!fast.eof);
    CHECK(WAIT_UNTIL(stats(hub).dropped_slow == 1, DEADLINE_MS));
    CHECK(WAIT_UNTIL(stats(hub).connections == 1, DEADLINE_MS));
    /* The slow reader finds what its socket held, then EOF. */
    CHECK(client_until_eof(&slow, DEADLINE_MS));
    CHECK_U64(EVENTS(&slow), <, 200);
    CHECK(!fast.eof);
    client_close(&fast);
    client_close(&slow);
    finish(hub);
}

/* A client that comes back with a cursor gets its whole replay queued at
 * once. Those are references to backlog frames that exist anyway (the reason
 * the cap is checked after the flush), so a replay bigger than the cap must
 * still reach a client that reads as fast as it can, instead of getting it
 * dropped as "slow" after the first socket-full. */
TEST(resume_bigger_than_the_cap_reaches_a_reader_that_reads)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client c;
    const char *chans[] = {"big"};
    sent first;
    char data[2001];

    cfg.outbox_limit = 65536;
    hub = start(&cfg);
    memset(data, 'r', 2000);
    data[2000] = '\0';
    first = pub(hub, "big", NULL, "first");
    for (int i = 0; i < 99; i++) pub(hub, "big", NULL, data);
    /* 200 KB to replay, a 64 KB cap, a socket that takes ~16 KB at a time. */
    REQUIRE_INT(open_stream(hub, &c, 0, chans, 1, first.id, 16384), ==, 0);
    CHECK(CLIENT_UNTIL(&c, EVENTS(&c) >= 99, DEADLINE_MS));
    CHECK_U64(EVENTS(&c), ==, 99);
    CHECK(!c.eof);
    CHECK_U64(stats(hub).dropped_slow, ==, 0);
    client_close(&c);
    finish(hub);
}

/* A reader that stops reading with less than the cap pending is closed once
 * its oldest unsent frame waited longer than max_lag. */
TEST(max_lag_drops_a_stalled_reader)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client live, stalled;
    const char *chans[] = {"wt"};
    char data[1001];
    uint64_t t0;

    cfg.heartbeat_ms = 100;
    cfg.max_lag_ms = 300;
    hub = start(&cfg);
    REQUIRE_INT(open_stream(hub, &live, 0, chans, 1, NULL, 0), ==, 0);
    REQUIRE_INT(open_stream(hub, &stalled, 0, chans, 1, NULL, 4096), ==, 0);
    memset(data, 'w', 1000);
    data[1000] = '\0';
    /* Before the first publish: no frame can have waited from earlier. */
    t0 = check_now_ms();
    for (int i = 0; i < 60; i++) pub(hub, "wt", NULL, data);
    CHECK(CLIENT_UNTIL(&live, EVENTS(&live) >= 60, DEADLINE_MS));
    CHECK(WAIT_UNTIL(stats(hub).dropped_slow == 1, DEADLINE_MS));
    /* Not before the timeout (the cap, 1 MiB, was never reached). */
    CHECK_U64(check_now_ms() - t0, >=, 250);
    CHECK(client_until_eof(&stalled, DEADLINE_MS));
    /* The live one keeps getting heartbeats and stays. */
    {
        size_t before = live.p.comments;
        CHECK(CLIENT_UNTIL(&live, live.p.comments >= before + 2, DEADLINE_MS));
        CHECK(!live.eof);
    }
    CHECK_U64(stats(hub).connections, ==, 1);
    client_close(&live);
    client_close(&stalled);
    finish(hub);
}

/* A burst published while the reactor is busy is handled in one iteration:
 * every stream's outbox takes all of it at once. Holding the loop lock
 * keeps the reactor out of its iteration while the messages queue up. */
static void burst(spillway_hub *hub, const char *channel, int n, size_t size)
{
    char *data = malloc(size + 1);
    REQUIRE(data != NULL);
    memset(data, 'b', size);
    data[size] = '\0';
    pthread_mutex_lock(&hub->loop_lock);
    for (int i = 0; i < n; i++) pub(hub, channel, NULL, data);
    pthread_mutex_unlock(&hub->loop_lock);
    free(data);
}

/* Issue 8: a burst 25 times outbox_limit, queued for every stream in one
 * iteration. The frames are shared, so the reader that keeps up costs
 * nothing alone while the never-reader holds them too. The never-reader,
 * left alone with what the reader sent, takes nothing: it is closed. Then
 * the reader is alone with the rest of the burst, and keeps taking it: it
 * stays and gets everything. */
TEST(burst_far_over_outbox_limit_reaches_a_reader_that_keeps_up)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client reader, stuck;
    const char *chans[] = {"burst"};

    cfg.outbox_limit = 16384;
    cfg.max_lag_ms = 2000; /* alone and taking nothing for 200 ms: closed */
    hub = start(&cfg);
    REQUIRE_INT(open_stream(hub, &reader, 0, chans, 1, NULL, 16384), ==, 0);
    REQUIRE_INT(open_stream(hub, &stuck, 0, chans, 1, NULL, 4096), ==, 0);
    CHECK(CLIENT_UNTIL(&reader, reader.p.retries >= 1, DEADLINE_MS));
    burst(hub, "burst", 400, 1000);
    CHECK(CLIENT_UNTIL(&reader, EVENTS(&reader) >= 400, DEADLINE_MS));
    CHECK_U64(EVENTS(&reader), ==, 400);
    CHECK(!reader.eof);
    CHECK(WAIT_UNTIL(stats(hub).dropped_slow == 1, DEADLINE_MS));
    CHECK(client_until_eof(&stuck, DEADLINE_MS));
    CHECK(WAIT_UNTIL(stats(hub).connections == 1, DEADLINE_MS));
    /* The reader stays, and what waited for the never-reader is released. */
    pub(hub, "burst", NULL, "after");
    CHECK(CLIENT_UNTIL(&reader, EVENTS(&reader) >= 401, DEADLINE_MS));
    CHECK(!reader.eof);
    CHECK(WAIT_UNTIL(stats(hub).outbox_bytes < 16384, DEADLINE_MS));
    client_close(&reader);
    client_close(&stuck);
    finish(hub);
}

/* Over memory_limit, the laggiest stream goes first, and only as many as it
 * takes: two never-readers on channels of their own, the first stuck since
 * an earlier burst; the second burst takes the process over the budget. */
TEST(memory_limit_closes_the_laggiest_first)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client older, newer, reader;
    const char *a[] = {"a"}, *b[] = {"b"};
    uint64_t t;

    cfg.memory_limit = 160 * 1024;
    hub = start(&cfg);
    REQUIRE_INT(open_stream(hub, &older, 0, a, 1, NULL, 4096), ==, 0);
    REQUIRE_INT(open_stream(hub, &newer, 0, b, 1, NULL, 4096), ==, 0);
    REQUIRE_INT(open_stream(hub, &reader, 0, b, 1, NULL, 0), ==, 0);
    CHECK(CLIENT_UNTIL(&reader, reader.p.retries >= 1, DEADLINE_MS));
    /* ~100 KB waits for `older`: under the budget. */
    burst(hub, "a", 100, 1000);
    CHECK(WAIT_UNTIL(stats(hub).outbox_bytes > 90 * 1024, DEADLINE_MS));
    /* The lag has millisecond resolution: let the clock move on so that the
     * second burst is younger. */
    t = check_now_ms();
    CHECK(WAIT_UNTIL(check_now_ms() > t + 2, DEADLINE_MS));
    burst(hub, "b", 100, 1000);
    CHECK(CLIENT_UNTIL(&reader, EVENTS(&reader) >= 100, DEADLINE_MS));
    CHECK(client_until_eof(&older, DEADLINE_MS));
    CHECK(WAIT_UNTIL(stats(hub).connections == 2, DEADLINE_MS));
    CHECK_U64(stats(hub).dropped_slow, ==, 1);
    CHECK_U64(stats(hub).outbox_bytes, <=, 160 * 1024);
    /* newer's frames still wait for it, and it is still open. */
    client_pump(&newer, 0);
    CHECK(!newer.eof);
    CHECK(!reader.eof);
    client_close(&older);
    client_close(&newer);
    client_close(&reader);
    finish(hub);
}

TEST(peer_eof_releases_the_stream)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    client c[3];

    for (int i = 0; i < 3; i++) REQUIRE_INT(open1(hub, &c[i], "eof", NULL), ==, 0);
    for (int i = 0; i < 3; i++) CHECK(CLIENT_UNTIL(&c[i], c[i].p.retries >= 1, DEADLINE_MS));
    CHECK_U64(stats(hub).connections, ==, 3);
    CHECK_U64(stats(hub).channels, ==, 1);
    client_close(&c[1]);
    CHECK(WAIT_UNTIL(stats(hub).connections == 2, DEADLINE_MS));
    CHECK_U64(stats(hub).closed, ==, 1);
    /* Half-close (the browser's FIN) counts as gone too. */
    shutdown(c[0].fd, SHUT_WR);
    CHECK(WAIT_UNTIL(stats(hub).connections == 1, DEADLINE_MS));
    CHECK(client_until_eof(&c[0], DEADLINE_MS));
    client_close(&c[0]);
    client_close(&c[2]);
    CHECK(WAIT_UNTIL(stats(hub).connections == 0, DEADLINE_MS));
    /* No subscriber and no backlog: the channel is gone too. */
    CHECK(WAIT_UNTIL(stats(hub).channels == 0, DEADLINE_MS));
    CHECK_U64(stats(hub).closed, ==, 3);
    finish(hub);
}

TEST(heartbeats_arrive_every_period)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client c;
    cfg.heartbeat_ms = 50;
    hub = start(&cfg);
    REQUIRE_INT(open1(hub, &c, "hb", NULL), ==, 0);
    /* The opening comment, then heartbeat comments; never an event. */
    CHECK(CLIENT_UNTIL(&c, c.p.comments >= 4, DEADLINE_MS));
    CHECK_U64(EVENTS(&c), ==, 0);
    CHECK(sse_parser_idle(&c.p));
    client_close(&c);
    finish(hub);
}

/* heartbeat_ms is "comment to every stream this often": the period must be
 * the configured one also when it is not a multiple of the wheel's 100
 * slots. Timing can only make the measured span longer, never shorter, so
 * the lower bound below cannot fail on a slow machine. */
TEST(heartbeat_period_is_the_configured_one)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client c;
    uint64_t t_first, t_last;

    cfg.heartbeat_ms = 150;
    hub = start(&cfg);
    REQUIRE_INT(open1(hub, &c, "hb", NULL), ==, 0);
    /* Comment 1 is the opening; 2 is the first heartbeat. */
    REQUIRE(CLIENT_UNTIL(&c, c.p.comments >= 2, DEADLINE_MS));
    t_first = check_now_ms();
    REQUIRE(CLIENT_UNTIL(&c, c.p.comments >= 6, DEADLINE_MS));
    t_last = check_now_ms();
    /* Four periods of 150 ms; allow 20% for the edges of the measurement. */
    CHECK_U64(t_last - t_first, >=, 4 * 150 * 8 / 10);
    client_close(&c);
    finish(hub);
}

TEST(a_client_that_talks_too_much_is_closed)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    client c;
    char junk[9000];
    REQUIRE_INT(open1(hub, &c, "talk", NULL), ==, 0);
    CHECK(CLIENT_UNTIL(&c, c.p.retries >= 1, DEADLINE_MS));
    memset(junk, 'j', sizeof(junk));
    CHECK_INT(write(c.fd, junk, sizeof(junk)), ==, (ssize_t)sizeof(junk));
    CHECK(client_until_eof(&c, DEADLINE_MS));
    CHECK(WAIT_UNTIL(stats(hub).connections == 0, DEADLINE_MS));
    client_close(&c);
    finish(hub);
}

/* The reset event's data is JSON naming the channels. A channel name the
 * hub accepts must come out as a valid JSON string: escaped, or refused at
 * attach (the Ruby layer only allows [A-Za-z0-9_-.:@/=+], but the C API says
 * "the hub checks them again" and only refuses CR, LF and NUL). */
TEST(reset_data_is_valid_json_for_any_accepted_name)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    client c;
    const char *name = "we\"ird\\name";
    int rc;

    rc = open1(hub, &c, name, "not-an-id");
    if (rc == -EINVAL) {
        finish(hub);
        return; /* refused at the boundary: fine */
    }
    REQUIRE_INT(rc, ==, 0);
    CHECK(CLIENT_UNTIL(&c, EVENTS(&c) >= 1, DEADLINE_MS));
    if (EVENTS(&c) >= 1) CHECK_STR(EV(&c, 0)->data.p, "{\"channels\":[\"we\\\"ird\\\\name\"]}");
    client_close(&c);
    finish(hub);
}

/* With the reactor held (it cannot take commands while we hold its loop
 * lock), the queue fills to queue_limit and the next publish is refused with
 * a message that names the limit; nothing already queued is lost. */
TEST(full_queue_refuses_with_a_clear_error)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client c;
    char err[256] = "", id[SPILLWAY_ID_TEXT_MAX];

    cfg.queue_limit = 16;
    hub = start(&cfg);
    REQUIRE_INT(open1(hub, &c, "q", NULL), ==, 0);
    CHECK(CLIENT_UNTIL(&c, c.p.retries >= 1, DEADLINE_MS));
    pthread_mutex_lock(&hub->loop_lock);
    for (int i = 0; i < 16; i++) pub(hub, "q", NULL, "x");
    CHECK_INT(spillway_hub_publish(hub, "q", 1, NULL, 0, "y", 1, id, err, sizeof(err)), ==, -EAGAIN);
    CHECK(strstr(err, "queue_limit 16") != NULL);
    pthread_mutex_unlock(&hub->loop_lock);
    CHECK(CLIENT_UNTIL(&c, EVENTS(&c) >= 16, DEADLINE_MS));
    pub(hub, "q", NULL, "after");
    CHECK(CLIENT_UNTIL(&c, EVENTS(&c) >= 17, DEADLINE_MS));
    CHECK_U64(EVENTS(&c), ==, 17);
    client_close(&c);
    finish(hub);
}

TEST(stop_sends_a_last_retry_and_closes_everything)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    client a, b, late;
    char err[256], id[SPILLWAY_ID_TEXT_MAX];

    REQUIRE_INT(open1(hub, &a, "s", NULL), ==, 0);
    REQUIRE_INT(open1(hub, &b, "s", NULL), ==, 0);
    pub(hub, "s", NULL, "before");
    CHECK(CLIENT_UNTIL(&a, EVENTS(&a) >= 1, DEADLINE_MS));
    CHECK(CLIENT_UNTIL(&b, EVENTS(&b) >= 1, DEADLINE_MS));
    /* Handed over right before the stop: it must be closed as well, never
     * leaked, whether or not it got attached in time. */
    REQUIRE_INT(open1(hub, &late, "s", NULL), ==, 0);

    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    CHECK(!spillway_hub_running(hub));
    for (client *c = &a; c != NULL; c = c == &a ? &b : NULL) {
        CHECK(client_until_eof(c, DEADLINE_MS));
        /* The opening retry and the last one. */
        CHECK_U64(c->p.retries, ==, 2);
        CHECK_INT(c->p.retry, ==, 1500);
        CHECK(c->body.len > 13 && memcmp(c->body.p + c->body.len - 13, "retry: 1500\n\n", 13) == 0);
    }
    CHECK(client_until_eof(&late, DEADLINE_MS));
    CHECK_U64(stats(hub).connections, ==, 0);
    CHECK_INT(spillway_hub_publish(hub, "s", 1, NULL, 0, "x", 1, id, err, sizeof(err)), ==, -EPIPE);
    {
        const char *chans[] = {"s"};
        size_t lens[] = {1};
        CHECK_INT(spillway_hub_attach(hub, -1, 0, chans, lens, 1, NULL, 0, err, sizeof(err)), ==,
                  -EPIPE);
    }
    /* Stopping twice is harmless. */
    CHECK_INT(spillway_hub_stop(hub, 100), ==, 0);
    spillway_hub_free(hub);
    client_close(&a);
    client_close(&b);
    client_close(&late);
}

/* ---- poll and long-poll ------------------------------------------------ */

/* The Content-Length of c's head (-1: none). */
static long content_length(const client *c)
{
    const char *p = c->head.p ? strstr(c->head.p, "Content-Length: ") : NULL;
    return p ? strtol(p + 16, NULL, 10) : -1;
}

static int open_poll(spillway_hub *hub, client *c, unsigned flags, const char *chan, const char *cursor)
{
    const char *chans[] = {chan};
    return open_stream(hub, c, SPILLWAY_ATTACH_HEAD | flags, chans, 1, cursor, 0);
}

TEST(poll_answers_once_with_content_length_and_closes)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    sent s1, s2;
    client a, b;

    s1 = pub(hub, "p", NULL, "one");
    s2 = pub(hub, "p", "note", "two");
    /* From before both: both, then EOF; the head says how long the body is. */
    REQUIRE_INT(open_poll(hub, &a, SPILLWAY_ATTACH_POLL, "p", s1.id), ==, 0);
    CHECK(client_until_eof(&a, DEADLINE_MS));
    CHECK(a.head_done);
    CHECK(a.head.p != NULL && strstr(a.head.p, "Connection: close\r\n") != NULL);
    CHECK(a.head.p != NULL && strstr(a.head.p, "X-Accel-Buffering") == NULL);
    CHECK_INT(content_length(&a), ==, (long)a.body.len);
    CHECK_DATAS(&a, "two");
    REQUIRE_U64(EVENTS(&a), ==, 1);
    CHECK_STR(EV(&a, 0)->id.p, s2.id);
    CHECK_U64(a.p.comments, ==, 0); /* no opening comment, no heartbeat */
    /* Nothing after the cursor: empty at once. */
    REQUIRE_INT(open_poll(hub, &b, SPILLWAY_ATTACH_POLL, "p", s2.id), ==, 0);
    CHECK(client_until_eof(&b, DEADLINE_MS));
    CHECK_INT(content_length(&b), ==, 0);
    CHECK_U64(b.body.len, ==, 0);
    CHECK(WAIT_UNTIL(stats(hub).connections == 0, DEADLINE_MS));
    CHECK_U64(stats(hub).polls_answered, ==, 2);
    client_close(&a);
    client_close(&b);
    finish(hub);
}

TEST(long_poll_waits_for_a_message_or_its_timeout)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    client a, b, c;
    sent s;
    uint64_t t0;

    cfg.long_poll_timeout_ms = 300;
    cfg.heartbeat_ms = 50; /* heartbeats would end a long-poll: it gets none */
    hub = start(&cfg);
    t0 = check_now_ms();
    REQUIRE_INT(open_poll(hub, &a, SPILLWAY_ATTACH_LONG_POLL, "lp", NULL), ==, 0);
    REQUIRE_INT(open_poll(hub, &b, SPILLWAY_ATTACH_LONG_POLL, "other", NULL), ==, 0);
    CHECK(WAIT_UNTIL(stats(hub).long_polls == 2, DEADLINE_MS));
    client_pump(&a, 150);
    CHECK_U64(a.head.len + a.body.len, ==, 0);
    s = pub(hub, "lp", NULL, "now");
    CHECK(client_until_eof(&a, DEADLINE_MS));
    CHECK_DATAS(&a, "now");
    CHECK_STR(EV(&a, 0)->id.p, s.id);
    CHECK_INT(content_length(&a), ==, (long)a.body.len);
    /* The other one: empty, at its deadline and not before. */
    CHECK(client_until_eof(&b, DEADLINE_MS));
    CHECK_INT(content_length(&b), ==, 0);
    CHECK_U64(check_now_ms() - t0, >=, 290);
    CHECK(WAIT_UNTIL(stats(hub).long_polls == 0 && stats(hub).connections == 0, DEADLINE_MS));
    /* A later message reaches nobody's closed answer; a stopping hub
     * answers a held long-poll (a complete response), never a retry hint. */
    REQUIRE_INT(open_poll(hub, &c, SPILLWAY_ATTACH_LONG_POLL, "held", NULL), ==, 0);
    CHECK(WAIT_UNTIL(stats(hub).long_polls == 1, DEADLINE_MS));
    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    CHECK(client_until_eof(&c, DEADLINE_MS));
    CHECK_INT(content_length(&c), ==, 0);
    CHECK_U64(c.body.len, ==, 0);
    spillway_hub_free(hub);
    client_close(&a);
    client_close(&b);
    client_close(&c);
}

TEST(poll_body_is_capped_and_the_next_poll_goes_on)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub;
    char *big = malloc(300 * 1024 + 1);
    sent first, ids[8];
    client a, b;

    REQUIRE(big != NULL);
    memset(big, 'x', 300 * 1024);
    big[300 * 1024] = '\0';
    cfg.backlog_size = 100;
    hub = start(&cfg);
    first = pub(hub, "cap", NULL, "start");
    for (int i = 0; i < 8; i++) ids[i] = pub(hub, "cap", NULL, big);
    /* 8 x 300 KiB after the cursor: the first answer stops under 1 MiB
     * (3 frames), the next poll from its last id gets the rest. */
    REQUIRE_INT(open_poll(hub, &a, SPILLWAY_ATTACH_POLL, "cap", first.id), ==, 0);
    CHECK(client_until_eof(&a, DEADLINE_MS));
    CHECK_U64(EVENTS(&a), ==, 3);
    CHECK_U64(a.body.len, <=, SPILLWAY_POLL_BODY_MAX);
    CHECK_INT(content_length(&a), ==, (long)a.body.len);
    REQUIRE(EVENTS(&a) == 3);
    CHECK_STR(EV(&a, 2)->id.p, ids[2].id);
    REQUIRE_INT(open_poll(hub, &b, SPILLWAY_ATTACH_POLL, "cap", EV(&a, 2)->id.p), ==, 0);
    CHECK(client_until_eof(&b, DEADLINE_MS));
    CHECK_U64(EVENTS(&b), ==, 3);
    if (EVENTS(&b) == 3) CHECK_STR(EV(&b, 0)->id.p, ids[3].id);
    client_close(&a);
    client_close(&b);
    free(big);
    finish(hub);
}

TEST(include_channel_names_each_message_shared_and_replayed)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    const char *chans[] = {"ca", "cb"};
    client tagged, plain, resumed;
    sent s1, s2;

    REQUIRE_INT(open_stream(hub, &tagged, SPILLWAY_ATTACH_CHANNEL, chans, 2, NULL, 0), ==, 0);
    REQUIRE_INT(open_stream(hub, &plain, 0, chans, 2, NULL, 0), ==, 0);
    REQUIRE(CLIENT_UNTIL(&tagged, tagged.p.retries >= 1, DEADLINE_MS));
    REQUIRE(CLIENT_UNTIL(&plain, plain.p.retries >= 1, DEADLINE_MS));
    s1 = pub(hub, "ca", NULL, "to a");
    s2 = pub(hub, "cb", "note", "to b");
    CHECK(CLIENT_UNTIL(&tagged, EVENTS(&tagged) >= 2, DEADLINE_MS));
    CHECK(CLIENT_UNTIL(&plain, EVENTS(&plain) >= 2, DEADLINE_MS));
    /* The field line comes right after the id; the rest is the frame as is. */
    {
        char want[128];
        snprintf(want, sizeof(want), "id: %s\nchannel: ca\ndata: to a\n\n", s1.id);
        CHECK(memmem(tagged.body.p, tagged.body.len, want, strlen(want)) != NULL);
        snprintf(want, sizeof(want), "id: %s\nchannel: cb\nevent: note\ndata: to b\n\n", s2.id);
        CHECK(memmem(tagged.body.p, tagged.body.len, want, strlen(want)) != NULL);
    }
    CHECK_DATAS(&tagged, "to a|to b");
    /* Everyone else gets the frame untouched. */
    CHECK(memmem(plain.body.p, plain.body.len, "channel:", 8) == NULL);
    CHECK_DATAS(&plain, "to a|to b");
    /* A replay from the backlog names its channels too, in id order. */
    REQUIRE_INT(open_stream(hub, &resumed, SPILLWAY_ATTACH_CHANNEL | SPILLWAY_ATTACH_POLL, chans, 2, s1.id, 0), ==, 0);
    CHECK(client_until_eof(&resumed, DEADLINE_MS));
    {
        char want[128];
        snprintf(want, sizeof(want), "id: %s\nchannel: cb\nevent: note\ndata: to b\n\n", s2.id);
        CHECK_U64(resumed.body.len, ==, strlen(want));
        CHECK(resumed.body.p != NULL && memcmp(resumed.body.p, want, strlen(want)) == 0);
    }
    client_close(&tagged);
    client_close(&plain);
    client_close(&resumed);
    finish(hub);
}

/* Two sites on one public name are two channels; a tagged message names
 * the public one; a "/global/" channel (no site) reaches both. */
TEST(sites_keep_apart_and_tag_the_public_name)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    const char *ca[] = {"a|chat", "/global/news"}, *cb[] = {"b|chat", "/global/news"};
    client a, b;
    sent s1, s2, s3;
    char want[128];

    REQUIRE_INT(open_stream(hub, &a, SPILLWAY_ATTACH_CHANNEL, ca, 2, NULL, 0), ==, 0);
    REQUIRE_INT(open_stream(hub, &b, SPILLWAY_ATTACH_CHANNEL, cb, 2, NULL, 0), ==, 0);
    REQUIRE(CLIENT_UNTIL(&a, a.p.retries >= 1, DEADLINE_MS));
    REQUIRE(CLIENT_UNTIL(&b, b.p.retries >= 1, DEADLINE_MS));
    s1 = pub(hub, "a|chat", NULL, "for a");
    s2 = pub(hub, "b|chat", NULL, "for b");
    s3 = pub(hub, "/global/news", NULL, "for all");
    CHECK(CLIENT_UNTIL(&a, EVENTS(&a) >= 2, DEADLINE_MS));
    CHECK(CLIENT_UNTIL(&b, EVENTS(&b) >= 2, DEADLINE_MS));
    CHECK_DATAS(&a, "for a|for all");
    CHECK_DATAS(&b, "for b|for all");
    snprintf(want, sizeof(want), "id: %s\nchannel: chat\ndata: for a\n\n", s1.id);
    CHECK(memmem(a.body.p, a.body.len, want, strlen(want)) != NULL);
    snprintf(want, sizeof(want), "id: %s\nchannel: chat\ndata: for b\n\n", s2.id);
    CHECK(memmem(b.body.p, b.body.len, want, strlen(want)) != NULL);
    snprintf(want, sizeof(want), "id: %s\nchannel: /global/news\ndata: for all\n\n", s3.id);
    CHECK(memmem(b.body.p, b.body.len, want, strlen(want)) != NULL);
    CHECK(memmem(a.body.p, a.body.len, "|", 1) == NULL);
    client_close(&a);
    client_close(&b);
    finish(hub);
}

/*
 * Fork: the child closes every stream descriptor it inherited (so the
 * parent's clients still see EOF when the parent closes them, while the
 * child lives on), and the hub is dead there: the API refuses or returns,
 * and never blocks.
 */
/* The child abandons the hub on purpose (its memory belongs to the parent's
 * threads); a global keeps it reachable so valgrind's leak check in the child
 * does not report it as lost. */
static spillway_hub *volatile fork_keepalive;

TEST(fork_child_closes_inherited_streams)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    client c;
    int ready[2], go[2];
    pid_t pid;
    int status = 0;
    char byte = 0;

    fork_keepalive = hub;
    REQUIRE_INT(open1(hub, &c, "f", NULL), ==, 0);
    CHECK(CLIENT_UNTIL(&c, c.p.retries >= 1, DEADLINE_MS));
    REQUIRE_INT(pipe(ready), ==, 0);
    REQUIRE_INT(pipe(go), ==, 0);
    pid = fork();
    REQUIRE_INT(pid, >=, 0);
    if (pid == 0) {
        char err[128], id[SPILLWAY_ID_TEXT_MAX], ok = 1;
        spillway_stats st;
        /* A child that hangs is killed by the alarm and fails the test. */
        alarm(10 * check_slow());
        ok &= !spillway_hub_running(hub);
        ok &= spillway_hub_publish(hub, "f", 1, NULL, 0, "x", 1, id, err, sizeof(err)) == -EPIPE;
        spillway_hub_stats(hub, &st);
        ok &= spillway_hub_stop(hub, 100) == 0;
        spillway_hub_free(hub); /* a no-op in the child */
        ok &= write(ready[1], &ok, 1) == 1;
        /* Stay alive until the parent has checked its client. */
        if (read(go[0], &byte, 1) != 1) _exit(3);
        _exit(ok ? 0 : 2);
    }
    CHECK_INT(read(ready[0], &byte, 1), ==, 1);
    CHECK_INT(byte, ==, 1);
    /* The parent still serves its stream... */
    pub(hub, "f", NULL, "still here");
    CHECK(CLIENT_UNTIL(&c, EVENTS(&c) >= 1, DEADLINE_MS));
    /* ...and when it stops, the client sees EOF although the child (which
     * inherited the stream's descriptor) is still alive. */
    CHECK_INT(spillway_hub_stop(hub, 5000 * check_slow()), ==, 0);
    CHECK(client_until_eof(&c, DEADLINE_MS));
    CHECK_INT(write(go[1], "g", 1), ==, 1);
    CHECK_INT(waitpid(pid, &status, 0), ==, pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    spillway_hub_free(hub);
    client_close(&c);
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    close(go[1]);
}

/* spillway_hub_flush's contract: it returns by its timeout at the latest.
 * In a fork child the hub is dead, and the call must not hang there. */
TEST(fork_child_flush_returns)
{
    spillway_config cfg = test_hub_config();
    spillway_hub *hub = start(&cfg);
    pid_t pid;
    int status = 0;

    fork_keepalive = hub;
    pid = fork();
    REQUIRE_INT(pid, >=, 0);
    if (pid == 0) {
        /* One call with a 100 ms timeout: 3 s is plenty, even under valgrind. */
        alarm(3);
        spillway_hub_flush(hub, 100, NULL);
        _exit(0);
    }
    CHECK_INT(waitpid(pid, &status, 0), ==, pid);
    if (WIFSIGNALED(status))
        fprintf(stderr, "  the child was killed by signal %d (SIGALRM: flush hung)\n",
                WTERMSIG(status));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    finish(hub);
}

CHECK_MAIN
