/*
 * The PostgreSQL backend's connection in the reactor (pg_link.h).
 */
#ifdef SPILLWAY_HAVE_LIBPQ

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "hub_internal.h"
#include "pg_link.h"

#define BACKOFF_MIN_MS 50u
#define BACKOFF_MAX_MS 2000u

void spillway_pg_req_free(spillway_pg_req *q)
{
    if (q == NULL) return;
    for (int i = 0; i < q->nparams; i++) free(q->params[i]);
    PQclear(q->res);
    free(q);
}

spillway_pg_req *spillway_pglink_req(spillway_pg_fn *fn, void *privdata, const char *sql)
{
    spillway_pg_req *q = calloc(1, sizeof(*q));
    if (q == NULL) return NULL;
    q->fn = fn;
    q->privdata = privdata;
    q->sql = sql;
    return q;
}

int spillway_pglink_param(spillway_pg_req *q, const char *s, size_t len, bool binary)
{
    char *copy;
    if (q->nparams >= SPILLWAY_PG_PARAMS) return -1;
    copy = malloc(len + 1);
    if (copy == NULL) return -1;
    if (len > 0) memcpy(copy, s, len);
    copy[len] = '\0';
    q->params[q->nparams] = copy;
    q->lens[q->nparams] = (int)len;
    q->formats[q->nparams] = binary ? 1 : 0;
    q->nparams++;
    return 0;
}

void spillway_pglink_init(spillway_pglink *l, const char *conninfo, const char *setup, uint32_t connect_timeout_ms,
                          const spillway_pglink_hooks *hooks)
{
    memset(l, 0, sizeof(*l));
    l->h.kind = SW_KIND_BACKEND;
    l->h.fd = -1;
    l->conninfo = conninfo;
    l->setup = setup;
    l->connect_timeout_ms = connect_timeout_ms;
    l->hooks = hooks;
}

/* ---- the socket in epoll ------------------------------------------------ */

static void unwatch(spillway_hub *hub, spillway_pglink *l)
{
    if (l->h.fd >= 0) epoll_ctl(hub->epfd, EPOLL_CTL_DEL, l->h.fd, NULL);
    l->h.fd = -1;
    l->watching = 0;
}

/* Level-triggered on libpq's current socket (it changes while libpq tries
 * one address after another; the old one is closed, and with it its
 * registration). */
static int watch(spillway_hub *hub, spillway_pglink *l, uint32_t events)
{
    int fd = PQsocket(l->conn);
    struct epoll_event ev = {.events = events | EPOLLRDHUP, .data.ptr = &l->h};
    if (fd < 0) return -1;
    if (fd == l->h.fd && events == l->watching) return 0;
    if (fd == l->h.fd && epoll_ctl(hub->epfd, EPOLL_CTL_MOD, fd, &ev) == 0) {
        l->watching = events;
        return 0;
    }
    if (l->h.fd >= 0 && l->h.fd != fd) epoll_ctl(hub->epfd, EPOLL_CTL_DEL, l->h.fd, NULL);
    if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, fd, &ev) != 0 &&
        (errno != EEXIST || epoll_ctl(hub->epfd, EPOLL_CTL_MOD, fd, &ev) != 0))
        return -1;
    l->h.fd = fd;
    l->watching = events;
    return 0;
}

/* ---- failing ------------------------------------------------------------ */

static void fail_requests(spillway_hub *hub, spillway_pglink *l)
{
    while (l->head != NULL) {
        spillway_pg_req *q = l->head;
        l->head = q->next;
        if (l->head == NULL) l->tail = NULL;
        q->fn(hub, q, NULL);
        spillway_pg_req_free(q);
    }
    l->sent = false;
}

static void close_conn(spillway_hub *hub, spillway_pglink *l)
{
    unwatch(hub, l);
    if (l->conn != NULL) PQfinish(l->conn);
    l->conn = NULL;
    l->state = SW_PG_DOWN;
}

/* libpq's message, on one line. */
static const char *conn_message(const spillway_pglink *l, char *buf, size_t n)
{
    const char *msg = l->conn ? PQerrorMessage(l->conn) : "out of memory";
    size_t len;
    snprintf(buf, n, "%s", msg && *msg ? msg : "connection closed");
    len = strlen(buf);
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\n') buf[i] = ' ';
    while (len > 0 && buf[len - 1] == ' ') buf[--len] = '\0';
    return buf;
}

/* The connection is gone (or never came): everything waiting fails, and
 * the next attempt is scheduled. */
