/*
 * The blocking PostgreSQL publisher (pg_publisher.h).
 */
#include "pg_publisher.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#ifndef SPILLWAY_HAVE_LIBPQ

int spillway_pgpub_new(const spillway_pg_config *cfg, spillway_pgpub **out, char *err, size_t errlen)
{
    SW_UNUSED(cfg);
    *out = NULL;
    snprintf(err, errlen, "Spillway was built without libpq (Debian/Ubuntu: apt-get install libpq-dev, then "
                          "reinstall the gem)");
    return -ENOTSUP;
}
void spillway_pgpub_free(spillway_pgpub *p) { SW_UNUSED(p); }
void spillway_pgpub_close(spillway_pgpub *p) { SW_UNUSED(p); }
void spillway_pgpub_abandon(spillway_pgpub *p) { SW_UNUSED(p); }
void spillway_pgpub_call_init(spillway_pgpub_call *call, spillway_pgpub *p) { memset(call, 0, sizeof(*call)); call->p = p; }
void spillway_pgpub_call_done(spillway_pgpub_call *call) { SW_UNUSED(call); }
static void none(spillway_pgpub_call *call) { call->rc = -ENOTSUP; snprintf(call->err, sizeof(call->err), "built without libpq"); }
void spillway_pgpub_publish(spillway_pgpub_call *call) { none(call); }
void spillway_pgpub_cursor(spillway_pgpub_call *call) { none(call); }
void spillway_pgpub_last_id(spillway_pgpub_call *call) { none(call); }
void spillway_pgpub_interrupt(spillway_pgpub_call *call) { SW_UNUSED(call); }
void spillway_pgpub_stats_get(spillway_pgpub *p, spillway_pgpub_stats *out) { SW_UNUSED(p); memset(out, 0, sizeof(*out)); }

#else

#include <endian.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pg_sql.h"

#define POOL_MAX 16
#define RETRY_PAUSE_MIN_MS 20u
#define RETRY_PAUSE_MAX_MS 250u

struct pconn {
    PGconn *conn;
    pid_t pid;
};

struct spillway_pgpub {
    spillway_pg_config cfg; /* strings owned */
    char *setup, *publish, *cursor, *last_id;
    pthread_mutex_t lock;
    struct pconn pool[POOL_MAX];
    uint32_t npool;
    atomic_uint_fast64_t published, failed, connects, retried;
};

int spillway_pgpub_new(const spillway_pg_config *cfg, spillway_pgpub **out, char *err, size_t errlen)
{
    spillway_pgpub *p = calloc(1, sizeof(*p));
    const char *ns = cfg->ns ? cfg->ns : "spillway";
    *out = NULL;
    if (!spillway_pg_ns_ok(ns)) {
        free(p);
        snprintf(err, errlen, "the namespace %.80s cannot name a PostgreSQL schema (1 to %d of A-Z a-z 0-9 _ - . : @ / = +)",
                 ns, SPILLWAY_PG_NS_MAX);
        return -EINVAL;
    }
    if (p == NULL) goto oom;
    p->cfg = *cfg;
    p->cfg.conninfo = cfg->conninfo ? strdup(cfg->conninfo) : NULL;
    p->cfg.ns = strdup(ns);
    pthread_mutex_init(&p->lock, NULL);
    p->setup = spillway_pg_expand(spillway_pg_setup_sql, ns);
    p->publish = spillway_pg_expand(spillway_pg_publish_sql, ns);
    p->cursor = spillway_pg_expand(spillway_pg_cursor_sql, ns);
    p->last_id = spillway_pg_expand(spillway_pg_last_id_sql, ns);
    if (p->cfg.conninfo == NULL || p->cfg.ns == NULL || p->setup == NULL || p->publish == NULL || p->cursor == NULL ||
        p->last_id == NULL) {
        spillway_pgpub_free(p);
        goto oom;
    }
    *out = p;
    return 0;
oom:
    snprintf(err, errlen, "spillway_pgpub_new: out of memory");
    return -ENOMEM;
}

void spillway_pgpub_close(spillway_pgpub *p)
{
    pthread_mutex_lock(&p->lock);
    for (uint32_t i = 0; i < p->npool; i++) {
        if (p->pool[i].pid == getpid()) PQfinish(p->pool[i].conn);
        else close(PQsocket(p->pool[i].conn));
    }
    p->npool = 0;
    pthread_mutex_unlock(&p->lock);
}

