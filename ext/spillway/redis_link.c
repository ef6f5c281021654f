#include "redis_link.h"

#include "sentinel.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tls.h"

#define BACKOFF_MIN_MS 50u
#define BACKOFF_MAX_MS 2000u
/* Protocol errors further apart than this start the backoff afresh. */
#define PROTO_FORGET_MS 60000u
#define READ_CHUNK 65536

void spillway_link_init(spillway_rlink *l, const spillway_link_options *opt, const spillway_link_hooks *hooks,
                        uint64_t now)
{
    memset(l, 0, sizeof(*l));
    l->opt = *opt;
    l->hooks = *hooks;
    l->h.kind = SW_KIND_BACKEND;
    l->h.fd = -1;
    l->rh.kind = SW_KIND_BACKEND;
    l->rh.fd = -1;
    l->state = SW_LS_IDLE;
    l->retry_at = now; /* connect on the first iteration */
    l->rng = (uint32_t)spillway_mono_ms() ^ (uint32_t)getpid() ^ (uint32_t)(uintptr_t)l ^ 0x9e3779b9u;
    if (l->rng == 0) l->rng = 1;
}

const char *spillway_link_name(const spillway_rlink *l)
{
    return l->opt.name;
}

/* ---- requests ---------------------------------------------------------- */

spillway_rq *spillway_rq_new(spillway_rq_fn *fn, size_t privsize)
{
    /* One allocation: the privdata follows the request, aligned for any
     * field (sizeof(spillway_rq) is a multiple of 8). */
    spillway_rq *q = calloc(1, sizeof(*q) + privsize);
    if (q == NULL) return NULL;
    q->fn = fn;
    q->privdata = privsize > 0 ? (void *)(q + 1) : NULL;
    q->timeout_scale = 1;
    return q;
}

void spillway_rq_free(spillway_rq *q)
{
    free(q);
}

bool spillway_link_rq_written(const spillway_rlink *l, const spillway_rq *q)
{
    return q->wend <= l->written_total;
}

void spillway_link_push_rq(spillway_hub *hub, spillway_rlink *l, spillway_rq *q)
{
    q->sent_ms = hub->now;
    /* written_total == queued_total + out.off: the end of this request is
     * queued_total + out.len in the same count. */
    q->wend = l->queued_total + l->out.len;
    q->next = NULL;
    if (l->tail) l->tail->next = q;
    else l->head = q;
    l->tail = q;
}

spillway_rq *spillway_link_pop(spillway_rlink *l)
{
    spillway_rq *q = l->head;
    if (q != NULL) {
        l->head = q->next;
        if (l->head == NULL) l->tail = NULL;
        q->next = NULL;
    }
    return q;
}

int spillway_link_queue(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, int argc,
                        const char *const *argv, const size_t *lens)
{
    if (spillway_buf_command(&l->out, argc, argv, lens) != 0) {
        spillway_hub_log(hub, SW_LOG_MEMORY, "Redis %s link: out of memory", spillway_link_name(l));
        spillway_rq_free(q);
        return -1;
    }
    if (q != NULL) spillway_link_push_rq(hub, l, q);
    return 0;
}

/* ---- connecting -------------------------------------------------------- */

static uint32_t jitter(spillway_rlink *l, uint32_t ms)
{
    /* xorshift32: spreads the reconnects of many processes by +-25%. */
    l->rng ^= l->rng << 13;
    l->rng ^= l->rng >> 17;
    l->rng ^= l->rng << 5;
    return ms * 3 / 4 + (ms > 1 ? l->rng % (ms / 2 + 1) : 0);
}

/* The TLS session goes first (with a close_notify when it is healthy),
 * then its socket. */
static void close_socket(spillway_hub *hub, spillway_rlink *l)
{
    spillway_tls_close(l->tls);
    l->tls = NULL;
    if (l->h.fd >= 0) {
        epoll_ctl(hub->epfd, EPOLL_CTL_DEL, l->h.fd, NULL);
        close(l->h.fd);
        l->h.fd = -1;
    }
}

