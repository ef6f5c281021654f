/*
 * The Redis links of a hub: two non-blocking sockets owned by the reactor.
 *
 *   sub  SUBSCRIBE / UNSUBSCRIBE (batched), pub/sub messages, PING health
 *        checks. Every message is a whole SSE frame; it is fanned out as it
 *        arrives, without another copy.
 *   cmd  the resume reads (a Lua script over the channels' backlogs), gap
 *        repair after a reconnect, and async publishes (EVALSHA, pipelined).
 *
 * Two links, because in RESP2 a subscribed connection can run no other
 * command, and hiredis 0.14 (Debian's) has no RESP3 to lift that.
 *
 * Ordering: message ids are strictly increasing in the order Redis ran the
 * publish scripts, and one connection receives pub/sub messages in that
 * order. So after a SUBSCRIBE is confirmed every later message arrives, and
 * "the highest id seen on the sub link" (hub->last) is a cursor for every
 * confirmed channel. That is what makes resume and gap repair exact:
 *
 *   join:   subscribe, wait for the confirmation, read the backlog after the
 *           client's cursor; live frames that arrive meanwhile are held and
 *           merged behind the backlog without duplicates (conn.c).
 *   repair: when the sub link drops, remember hub->last; after reconnecting
 *           and re-confirming every channel, read every channel's backlog
 *           after it, hold live frames meanwhile, deliver in id order.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "hub_internal.h"
#include "resolve.h"
#include "resp.h"
#include "scripts.h"

#define STAT_ADD(hub, field, n) atomic_fetch_add_explicit(&(hub)->field, (n), memory_order_relaxed)
#define STAT_SET(hub, field, v) atomic_store_explicit(&(hub)->field, (v), memory_order_relaxed)

#define BACKOFF_MIN_MS 50u
#define BACKOFF_MAX_MS 2000u
#define SUBSCRIBE_BATCH 1000u
#define HELD_MAX_FRAMES 200000u
#define READ_CHUNK 65536

enum { LINK_SUB, LINK_CMD };
enum { LS_IDLE, LS_RESOLVING, LS_CONNECTING, LS_HANDSHAKE, LS_READY };

enum rq_kind {
    RQ_HANDSHAKE = 1, /* AUTH, SELECT, CLIENT SETNAME: +OK or the link fails */
    RQ_SCRIPT_PUBLISH,
    RQ_SCRIPT_RESUME,
    RQ_TIME,
    RQ_RESUME,
    RQ_REPAIR,
    RQ_PUBLISH
};

typedef struct rq {
    struct rq *next;
    int kind;
    uint64_t sent_ms;
    uint64_t wend; /* the link's queued-byte count right after this request */
    spillway_conn *conn;        /* RESUME */
    char mode;                  /* RESUME: 'c', 's' or 'n' */
    bool eval;                  /* sent as EVAL (after a NOSCRIPT) */
    spillway_cmd_publish *pub;  /* PUBLISH */
    uint64_t epoch;             /* REPAIR: the sub link epoch it repairs */
    uint32_t nch;               /* REPAIR */
    char **names;               /* REPAIR: channel names (copies) */
} rq;

struct held_item {
    spillway_frame *f;
    char *name; /* the channel, by name: it may come and go meanwhile */
};

typedef struct rlink {
    spillway_handle h; /* kind SW_KIND_REDIS */
    spillway_handle rh; /* kind SW_KIND_RESOLVER, while resolving */
    int role;
    int state;
    spillway_resp_reader *reader;
    spillway_buf out;
    uint64_t queued_total, written_total;
    rq *head, *tail;
    uint32_t handshake_left;
    uint64_t deadline;
    uint64_t retry_at;
    uint32_t backoff_ms;
    spillway_resolve *resolving;
    uint64_t next_ping;
    uint64_t ping_deadline;
    bool ping_out;
    bool ever_ready;
} rlink;

typedef struct spillway_redis spillway_redis;

struct spillway_redis {
    rlink sub, cmd;
    char *chan_prefix; /* "NS:" */
    size_t chan_prefix_len;
    char *key_prefix; /* "NS:s:" */
    size_t key_prefix_len;
    char *idkey; /* "NS:id" */
    char publish_sha[41], resume_sha[41];
    spillway_channel *plist;
    spillway_channel *linger_head, *linger_tail;
    spillway_cmd_publish *aq_head, *aq_tail; /* async publishes waiting for the cmd rlink */
    uint32_t sent_subs;                      /* channels in SW_RS_SENT */
    /* gap repair */
    bool need_repair, repair_inflight, holding, overflowed;
    spillway_id repair_cursor;
    uint64_t sub_epoch;
    struct held_item *held; /* live frames held during a gap repair */
    size_t held_len, held_cap;
    /* Redis clock minus ours, from TIME (for the start of new streams) */
    int64_t clock_offset;
    bool clock_known;
    uint32_t rng;
};

/* ---- small helpers ----------------------------------------------------- */

static spillway_redis *R(spillway_hub *hub)
{
    return hub->redis;
}

static const char *role_name(const rlink *l)
{
    return l->role == LINK_SUB ? "subscriber" : "command";
}

static uint32_t jitter(spillway_redis *r, uint32_t ms)
{
    /* xorshift32: spreads reconnects of many processes by +-25%. */
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 17;
    r->rng ^= r->rng << 5;
    return ms * 3 / 4 + (ms > 1 ? r->rng % (ms / 2 + 1) : 0);
}

static rq *rq_new(int kind)
{
    rq *q = calloc(1, sizeof(*q));
    if (q != NULL) q->kind = kind;
    return q;
}

static void rq_push(spillway_hub *hub, rlink *l, rq *q)
{
    q->sent_ms = hub->now;
    q->wend = l->queued_total + (l->out.len - l->out.off);
    q->next = NULL;
    if (l->tail) l->tail->next = q;
    else l->head = q;
    l->tail = q;
}

static rq *rq_pop(rlink *l)
{
    rq *q = l->head;
    if (q != NULL) {
        l->head = q->next;
        if (l->head == NULL) l->tail = NULL;
    }
    return q;
}

static void rq_free(rq *q)
{
    if (q == NULL) return;
    for (uint32_t i = 0; i < q->nch; i++) free(q->names[i]);
    free(q->names);
    free(q);
}

/* A request that pointed at a connection is over. */
static void conn_unref(spillway_hub *hub, spillway_conn *c)
{
    c->inflight--;
    c->flags &= ~SW_CF_RESUME_SENT;
    if ((c->flags & SW_CF_ZOMBIE) && c->inflight == 0) {
        c->flags &= ~SW_CF_ZOMBIE;
        spillway_conn_release(hub, c);
    }
}

static int frame_set_id(spillway_frame *f)
{
    uint32_t end = 4;
    if (f->len < 6 || memcmp(f->data, "id: ", 4) != 0) return -1;
    while (end < f->len && end < 4 + SPILLWAY_ID_TEXT_MAX && f->data[end] != '\n') end++;
    if (end >= f->len || f->data[end] != '\n') return -1;
    return spillway_id_parse(f->data + 4, end - 4, &f->id);
}

/* An error reply's text (or a note that the reply was malformed). */
static void rv_message(const spillway_rv *v, char *buf, size_t n)
{
    if (v != NULL && v->type == SW_RV_ERROR && v->str != NULL)
        snprintf(buf, n, "%.*s", (int)SW_MIN(v->str->len, 150u), v->str->data);
    else
        snprintf(buf, n, "malformed reply");
}