void spillway_pgpub_abandon(spillway_pgpub *p)
{
    for (uint32_t i = 0; i < p->npool; i++)
        if (PQsocket(p->pool[i].conn) >= 0) close(PQsocket(p->pool[i].conn));
    p->npool = 0;
}

void spillway_pgpub_free(spillway_pgpub *p)
{
    if (p == NULL) return;
    spillway_pgpub_close(p);
    pthread_mutex_destroy(&p->lock);
    free((char *)p->cfg.conninfo);
    free((char *)p->cfg.ns);
    free(p->setup);
    free(p->publish);
    free(p->cursor);
    free(p->last_id);
    free(p);
}

void spillway_pgpub_call_init(spillway_pgpub_call *call, spillway_pgpub *p)
{
    memset(call, 0, sizeof(*call));
    call->p = p;
    call->fd = -1;
    pthread_mutex_init(&call->lock, NULL);
}

void spillway_pgpub_call_done(spillway_pgpub_call *call)
{
    pthread_mutex_destroy(&call->lock);
}

void spillway_pgpub_interrupt(spillway_pgpub_call *call)
{
    pthread_mutex_lock(&call->lock);
    call->interrupted = 1;
    if (call->fd >= 0) shutdown(call->fd, SHUT_RDWR);
    pthread_mutex_unlock(&call->lock);
}

void spillway_pgpub_stats_get(spillway_pgpub *p, spillway_pgpub_stats *out)
{
    out->published = atomic_load(&p->published);
    out->failed = atomic_load(&p->failed);
    out->connects = atomic_load(&p->connects);
    out->retried = atomic_load(&p->retried);
    pthread_mutex_lock(&p->lock);
    out->pooled = p->npool;
    pthread_mutex_unlock(&p->lock);
}

/* ---- one connection, with deadlines -------------------------------------- */

static int fail(spillway_pgpub_call *call, int rc, const char *fmt, const char *what)
{
    char buf[300];
    size_t n;
    snprintf(buf, sizeof(buf), "%s", what ? what : "");
    n = strlen(buf);
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '\n') buf[i] = ' ';
    while (n > 0 && buf[n - 1] == ' ') buf[--n] = '\0';
    snprintf(call->err, sizeof(call->err), fmt, buf);
    call->rc = rc;
    return rc;
}

static bool interrupted(spillway_pgpub_call *call)
{
    bool yes;
    pthread_mutex_lock(&call->lock);
    yes = call->interrupted != 0;
    pthread_mutex_unlock(&call->lock);
    return yes;
}

static void set_fd(spillway_pgpub_call *call, int fd)
{
    pthread_mutex_lock(&call->lock);
    call->fd = fd;
    if (call->interrupted && fd >= 0) shutdown(fd, SHUT_RDWR);
    pthread_mutex_unlock(&call->lock);
}

/* Waits for the socket (POLLIN/POLLOUT) until deadline: 0, -ETIMEDOUT, -EINTR. */
static int wait_fd(spillway_pgpub_call *call, PGconn *c, short events, uint64_t deadline)
{
    struct pollfd pfd = {.fd = PQsocket(c), .events = events};
    for (;;) {
        uint64_t now = spillway_mono_ms();
        int rc;
        if (interrupted(call)) return -EINTR;
        if (now >= deadline) return -ETIMEDOUT;
        rc = poll(&pfd, 1, (int)SW_MIN(deadline - now, 100u));
        if (rc > 0) return 0;
        if (rc < 0 && errno != EINTR) return -EIO;
    }
}

