/*
 * One non-blocking connection to Redis, owned by the reactor: connect (names
 * resolved off the loop), TLS when the configuration has it (tls.h: the
 * session's WANT_READ/WANT_WRITE wait for the socket's next edge), handshake (AUTH, SELECT, CLIENT SETNAME, SCRIPT
 * LOAD), a FIFO of requests waiting for replies, buffered writes, reads fed
 * to the RESP reader, deadlines, reconnect with exponential backoff and
 * jitter. What the replies mean is its owner's business: each request
 * carries its own continuation (spillway_rq_fn + privdata, in the style of
 * hiredis's redisCallback), and the owner's hooks are given at init. The
 * link knows no request kinds, no scripts of its own and no channels.
 */
#ifndef SPILLWAY_REDIS_LINK_H
#define SPILLWAY_REDIS_LINK_H

#include "hub_internal.h"
#include "resolve.h"
#include "resp.h"

/* SW_LS_TLS: connected, the TLS handshake under way (rediss:// only). */
enum { SW_LS_IDLE, SW_LS_RESOLVING, SW_LS_CONNECTING, SW_LS_TLS, SW_LS_HANDSHAKE, SW_LS_READY };

/* Scripts a link loads at most (SCRIPT LOAD at every connect). */
#define SPILLWAY_LINK_SCRIPTS 4

typedef struct spillway_rlink spillway_rlink;
typedef struct spillway_rq spillway_rq;

/* A request's continuation (hiredis's redisCallbackFn): called exactly once,
 * with the reply, or with v == NULL when the link dropped before the reply
 * came (spillway_link_rq_written then tells whether Redis may have run it).
 * The link frees q (and its privdata) afterwards. v is anything the peer
 * sent: the callback checks its shape, and may call
 * spillway_link_protocol_error on l. */
typedef void spillway_rq_fn(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, spillway_rv *v);

/* A request waiting for its reply. Owned by the link's FIFO. */
struct spillway_rq {
    spillway_rq *next;
    spillway_rq_fn *fn;
    void *privdata;         /* the caller's: privsize zeroed bytes of this allocation */
    uint32_t timeout_scale; /* command_timeout times this for its reply (1 unless set) */
    uint64_t sent_ms;
    uint64_t wend; /* bytes queued on the link up to and including this one */
};

/* What the link's owner hears, besides each request's own callback. */
typedef struct spillway_link_hooks {
    /* The handshake is done. */
    void (*on_ready)(spillway_hub *hub, spillway_rlink *l);
    /* A reply no request waits for on a READY link: a pub/sub link's
     * messages, confirmations and pongs. NULL: such a reply is a protocol
     * error ("a reply nobody asked for"). */
    void (*on_push)(spillway_hub *hub, spillway_rlink *l, spillway_rv *v);
    /* The link dropped (each waiting request's callback already ran). */
    void (*on_lost)(spillway_hub *hub, spillway_rlink *l, bool was_ready);
    /* The socket (and TLS) is up: send the Redis handshake
     * (spillway_link_handshake, redis_link_handshake.c, which sits above
     * this file: it queues and fails through the link's functions). */
    void (*handshake)(spillway_hub *hub, spillway_rlink *l);
} spillway_link_hooks;

/* What kind of link it is. */
typedef struct spillway_link_options {
    const char *name;    /* in log lines: "subscriber" */
    const char *tag;     /* CLIENT SETNAME spillway-<tag>-<pid> */
    bool select_db;      /* SELECT the configured db (not for pub/sub: it has none) */
    bool health_ping;    /* PING every health_interval (a pub/sub link: no request of its own times out) */
    uint32_t nscripts;   /* SCRIPT LOADed at every connect, SHA1s in sha[] */
    const char *scripts[SPILLWAY_LINK_SCRIPTS];
} spillway_link_options;

struct spillway_rlink {
    spillway_handle h;  /* the socket (kind SW_KIND_BACKEND); first */
    spillway_handle rh; /* the resolver's eventfd while resolving (kind SW_KIND_BACKEND) */
    struct spillway_tls *tls; /* the session on h.fd (rediss://), or NULL */
    spillway_link_options opt;
    spillway_link_hooks hooks;
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
    uint64_t ask_budget_ms; /* Sentinel: how long asking them may take */
    char primary[300];      /* Sentinel: the "host:port" they named last */
    uint64_t next_check;    /* Sentinel: when an up link asks them again */
    uint64_t next_ping, ping_deadline;
    bool ping_out;
    bool ever_ready;
    uint32_t proto_backoff_ms; /* grows with protocol errors that follow one another */
    uint64_t proto_at;         /* the last protocol error */
    /* the scripts' SHA1s, learnt at every connect ("" until then, or after
     * the owner saw NOSCRIPT) */
    char sha[SPILLWAY_LINK_SCRIPTS][41];
};

void spillway_link_init(spillway_rlink *l, const spillway_link_options *opt, const spillway_link_hooks *hooks,
                        uint64_t now);
const char *spillway_link_name(const spillway_rlink *l);

/* A request with fn as its continuation and privsize zeroed bytes for its
 * privdata (freed with it); NULL when out of memory. */
spillway_rq *spillway_rq_new(spillway_rq_fn *fn, size_t privsize);
void spillway_rq_free(spillway_rq *q);
/* For a callback called with v == NULL: were the request's bytes written
 * (so Redis may have run it)? */
bool spillway_link_rq_written(const spillway_rlink *l, const spillway_rq *q);
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
 * link dropped like on any failure (every waiting request's callback runs
 * with NULL), and reconnected after a backoff that grows while such errors
 * keep coming. Callable from the callbacks and hooks. */
void spillway_link_protocol_error(spillway_hub *hub, spillway_rlink *l, const char *why);
void spillway_link_write(spillway_hub *hub, spillway_rlink *l);
void spillway_link_on_event(spillway_hub *hub, spillway_rlink *l, spillway_handle *h, uint32_t events);
void spillway_link_timers(spillway_hub *hub, spillway_rlink *l);
uint64_t spillway_link_next_timer(const spillway_hub *hub, const spillway_rlink *l);
/* Closes the connection for good (hub stop): requests fail, no reconnect. */
void spillway_link_teardown(spillway_hub *hub, spillway_rlink *l);
/* Fork child: close the descriptors only. A TLS session is left as it is
 * (its memory is the parent's, copy-on-write; freeing it would free
 * nothing that matters and close_notify would speak on the parent's
 * connection): the child's copy of the socket is closed, nothing else. */
void spillway_link_abandon(spillway_rlink *l);

/* redis_link_io.c: what the link asks of its connection, with the answers
 * of tls.h for both the socket and a TLS session: OK (*n bytes moved),
 * WANT_* (wait for the socket), CLOSED (read: the peer closed), ERROR
 * (*why). */
#include "tls.h"
spillway_tls_rc spillway_link_send(spillway_rlink *l, const char *p, size_t len, size_t *n, const char **why);
spillway_tls_rc spillway_link_recv(spillway_rlink *l, char *p, size_t len, size_t *n, const char **why);

/* Sentinel: how often a link that is up asks them whether its node still
 * is the primary. */
#define SENTINEL_CHECK_MS 1000u

/* redis_link_handshake.c: sends the Redis handshake (state HANDSHAKE); the
 * link's on_ready hook runs when its last reply is in. */
void spillway_link_handshake(spillway_hub *hub, spillway_rlink *l);

/* Sentinel mode: asks the sentinels again whether this link's node is
 * still the primary (on the resolver thread); a change reconnects. */
void spillway_link_start_check(spillway_hub *hub, spillway_rlink *l);

#endif