/* Takes the frame out of a reply value (the value keeps nothing). */
static spillway_frame *steal(spillway_rv *v)
{
    spillway_frame *f;
    if (v == NULL || v->type != SW_RV_STRING || v->str == NULL) return NULL;
    f = v->str;
    v->str = NULL;
    return f;
}

/* ---- channels: subscribe bookkeeping ----------------------------------- */

static void plist_add(spillway_redis *r, spillway_channel *ch)
{
    if (ch->in_plist) return;
    ch->in_plist = 1;
    ch->pnext = r->plist;
    r->plist = ch;
}

static void linger_unlink(spillway_redis *r, spillway_channel *ch)
{
    if (!ch->lingering) return;
    if (ch->lprev) ch->lprev->lnext = ch->lnext;
    else r->linger_head = ch->lnext;
    if (ch->lnext) ch->lnext->lprev = ch->lprev;
    else r->linger_tail = ch->lprev;
    ch->lprev = ch->lnext = NULL;
    ch->lingering = 0;
}

static void linger_add(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    if (ch->lingering) return;
    ch->touched_ms = hub->now;
    ch->lingering = 1;
    ch->lnext = NULL;
    ch->lprev = r->linger_tail;
    if (r->linger_tail) r->linger_tail->lnext = ch;
    else r->linger_head = ch;
    r->linger_tail = ch;
}

static void drop_channel(spillway_hub *hub, spillway_channel *ch)
{
    linger_unlink(R(hub), ch);
    spillway_channel_drop(hub, ch);
}

void spillway_redis_channel_wanted(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    linger_unlink(r, ch);
    if (ch->rstate == SW_RS_NONE) {
        ch->rstate = SW_RS_PENDING;
        plist_add(r, ch);
    }
    /* PENDING, SENT: under way. ACTIVE: nothing to do. UNSUB_SENT: the
     * confirmation sees the subscriber and subscribes again. */
}

void spillway_redis_channel_unwanted(spillway_hub *hub, spillway_channel *ch)
{
    switch (ch->rstate) {
    case SW_RS_NONE:
        if (!ch->in_plist) drop_channel(hub, ch);
        break;
    case SW_RS_ACTIVE:
        /* Stay subscribed a little: a browser that reconnects right away
         * (navigation, retry) causes no Redis traffic. */
        linger_add(hub, ch);
        break;
    default:
        /* PENDING: the next batch drops it. SENT: the confirmation lingers
         * it. UNSUB_SENT: the confirmation drops it. */
        break;
    }
}

static bool conn_channels_active(const spillway_conn *c)
{
    for (uint32_t i = 0; i < c->nmem; i++)
        if (c->mem[i].ch->rstate != SW_RS_ACTIVE) return false;
    return true;
}

/* ---- the links: connect, fail, write ----------------------------------- */

static void link_close_fd(spillway_hub *hub, rlink *l)
{
    if (l->h.fd >= 0) {
        epoll_ctl(hub->epfd, EPOLL_CTL_DEL, l->h.fd, NULL);
        close(l->h.fd);
        l->h.fd = -1;
    }
    if (l->resolving != NULL) {
        epoll_ctl(hub->epfd, EPOLL_CTL_DEL, l->rh.fd, NULL);
        spillway_resolve_release(l->resolving);
        l->resolving = NULL;
        l->rh.fd = -1;
    }
}

static void update_connected(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    STAT_SET(hub, st_redis_connected, r->sub.state == LS_READY && r->cmd.state == LS_READY ? 1 : 0);
}

static void fail_requests(spillway_hub *hub, rlink *l);
static void sub_link_lost(spillway_hub *hub);

static void link_fail(spillway_hub *hub, rlink *l, const char *what, const char *why)
{
    spillway_redis *r = R(hub);
    bool was_up = l->state == LS_READY;

    spillway_hub_error(hub, "Redis %s link: %s: %s", role_name(l), what, why);
    link_close_fd(hub, l);
    spillway_resp_reader_free(l->reader);
    l->reader = NULL;
    fail_requests(hub, l);
    spillway_buf_free(&l->out);
    l->queued_total = l->written_total = 0;
    l->state = LS_IDLE;
    l->handshake_left = 0;
    l->ping_out = false;
    if (l->backoff_ms == 0) l->backoff_ms = BACKOFF_MIN_MS;
    l->retry_at = hub->now + jitter(r, l->backoff_ms);
    l->backoff_ms = SW_MIN(l->backoff_ms * 2, BACKOFF_MAX_MS);
    if (was_up) STAT_ADD(hub, st_redis_reconnects, 1);
    if (l->role == LINK_SUB && l->ever_ready) sub_link_lost(hub);
    update_connected(hub);
}

static int link_queue(spillway_hub *hub, rlink *l, rq *q, int argc, const char *const *argv,
                      const size_t *lens)
{
    if (spillway_buf_command(&l->out, argc, argv, lens) != 0) {
        spillway_hub_error(hub, "Redis %s link: out of memory", role_name(l));
        rq_free(q);
        return -1;
    }
    if (q != NULL) rq_push(hub, l, q);
    return 0;
}

static void link_write(spillway_hub *hub, rlink *l)
{
    while (l->h.fd >= 0 && l->out.off < l->out.len &&
           (l->state == LS_READY || l->state == LS_HANDSHAKE)) {
        ssize_t n = send(l->h.fd, l->out.data + l->out.off, l->out.len - l->out.off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            l->out.off += (size_t)n;
            l->written_total += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return; /* EPOLLOUT follows */
        link_fail(hub, l, "send", n < 0 ? strerror(errno) : "closed");
        return;
    }
    if (l->out.off == l->out.len) {
        l->queued_total += l->out.len;
        l->written_total = l->queued_total;
        spillway_buf_reset(&l->out);
    }
}

static void handshake(spillway_hub *hub, rlink *l)
{
    const spillway_redis_config *rc = &hub->cfg.redis;
    char name[64], db[16];

    l->state = LS_HANDSHAKE;
    l->deadline = hub->now + rc->connect_timeout_ms + rc->command_timeout_ms;
    l->handshake_left = 0;
    if (rc->password != NULL) {
        if (rc->username != NULL) {
            const char *argv[] = {"AUTH", rc->username, rc->password};
            link_queue(hub, l, rq_new(RQ_HANDSHAKE), 3, argv, NULL);
        } else {
            const char *argv[] = {"AUTH", rc->password};
            link_queue(hub, l, rq_new(RQ_HANDSHAKE), 2, argv, NULL);
        }
        l->handshake_left++;
    }
    snprintf(name, sizeof(name), "spillway-%s-%d", l->role == LINK_SUB ? "sub" : "cmd", (int)getpid());
    {
        const char *argv[] = {"CLIENT", "SETNAME", name};
        link_queue(hub, l, rq_new(RQ_HANDSHAKE), 3, argv, NULL);
        l->handshake_left++;
    }
    if (l->role == LINK_CMD) {
        const char *load_p[] = {"SCRIPT", "LOAD", spillway_lua_publish};
        const char *load_r[] = {"SCRIPT", "LOAD", spillway_lua_resume};
        const char *time[] = {"TIME"};
        if (rc->db != 0) {
            const char *argv[] = {"SELECT", db};
            snprintf(db, sizeof(db), "%d", rc->db);
            link_queue(hub, l, rq_new(RQ_HANDSHAKE), 2, argv, NULL);
            l->handshake_left++;
        }
        link_queue(hub, l, rq_new(RQ_SCRIPT_PUBLISH), 3, load_p, NULL);
        link_queue(hub, l, rq_new(RQ_SCRIPT_RESUME), 3, load_r, NULL);
        link_queue(hub, l, rq_new(RQ_TIME), 1, time, NULL);
        l->handshake_left += 3;
    }
    link_write(hub, l);
}

static void link_connect_addr(spillway_hub *hub, rlink *l, const struct sockaddr *sa, socklen_t len)
{
    struct epoll_event ev;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;

    if (fd < 0) {
        link_fail(hub, l, "socket", strerror(errno));
        return;
    }
    if (sa->sa_family != AF_UNIX) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    l->h.fd = fd;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = &l->h;
    if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        link_fail(hub, l, "epoll_ctl", strerror(errno));
        return;
    }
    l->reader = spillway_resp_reader_new();
    if (l->reader == NULL) {
        link_fail(hub, l, "reader", "out of memory");
        return;
    }
    l->state = LS_CONNECTING;
    l->deadline = hub->now + hub->cfg.redis.connect_timeout_ms;
    if (connect(fd, sa, len) != 0 && errno != EINPROGRESS) {
        link_fail(hub, l, "connect", strerror(errno));
        return;
    }
    /* Connected or in progress: EPOLLOUT tells (edge-triggered, it comes
     * once the connection is up or has failed). */
}