static PGconn *connect_to(spillway_pgpub_call *call, uint64_t deadline)
{
    spillway_pgpub *p = call->p;
    const char *kw[] = {"application_name", "dbname", "client_encoding", NULL};
    const char *val[] = {"spillway-publisher", p->cfg.conninfo, "UTF8", NULL};
    PGconn *c = PQconnectStartParams(kw, val, 1);
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    if (c == NULL) return fail(call, -ENOMEM, "out of memory%s", ""), NULL;
    atomic_fetch_add(&p->connects, 1);
    while (PQstatus(c) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int rc;
        set_fd(call, PQsocket(c));
        rc = wait_fd(call, c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
        if (rc != 0) {
            set_fd(call, -1);
            PQfinish(c);
            return fail(call, rc, rc == -EINTR ? "interrupted%s" : "connect timed out%s", ""), NULL;
        }
        st = PQconnectPoll(c);
    }
    if (st != PGRES_POLLING_OK || PQsetnonblocking(c, 1) != 0) {
        fail(call, -ECONNREFUSED, "cannot connect to PostgreSQL: %s", PQerrorMessage(c));
        set_fd(call, -1);
        PQfinish(c);
        return NULL;
    }
    set_fd(call, PQsocket(c));
    return c;
}

/* Sends one statement (params NULL: a simple query, the setup script) and
 * reads its first result until deadline. *sent: something went out. */
static int run(spillway_pgpub_call *call, PGconn *c, const char *sql, int n, const char *const *vals, const int *lens,
               const int *fmts, uint64_t deadline, bool *sent, PGresult **out)
{
    PGresult *r, *first = NULL;
    int rc, ok = vals ? PQsendQueryParams(c, sql, n, NULL, vals, lens, fmts, 1) : PQsendQuery(c, sql);
    *out = NULL;
    if (!ok) return fail(call, -EIO, "send: %s", PQerrorMessage(c));
    *sent = true;
    while ((rc = PQflush(c)) == 1)
        if ((rc = wait_fd(call, c, POLLOUT | POLLIN, deadline)) != 0 || !PQconsumeInput(c)) break;
    if (rc != 0) return fail(call, rc < 0 ? rc : -EIO, "send: %s", rc == -ETIMEDOUT ? "timed out" : PQerrorMessage(c));
    for (;;) {
        while (PQisBusy(c)) {
            if ((rc = wait_fd(call, c, POLLIN, deadline)) != 0) {
                PQclear(first);
                return fail(call, rc, "no answer: %s", rc == -ETIMEDOUT ? "timed out" : "interrupted");
            }
            if (!PQconsumeInput(c)) {
                PQclear(first);
                return fail(call, -EIO, "connection lost: %s", PQerrorMessage(c));
            }
        }
        r = PQgetResult(c);
        if (r == NULL) break;
        if (first == NULL || (PQresultStatus(r) == PGRES_FATAL_ERROR && PQresultStatus(first) != PGRES_FATAL_ERROR)) {
            PQclear(first);
            first = r;
        } else {
            PQclear(r);
        }
    }
    *out = first;
    return 0;
}

/* A pooled connection of this process, or a new one (with the setup run). */
static PGconn *checkout(spillway_pgpub_call *call, uint64_t deadline, bool *sent)
{
    spillway_pgpub *p = call->p;
    PGconn *c = NULL;
    PGresult *r;
    pthread_mutex_lock(&p->lock);
    while (c == NULL && p->npool > 0) {
        struct pconn pc = p->pool[--p->npool];
        if (pc.pid == getpid()) c = pc.conn;
        else close(PQsocket(pc.conn)); /* a fork parent's: nothing is sent on it */
    }
    pthread_mutex_unlock(&p->lock);
    if (c != NULL) {
        set_fd(call, PQsocket(c));
        return c;
    }
    if ((c = connect_to(call, deadline)) == NULL) return NULL;
    if (run(call, c, p->setup, 0, NULL, NULL, NULL, deadline, sent, &r) != 0 || PQresultStatus(r) == PGRES_FATAL_ERROR) {
        if (r != NULL) fail(call, -EPROTO, "creating Spillway's schema failed: %s", PQresultErrorMessage(r));
        PQclear(r);
        set_fd(call, -1);
        PQfinish(c);
        return NULL;
    }
    PQclear(r);
    return c;
}

static void checkin(spillway_pgpub_call *call, PGconn *c, bool keep)
{
    spillway_pgpub *p = call->p;
    set_fd(call, -1);
    if (keep && PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE) {
        pthread_mutex_lock(&p->lock);
        if (p->npool < POOL_MAX) {
            p->pool[p->npool++] = (struct pconn){c, getpid()};
            c = NULL;
        }
        pthread_mutex_unlock(&p->lock);
    }
    if (c != NULL) PQfinish(c);
}

/* Whether an error answer may succeed when sent again (the server is
 * shutting down or starting, a connection failure, a serialization
 * failure or deadlock). */
static bool transient(const PGresult *r)
{
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (s == NULL) return true;
    return strncmp(s, "08", 2) == 0 || strncmp(s, "57P", 3) == 0 || strcmp(s, "40001") == 0 ||
           strcmp(s, "40P01") == 0 || strcmp(s, "53300") == 0;
}

static void pause_ms(spillway_pgpub_call *call, uint32_t attempt)
{
    uint32_t ms = SW_MIN(RETRY_PAUSE_MIN_MS << SW_MIN(attempt, 4u), RETRY_PAUSE_MAX_MS);
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000L};
    if (!interrupted(call)) nanosleep(&ts, NULL);
}