static void close_fds(spillway_hub *hub, spillway_rlink *l)
{
    close_socket(hub, l);
    if (l->resolving != NULL) {
        epoll_ctl(hub->epfd, EPOLL_CTL_DEL, l->rh.fd, NULL);
        spillway_resolve_release(l->resolving);
        l->resolving = NULL;
        l->rh.fd = -1;
    }
}

/* Closes; every waiting request's callback runs with NULL. */
static void drop(spillway_hub *hub, spillway_rlink *l)
{
    spillway_rq *q;
    close_fds(hub, l);
    spillway_resp_reader_free(l->reader);
    l->reader = NULL;
    while ((q = spillway_link_pop(l)) != NULL) {
        q->fn(hub, l, q, NULL);
        spillway_rq_free(q);
    }
    spillway_buf_free(&l->out);
    l->queued_total = l->written_total = 0;
    l->handshake_left = 0;
    l->ping_out = false;
}

void spillway_link_fail(spillway_hub *hub, spillway_rlink *l, const char *what, const char *why)
{
    bool was_ready = l->state == SW_LS_READY;
    /* A link that was up dropped (killed, reset, no answer in time), or an
     * attempt to bring it up failed (refused, timed out, AUTH): the log
     * counts them apart. */
    spillway_log_kind kind = strcmp(what, "protocol") == 0 ? SW_LOG_PROTOCOL
                             : was_ready                    ? SW_LOG_REDIS_LINK
                                                            : SW_LOG_REDIS_CONNECT;

    spillway_hub_log(hub, kind, "Redis %s link: %s: %s", spillway_link_name(l), what, why);
    l->state = SW_LS_IDLE;
    drop(hub, l);
    if (l->backoff_ms == 0) {
        /* It was up: try again at once (a killed connection, a failover
         * that is already done). Only failed attempts back off, with
         * jitter so that many processes do not hit Redis in step. */
        l->retry_at = hub->now;
        l->backoff_ms = BACKOFF_MIN_MS;
    } else {
        l->retry_at = hub->now + jitter(l, l->backoff_ms);
        l->backoff_ms = SW_MIN(l->backoff_ms * 2, BACKOFF_MAX_MS);
    }
    if (was_ready) atomic_fetch_add_explicit(&hub->st_redis_reconnects, 1, memory_order_relaxed);
    l->hooks.on_lost(hub, l, was_ready);
}

void spillway_link_protocol_error(spillway_hub *hub, spillway_rlink *l, const char *why)
{
    /* A working link that drops is retried at once; one whose peer speaks
     * garbage would then be hammered in a loop (connect, handshake, garbage,
     * again), so these count as failed attempts, with a backoff of their own
     * that a successful handshake does not reset. */
    if (l->proto_backoff_ms == 0 || hub->now - l->proto_at > PROTO_FORGET_MS) l->proto_backoff_ms = BACKOFF_MIN_MS;
    else l->proto_backoff_ms = SW_MIN(l->proto_backoff_ms * 2, BACKOFF_MAX_MS);
    l->proto_at = hub->now;
    l->backoff_ms = SW_MAX(l->backoff_ms, l->proto_backoff_ms);
    spillway_link_fail(hub, l, "protocol", why);
}

/* Writes until the socket is full. With TLS a write may also wait for a
 * read (WANT_READ): every event of a TLS link drives both directions, so
 * the next edge of either kind retries it, with the same bytes (out only
 * grows until it is all written). */
void spillway_link_write(spillway_hub *hub, spillway_rlink *l)
{
    while (l->h.fd >= 0 && l->out.off < l->out.len &&
           (l->state == SW_LS_READY || l->state == SW_LS_HANDSHAKE)) {
        const char *why = NULL;
        size_t n = 0;
        spillway_tls_rc rc = spillway_link_send(l, l->out.data + l->out.off, l->out.len - l->out.off, &n, &why);
        if (rc == SW_TLS_OK) {
            l->out.off += n;
            l->written_total += (uint64_t)n;
            continue;
        }
        if (rc == SW_TLS_WANT_READ || rc == SW_TLS_WANT_WRITE) return; /* the next edge */
        spillway_link_fail(hub, l, "send", why);
        return;
    }
    if (l->out.len > 0 && l->out.off == l->out.len) {
        l->queued_total += l->out.len;
        l->written_total = l->queued_total;
        spillway_buf_reset(&l->out);
    }
}