static void link_start(spillway_hub *hub, rlink *l)
{
    const spillway_redis_config *rc = &hub->cfg.redis;
    struct sockaddr_storage ss;
    socklen_t len;

    if (rc->path != NULL) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        memset(un, 0, sizeof(*un));
        un->sun_family = AF_UNIX;
        if (strlen(rc->path) >= sizeof(un->sun_path)) {
            link_fail(hub, l, "connect", "unix socket path too long");
            return;
        }
        strcpy(un->sun_path, rc->path);
        link_connect_addr(hub, l, (struct sockaddr *)un, sizeof(*un));
        return;
    }
    if (spillway_resolve_numeric(rc->host, rc->port, &ss, &len) == 0) {
        link_connect_addr(hub, l, (struct sockaddr *)&ss, len);
        return;
    }
    /* A name: resolve it on a helper thread, never in the loop. */
    l->resolving = spillway_resolve_start(rc->host, rc->port);
    if (l->resolving == NULL) {
        link_fail(hub, l, "resolve", strerror(errno));
        return;
    }
    {
        struct epoll_event ev;
        l->rh.kind = SW_KIND_RESOLVER;
        l->rh.fd = spillway_resolve_fd(l->resolving);
        ev.events = EPOLLIN;
        ev.data.ptr = &l->rh;
        if (epoll_ctl(hub->epfd, EPOLL_CTL_ADD, l->rh.fd, &ev) != 0) {
            link_fail(hub, l, "epoll_ctl(resolver)", strerror(errno));
            return;
        }
    }
    l->state = LS_RESOLVING;
    l->deadline = hub->now + rc->connect_timeout_ms;
}

static void on_resolved(spillway_hub *hub, rlink *l)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    char err[200];
    int rc = spillway_resolve_result(l->resolving, &ss, &len, err, sizeof(err));

    epoll_ctl(hub->epfd, EPOLL_CTL_DEL, l->rh.fd, NULL);
    spillway_resolve_release(l->resolving);
    l->resolving = NULL;
    l->rh.fd = -1;
    if (rc != 0) {
        link_fail(hub, l, "resolve", err);
        return;
    }
    link_connect_addr(hub, l, (struct sockaddr *)&ss, len);
}

/* ---- sending requests -------------------------------------------------- */

static int queue_publish(spillway_hub *hub, spillway_cmd_publish *cmd, bool eval)
{
    spillway_redis *r = R(hub);
    rlink *l = &r->cmd;
    const spillway_redis_config *rc = &hub->cfg.redis;
    char maxlen[16], ttl[16];
    rq *q = rq_new(RQ_PUBLISH);
    spillway_buf *b = &l->out;
    int bad = 0;

    if (q == NULL) return -1;
    q->pub = cmd;
    q->eval = eval;
    snprintf(maxlen, sizeof(maxlen), "%u", rc->backlog_size);
    snprintf(ttl, sizeof(ttl), "%u", rc->backlog_ttl_s);
    bad |= spillway_buf_begin(b, 9);
    if (eval) bad |= spillway_buf_arg(b, "EVAL", 4), bad |= spillway_buf_arg(b, spillway_lua_publish, strlen(spillway_lua_publish));
    else bad |= spillway_buf_arg(b, "EVALSHA", 7), bad |= spillway_buf_arg(b, r->publish_sha, 40);
    bad |= spillway_buf_arg(b, "2", 1);
    bad |= spillway_buf_arg(b, r->idkey, strlen(r->idkey));
    bad |= spillway_buf_arg2(b, r->key_prefix, r->key_prefix_len, cmd->channel, cmd->chlen);
    bad |= spillway_buf_arg2(b, r->chan_prefix, r->chan_prefix_len, cmd->channel, cmd->chlen);
    bad |= spillway_buf_arg(b, cmd->frame->data, cmd->frame->len);
    bad |= spillway_buf_arg(b, maxlen, strlen(maxlen));
    bad |= spillway_buf_arg(b, ttl, strlen(ttl));
    if (bad) {
        spillway_hub_error(hub, "Redis command link: out of memory");
        free(q);
        return -1;
    }
    rq_push(hub, l, q);
    return 0;
}

static void async_fail(spillway_hub *hub, spillway_cmd_publish *cmd)
{
    spillway_hub_async_done(hub, cmd->seq, false);
    spillway_frame_unref(cmd->frame);
    free(cmd);
}

static void send_async_queue(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    while (r->aq_head != NULL && r->cmd.state == LS_READY) {
        spillway_cmd_publish *cmd = r->aq_head;
        r->aq_head = (spillway_cmd_publish *)cmd->base.node.next;
        if (r->aq_head == NULL) r->aq_tail = NULL;
        if (queue_publish(hub, cmd, false) != 0) async_fail(hub, cmd);
    }
}

void spillway_redis_publish_async(spillway_hub *hub, spillway_cmd_publish *cmd)
{
    spillway_redis *r = R(hub);
    if (r->cmd.state == LS_READY && r->aq_head == NULL) {
        if (queue_publish(hub, cmd, false) != 0) async_fail(hub, cmd);
        return;
    }
    cmd->base.node.next = NULL;
    if (r->aq_tail) r->aq_tail->base.node.next = &cmd->base.node;
    else r->aq_head = cmd;
    r->aq_tail = cmd;
}

