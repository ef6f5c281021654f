/*
 * A hub with the Redis backend and no thread, driven by hand, against a fake
 * Redis that this file plays on a Unix socket: it accepts the hub's two
 * connections, answers the handshake, and answers SUBSCRIBE, barriers,
 * resumes, publishes and PING when told to (the FX_AUTO_* flags), or leaves
 * them for the test, which may then send any bytes it likes on either link.
 *
 * Everything on the hub's side is the hub's own code: its links connect,
 * handshake, read and reconnect through redis_link.c; one turn here is what
 * one iteration of reactor_main (hub.c) does, in the same order, on a fake
 * clock (fx_advance).
 *
 * Used by test_redis.c (the replies Redis never sends, one by one) and
 * fuzz_redis.c (any bytes on both links). Everything is static; failures to
 * set up abort (no test harness needed, so the fuzzer can use it too).
 */
#ifndef SPILLWAY_REDIS_FIXTURE_H
#define SPILLWAY_REDIS_FIXTURE_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "hub_internal.h"
#include "resp.h"
#include "scripts.h"
#include "sse.h"
#include "tbuf.h"

#define FX_API static __attribute__((unused))

/* What the fake Redis answers on its own. */
enum {
    FX_AUTO_SUBSCRIBE = 1, /* SUBSCRIBE / UNSUBSCRIBE confirmations */
    FX_AUTO_BARRIER = 2,   /* the barrier script: its id, and its PUBLISH on the control channel */
    FX_AUTO_RESUME = 4,    /* the resume script (resume and repair): nothing missed */
    FX_AUTO_PUBLISH = 8,   /* the publish script: an id, and the message to the subscriber link */
    FX_AUTO_PING = 16,
    FX_AUTO_ALL = 31
};

/* The scripts' SHA1s as this Redis reports them. */
#define FX_SHA_PUBLISH "1111111111111111111111111111111111111111"
#define FX_SHA_RESUME "2222222222222222222222222222222222222222"
#define FX_SHA_BARRIER "3333333333333333333333333333333333333333"

#define FX_NS "fx"
#define FX_MAX_CONNS 16
#define FX_MAX_STREAMS 32
#define FX_MAX_SUBS 64

enum { FX_SCRIPT_NONE, FX_SCRIPT_PUBLISH, FX_SCRIPT_RESUME, FX_SCRIPT_BARRIER, FX_SCRIPT_WITNESS };

/* One connection the hub opened to the fake Redis. */
typedef struct fx_conn {
    int fd; /* -1: closed */
    char role; /* 'S' (subscriber), 'C' (command), 0 before CLIENT SETNAME */
    spillway_resp_reader *reader;
    char *subs[FX_MAX_SUBS]; /* channels subscribed on it */
    uint32_t nsubs;
    tbuf out;     /* what this side wrote and the socket has not taken yet */
    size_t sent;  /* of out */
} fx_conn;

typedef struct fx_stream {
    int peer; /* the browser's end; -1: closed by the test */
    tbuf got; /* everything the hub wrote to it */
    bool eof; /* the hub closed it */
} fx_stream;

typedef struct fx {
    spillway_hub *hub;
    int lfd;
    int ep; /* this side's own epoll set (level-triggered): the listener, its connections, the browsers */
    char path[108];
    fx_conn conns[FX_MAX_CONNS];
    unsigned autos;
    char ctl[128]; /* the hub's control channel, learnt from its SUBSCRIBE */
    size_t ctl_len;
    uint64_t id_ms, id_seq; /* the fake id key: the last id issued */
    fx_stream streams[FX_MAX_STREAMS];
    uint32_t nstreams;
    /* Every command the hub sent, one per line (arguments over 40 bytes cut),
     * and those left unanswered on the command link. */
    tbuf log;
    uint32_t unanswered;
    uint32_t accepted; /* connections accepted, ever */
    /* When set, the answer to every CLIENT SETNAME / SCRIPT LOAD instead of
     * the right one. */
    const char *setname_reply, *script_reply;
    /* When set, the answer to the witness script (default ":0"). */
    const char *witness_reply;
} fx;

FX_API void fx_die(const char *what)
{
    fprintf(stderr, "redis_fixture: %s: %s\n", what, strerror(errno));
    abort();
}

/* ---- the hub ------------------------------------------------------------ */