static void connect_next(spillway_hub *hub, spillway_rlink *l);

/* The current address failed: the next one, or the link fails. */
static void try_next_address(spillway_hub *hub, spillway_rlink *l, const char *why)
{
    if (l->addr_i + 1 < l->naddr) {
        close_socket(hub, l);
        spillway_resp_reader_free(l->reader);
        l->reader = NULL;
        l->addr_i++;
        connect_next(hub, l);
        return;
    }
    spillway_link_fail(hub, l, "connect", why);
}

/* Connects to l->addrs[l->addr_i]; a failure moves on to the next address
 * of the same attempt before the link counts as failed. */
static void connect_next(spillway_hub *hub, spillway_rlink *l)
{
    const struct sockaddr *sa = (const struct sockaddr *)&l->addrs[l->addr_i];
    socklen_t len = l->addrlens[l->addr_i];
    struct epoll_event ev;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;

    if (fd < 0) {
        spillway_link_fail(hub, l, "socket", strerror(errno));
        return;
    }
    if (sa->sa_family != AF_UNIX) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    l->h.fd = fd;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = &l->h;
    if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        spillway_link_fail(hub, l, "epoll_ctl", strerror(errno));
        return;
    }
    l->reader = spillway_resp_reader_new();
    if (l->reader == NULL) {
        spillway_link_fail(hub, l, "reader", "out of memory");
        return;
    }
    if (l->state != SW_LS_CONNECTING) l->deadline = hub->now + hub->cfg.redis.connect_timeout_ms;
    l->state = SW_LS_CONNECTING;
    if (connect(fd, sa, len) != 0 && errno != EINPROGRESS) {
        try_next_address(hub, l, strerror(errno));
        return;
    }
    /* Connected or in progress: EPOLLOUT tells (edge-triggered, it comes
     * once the connection is up or has failed). */
}


void spillway_link_start(spillway_hub *hub, spillway_rlink *l)
{
    const spillway_redis_config *rc = &hub->cfg.redis;
    struct sockaddr_storage ss;
    socklen_t len;

    if (rc->path != NULL) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        memset(un, 0, sizeof(*un));
        un->sun_family = AF_UNIX;
        if (strlen(rc->path) >= sizeof(un->sun_path)) {
            spillway_link_fail(hub, l, "connect", "unix socket path too long");
            return;
        }
        memcpy(un->sun_path, rc->path, strlen(rc->path) + 1);
        l->addrs[0] = ss;
        l->addrlens[0] = sizeof(*un);
        l->naddr = 1;
        l->addr_i = 0;
        connect_next(hub, l);
        return;
    }
    if (spillway_resolve_numeric(rc->host, rc->port, &ss, &len) == 0) {
        l->addrs[0] = ss;
        l->addrlens[0] = len;
        l->naddr = 1;
        l->addr_i = 0;
        connect_next(hub, l);
        return;
    }
    /* A name, or the sentinels to ask: on a helper thread, never in the loop. */
    l->resolving = rc->sentinels != NULL ? spillway_sentinel_resolve_start(rc, &l->ask_budget_ms) : spillway_resolve_start(rc->host, rc->port);
    if (l->resolving == NULL) {
        spillway_link_fail(hub, l, "resolve", strerror(errno));
        return;
    }
    {
        struct epoll_event ev;
        l->rh.fd = spillway_resolve_fd(l->resolving);
        ev.events = EPOLLIN;
        ev.data.ptr = &l->rh;
        if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, l->rh.fd, &ev) != 0) {
            spillway_link_fail(hub, l, "epoll_ctl(resolver)", strerror(errno));
            return;
        }
    }
    l->state = SW_LS_RESOLVING;
    l->deadline = hub->now + rc->connect_timeout_ms + l->ask_budget_ms;
}

