/*
 * One non-blocking connection to Redis, owned by the reactor: connect (names
 * resolved off the loop), handshake (AUTH, SELECT, CLIENT SETNAME, SCRIPT
 * LOAD), a FIFO of requests waiting for replies, buffered writes, reads fed
 * to the RESP reader, deadlines, reconnect with exponential backoff and
 * jitter. What the replies mean is redis.c's business: the link calls the
 * spillway_redis_on_* hooks below.
 */
#ifndef SPILLWAY_REDIS_LINK_H
#define SPILLWAY_REDIS_LINK_H

#include "hub_internal.h"
#include "resolve.h"
#include "resp.h"

enum { SW_LINK_SUB, SW_LINK_CMD };
enum { SW_LS_IDLE, SW_LS_RESOLVING, SW_LS_CONNECTING, SW_LS_HANDSHAKE, SW_LS_READY };

enum spillway_rq_kind {
    SW_RQ_HANDSHAKE = 1, /* AUTH, SELECT, CLIENT SETNAME: +OK or the link fails */
    SW_RQ_SCRIPT_PUBLISH,
    SW_RQ_SCRIPT_RESUME,
    SW_RQ_SCRIPT_BARRIER,
    SW_RQ_BARRIER,
    SW_RQ_RESUME,
    SW_RQ_REPAIR,
    SW_RQ_PUBLISH,
    SW_RQ_FILL /* a page of one channel's backlog for the resume cache (redis.c) */
};

/* A request waiting for its reply. Owned by the link's FIFO. */
typedef struct spillway_rq {
    struct spillway_rq *next;
    int kind;
    uint64_t sent_ms;
    uint64_t wend;             /* bytes queued on the link up to and including this one */
    spillway_conn *conn;       /* RESUME */
    char mode;                 /* RESUME: 'c' or 'n' */
    bool eval;                 /* sent as EVAL (after a NOSCRIPT) */
    spillway_cmd_publish *pub; /* PUBLISH */
    uint64_t seq;              /* BARRIER: its number; REPAIR: the sub link epoch */
    uint32_t nch;              /* REPAIR: channels in this batch */
    uint32_t base;             /* REPAIR: index of its first channel in the repair */
    char **names;              /* FILL: the channel (nch names, freed with the request) */
    spillway_id cursor;        /* FILL: where the page starts */
} spillway_rq;

typedef struct spillway_rlink {
    spillway_handle h;  /* kind SW_KIND_REDIS; first */
    spillway_handle rh; /* kind SW_KIND_RESOLVER, while resolving */
    int role;
    int state;
    spillway_resp_reader *reader;
    spillway_buf out;
    uint64_t queued_total, written_total;
    spillway_rq *head, *tail;
    uint32_t handshake_left;
    uint64_t deadline;
    uint64_t retry_at;
    uint32_t backoff_ms;
    uint32_t rng;
    spillway_resolve *resolving;
    /* the addresses of this connection attempt, tried in order */
    struct sockaddr_storage addrs[SPILLWAY_RESOLVE_MAX];
    socklen_t addrlens[SPILLWAY_RESOLVE_MAX];
    int naddr, addr_i;
    uint64_t next_ping, ping_deadline;
    bool ping_out;
    bool ever_ready;
    uint32_t proto_backoff_ms; /* grows with protocol errors that follow one another */
    uint64_t proto_at;         /* the last protocol error */
    /* cmd link: the scripts' SHA1s, learnt at every connect */
    char publish_sha[41], resume_sha[41], barrier_sha[41];
} spillway_rlink;

void spillway_link_init(spillway_rlink *l, int role, uint64_t now);
const char *spillway_link_name(const spillway_rlink *l);

spillway_rq *spillway_rq_new(int kind);
void spillway_rq_free(spillway_rq *q);
/* Appends q to the FIFO; call right after its bytes went into l->out. */
void spillway_link_push_rq(spillway_hub *hub, spillway_rlink *l, spillway_rq *q);
spillway_rq *spillway_link_pop(spillway_rlink *l);
/* Encodes a command into l->out; q (may be NULL: no reply expected in the
 * FIFO, e.g. PING on the sub link) joins the FIFO. 0 or -1 (q freed). */
int spillway_link_queue(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, int argc,
                        const char *const *argv, const size_t *lens);

void spillway_link_start(spillway_hub *hub, spillway_rlink *l);
void spillway_link_fail(spillway_hub *hub, spillway_rlink *l, const char *what, const char *why);
/* The peer broke the protocol (a reply that does not parse, a shape Redis
 * never sends, a reply that does not fit its request): logged with why, the
 * link dropped like on any failure (waiting requests handed to
 * spillway_redis_on_failed_rq), and reconnected after a backoff that grows
 * while such errors keep coming. Callable from the reply hooks. */
void spillway_link_protocol_error(spillway_hub *hub, spillway_rlink *l, const char *why);
void spillway_link_write(spillway_hub *hub, spillway_rlink *l);
void spillway_link_on_event(spillway_hub *hub, spillway_rlink *l, spillway_handle *h, uint32_t events);
void spillway_link_timers(spillway_hub *hub, spillway_rlink *l);
uint64_t spillway_link_next_timer(const spillway_hub *hub, const spillway_rlink *l);
/* Closes the connection for good (hub stop): requests fail, no reconnect. */
void spillway_link_teardown(spillway_hub *hub, spillway_rlink *l);
/* Fork child: close the descriptors only. */
void spillway_link_abandon(spillway_rlink *l);

/* ---- implemented by redis.c ---- */
/* A reply on a READY link (sub: messages and confirmations; cmd: the head
 * of the FIFO, already popped into q; the link frees q afterwards). v is
 * anything the peer sent: the hooks check its shape. */
void spillway_redis_on_sub_reply(spillway_hub *hub, spillway_rlink *l, spillway_rv *v);
void spillway_redis_on_cmd_reply(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, spillway_rv *v);
/* The handshake is done. */
void spillway_redis_on_ready(spillway_hub *hub, spillway_rlink *l);
/* The link dropped; each request still in the FIFO is handed over once
 * (spillway_redis_on_failed_rq) before this is called. */
void spillway_redis_on_failed_rq(spillway_hub *hub, spillway_rlink *l, spillway_rq *q);
void spillway_redis_on_lost(spillway_hub *hub, spillway_rlink *l, bool was_ready);

#endif