/* EVALSHA resume over some channels, cursor text per channel. */
static int queue_resume(spillway_hub *hub, rq *q, char mode, spillway_channel **chans, uint32_t n,
                        const char *cursor, bool eval)
{
    spillway_redis *r = R(hub);
    spillway_buf *b = &r->cmd.out;
    const spillway_redis_config *rc = &hub->cfg.redis;
    char nkeys[16], ttl[16];
    size_t clen = strlen(cursor);
    int bad = 0;

    snprintf(nkeys, sizeof(nkeys), "%u", n + 1);
    snprintf(ttl, sizeof(ttl), "%u", rc->backlog_ttl_s);
    bad |= spillway_buf_begin(b, 3 + 1 + n + 2 + n);
    if (eval) bad |= spillway_buf_arg(b, "EVAL", 4), bad |= spillway_buf_arg(b, spillway_lua_resume, strlen(spillway_lua_resume));
    else bad |= spillway_buf_arg(b, "EVALSHA", 7), bad |= spillway_buf_arg(b, r->resume_sha, 40);
    bad |= spillway_buf_arg(b, nkeys, strlen(nkeys));
    bad |= spillway_buf_arg(b, r->idkey, strlen(r->idkey));
    for (uint32_t i = 0; i < n; i++)
        bad |= spillway_buf_arg2(b, r->key_prefix, r->key_prefix_len, chans[i]->name, chans[i]->namelen);
    bad |= spillway_buf_arg(b, &mode, 1);
    bad |= spillway_buf_arg(b, ttl, strlen(ttl));
    for (uint32_t i = 0; i < n; i++) bad |= spillway_buf_arg(b, cursor, clen);
    if (bad) {
        spillway_hub_error(hub, "Redis command link: out of memory");
        return -1;
    }
    q->mode = mode;
    q->eval = eval;
    rq_push(hub, &r->cmd, q);
    return 0;
}

static void try_resume(spillway_hub *hub, spillway_conn *c)
{
    spillway_redis *r = R(hub);
    char cursor[SPILLWAY_ID_TEXT_MAX] = "0-0";
    spillway_channel **chans;
    char mode;
    rq *q;

    if (!(c->flags & SW_CF_JOINING) || (c->flags & (SW_CF_RESUME_SENT | SW_CF_DOOMED))) return;
    if (r->cmd.state != LS_READY || !conn_channels_active(c)) return;
    if (c->has_cursor && c->cursor_ok) mode = 'c';
    else if (c->flags & SW_CF_SYNTHETIC) mode = 's';
    else mode = 'n';
    if (mode != 'n') spillway_id_format(c->cursor, cursor);
    chans = malloc(c->nmem * sizeof(*chans));
    q = rq_new(RQ_RESUME);
    if (chans == NULL || q == NULL) {
        free(chans);
        free(q);
        spillway_conn_doom(hub, c, false);
        return;
    }
    for (uint32_t i = 0; i < c->nmem; i++) chans[i] = c->mem[i].ch;
    q->conn = c;
    if (queue_resume(hub, q, mode, chans, c->nmem, cursor, false) != 0) {
        free(q);
        spillway_conn_doom(hub, c, false);
    } else {
        c->inflight++;
        c->flags |= SW_CF_RESUME_SENT;
    }
    free(chans);
}

void spillway_redis_conn_joined_channels(spillway_hub *hub, spillway_conn *c)
{
    spillway_redis *r = R(hub);
    if (c->flags & SW_CF_DOOMED) return;
    if (!c->has_cursor && conn_channels_active(c)) {
        /* Every channel is confirmed: every later message reaches us, and
         * each is newer than anything seen so far. Live at once. */
        c->flags &= ~SW_CF_JOINING;
        c->last = hub->last;
        return;
    }
    if (!c->has_cursor && r->clock_known) {
        /* A new stream starts "now": what is published between the attach
         * and the confirmed subscription still reaches it. */
        int64_t ms = (int64_t)spillway_wall_ms() + r->clock_offset - 1;
        c->cursor = (spillway_id){ms > 0 ? (uint64_t)ms : 0, 0};
        c->flags |= SW_CF_SYNTHETIC;
    }
    try_resume(hub, c);
}

static void resume_all_joining(spillway_hub *hub)
{
    for (uint32_t s = 0; s < hub->wheel_slots; s++)
        for (spillway_conn *c = hub->wheel[s]; c != NULL; c = c->wnext) try_resume(hub, c);
}

/* Live frames held during a repair go out, in arrival (= id) order. */
static void release_held(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    struct held_item *held = r->held;
    size_t n = r->held_len;
    r->held = NULL;
    r->held_len = r->held_cap = 0;
    r->holding = false;
    for (size_t i = 0; i < n; i++) {
        spillway_channel *ch = spillway_chtab_find(&hub->chans, held[i].name, strlen(held[i].name));
        if (ch != NULL) spillway_channel_fanout(hub, ch, held[i].f);
        spillway_frame_unref(held[i].f);
        free(held[i].name);
    }
    free(held);
}

/* Every live stream on a channel with ch->mark set gets one reset naming
 * its marked channels. Clears the marks. */
static void send_marked_resets(spillway_hub *hub, spillway_id now)
{
    spillway_chtab *t = &hub->chans;
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) {
            if (!ch->mark) continue;
            for (uint32_t s = 0; s < ch->nsubs; s++) {
                spillway_conn *c = ch->subs[s].conn;
                bool *flags;
                if (c->flags & (SW_CF_JOINING | SW_CF_DOOMED | SW_CF_MARK)) continue;
                c->flags |= SW_CF_MARK;
                flags = calloc(c->nmem, sizeof(*flags));
                if (flags == NULL) continue;
                for (uint32_t m = 0; m < c->nmem; m++) flags[m] = c->mem[m].ch->mark != 0;
                spillway_conn_send_reset(hub, c, flags, now);
                free(flags);
            }
        }
    }
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) {
            if (!ch->mark) continue;
            ch->mark = 0;
            for (uint32_t s = 0; s < ch->nsubs; s++) ch->subs[s].conn->flags &= ~SW_CF_MARK;
        }
    }
}

static void finish_repair(spillway_hub *hub, bool reset_all)
{
    spillway_redis *r = R(hub);
    r->need_repair = false;
    r->overflowed = false;
    if (reset_all) {
        spillway_chtab *t = &hub->chans;
        for (uint32_t b = 0; b < t->nbuckets; b++)
            for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) ch->mark = ch->nsubs > 0;
        send_marked_resets(hub, hub->last);
    }
    release_held(hub);
    STAT_ADD(hub, st_gap_repairs, 1);
}

static void try_repair(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    spillway_chtab *t = &hub->chans;
    spillway_channel **chans;
    char cursor[SPILLWAY_ID_TEXT_MAX];
    uint32_t n = 0;
    rq *q;

    if (!r->need_repair || r->repair_inflight) return;
    if (r->sub.state != LS_READY || r->cmd.state != LS_READY || r->sent_subs > 0) return;
    for (spillway_channel *ch = r->plist; ch != NULL; ch = ch->pnext)
        if (ch->rstate == SW_RS_PENDING) return; /* not subscribed yet */

    chans = malloc((t->count ? t->count : 1) * sizeof(*chans));
    q = rq_new(RQ_REPAIR);
    if (chans == NULL || q == NULL) goto oom;
    for (uint32_t b = 0; b < t->nbuckets; b++)
        for (spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext)
            if (ch->nsubs > 0 && ch->rstate == SW_RS_ACTIVE) chans[n++] = ch;
    if (n == 0 || r->overflowed) {
        /* Nothing to read, or too much arrived to merge: finish now. */
        bool reset_all = r->overflowed;
        free(chans);
        free(q);
        finish_repair(hub, reset_all);
        return;
    }
    q->names = calloc(n, sizeof(*q->names));
    if (q->names == NULL) goto oom;
    q->nch = n;
    for (uint32_t i = 0; i < n; i++) {
        q->names[i] = strdup(chans[i]->name);
        if (q->names[i] == NULL) goto oom;
    }
    q->epoch = r->sub_epoch;
    spillway_id_format(r->repair_cursor, cursor);
    if (queue_resume(hub, q, 'c', chans, n, cursor, false) != 0) goto oom;
    r->repair_inflight = true;
    free(chans);
    return;
oom:
    free(chans);
    rq_free(q);
    spillway_hub_error(hub, "gap repair: out of memory; streams get a reset");
    finish_repair(hub, true);
}