static void lost(spillway_hub *hub, spillway_pglink *l, const char *where, const char *why)
{
    bool was_ready = l->state == SW_PG_READY;
    char buf[256];
    if (why == NULL) why = conn_message(l, buf, sizeof(buf));
    if (was_ready) {
        spillway_hub_log(hub, SW_LOG_PG_LINK, "PostgreSQL LISTEN connection: %s: %s", where, why);
        l->backoff_ms = 0;
        l->retry_at = hub->now;
        STAT_ADD(hub, st_redis_reconnects, 1);
    } else {
        spillway_hub_log(hub, SW_LOG_PG_CONNECT, "PostgreSQL connect: %s: %s", where, why);
        l->backoff_ms = l->backoff_ms == 0 ? BACKOFF_MIN_MS : SW_MIN(l->backoff_ms * 2, BACKOFF_MAX_MS);
        /* 75-125 % of the pause, so that processes do not retry in step. */
        l->retry_at = hub->now + l->backoff_ms * 3 / 4 + (uint64_t)(spillway_mono_ms() * 2654435761u) % (l->backoff_ms / 2 + 1);
    }
    close_conn(hub, l);
    STAT_SET(hub, st_redis_connected, 0);
    fail_requests(hub, l);
    if (l->hooks->on_lost != NULL) l->hooks->on_lost(hub, was_ready);
}

/* ---- connecting --------------------------------------------------------- */

static void start_connect(spillway_hub *hub, spillway_pglink *l)
{
    char timeout[16];
    /* Ours first, so that the URL's own settings (expanded from dbname)
     * override them; the encoding last: frames are UTF-8. */
    const char *kw[] = {"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                        "keepalives_count", "application_name", "dbname", "client_encoding", NULL};
    const char *val[] = {timeout, "1", "5", "2", "3", "spillway", l->conninfo, "UTF8", NULL};
    snprintf(timeout, sizeof(timeout), "%u", SW_MAX(1u, (l->connect_timeout_ms + 999) / 1000));
    l->retry_at = 0;
    l->conn = PQconnectStartParams(kw, val, 1);
    if (l->conn == NULL || PQstatus(l->conn) == CONNECTION_BAD) {
        lost(hub, l, "PQconnectStartParams", NULL);
        return;
    }
    l->state = SW_PG_CONNECTING;
    l->deadline = hub->now + l->connect_timeout_ms;
    if (watch(hub, l, EPOLLOUT) != 0) lost(hub, l, "epoll_ctl", strerror(errno));
}

static void flush_out(spillway_hub *hub, spillway_pglink *l)
{
    int rc = PQflush(l->conn);
    if (rc < 0) lost(hub, l, "PQflush", NULL);
    else if (watch(hub, l, rc == 1 ? EPOLLIN | EPOLLOUT : EPOLLIN) != 0) lost(hub, l, "epoll_ctl", strerror(errno));
}

static void connected(spillway_hub *hub, spillway_pglink *l)
{
    if (PQsetnonblocking(l->conn, 1) != 0 || !PQsendQuery(l->conn, l->setup)) {
        lost(hub, l, "setup", NULL);
        return;
    }
    l->state = SW_PG_SETUP;
    l->deadline = hub->now + SPILLWAY_PG_QUERY_TIMEOUT_MS;
    flush_out(hub, l);
}

static void drive_connect(spillway_hub *hub, spillway_pglink *l)
{
    switch (PQconnectPoll(l->conn)) {
    case PGRES_POLLING_READING:
        if (watch(hub, l, EPOLLIN) != 0) lost(hub, l, "epoll_ctl", strerror(errno));
        return;
    case PGRES_POLLING_WRITING:
        if (watch(hub, l, EPOLLOUT) != 0) lost(hub, l, "epoll_ctl", strerror(errno));
        return;
    case PGRES_POLLING_OK:
        connected(hub, l);
        return;
    case PGRES_POLLING_FAILED:
    default:
        lost(hub, l, "connect", NULL);
        return;
    }
}

/* ---- requests ----------------------------------------------------------- */

static void send_next(spillway_hub *hub, spillway_pglink *l)
{
    spillway_pg_req *q = l->head;
    if (l->state != SW_PG_READY || l->sent || q == NULL) return;
    if (!PQsendQueryParams(l->conn, q->sql, q->nparams, NULL, (const char *const *)q->params, q->lens, q->formats, 1)) {
        lost(hub, l, "PQsendQueryParams", NULL);
        return;
    }
    l->sent = true;
    l->deadline = hub->now + SPILLWAY_PG_QUERY_TIMEOUT_MS;
    flush_out(hub, l);
}

void spillway_pglink_queue(spillway_hub *hub, spillway_pglink *l, spillway_pg_req *q)
{
    if (l->state != SW_PG_READY) {
        q->fn(hub, q, NULL);
        spillway_pg_req_free(q);
        return;
    }
    q->next = NULL;
    if (l->tail != NULL) l->tail->next = q;
    else l->head = q;
    l->tail = q;
    send_next(hub, l);
}

/* The setup's results: any error drops the connection (it is tried again). */
static bool setup_result(spillway_hub *hub, spillway_pglink *l, PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR) {
        char why[300];
        snprintf(why, sizeof(why), "%s", PQresultErrorMessage(r));
        for (char *p = why; *p; p++)
            if (*p == '\n') *p = ' ';
        PQclear(r);
        lost(hub, l, "setup", why);
        return false;
    }
    PQclear(r);
    return true;
}

