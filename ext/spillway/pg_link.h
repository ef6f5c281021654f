/*
 * One libpq connection driven from the reactor (pg_link.c), without
 * blocking: PQconnectStartParams/PQconnectPoll with a deadline, the socket
 * in the hub's epoll set (level-triggered: PQconsumeInput reads what is
 * there, so nothing is left behind an edge), a setup script sent first,
 * then requests one at a time in order, each with its own continuation (fn
 * and privdata, as in hiredis), and every notification handed to a hook.
 * A dropped connection fails every request (fn with NULL) and reconnects:
 * at once after a working connection, after a backoff of 50 ms to 2 s
 * (plus or minus 25 %) after a failed attempt. It knows no Spillway
 * concept beyond the hub's loop.
 */
#ifndef SPILLWAY_PG_LINK_H
#define SPILLWAY_PG_LINK_H

#include <libpq-fe.h>

#include "handle.h"
#include "hub.h"

#define SPILLWAY_PG_PARAMS 6
/* A request that takes longer drops the connection (a server that stopped
 * answering: keepalives do not see a stopped process). */
#define SPILLWAY_PG_QUERY_TIMEOUT_MS 30000u

typedef struct spillway_pg_req spillway_pg_req;
/* res: the request's result (PQresultStatus tells an error), or NULL when
 * the connection dropped before it answered. The link frees res and q. */
typedef void spillway_pg_fn(spillway_hub *hub, spillway_pg_req *q, const PGresult *res);

struct spillway_pg_req {
    spillway_pg_req *next;
    spillway_pg_fn *fn;
    void *privdata;
    const char *sql; /* not copied: lives as long as the link */
    int nparams;
    char *params[SPILLWAY_PG_PARAMS]; /* copies, freed with the request */
    int lens[SPILLWAY_PG_PARAMS], formats[SPILLWAY_PG_PARAMS];
    PGresult *res; /* the first result, or the first error */
};

enum { SW_PG_DOWN, SW_PG_CONNECTING, SW_PG_SETUP, SW_PG_READY };

typedef struct spillway_pglink spillway_pglink;

typedef struct spillway_pglink_hooks {
    void (*on_ready)(spillway_hub *hub);             /* setup done: requests may go */
    void (*on_notify)(spillway_hub *hub, const PGnotify *n);
    void (*on_lost)(spillway_hub *hub, bool was_ready); /* after every request failed */
} spillway_pglink_hooks;

struct spillway_pglink {
    spillway_handle h; /* first; fd -1 when not registered */
    PGconn *conn;
    int state;
    bool ever_ready;
    uint32_t watching; /* the epoll events registered */
    uint64_t deadline; /* connect, setup or the request in flight */
    uint64_t retry_at;
    uint32_t backoff_ms;
    bool sent; /* head is on the wire */
    spillway_pg_req *head, *tail;
    const char *conninfo, *setup; /* the caller's, for the link's life */
    uint32_t connect_timeout_ms;
    const spillway_pglink_hooks *hooks;
};

void spillway_pglink_init(spillway_pglink *l, const char *conninfo, const char *setup, uint32_t connect_timeout_ms,
                          const spillway_pglink_hooks *hooks);
/* A new request (calloc'ed, fn and sql set; params added with
 * spillway_pglink_param). NULL when out of memory. */
spillway_pg_req *spillway_pglink_req(spillway_pg_fn *fn, void *privdata, const char *sql);
/* Copies len bytes (binary when binary, else text). -1 when out of memory. */
int spillway_pglink_param(spillway_pg_req *q, const char *s, size_t len, bool binary);
/* Queues the request (the link owns it): sent when the link is ready and
 * the ones before it answered. On a link that is not ready it fails at once
 * (fn with NULL). */
void spillway_pglink_queue(spillway_hub *hub, spillway_pglink *l, spillway_pg_req *q);
void spillway_pglink_on_event(spillway_hub *hub, spillway_pglink *l, uint32_t events);
void spillway_pglink_timers(spillway_hub *hub, spillway_pglink *l);
uint64_t spillway_pglink_next_timer(const spillway_pglink *l);
/* Drops the connection as if it had failed (why is logged): every request
 * fails, and it reconnects (its setup runs again). */
void spillway_pglink_drop(spillway_hub *hub, spillway_pglink *l, const char *why);
/* Closes for good (requests fail with NULL; no hook). */
void spillway_pglink_teardown(spillway_hub *hub, spillway_pglink *l);
/* Fork child: closes the inherited socket, sends nothing, frees nothing. */
void spillway_pglink_abandon(spillway_pglink *l);
void spillway_pg_req_free(spillway_pg_req *q);

#endif