/* ---- replies ----------------------------------------------------------- */

static spillway_id parse_last(spillway_hub *hub, const spillway_rv *v)
{
    spillway_id id = hub->last;
    if (v != NULL && v->type == SW_RV_STRING && v->str != NULL && v->str->len > 0) {
        spillway_id parsed;
        if (spillway_id_parse(v->str->data, v->str->len, &parsed) == 0) id = parsed;
    }
    return id;
}

/* Collects the frames of a resume reply; *idx (if given) gets each frame's
 * channel index. Returns the count, -1 on a malformed reply. */
static long collect_frames(spillway_rv *flat, spillway_frame ***frames, uint32_t **idx)
{
    size_t n;
    if (flat == NULL || flat->type != SW_RV_ARRAY || flat->elements % 2 != 0) return -1;
    n = flat->elements / 2;
    *frames = calloc(n ? n : 1, sizeof(**frames));
    if (idx) *idx = calloc(n ? n : 1, sizeof(**idx));
    if (*frames == NULL || (idx && *idx == NULL)) return -1;
    for (size_t i = 0; i < n; i++) {
        spillway_rv *iv = flat->element[2 * i];
        spillway_frame *f = steal(flat->element[2 * i + 1]);
        if (iv == NULL || iv->type != SW_RV_INTEGER || f == NULL || frame_set_id(f) != 0) {
            spillway_frame_unref(f);
            for (size_t j = 0; j < i; j++) spillway_frame_unref((*frames)[j]);
            return -1;
        }
        (*frames)[i] = f;
        if (idx) (*idx)[i] = (uint32_t)iv->integer;
    }
    return (long)n;
}

static bool reply_ok_shape(const spillway_rv *v)
{
    return v != NULL && v->type == SW_RV_ARRAY && v->elements == 3 && v->element[1] != NULL &&
           v->element[1]->type == SW_RV_ARRAY;
}

static void on_resume_reply(spillway_hub *hub, rq *q, spillway_rv *v)
{
    spillway_conn *c = q->conn;
    spillway_frame **frames = NULL;
    bool *reset = NULL;
    spillway_id now;
    long n = 0;

    bool gone = (c->flags & SW_CF_ZOMBIE) != 0;
    conn_unref(hub, c); /* frees a zombie */
    if (gone || (c->flags & SW_CF_DOOMED)) return;
    if (v->type == SW_RV_ERROR && spillway_rv_starts(v, "NOSCRIPT") && !q->eval) {
        /* The script cache was flushed: send the script itself. */
        rq *again = rq_new(RQ_RESUME);
        spillway_channel **chans = malloc(c->nmem * sizeof(*chans));
        char cursor[SPILLWAY_ID_TEXT_MAX] = "0-0";
        if (again && chans) {
            for (uint32_t i = 0; i < c->nmem; i++) chans[i] = c->mem[i].ch;
            if (q->mode != 'n') spillway_id_format(c->cursor, cursor);
            again->conn = c;
            if (queue_resume(hub, again, q->mode, chans, c->nmem, cursor, true) == 0) {
                c->inflight++;
                c->flags |= SW_CF_RESUME_SENT;
                again = NULL;
            }
        }
        free(again);
        free(chans);
        if (c->flags & SW_CF_RESUME_SENT) return;
    }
    reset = calloc(c->nmem ? c->nmem : 1, sizeof(*reset));
    if (reset == NULL) {
        spillway_conn_doom(hub, c, false);
        return;
    }
    if (!reply_ok_shape(v) || v->element[1]->elements != c->nmem ||
        (n = collect_frames(v->element[2], &frames, NULL)) < 0) {
        char msg[160];
        rv_message(v, msg, sizeof(msg));
        spillway_hub_error(hub, "resume read failed: %s", msg);
        /* Tell the client instead of leaving it with a possible hole. */
        for (uint32_t i = 0; i < c->nmem; i++) reset[i] = true;
        n = 0;
        now = hub->last;
    } else {
        now = parse_last(hub, v->element[0]);
        for (uint32_t i = 0; i < c->nmem; i++) {
            spillway_rv *e = v->element[1]->element[i];
            reset[i] = q->mode == 'c' && e != NULL && e->type == SW_RV_INTEGER && e->integer != 0;
        }
    }
    if (c->has_cursor && !c->cursor_ok) {
        for (uint32_t i = 0; i < c->nmem; i++) reset[i] = true;
    }
    if (q->mode == 'c' || q->mode == 's') c->last = c->cursor;
    else c->last = now;
    spillway_conn_replay(hub, c, frames, (size_t)n, reset, now);
    for (long i = 0; i < n; i++) spillway_frame_unref(frames[i]);
    free(frames);
    free(reset);
}

static void on_repair_reply(spillway_hub *hub, rq *q, spillway_rv *v)
{
    spillway_redis *r = R(hub);
    spillway_frame **frames = NULL;
    uint32_t *idx = NULL;
    spillway_id now;
    long n = 0;
    bool all_reset = false;

    r->repair_inflight = false;
    if (q->epoch != r->sub_epoch) return; /* the sub link dropped again: repair anew */
    if (!reply_ok_shape(v) || v->element[1]->elements != q->nch ||
        (n = collect_frames(v->element[2], &frames, &idx)) < 0) {
        char msg[160];
        rv_message(v, msg, sizeof(msg));
        spillway_hub_error(hub, "gap repair failed: %s; streams get a reset", msg);
        all_reset = true;
        n = 0;
        now = hub->last;
    } else {
        now = parse_last(hub, v->element[0]);
    }
    for (long i = 0; i < n; i++) {
        spillway_channel *ch =
            idx[i] < q->nch ? spillway_chtab_find(&hub->chans, q->names[idx[i]], strlen(q->names[idx[i]])) : NULL;
        if (ch != NULL) spillway_channel_fanout(hub, ch, frames[i]);
        spillway_frame_unref(frames[i]);
    }
    free(frames);
    free(idx);
    if (all_reset) {
        finish_repair(hub, true);
        return;
    }
    /* Channels whose backlog no longer reaches the cursor: every stream on
     * them that was live is told. */
    for (uint32_t i = 0; i < q->nch; i++) {
        spillway_rv *e = v->element[1]->element[i];
        spillway_channel *ch = spillway_chtab_find(&hub->chans, q->names[i], strlen(q->names[i]));
        if (ch != NULL && e != NULL && e->type == SW_RV_INTEGER && e->integer != 0) ch->mark = 1;
    }
    send_marked_resets(hub, now);
    finish_repair(hub, false);
}

/* ---- losing a link ----------------------------------------------------- */