/* Every result that is complete: the setup's, then the head request's. */
static void take_results(spillway_hub *hub, spillway_pglink *l)
{
    while (l->conn != NULL && (l->state == SW_PG_SETUP || l->sent) && !PQisBusy(l->conn)) {
        PGresult *r = PQgetResult(l->conn);
        if (l->state == SW_PG_SETUP) {
            if (r != NULL) {
                if (!setup_result(hub, l, r)) return;
                continue;
            }
            l->state = SW_PG_READY;
            l->ever_ready = true;
            l->backoff_ms = 0;
            STAT_SET(hub, st_redis_connected, 1);
            if (l->hooks->on_ready != NULL) l->hooks->on_ready(hub);
            continue;
        }
        if (r != NULL) {
            if (l->head->res == NULL) l->head->res = r;
            else PQclear(r);
            continue;
        }
        {
            spillway_pg_req *q = l->head;
            l->head = q->next;
            if (l->head == NULL) l->tail = NULL;
            l->sent = false;
            q->fn(hub, q, q->res);
            spillway_pg_req_free(q);
        }
        send_next(hub, l);
    }
}

static void take_notifies(spillway_hub *hub, spillway_pglink *l)
{
    PGnotify *n;
    while (l->conn != NULL && (n = PQnotifies(l->conn)) != NULL) {
        if (l->hooks->on_notify != NULL) l->hooks->on_notify(hub, n);
        PQfreemem(n);
    }
}

void spillway_pglink_on_event(spillway_hub *hub, spillway_pglink *l, uint32_t events)
{
    if (l->conn == NULL) return;
    if (l->state == SW_PG_CONNECTING) {
        drive_connect(hub, l);
        return;
    }
    if ((events & EPOLLOUT) && (l->watching & EPOLLOUT)) {
        flush_out(hub, l);
        if (l->conn == NULL) return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
        if (!PQconsumeInput(l->conn)) {
            lost(hub, l, "PQconsumeInput", NULL);
            return;
        }
        take_results(hub, l);
        take_notifies(hub, l);
        if (l->conn != NULL && PQstatus(l->conn) == CONNECTION_BAD) lost(hub, l, "recv", NULL);
    }
}

void spillway_pglink_timers(spillway_hub *hub, spillway_pglink *l)
{
    if (l->state == SW_PG_DOWN) {
        if (hub->now >= l->retry_at) start_connect(hub, l);
        return;
    }
    if ((l->state != SW_PG_READY || l->sent) && hub->now >= l->deadline)
        lost(hub, l, l->state == SW_PG_READY ? "query" : "connect", "no answer in time");
}

uint64_t spillway_pglink_next_timer(const spillway_pglink *l)
{
    if (l->state == SW_PG_DOWN) return l->retry_at;
    if (l->state != SW_PG_READY || l->sent) return l->deadline;
    return UINT64_MAX;
}

void spillway_pglink_drop(spillway_hub *hub, spillway_pglink *l, const char *why)
{
    if (l->state != SW_PG_DOWN) lost(hub, l, "dropped", why);
}

void spillway_pglink_teardown(spillway_hub *hub, spillway_pglink *l)
{
    close_conn(hub, l);
    fail_requests(hub, l);
    STAT_SET(hub, st_redis_connected, 0);
    l->retry_at = UINT64_MAX;
}

void spillway_pglink_abandon(spillway_pglink *l)
{
    if (l->conn != NULL && PQsocket(l->conn) >= 0) close(PQsocket(l->conn));
    l->conn = NULL;
    l->h.fd = -1;
}

#endif