static void on_resolved(spillway_hub *hub, spillway_rlink *l)
{
    char err[640];
    int rc = spillway_resolve_result(l->resolving, l->addrs, l->addrlens, err, sizeof(err));

    snprintf(l->primary, sizeof(l->primary), "%s", spillway_resolve_found(l->resolving));
    epoll_ctl(hub->epfd, EPOLL_CTL_DEL, l->rh.fd, NULL);
    spillway_resolve_release(l->resolving);
    l->resolving = NULL;
    l->rh.fd = -1;
    if (rc < 0) {
        spillway_link_fail(hub, l, hub->cfg.redis.sentinels ? "sentinels" : "resolve", err);
        return;
    }
    l->naddr = rc;
    l->addr_i = 0;
    connect_next(hub, l);
}

/* ---- replies ----------------------------------------------------------- */

/* rediss://: the TLS handshake, step by step as the socket allows; the
 * Redis handshake once it is done. A failure (the certificate, the name,
 * a refused protocol) fails the attempt like any connect: a log line
 * naming the cause and a reconnect after the backoff. Never plaintext. */
static void tls_step(spillway_hub *hub, spillway_rlink *l)
{
    spillway_tls_rc rc = spillway_tls_handshake(l->tls);
    if (rc == SW_TLS_WANT_READ || rc == SW_TLS_WANT_WRITE) return; /* the next edge */
    if (rc != SW_TLS_OK) {
        spillway_link_fail(hub, l, "TLS handshake", spillway_tls_error(l->tls));
        return;
    }
    l->hooks.handshake(hub, l);
}

static void tls_start(spillway_hub *hub, spillway_rlink *l)
{
    char err[200];
    l->tls = spillway_tls_new(hub->cfg.redis.tls, l->h.fd, hub->cfg.redis.host, err, sizeof(err));
    if (l->tls == NULL) {
        spillway_link_fail(hub, l, "TLS", err);
        return;
    }
    l->state = SW_LS_TLS;
    tls_step(hub, l);
}

static void dispatch(spillway_hub *hub, spillway_rlink *l, spillway_rv *v)
{
    bool handshaking = l->state == SW_LS_HANDSHAKE;
    spillway_rq *q;
    if (!handshaking && l->hooks.on_push != NULL) {
        l->hooks.on_push(hub, l, v);
        return;
    }
    if (!handshaking && hub->cfg.redis.sentinels != NULL && spillway_sentinel_demoted(v)) {
        /* The primary became a replica (a failover): every waiting request
         * fails as on a dropped link, and the reconnect asks the sentinels
         * for the new primary. */
        spillway_link_fail(hub, l, "reply", "READONLY: the primary became a replica; asking the sentinels again");
        return;
    }
    q = spillway_link_pop(l);
    if (q == NULL) {
        spillway_link_protocol_error(hub, l, handshaking ? "a reply nobody asked for during the handshake"
                                                         : "a reply nobody asked for");
        return;
    }
    q->fn(hub, l, q, v);
    spillway_rq_free(q);
    /* Redis answers in order: the next request's clock starts now, not
     * when it was queued behind a long one. */
    if (!handshaking && l->head != NULL && l->head->sent_ms < hub->now) l->head->sent_ms = hub->now;
}

/* Reads until EAGAIN (edge-triggered), handing each whole reply over as it
 * is parsed: Redis is read as fast as it writes, so the subscriber link
 * stays far from client-output-buffer-limit pubsub. */
static void link_read(spillway_hub *hub, spillway_rlink *l)
{
    char buf[READ_CHUNK];
    for (;;) {
        size_t n = 0;
        const char *err = NULL;
        spillway_tls_rc rc = spillway_link_recv(l, buf, sizeof(buf), &n, &err);
        if (rc == SW_TLS_CLOSED) {
            spillway_link_fail(hub, l, "recv", "connection closed by Redis");
            return;
        }
        /* Until the socket is drained: with TLS, until OpenSSL holds no
         * decrypted bytes either (SSL_pending), since no edge tells. */
        if (rc == SW_TLS_WANT_READ || rc == SW_TLS_WANT_WRITE) return;
        if (rc == SW_TLS_ERROR) {
            spillway_link_fail(hub, l, "recv", err);
            return;
        }
        if (spillway_resp_feed(l->reader, buf, n, &err) != 0) {
            spillway_link_protocol_error(hub, l, err);
            return;
        }
        for (;;) {
            spillway_rv *v = NULL;
            int rc = spillway_resp_next(l->reader, &v, &err);
            if (rc < 0) {
                spillway_link_protocol_error(hub, l, err ? err : "parse error");
                return;
            }
            if (rc == 0) break;
            dispatch(hub, l, v);
            spillway_rv_free(v);
            if (l->state == SW_LS_IDLE) return; /* failed while handling */
        }
    }
}