static void fail_requests(spillway_hub *hub, rlink *l)
{
    spillway_redis *r = R(hub);
    spillway_cmd_publish *uh = NULL, *ut = NULL; /* never sent: go out again */
    rq *q;

    while ((q = rq_pop(l)) != NULL) {
        switch (q->kind) {
        case RQ_RESUME:
            conn_unref(hub, q->conn); /* re-issued once the link is back */
            break;
        case RQ_REPAIR:
            r->repair_inflight = false; /* sent again once the links are back */
            break;
        case RQ_PUBLISH:
            if (q->wend > l->written_total) {
                /* Never left this process: send it after the reconnect,
                 * ahead of anything newer. */
                q->pub->base.node.next = NULL;
                if (ut != NULL) ut->base.node.next = &q->pub->base.node;
                else uh = q->pub;
                ut = q->pub;
            } else {
                /* Sent, no answer: Redis may or may not have run it. Not
                 * sent twice (a duplicate would reach every browser). */
                spillway_hub_error(hub, "async publish to %.*s: the command link dropped before Redis "
                                        "answered; it may not have been published",
                                   (int)q->pub->chlen, q->pub->channel);
                async_fail(hub, q->pub);
            }
            break;
        default:
            break;
        }
        q->pub = NULL;
        rq_free(q);
    }
    l->tail = NULL;
    if (uh != NULL) {
        ut->base.node.next = r->aq_head ? &r->aq_head->base.node : NULL;
        if (r->aq_head == NULL) r->aq_tail = ut;
        r->aq_head = uh;
    }
}

/* The subscriber link dropped: every subscription is gone. Channels that
 * still have streams subscribe again after the reconnect, and what was
 * published meanwhile is read back from the backlog (gap repair). */
static void sub_link_lost(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    spillway_chtab *t = &hub->chans;

    if (!r->need_repair) r->repair_cursor = hub->last;
    r->need_repair = true;
    r->holding = true;
    r->sub_epoch++;
    r->sent_subs = 0;
    for (spillway_channel *ch = r->plist; ch != NULL; ch = ch->pnext) ch->in_plist = 0;
    r->plist = NULL;
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        spillway_channel *ch = t->buckets[b];
        while (ch != NULL) {
            spillway_channel *next = ch->hnext;
            if (ch->nsubs == 0) {
                ch->rstate = SW_RS_NONE;
                drop_channel(hub, ch);
            } else {
                ch->rstate = SW_RS_PENDING;
                plist_add(r, ch);
            }
            ch = next;
        }
    }
}

/* ---- sub link: messages and confirmations ------------------------------ */

static spillway_channel *channel_of(spillway_hub *hub, const spillway_rv *name)
{
    spillway_redis *r = R(hub);
    if (name == NULL || name->str == NULL || name->str->len <= r->chan_prefix_len) return NULL;
    if (memcmp(name->str->data, r->chan_prefix, r->chan_prefix_len) != 0) return NULL;
    return spillway_chtab_find(&hub->chans, name->str->data + r->chan_prefix_len,
                               name->str->len - r->chan_prefix_len);
}

static void on_message(spillway_hub *hub, spillway_rv *v)
{
    spillway_redis *r = R(hub);
    spillway_channel *ch = channel_of(hub, v->element[1]);
    spillway_frame *f = steal(v->element[2]);

    STAT_ADD(hub, st_redis_messages, 1);
    STAT_ADD(hub, st_published, 1);
    if (f == NULL) return;
    if (frame_set_id(f) != 0) {
        spillway_hub_error(hub, "Redis message without a Spillway id on %.*s (published by something else?)",
                           (int)SW_MIN(v->element[1]->str->len, 100u), v->element[1]->str->data);
        spillway_frame_unref(f);
        return;
    }
    hub->last = spillway_id_max(hub->last, f->id);
    if (ch == NULL) {
        spillway_frame_unref(f);
        return;
    }
    if (r->holding) {
        if (r->held_len < HELD_MAX_FRAMES) {
            if (r->held_len == r->held_cap) {
                size_t n = r->held_cap ? r->held_cap * 2 : 64;
                struct held_item *h = realloc(r->held, n * sizeof(*h));
                if (h != NULL) {
                    r->held = h;
                    r->held_cap = n;
                }
            }
            if (r->held_len < r->held_cap) {
                char *name = strdup(ch->name);
                if (name != NULL) {
                    r->held[r->held_len].f = f;
                    r->held[r->held_len].name = name;
                    r->held_len++;
                    return;
                }
            }
        }
        /* Too much to hold: deliver everything now and tell every stream
         * (resets) when the repair would have run. */
        spillway_hub_error(hub, "gap repair: more than %u messages arrived while repairing; streams get a reset",
                           HELD_MAX_FRAMES);
        r->overflowed = true;
        release_held(hub);
    }
    spillway_channel_fanout(hub, ch, f);
    spillway_frame_unref(f);
}

static void on_subscribed(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    if (ch->rstate != SW_RS_SENT) return;
    ch->rstate = SW_RS_ACTIVE;
    if (r->sent_subs > 0) r->sent_subs--;
    if (ch->nsubs == 0) {
        linger_add(hub, ch);
        return;
    }
    for (uint32_t i = 0; i < ch->nsubs; i++) {
        spillway_conn *c = ch->subs[i].conn;
        if (!(c->flags & SW_CF_JOINING)) continue;
        if (!c->has_cursor && !(c->flags & SW_CF_SYNTHETIC) && conn_channels_active(c)) {
            /* No cursor and no clock estimate: live from here. */
            spillway_redis_conn_joined_channels(hub, c);
        } else {
            try_resume(hub, c);
        }
    }
}

static void on_unsubscribed(spillway_hub *hub, spillway_channel *ch)
{
    spillway_redis *r = R(hub);
    if (ch->rstate != SW_RS_UNSUB_SENT) return;
    ch->rstate = SW_RS_NONE;
    if (ch->nsubs > 0) {
        /* Someone joined while it was leaving: subscribe again. */
        ch->rstate = SW_RS_PENDING;
        plist_add(r, ch);
    } else if (!ch->in_plist) {
        drop_channel(hub, ch);
    }
}

static void on_sub_reply(spillway_hub *hub, rlink *l, spillway_rv *v)
{
    if (l->state == LS_HANDSHAKE) {
        rq *q = rq_pop(l);
        if (v->type == SW_RV_ERROR) {
            char msg[160];
            rv_message(v, msg, sizeof(msg));
            rq_free(q);
            link_fail(hub, l, "handshake", msg);
            return;
        }
        rq_free(q);
        if (--l->handshake_left == 0) {
            spillway_redis *r = R(hub);
            l->state = LS_READY;
            l->ever_ready = true;
            l->backoff_ms = 0;
            l->next_ping = hub->now + hub->cfg.redis.health_interval_ms;
            update_connected(hub);
            /* Subscribe everything wanted (after a drop: everything that
             * still has streams; sub_link_lost listed them). */
            for (uint32_t b = 0; b < hub->chans.nbuckets; b++)
                for (spillway_channel *ch = hub->chans.buckets[b]; ch != NULL; ch = ch->hnext)
                    if (ch->rstate == SW_RS_PENDING) plist_add(r, ch);
        }
        return;
    }
    if (v->type == SW_RV_ARRAY && v->elements >= 3 && spillway_rv_is(v->element[0], "message")) {
        on_message(hub, v);
    } else if (v->type == SW_RV_ARRAY && v->elements >= 2 && spillway_rv_is(v->element[0], "pong")) {
        l->ping_out = false;
    } else if (v->type == SW_RV_STATUS && spillway_rv_is(v, "PONG")) {
        l->ping_out = false;
    } else if (v->type == SW_RV_ARRAY && v->elements >= 3 && spillway_rv_is(v->element[0], "subscribe")) {
        spillway_channel *ch = channel_of(hub, v->element[1]);
        if (ch != NULL) on_subscribed(hub, ch);
    } else if (v->type == SW_RV_ARRAY && v->elements >= 3 && spillway_rv_is(v->element[0], "unsubscribe")) {
        spillway_channel *ch = channel_of(hub, v->element[1]);
        if (ch != NULL) on_unsubscribed(hub, ch);
    } else if (v->type == SW_RV_ERROR) {
        char msg[160];
        rv_message(v, msg, sizeof(msg));
        spillway_hub_error(hub, "Redis subscriber link: %s", msg);
    }
}