/* One statement answered with one text value (NULL row: ""), retried while
 * a reply was lost or the server answered with a transient error. */
static void call_one(spillway_pgpub_call *call, const char *sql, int n, const char *const *vals, const int *lens,
                     const int *fmts, bool retry)
{
    spillway_pgpub *p = call->p;
    uint64_t start = spillway_mono_ms();
    uint64_t end = start + p->cfg.connect_timeout_ms + 2u * (uint64_t)p->cfg.command_timeout_ms;
    bool ever_sent = false;

    for (uint32_t attempt = 0;; attempt++) {
        bool sent = false;
        PGresult *r = NULL;
        uint64_t now = spillway_mono_ms();
        PGconn *c = checkout(call, SW_MIN(end, now + p->cfg.connect_timeout_ms), &sent);
        int rc = c == NULL ? call->rc : run(call, c, sql, n, vals, lens, fmts, SW_MIN(end, now + p->cfg.command_timeout_ms), &sent, &r);
        ever_sent |= sent;
        if (rc == 0 && r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK) {
            const char *v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? PQgetvalue(r, 0, 0) : "";
            snprintf(call->id, sizeof(call->id), "%s", v);
            call->rc = 0;
            PQclear(r);
            checkin(call, c, true);
            return;
        }
        if (rc == 0) {
            rc = r != NULL && transient(r) ? -EIO : -EPROTO;
            fail(call, rc, "PostgreSQL: %s", r ? PQresultErrorMessage(r) : "no result");
        }
        PQclear(r);
        if (c != NULL) checkin(call, c, false);
        if (rc == -EINTR || rc == -EPROTO || !retry || !ever_sent || attempt >= SPILLWAY_PG_PUBLISH_RETRIES ||
            spillway_mono_ms() + RETRY_PAUSE_MIN_MS >= end) {
            if (ever_sent && rc != -EPROTO && rc != -EINTR && retry) {
                char was[sizeof(call->err)];
                snprintf(was, sizeof(was), "%s", call->err);
                snprintf(call->err, sizeof(call->err), "%.300s (after %u retries; the publish may have gone through)",
                         was, attempt);
            }
            return;
        }
        call->retries++;
        atomic_fetch_add(&p->retried, 1);
        pause_ms(call, attempt);
    }
}

void spillway_pgpub_publish(spillway_pgpub_call *call)
{
    spillway_pgpub *p = call->p;
    char keyttl[24], size[16], ttl[16];
    const char *vals[6];
    int lens[6] = {0}, fmts[6] = {0, 1, 0, 0, 0, 0};
    uint32_t kttl = call->key ? p->cfg.idempotency_ttl_ms : SW_MAX(SPILLWAY_IDEM_GEN_TTL_MIN_MS,
                                                                    2u * (p->cfg.connect_timeout_ms + 2u * p->cfg.command_timeout_ms));
    char *channel = strndup(call->channel, call->chlen);
    char *key = call->key ? strndup(call->key, call->keylen) : NULL;
    if (call->key == NULL) spillway_idem_generate(call->genkey);
    if (channel == NULL || (call->key && key == NULL)) {
        free(channel);
        free(key);
        fail(call, -ENOMEM, "out of memory%s", "");
        return;
    }
    snprintf(keyttl, sizeof(keyttl), "%u", kttl);
    snprintf(size, sizeof(size), "%u", SW_MAX(p->cfg.backlog_size, 1u));
    snprintf(ttl, sizeof(ttl), "%u", p->cfg.backlog_ttl_s);
    vals[0] = channel;
    vals[1] = call->body;
    lens[1] = (int)call->bodylen;
    vals[2] = key ? key : call->genkey;
    vals[3] = keyttl;
    vals[4] = size;
    vals[5] = ttl;
    call_one(call, p->publish, 6, vals, lens, fmts, true);
    atomic_fetch_add(call->rc == 0 ? &p->published : &p->failed, 1);
    free(channel);
    free(key);
}

void spillway_pgpub_cursor(spillway_pgpub_call *call)
{
    call_one(call, call->p->cursor, 0, (const char *const[]){NULL}, NULL, NULL, true);
}

void spillway_pgpub_last_id(spillway_pgpub_call *call)
{
    char *channel = strndup(call->channel, call->chlen);
    const char *vals[1] = {channel};
    if (channel == NULL) {
        fail(call, -ENOMEM, "out of memory%s", "");
        return;
    }
    call_one(call, call->p->last_id, 1, vals, NULL, NULL, true);
    free(channel);
}

#endif