/* Sentinel, on a link that is up: asks them again (on the helper thread)
 * whether its node still is the primary. After a failover the old primary
 * may go on accepting writes until the sentinels make it a replica (which
 * discards them): the link moves as soon as they name another. */
void spillway_link_start_check(spillway_hub *hub, spillway_rlink *l)
{
    uint64_t budget;
    struct epoll_event ev;
    l->next_check = hub->now + SENTINEL_CHECK_MS;
    l->resolving = spillway_sentinel_resolve_start(&hub->cfg.redis, &budget);
    if (l->resolving == NULL) return;
    l->rh.fd = spillway_resolve_fd(l->resolving);
    ev.events = EPOLLIN;
    ev.data.ptr = &l->rh;
    if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, l->rh.fd, &ev) != 0) {
        spillway_resolve_release(l->resolving);
        l->resolving = NULL;
        l->rh.fd = -1;
    }
}

static void on_checked(spillway_hub *hub, spillway_rlink *l)
{
    struct sockaddr_storage addrs[SPILLWAY_RESOLVE_MAX];
    socklen_t lens[SPILLWAY_RESOLVE_MAX];
    char err[640], found[300], msg[700];
    int rc = spillway_resolve_result(l->resolving, addrs, lens, err, sizeof(err));

    snprintf(found, sizeof(found), "%s", spillway_resolve_found(l->resolving));
    epoll_ctl(hub->epfd, EPOLL_CTL_DEL, l->rh.fd, NULL);
    spillway_resolve_release(l->resolving);
    l->resolving = NULL;
    l->rh.fd = -1;
    /* Sentinels that do not answer now change nothing: the link stays. */
    if (rc < 0 || found[0] == '\0' || strcmp(found, l->primary) == 0) return;
    snprintf(msg, sizeof(msg), "the sentinels now name %.200s as the primary of %.100s (was %.200s)", found,
             hub->cfg.redis.sentinel_master, l->primary);
    spillway_link_fail(hub, l, "failover", msg);
}

void spillway_link_on_event(spillway_hub *hub, spillway_rlink *l, spillway_handle *h, uint32_t events)
{
    if (h == &l->rh) {
        if (l->state == SW_LS_RESOLVING && l->resolving != NULL) on_resolved(hub, l);
        else if (l->state == SW_LS_READY && l->resolving != NULL) on_checked(hub, l);
        return;
    }
    if (l->h.fd < 0) return;
    if (l->state == SW_LS_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        if (getsockopt(l->h.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err != 0) {
            try_next_address(hub, l, strerror(err));
            return;
        }
        if (hub->cfg.redis.tls != NULL) {
            tls_start(hub, l);
            return; /* the handshake wrote and read what there was */
        }
        l->hooks.handshake(hub, l);
        if (l->state == SW_LS_IDLE) return;
    } else if (l->state == SW_LS_TLS) {
        tls_step(hub, l);
        return;
    }
    /* A TLS session may want to read for a write, or write for a read:
     * every edge drives both. */
    if (l->tls != NULL) events |= EPOLLIN | EPOLLOUT;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
        link_read(hub, l);
        if (l->state == SW_LS_IDLE) return;
    }
    if (events & EPOLLOUT) spillway_link_write(hub, l);
}

void spillway_link_teardown(spillway_hub *hub, spillway_rlink *l)
{
    l->state = SW_LS_IDLE;
    l->ever_ready = false; /* no repair on the way out */
    drop(hub, l);
}

void spillway_link_abandon(spillway_rlink *l)
{
    l->tls = NULL; /* the parent's session: not freed, not spoken on (redis_link.h) */
    if (l->h.fd >= 0) close(l->h.fd);
    l->h.fd = -1;
    if (l->resolving != NULL) spillway_resolve_abandon(l->resolving);
}