/* ---- cmd link: replies in request order -------------------------------- */

static void copy_sha(char *dst, const spillway_rv *v)
{
    if (v != NULL && v->type == SW_RV_STRING && v->str != NULL && v->str->len == 40) {
        memcpy(dst, v->str->data, 40);
        dst[40] = '\0';
    }
}

static void cmd_ready(spillway_hub *hub, rlink *l)
{
    l->state = LS_READY;
    l->ever_ready = true;
    l->backoff_ms = 0;
    update_connected(hub);
    send_async_queue(hub);
    resume_all_joining(hub);
}

static void on_cmd_reply(spillway_hub *hub, rlink *l, spillway_rv *v)
{
    spillway_redis *r = R(hub);
    rq *q = rq_pop(l);
    char msg[160];

    if (q == NULL) {
        link_fail(hub, l, "protocol", "a reply nobody asked for");
        return;
    }
    switch (q->kind) {
    case RQ_HANDSHAKE:
    case RQ_SCRIPT_PUBLISH:
    case RQ_SCRIPT_RESUME:
    case RQ_TIME:
        if (v->type == SW_RV_ERROR) {
            rv_message(v, msg, sizeof(msg));
            rq_free(q);
            link_fail(hub, l, "handshake", msg);
            return;
        }
        if (q->kind == RQ_SCRIPT_PUBLISH) copy_sha(r->publish_sha, v);
        if (q->kind == RQ_SCRIPT_RESUME) copy_sha(r->resume_sha, v);
        if (q->kind == RQ_TIME && v->type == SW_RV_ARRAY && v->elements == 2 && v->element[0]->str &&
            v->element[1]->str) {
            char sec[24] = "", usec[24] = "";
            snprintf(sec, sizeof(sec), "%.*s", (int)SW_MIN(v->element[0]->str->len, 20u), v->element[0]->str->data);
            snprintf(usec, sizeof(usec), "%.*s", (int)SW_MIN(v->element[1]->str->len, 20u), v->element[1]->str->data);
            r->clock_offset = (int64_t)(strtoll(sec, NULL, 10) * 1000 + strtoll(usec, NULL, 10) / 1000) -
                              (int64_t)spillway_wall_ms();
            r->clock_known = true;
        }
        if (l->state == LS_HANDSHAKE && --l->handshake_left == 0) cmd_ready(hub, l);
        break;
    case RQ_RESUME:
        on_resume_reply(hub, q, v);
        break;
    case RQ_REPAIR:
        on_repair_reply(hub, q, v);
        break;
    case RQ_PUBLISH:
        if (v->type == SW_RV_ERROR && spillway_rv_starts(v, "NOSCRIPT") && !q->eval) {
            if (queue_publish(hub, q->pub, true) == 0) q->pub = NULL;
        }
        if (q->pub != NULL) {
            bool ok = v->type == SW_RV_STRING;
            if (!ok) {
                rv_message(v, msg, sizeof(msg));
                spillway_hub_error(hub, "async publish to %.*s failed: %s", (int)q->pub->chlen,
                                   q->pub->channel, msg);
            }
            spillway_hub_async_done(hub, q->pub->seq, ok);
            spillway_frame_unref(q->pub->frame);
            free(q->pub);
            q->pub = NULL;
        }
        break;
    }
    rq_free(q);
}

/* ---- events ------------------------------------------------------------ */

static void link_read(spillway_hub *hub, rlink *l)
{
    char buf[READ_CHUNK];
    for (;;) {
        ssize_t n = recv(l->h.fd, buf, sizeof(buf), MSG_DONTWAIT);
        const char *err = NULL;
        if (n == 0) {
            link_fail(hub, l, "recv", "connection closed by Redis");
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            link_fail(hub, l, "recv", strerror(errno));
            return;
        }
        if (spillway_resp_feed(l->reader, buf, (size_t)n, &err) != 0) {
            link_fail(hub, l, "protocol", err);
            return;
        }
        for (;;) {
            spillway_rv *v = NULL;
            int rc = spillway_resp_next(l->reader, &v, &err);
            if (rc < 0) {
                link_fail(hub, l, "protocol", err ? err : "parse error");
                return;
            }
            if (rc == 0) break;
            if (l->role == LINK_SUB) on_sub_reply(hub, l, v);
            else on_cmd_reply(hub, l, v);
            spillway_rv_free(v);
            if (l->state == LS_IDLE) return; /* failed while handling */
        }
        if ((size_t)n < sizeof(buf)) {
            /* Short read: most likely drained. Edge-triggered epoll needs
             * EAGAIN to be sure, so loop once more. */
            continue;
        }
    }
}