FX_API spillway_hub *fx_hub_new(const char *path)
{
    spillway_hub *hub = calloc(1, sizeof(*hub));
    spillway_redis_config *rc;
    char err[200];
    if (hub == NULL) fx_die("calloc");
    hub->cfg.heartbeat_ms = 15000;
    hub->cfg.retry_ms = 1000;
    hub->cfg.max_connections = 1000;
    hub->cfg.max_channels_per_conn = 32;
    hub->cfg.outbox_limit = 1 << 20;
    hub->cfg.max_lag_ms = 30000;
    hub->cfg.memory_limit = 1ull << 30;
    hub->cfg.queue_limit = 1024;
    hub->cfg.max_backlog_channels = 1000;
    rc = &hub->cfg.redis;
    rc->path = strdup(path);
    rc->ns = strdup(FX_NS);
    rc->connect_timeout_ms = 1000;
    rc->command_timeout_ms = 1000;
    rc->health_interval_ms = 5000;
    rc->backlog_size = 100;
    rc->backlog_ttl_s = 0;
    rc->async_limit = 1000;
    rc->unsubscribe_linger_ms = 1000;
    if (rc->path == NULL || rc->ns == NULL) fx_die("strdup");
    pthread_mutex_init(&hub->loop_lock, NULL);
    pthread_mutex_init(&hub->err_lock, NULL);
    pthread_mutex_init(&hub->flush_lock, NULL);
    pthread_cond_init(&hub->flush_cond, NULL);
    hub->owner = getpid();
    hub->q.efd = -1;
    hub->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (hub->epfd < 0) fx_die("epoll_create1");
    hub->now = 1000000;
    hub->wheel_slots = 100;
    hub->wheel = calloc(hub->wheel_slots, sizeof(*hub->wheel));
    hub->wheel_next_ms = hub->now + hub->cfg.heartbeat_ms / hub->wheel_slots;
    hub->f_open = spillway_frame_copy(": spillway\n\nretry: 1000\n\n", 25);
    hub->f_retry = spillway_frame_copy("retry: 1000\n\n", 13);
    hub->f_heartbeat = spillway_frame_copy(":\n\n", 3);
    if (hub->wheel == NULL || hub->f_open == NULL || hub->f_retry == NULL || hub->f_heartbeat == NULL)
        fx_die("hub memory");
    if (spillway_chtab_init(&hub->chans) != 0) fx_die("spillway_chtab_init");
    if (spillway_redis_backend_new(hub, err, sizeof(err)) != 0) fx_die(err);
    return hub;
}

/* ---- the fake Redis ----------------------------------------------------- */

FX_API void fx_conn_close(fx_conn *k)
{
    if (k->fd >= 0) close(k->fd);
    k->fd = -1;
    spillway_resp_reader_free(k->reader);
    k->reader = NULL;
    for (uint32_t i = 0; i < k->nsubs; i++) free(k->subs[i]);
    k->nsubs = 0;
    k->role = 0;
    tbuf_free(&k->out);
    k->sent = 0;
}

/* The open connection of a role, or NULL. */
FX_API fx_conn *fx_conn_of(fx *x, char role)
{
    for (int i = 0; i < FX_MAX_CONNS; i++)
        if (x->conns[i].fd >= 0 && x->conns[i].role == role) return &x->conns[i];
    return NULL;
}

/* Queued: fx_turn sends it before the hub's next iteration (one send per
 * connection and turn, however many pieces a reply was written in). */
FX_API void fx_write(fx_conn *k, const void *p, size_t n)
{
    if (k != NULL && k->fd >= 0 && n > 0) tbuf_put(&k->out, p, n);
}

/* Sends what is queued, as far as the sockets take it. true when anything
 * went. */