void spillway_redis_on_event(spillway_hub *hub, spillway_handle *h, uint32_t events)
{
    spillway_redis *r = R(hub);
    rlink *l;

    if (h->kind == SW_KIND_RESOLVER) {
        l = h == &r->sub.rh ? &r->sub : &r->cmd;
        if (l->state == LS_RESOLVING && l->resolving != NULL) on_resolved(hub, l);
        return;
    }
    l = h == &r->sub.h ? &r->sub : &r->cmd;
    if (l->h.fd < 0) return;
    if (l->state == LS_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        if (getsockopt(l->h.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err != 0) {
            link_fail(hub, l, "connect", strerror(err));
            return;
        }
        handshake(hub, l);
        if (l->state == LS_IDLE) return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
        link_read(hub, l);
        if (l->state == LS_IDLE) return;
    }
    if (events & EPOLLOUT) link_write(hub, l);
}

/* ---- timers ------------------------------------------------------------ */

static void link_timers(spillway_hub *hub, rlink *l)
{
    const spillway_redis_config *rc = &hub->cfg.redis;
    switch (l->state) {
    case LS_IDLE:
        if (hub->now >= l->retry_at) link_start(hub, l);
        break;
    case LS_RESOLVING:
    case LS_CONNECTING:
    case LS_HANDSHAKE:
        if (hub->now >= l->deadline) link_fail(hub, l, "connect", "timed out");
        break;
    case LS_READY:
        if (l->role == LINK_CMD && l->head != NULL &&
            hub->now >= l->head->sent_ms + rc->command_timeout_ms + (l->head->kind == RQ_REPAIR ? rc->command_timeout_ms * 4 : 0)) {
            link_fail(hub, l, "command", "Redis did not answer in time (command_timeout)");
        } else if (l->role == LINK_SUB) {
            if (l->ping_out && hub->now >= l->ping_deadline) {
                link_fail(hub, l, "health check", "no PONG in time");
            } else if (!l->ping_out && hub->now >= l->next_ping) {
                const char *argv[] = {"PING"};
                link_queue(hub, l, NULL, 1, argv, NULL);
                l->ping_out = true;
                l->ping_deadline = hub->now + rc->command_timeout_ms + 1000;
                l->next_ping = hub->now + rc->health_interval_ms;
            }
        }
        break;
    }
}

void spillway_redis_timers(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    uint64_t linger = hub->cfg.redis.unsubscribe_linger_ms;

    link_timers(hub, &r->sub);
    link_timers(hub, &r->cmd);
    while (r->linger_head != NULL && r->linger_head->touched_ms + linger <= hub->now) {
        spillway_channel *ch = r->linger_head;
        linger_unlink(r, ch);
        if (ch->nsubs == 0 && ch->rstate == SW_RS_ACTIVE) plist_add(r, ch);
    }
}

uint64_t spillway_redis_next_timer(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    uint64_t next = hub->now + 1000;
    rlink *links[2] = {&r->sub, &r->cmd};
    for (int i = 0; i < 2; i++) {
        rlink *l = links[i];
        if (l->state == LS_IDLE) next = SW_MIN(next, l->retry_at);
        else if (l->state != LS_READY) next = SW_MIN(next, l->deadline);
        else if (l->role == LINK_SUB) next = SW_MIN(next, l->ping_out ? l->ping_deadline : l->next_ping);
    }
    if (r->linger_head != NULL) next = SW_MIN(next, r->linger_head->touched_ms + hub->cfg.redis.unsubscribe_linger_ms);
    return next;
}

/* End of every iteration: the batched (un)subscribes, the repair when it is
 * due, and the bytes waiting for each link. */
void spillway_redis_flush_writes(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    rlink *sub = &r->sub;

    if (sub->state == LS_READY && r->plist != NULL) {
        spillway_channel *subs[SUBSCRIBE_BATCH], *unsubs[SUBSCRIBE_BATCH];
        uint32_t ns = 0, nu = 0;
        spillway_channel **pp = &r->plist;
        while (*pp != NULL && ns < SUBSCRIBE_BATCH && nu < SUBSCRIBE_BATCH) {
            spillway_channel *ch = *pp;
            *pp = ch->pnext;
            ch->pnext = NULL;
            ch->in_plist = 0;
            if (ch->rstate == SW_RS_PENDING && ch->nsubs > 0) {
                subs[ns++] = ch;
            } else if (ch->rstate == SW_RS_PENDING) {
                ch->rstate = SW_RS_NONE; /* wanted, then unwanted before it went out */
                drop_channel(hub, ch);
            } else if (ch->rstate == SW_RS_ACTIVE && ch->nsubs == 0) {
                unsubs[nu++] = ch;
            } else if (ch->rstate == SW_RS_NONE && ch->nsubs == 0) {
                drop_channel(hub, ch);
            }
        }
        if (ns > 0) {
            spillway_buf_begin(&sub->out, 1 + ns);
            spillway_buf_arg(&sub->out, "SUBSCRIBE", 9);
            for (uint32_t i = 0; i < ns; i++) {
                spillway_buf_arg2(&sub->out, r->chan_prefix, r->chan_prefix_len, subs[i]->name, subs[i]->namelen);
                subs[i]->rstate = SW_RS_SENT;
            }
            r->sent_subs += ns;
        }
        if (nu > 0) {
            spillway_buf_begin(&sub->out, 1 + nu);
            spillway_buf_arg(&sub->out, "UNSUBSCRIBE", 11);
            for (uint32_t i = 0; i < nu; i++) {
                spillway_buf_arg2(&sub->out, r->chan_prefix, r->chan_prefix_len, unsubs[i]->name, unsubs[i]->namelen);
                unsubs[i]->rstate = SW_RS_UNSUB_SENT;
            }
        }
    }
    try_repair(hub);
    if (sub->state == LS_READY || sub->state == LS_HANDSHAKE) link_write(hub, sub);
    if (r->cmd.state == LS_READY || r->cmd.state == LS_HANDSHAKE) link_write(hub, &r->cmd);
}

/* ---- lifecycle --------------------------------------------------------- */

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s == NULL) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

int spillway_redis_new(spillway_hub *hub, char *err, size_t errlen)
{
    spillway_redis *r = calloc(1, sizeof(*r));
    const char *ns = hub->cfg.redis.ns;

    if (r == NULL) {
        snprintf(err, errlen, "spillway_redis_new: out of memory");
        return -ENOMEM;
    }
    r->sub.role = LINK_SUB;
    r->cmd.role = LINK_CMD;
    r->sub.h.kind = r->cmd.h.kind = SW_KIND_REDIS;
    r->sub.h.fd = r->cmd.h.fd = -1;
    r->sub.rh.fd = r->cmd.rh.fd = -1;
    r->sub.state = r->cmd.state = LS_IDLE;
    r->sub.retry_at = r->cmd.retry_at = hub->now; /* connect on the first iteration */
    r->chan_prefix = concat(ns, ":");
    r->key_prefix = concat(ns, ":s:");
    r->idkey = concat(ns, ":id");
    r->rng = (uint32_t)spillway_mono_ms() ^ (uint32_t)getpid() ^ 0x9e3779b9u;
    if (r->rng == 0) r->rng = 1;
    if (r->chan_prefix == NULL || r->key_prefix == NULL || r->idkey == NULL) {
        free(r->chan_prefix);
        free(r->key_prefix);
        free(r->idkey);
        free(r);
        snprintf(err, errlen, "spillway_redis_new: out of memory");
        return -ENOMEM;
    }
    r->chan_prefix_len = strlen(r->chan_prefix);
    r->key_prefix_len = strlen(r->key_prefix);
    hub->redis = r;
    return 0;
}

static void link_teardown(spillway_hub *hub, rlink *l)
{
    link_close_fd(hub, l);
    spillway_resp_reader_free(l->reader);
    l->reader = NULL;
    l->state = LS_IDLE;
    l->ever_ready = false; /* no repair on the way out */
    fail_requests(hub, l);
    spillway_buf_free(&l->out);
}

void spillway_redis_stop(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    if (r == NULL) return;
    link_teardown(hub, &r->sub);
    link_teardown(hub, &r->cmd);
    while (r->aq_head != NULL) {
        spillway_cmd_publish *cmd = r->aq_head;
        r->aq_head = (spillway_cmd_publish *)cmd->base.node.next;
        async_fail(hub, cmd);
    }
    r->aq_tail = NULL;
    for (size_t i = 0; i < r->held_len; i++) {
        spillway_frame_unref(r->held[i].f);
        free(r->held[i].name);
    }
    free(r->held);
    r->held = NULL;
    r->held_len = r->held_cap = 0;
    update_connected(hub);
}

void spillway_redis_free(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    if (r == NULL) return;
    spillway_redis_stop(hub);
    free(r->chan_prefix);
    free(r->key_prefix);
    free(r->idkey);
    free(r);
    hub->redis = NULL;
}

void spillway_redis_abandon(spillway_hub *hub)
{
    spillway_redis *r = R(hub);
    rlink *links[2];
    if (r == NULL) return;
    links[0] = &r->sub;
    links[1] = &r->cmd;
    for (int i = 0; i < 2; i++) {
        if (links[i]->h.fd >= 0) close(links[i]->h.fd);
        links[i]->h.fd = -1;
        if (links[i]->resolving != NULL) spillway_resolve_abandon(links[i]->resolving);
    }
}

size_t spillway_redis_memsize(const spillway_hub *hub)
{
    const spillway_redis *r = hub->redis;
    return sizeof(*r) + r->sub.out.cap + r->cmd.out.cap + r->held_cap * sizeof(*r->held);
}