FX_API bool fx_flush(fx *x)
{
    bool any = false;
    for (int i = 0; i < FX_MAX_CONNS; i++) {
        fx_conn *k = &x->conns[i];
        while (k->fd >= 0 && k->sent < k->out.len) {
            ssize_t w = send(k->fd, k->out.p + k->sent, k->out.len - k->sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break; /* the hub reads it next turn */
            if (w <= 0) {
                /* The hub went away: what it did not read it missed. */
                k->sent = k->out.len;
                break;
            }
            k->sent += (size_t)w;
            any = true;
        }
        if (k->sent == k->out.len && k->out.len > 0) {
            k->out.len = 0;
            k->sent = 0;
        }
    }
    return any;
}

FX_API void fx_printf(fx_conn *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
FX_API void fx_printf(fx_conn *k, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0) fx_write(k, buf, SW_MIN((size_t)n, sizeof(buf) - 1));
}

FX_API void fx_bulk(fx_conn *k, const char *s, size_t n)
{
    fx_printf(k, "$%zu\r\n", n);
    fx_write(k, s, n);
    fx_write(k, "\r\n", 2);
}

/* A pub/sub message on the subscriber link, as Redis sends it. */
FX_API void fx_push_message(fx *x, const char *channel, size_t chlen, const char *payload, size_t n)
{
    fx_conn *k = fx_conn_of(x, 'S');
    fx_write(k, "*3\r\n$7\r\nmessage\r\n", 17);
    fx_bulk(k, channel, chlen);
    fx_bulk(k, payload, n);
}

FX_API bool fx_subscribed(const fx_conn *k, const char *name, size_t n)
{
    for (uint32_t i = 0; k != NULL && i < k->nsubs; i++)
        if (strlen(k->subs[i]) == n && memcmp(k->subs[i], name, n) == 0) return true;
    return false;
}

FX_API const char *fx_next_id(fx *x, char *buf)
{
    x->id_seq++;
    snprintf(buf, 48, "%llu-%llu", (unsigned long long)x->id_ms, (unsigned long long)x->id_seq);
    return buf;
}

FX_API int fx_script(const spillway_rv *v, bool eval)
{
    const spillway_rv *a = v->element[1];
    if (eval) {
        if (spillway_rv_is(a, spillway_lua_publish)) return FX_SCRIPT_PUBLISH;
        if (spillway_rv_is(a, spillway_lua_resume)) return FX_SCRIPT_RESUME;
        if (spillway_rv_is(a, spillway_lua_barrier)) return FX_SCRIPT_BARRIER;
        if (spillway_rv_is(a, spillway_lua_witness)) return FX_SCRIPT_WITNESS;
        return FX_SCRIPT_NONE;
    }
    if (spillway_rv_is(a, FX_SHA_PUBLISH)) return FX_SCRIPT_PUBLISH;
    if (spillway_rv_is(a, FX_SHA_RESUME)) return FX_SCRIPT_RESUME;
    if (spillway_rv_is(a, FX_SHA_BARRIER)) return FX_SCRIPT_BARRIER;
    return FX_SCRIPT_NONE;
}

/* The resume script's answer when nothing was missed: [last, [0 x n], []]. */
FX_API void fx_resume_nothing(fx *x, fx_conn *k, uint32_t nch)
{
    char id[48];
    snprintf(id, sizeof(id), "%llu-%llu", (unsigned long long)x->id_ms, (unsigned long long)x->id_seq);
    fx_printf(k, "*3\r\n");
    fx_bulk(k, id, strlen(id));
    fx_printf(k, "*%u\r\n", nch);
    for (uint32_t i = 0; i < nch; i++) fx_write(k, ":0\r\n", 4);
    fx_write(k, "*0\r\n", 4);
}

/* One command from the hub: logged, and answered when it is handshake or
 * the flags say so. */
FX_API void fx_command(fx *x, fx_conn *k, const spillway_rv *v)
{
    char cmd[16] = "";
    char id[48];
    const spillway_rv *a0;

    if (v->type != SW_RV_ARRAY || v->elements == 0) abort(); /* the hub sends commands only */
    for (size_t i = 0; i < v->elements; i++) {
        const spillway_rv *a = v->element[i];
        if (a->type != SW_RV_STRING) abort();
        if (i > 0) tbuf_put(&x->log, " ", 1);
        tbuf_put(&x->log, a->str->data, SW_MIN(a->str->len, 40u));
    }
    tbuf_put(&x->log, "\n", 1);
    a0 = v->element[0];
    for (size_t i = 0; i < sizeof(cmd) - 1 && i < a0->str->len; i++) {
        char c = a0->str->data[i];
        cmd[i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    }

    if (!strcmp(cmd, "AUTH") || !strcmp(cmd, "SELECT")) {
        fx_write(k, "+OK\r\n", 5);
    } else if (!strcmp(cmd, "CLIENT")) {
        if (v->elements == 3 && spillway_rv_starts(v->element[2], "spillway-sub")) k->role = 'S';
        if (v->elements == 3 && spillway_rv_starts(v->element[2], "spillway-cmd")) k->role = 'C';
        if (x->setname_reply != NULL) fx_write(k, x->setname_reply, strlen(x->setname_reply));
        else fx_write(k, "+OK\r\n", 5);
    } else if (!strcmp(cmd, "SCRIPT")) {
        const spillway_rv *t = v->element[2];
        const char *sha = spillway_rv_is(t, spillway_lua_publish) ? FX_SHA_PUBLISH
                          : spillway_rv_is(t, spillway_lua_resume) ? FX_SHA_RESUME
                                                                    : FX_SHA_BARRIER;
        if (x->script_reply != NULL) fx_write(k, x->script_reply, strlen(x->script_reply));
        else fx_bulk(k, sha, 40);
    } else if (!strcmp(cmd, "SUBSCRIBE") || !strcmp(cmd, "UNSUBSCRIBE")) {
        bool sub = cmd[0] == 'S';
        for (size_t i = 1; i < v->elements; i++) {
            const spillway_frame *n = v->element[i]->str;
            if (sub && memchr(n->data, '!', n->len) != NULL && n->len < sizeof(x->ctl)) {
                memcpy(x->ctl, n->data, n->len);
                x->ctl[n->len] = '\0';
                x->ctl_len = n->len;
            }
            if (!(x->autos & FX_AUTO_SUBSCRIBE)) continue;
            if (sub && !fx_subscribed(k, n->data, n->len) && k->nsubs < FX_MAX_SUBS) {
                k->subs[k->nsubs] = strndup(n->data, n->len);
                if (k->subs[k->nsubs] == NULL) abort();
                k->nsubs++;
            }
            for (uint32_t j = 0; !sub && j < k->nsubs; j++) {
                if (strlen(k->subs[j]) == n->len && memcmp(k->subs[j], n->data, n->len) == 0) {
                    free(k->subs[j]);
                    k->subs[j] = k->subs[--k->nsubs];
                    break;
                }
            }
            fx_printf(k, "*3\r\n$%d\r\n%s\r\n", sub ? 9 : 11, sub ? "subscribe" : "unsubscribe");
            fx_bulk(k, n->data, n->len);
            fx_printf(k, ":%u\r\n", k->nsubs);
        }
    } else if (!strcmp(cmd, "PING")) {
        if (x->autos & FX_AUTO_PING) fx_write(k, "*2\r\n$4\r\npong\r\n$0\r\n\r\n", 20);
    } else if ((!strcmp(cmd, "EVALSHA") || !strcmp(cmd, "EVAL")) && v->elements >= 3) {
        int script = fx_script(v, cmd[4] == '\0');
        bool answered = false;
        if (script == FX_SCRIPT_BARRIER && (x->autos & FX_AUTO_BARRIER) && v->elements == 7) {
            /* KEYS id, since; ARGV control channel, number. The script
             * PUBLISHes "<seq> <id>" on the control channel and returns the
             * id. */
            char text[96];
            const spillway_frame *seq = v->element[6]->str;
            snprintf(id, sizeof(id), "%llu-%llu", (unsigned long long)x->id_ms, (unsigned long long)x->id_seq);
            snprintf(text, sizeof(text), "%.*s %s", (int)SW_MIN(seq->len, 40u), seq->data, id);
            if (fx_subscribed(fx_conn_of(x, 'S'), v->element[5]->str->data, v->element[5]->str->len))
                fx_push_message(x, v->element[5]->str->data, v->element[5]->str->len, text, strlen(text));
            fx_bulk(k, id, strlen(id));
            answered = true;
        } else if (script == FX_SCRIPT_WITNESS) {
            /* Sent once per new command link after a message was received
             * live: "nothing lost" unless the test says otherwise. */
            const char *w = x->witness_reply ? x->witness_reply : ":0\r\n";
            fx_write(k, w, strlen(w));
            answered = true;
        } else if (script == FX_SCRIPT_RESUME && (x->autos & FX_AUTO_RESUME)) {
            const spillway_frame *nk = v->element[2]->str;
            uint32_t nkeys = 0;
            for (uint32_t i = 0; i < nk->len && i < 6 && nk->data[i] >= '0' && nk->data[i] <= '9'; i++)
                nkeys = nkeys * 10 + (uint32_t)(nk->data[i] - '0');
            fx_resume_nothing(x, k, nkeys > 2 ? nkeys - 2 : 0); /* KEYS id, since, streams */
            answered = true;
        } else if (script == FX_SCRIPT_PUBLISH && (x->autos & FX_AUTO_PUBLISH) && v->elements == 12) {
            /* KEYS id, stream, idempotency, since; ARGV channel, body, ...
             * The frame is "id: <id>\n" and the body; PUBLISHed, and the id
             * returned. */
            const spillway_frame *ch = v->element[7]->str, *body = v->element[8]->str;
            tbuf f = {0};
            fx_next_id(x, id);
            tbuf_put(&f, "id: ", 4);
            tbuf_put(&f, id, strlen(id));
            tbuf_put(&f, "\n", 1);
            tbuf_put(&f, body->data, body->len);
            if (fx_subscribed(fx_conn_of(x, 'S'), ch->data, ch->len)) fx_push_message(x, ch->data, ch->len, f.p, f.len);
            tbuf_free(&f);
            fx_bulk(k, id, strlen(id));
            answered = true;
        }
        if (!answered) x->unanswered++;
    } else {
        fx_printf(k, "-ERR unknown command '%s'\r\n", cmd);
    }
}

/* Tags of this side's epoll events: what, and which one. */
#define FX_TAG_LISTEN 0ull
#define FX_TAG_CONN 1ull
#define FX_TAG_STREAM 2ull

FX_API void fx_watch(fx *x, int fd, uint64_t tag, uint32_t i)
{
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = tag << 32 | i;
    if (epoll_ctl(x->ep, EPOLL_CTL_ADD, fd, &ev) != 0) fx_die("epoll_ctl");
}

FX_API void fx_accept_all(fx *x)
{
    for (;;) {
        int fd = accept4(x->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int slot = -1;
        if (fd < 0) return;
        for (int i = 0; i < FX_MAX_CONNS && slot < 0; i++)
            if (x->conns[i].fd < 0) slot = i;
        if (slot < 0) abort(); /* more than FX_MAX_CONNS at once: the hub leaks connections */
        x->conns[slot].fd = fd;
        x->conns[slot].reader = spillway_resp_reader_new();
        if (x->conns[slot].reader == NULL) abort();
        fx_watch(x, fd, FX_TAG_CONN, (uint32_t)slot);
        x->accepted++;
    }
}

/* Reads and answers what the hub sent on one connection. */
FX_API void fx_serve(fx *x, fx_conn *k)
{
    char buf[65536];
    while (k->fd >= 0) {
        ssize_t n = recv(k->fd, buf, sizeof(buf), MSG_DONTWAIT);
        const char *err;
        spillway_rv *v;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            fx_conn_close(k); /* the hub closed it (and close() leaves the epoll set) */
            return;
        }
        if (spillway_resp_feed(k->reader, buf, (size_t)n, &err) != 0) abort();
        while (k->fd >= 0 && spillway_resp_next(k->reader, &v, &err) == 1) {
            fx_command(x, k, v);
            spillway_rv_free(v);
        }
    }
}

/* Reads what the hub wrote to a stream. */
FX_API void fx_drain(fx *x, fx_stream *s)
{
    char buf[65536];
    while (s->peer >= 0 && !s->eof) {
        ssize_t n = recv(s->peer, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            if (s->got.len < (1u << 20)) tbuf_put(&s->got, buf, (size_t)n);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            s->eof = true; /* the hub closed it: no more readiness from it */
            epoll_ctl(x->ep, EPOLL_CTL_DEL, s->peer, NULL);
        }
        return;
    }
}

/* Everything this side has to do now; true when there was anything. */
FX_API bool fx_pump(fx *x)
{
    struct epoll_event ev[64];
    int n = epoll_wait(x->ep, ev, 64, 0);
    for (int i = 0; i < n; i++) {
        uint64_t tag = ev[i].data.u64 >> 32;
        uint32_t idx = (uint32_t)ev[i].data.u64;
        if (tag == FX_TAG_LISTEN) fx_accept_all(x);
        else if (tag == FX_TAG_CONN) fx_serve(x, &x->conns[idx]);
        else fx_drain(x, &x->streams[idx]);
    }
    return n > 0;
}

/* ---- turns -------------------------------------------------------------- */

/* One reactor iteration, as reactor_main runs it, without waiting. */
FX_API int fx_iteration(fx *x)
{
    spillway_hub *hub = x->hub;
    struct epoll_event ev[64];
    int n = epoll_wait(hub->epfd, ev, 64, 0);
    for (int i = 0; i < n; i++) {
        spillway_handle *h = ev[i].data.ptr;
        if (h->kind == SW_KIND_CONN) spillway_conn_on_event(hub, (spillway_conn *)h, ev[i].events);
        else hub->backend.ops->on_event(hub->backend.self, h, ev[i].events);
    }
    if (hub->now >= hub->wheel_next_ms) spillway_wheel_tick(hub);
    hub->backend.ops->timers(hub->backend.self);
    spillway_hub_flush_and_close(hub);
    hub->backend.ops->end_iteration(hub->backend.self);
    if (hub->dirty != NULL || hub->doomed != NULL) spillway_hub_flush_and_close(hub);
    return n;
}

/* Iterations and the fake Redis's answers until nothing moves (bounded:
 * a hub and a fake Redis could talk for ever, e.g. a reconnect loop). */
FX_API void fx_turn(fx *x)
{
    for (int round = 0; round < 64; round++) {
        bool any = fx_flush(x);
        any |= fx_iteration(x) > 0;
        any |= fx_pump(x);
        if (!any) return;
    }
}

/* The fake clock moves on by ms: timers (reconnects, timeouts, PINGs,
 * heartbeats) run. */
FX_API void fx_advance(fx *x, uint64_t ms)
{
    x->hub->now += ms;
    fx_turn(x);
}

/* ---- set-up and tear-down ----------------------------------------------- */

FX_API fx *fx_new(unsigned autos)
{
    static unsigned counter;
    fx *x = calloc(1, sizeof(*x));
    struct sockaddr_un un;
    if (x == NULL) fx_die("calloc");
    for (int i = 0; i < FX_MAX_CONNS; i++) x->conns[i].fd = -1;
    x->autos = autos;
    x->id_ms = 1700000000000ull;
    snprintf(x->path, sizeof(x->path), "/tmp/spillway-fx-%d-%u.sock", (int)getpid(), counter++);
    unlink(x->path);
    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    memcpy(un.sun_path, x->path, strlen(x->path) + 1);
    x->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (x->lfd < 0 || bind(x->lfd, (struct sockaddr *)&un, sizeof(un)) != 0 || listen(x->lfd, 16) != 0)
        fx_die("listen");
    x->ep = epoll_create1(EPOLL_CLOEXEC);
    if (x->ep < 0) fx_die("epoll_create1");
    fx_watch(x, x->lfd, FX_TAG_LISTEN, 0);
    x->hub = fx_hub_new(x->path);
    fx_turn(x); /* both links connect and handshake */
    return x;
}

FX_API void fx_free(fx *x)
{
    spillway_hub_free(x->hub); /* closes its streams and links */
    for (int i = 0; i < FX_MAX_CONNS; i++) fx_conn_close(&x->conns[i]);
    for (uint32_t i = 0; i < x->nstreams; i++) {
        if (x->streams[i].peer >= 0) close(x->streams[i].peer);
        tbuf_free(&x->streams[i].got);
    }
    close(x->lfd);
    close(x->ep);
    unlink(x->path);
    tbuf_free(&x->log);
    free(x);
}

/* ---- what browsers and publishers do ------------------------------------ */

/* A stream on channels (names, NUL-terminated) with an optional cursor, as
 * do_attach (hub.c) hands it to the Redis backend. Its index, or -1 when the
 * streams are all used. */
FX_API int fx_attach(fx *x, const char *const *names, uint32_t n, const char *cursor)
{
    spillway_hub *hub = x->hub;
    int sv[2];
    spillway_conn *c;
    fx_stream *s;

    if (x->nstreams == FX_MAX_STREAMS) return -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) fx_die("socketpair");
    c = spillway_conn_new(hub, sv[0], 0);
    if (c == NULL) fx_die("spillway_conn_new");
    atomic_fetch_add(&hub->reserved, 1); /* spillway_conn_close gives it back */
    atomic_fetch_add(&hub->st_accepted, 1);
    spillway_wheel_insert(hub, c);
    spillway_conn_push(hub, c, hub->f_open);
    c->has_cursor = cursor != NULL;
    c->cursor_ok = cursor != NULL && spillway_id_parse(cursor, strlen(cursor), &c->cursor) == 0;
    if (!c->cursor_ok) c->cursor = (spillway_id){0, 0};
    c->mem = calloc(n ? n : 1, sizeof(*c->mem));
    if (c->mem == NULL) fx_die("calloc");
    for (uint32_t i = 0; i < n; i++) {
        spillway_channel *ch = spillway_chtab_get(hub, names[i], strlen(names[i]));
        bool dup = false;
        if (ch == NULL) fx_die("spillway_chtab_get");
        for (uint32_t j = 0; j < c->nmem; j++) dup |= c->mem[j].ch == ch;
        if (dup) continue;
        if (spillway_channel_add_sub(ch, c, c->nmem) != 0) fx_die("spillway_channel_add_sub");
        c->nmem++;
        hub->backend.ops->channel_wanted(hub->backend.self, ch);
    }
    hub->backend.ops->join(hub->backend.self, c);
    s = &x->streams[x->nstreams];
    s->peer = sv[1];
    s->eof = false;
    fx_watch(x, s->peer, FX_TAG_STREAM, x->nstreams);
    x->nstreams++;
    fx_turn(x);
    return (int)(x->nstreams - 1);
}

/* The browser goes away. */
FX_API void fx_leave(fx *x, uint32_t i)
{
    if (i >= x->nstreams || x->streams[i].peer < 0) return;
    close(x->streams[i].peer);
    x->streams[i].peer = -1;
    fx_turn(x);
}

/* An async publish from this process (what spillway_hub_publish_async
 * queues and run_commands hands over). */
FX_API void fx_publish(fx *x, const char *channel, const char *data)
{
    spillway_hub *hub = x->hub;
    size_t chlen = strlen(channel), dlen = strlen(data);
    ssize_t need = spillway_sse_size(NULL, 0, NULL, 0, data, dlen);
    spillway_cmd_publish *cmd = calloc(1, sizeof(*cmd) + chlen + 1);
    if (need < 0 || cmd == NULL) fx_die("fx_publish");
    cmd->base.kind = SW_CMD_PUBLISH_ASYNC;
    cmd->frame = spillway_frame_new((size_t)need);
    if (cmd->frame == NULL) fx_die("spillway_frame_new");
    spillway_sse_encode(cmd->frame->data, (size_t)need, NULL, 0, NULL, 0, data, dlen);
    cmd->chlen = (uint32_t)chlen;
    memcpy(cmd->channel, channel, chlen);
    cmd->seq = ++hub->async_issued;
    atomic_fetch_add(&hub->async_waiting_count, 1);
    hub->backend.ops->publish_async(hub->backend.self, cmd);
    fx_turn(x);
}

/* ---- what Redis (or something pretending) sends ------------------------- */

/* Raw bytes on the subscriber ('S') or command ('C') link. */
FX_API void fx_send(fx *x, char role, const void *p, size_t n)
{
    fx_write(fx_conn_of(x, role), p, n);
    fx_turn(x);
}

FX_API void fx_sends(fx *x, char role, const char *s)
{
    fx_send(x, role, s, strlen(s));
}

/* A message on the hub's control channel with this payload. */
FX_API void fx_ctl_message(fx *x, const void *payload, size_t n)
{
    fx_push_message(x, x->ctl, x->ctl_len, payload, n);
    fx_turn(x);
}

/* A message on FX_NS ":" channel carrying a frame with this id and data, as
 * the publish script makes it. */
FX_API void fx_message(fx *x, const char *channel, const char *id, const char *data)
{
    char name[256], frame[512];
    int cn = snprintf(name, sizeof(name), FX_NS ":%s", channel);
    int fn = snprintf(frame, sizeof(frame), "id: %s\ndata: %s\n\n", id, data);
    fx_push_message(x, name, (size_t)cn, frame, (size_t)fn);
    fx_turn(x);
}

/* The fake Redis closes a link ('S' or 'C'). */
FX_API void fx_kill(fx *x, char role)
{
    fx_conn *k = fx_conn_of(x, role);
    if (k != NULL) fx_conn_close(k);
    fx_turn(x);
}

FX_API spillway_stats fx_stats(fx *x)
{
    spillway_stats st;
    spillway_hub_stats(x->hub, &st);
    return st;
}

#endif
