/*
 * The blocking publisher (publisher.h): a pool of connections (sconn.c),
 * the publish with its retries and idempotency, and the two reads (cursor,
 * last id); they share the pool and the call's interrupt state. A new
 * connection is made in publisher_conn.c.
 */
#include "publisher_internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sentinel.h"
#include "tls.h"

/* Pauses between retries while Redis refuses connections or is loading. */
#define RETRY_PAUSE_MIN_MS 20u
#define RETRY_PAUSE_MAX_MS 250u

static char *dup0(const char *s)
{
    return s ? strdup(s) : NULL;
}

int spillway_publisher_new(const spillway_redis_config *cfg, spillway_publisher **out, char *err,
                           size_t errlen)
{
    spillway_publisher *p = calloc(1, sizeof(*p));
    const char *ns = cfg->ns ? cfg->ns : "spillway";
    if (p == NULL) goto oom;
    p->cfg = *cfg;
    p->cfg.host = dup0(cfg->host);
    p->cfg.path = dup0(cfg->path);
    p->cfg.username = dup0(cfg->username);
    p->cfg.password = dup0(cfg->password);
    p->cfg.ns = dup0(ns);
    p->cfg.sentinels = dup0(cfg->sentinels);
    p->cfg.sentinel_master = dup0(cfg->sentinel_master);
    p->cfg.sentinel_password = dup0(cfg->sentinel_password);
    p->cfg.tls = spillway_tls_ctx_ref(cfg->tls);
    pthread_mutex_init(&p->lock, NULL);
    if (p->cfg.ns == NULL || spillway_keys_init(&p->keys, ns) != 0) {
        spillway_publisher_free(p);
        goto oom;
    }
    *out = p;
    return 0;
oom:
    snprintf(err, errlen, "spillway_publisher_new: out of memory");
    return -ENOMEM;
}

static uint64_t mono_ms(void)
{
    return spillway_mono_ms();
}

/* A connection from the pool, or NULL: the caller connects. Connections of
 * another process, or that Redis closed while they sat idle, are dropped. */
static spillway_sconn *pool_take(spillway_publisher *p)
{
    spillway_sconn *conn = NULL;
    pid_t me = getpid();
    pthread_mutex_lock(&p->lock);
    while (conn == NULL && p->npool > 0) {
        spillway_sconn *pc = p->pool[--p->npool];
        if (pc->pid != me) {
            /* Inherited over fork: close our copy, never speak on it. */
            spillway_sconn_abandon(pc);
            continue;
        }
        /* Idle connections never have data to read: readable means Redis
         * closed it (restart, timeout, CLIENT KILL). */
        if (!spillway_sconn_idle_ok(pc) || pc->gen != p->gen) {
            spillway_sconn_close(pc);
            continue;
        }
        conn = pc;
    }
    pthread_mutex_unlock(&p->lock);
    return conn;
}

static void pool_give(spillway_publisher *p, spillway_sconn *conn)
{
    pthread_mutex_lock(&p->lock);
    if (p->npool < POOL_MAX && conn->gen == p->gen) {
        p->pool[p->npool++] = conn;
        conn = NULL;
    }
    pthread_mutex_unlock(&p->lock);
    if (conn != NULL) spillway_sconn_close(conn);
}

/* The key's TTL: the app's keys live idempotency_ttl, generated ones only
 * as long as a retry can come (idem.h). */
static uint32_t key_ttl_ms(const spillway_publisher *p, const spillway_publish_call *c)
{
    if (c->key != c->genkey) return SW_MAX(p->cfg.idempotency_ttl_ms, 1u);
    return spillway_idem_generated_ttl_ms(&p->cfg);
}

/* Runs the publish script once: 0 and *out, or -errno with why filled. */
static int eval_publish(spillway_publisher *p, spillway_sconn *conn, spillway_publish_call *c, bool by_text,
                        uint32_t command_ms, spillway_rv **out, char *why, size_t whylen)
{
    spillway_publish_args a = {
        .channel = c->channel,
        .chlen = c->chlen,
        .key = c->key,
        .keylen = c->keylen,
        .body = c->body,
        .bodylen = c->bodylen,
        .backlog_size = p->cfg.backlog_size,
        .backlog_ttl_s = p->cfg.backlog_ttl_s,
        .backlog_window_ms = p->cfg.backlog_window_ms,
        .key_ttl_ms = key_ttl_ms(p, c),
    };
    char sha[41];
    *out = NULL;
    pthread_mutex_lock(&p->lock);
    memcpy(sha, p->sha, sizeof(sha));
    pthread_mutex_unlock(&p->lock);
    if (spillway_buf_publish(&conn->out, &p->keys, &a, by_text, sha) != 0) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    return spillway_sconn_roundtrip(conn, command_ms, out, why, whylen);
}

void spillway_publish_call_init(spillway_publish_call *call, spillway_publisher *p)
{
    pthread_condattr_t attr;
    memset(call, 0, sizeof(*call));
    call->p = p;
    call->fd = -1;
    pthread_mutex_init(&call->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&call->wake, &attr);
    pthread_condattr_destroy(&attr);
}

void spillway_publish_call_done(spillway_publish_call *call)
{
    pthread_cond_destroy(&call->wake);
    pthread_mutex_destroy(&call->lock);
}

/* The connection this call uses (for the interrupt), or -1 before it
 * closes it: under the call's lock, so the interrupt never shuts down a
 * descriptor number that was closed and reused meanwhile. */
static bool set_call_fd(spillway_publish_call *c, int fd)
{
    bool interrupted;
    pthread_mutex_lock(&c->lock);
    c->fd = fd;
    interrupted = c->interrupted != 0;
    pthread_mutex_unlock(&c->lock);
    return interrupted;
}

static bool call_interrupted(spillway_publish_call *c)
{
    bool interrupted;
    pthread_mutex_lock(&c->lock);
    interrupted = c->interrupted != 0;
    pthread_mutex_unlock(&c->lock);
    return interrupted;
}

/* What one attempt came to. */
enum attempt_result {
    A_DONE,    /* c->id holds the id */
    A_FAILED,  /* for good: Redis refused the publish, or interrupted */
    A_LOST,    /* the command may have reached Redis, its reply did not come back */
    A_NOT_RUN  /* certainly not run: no connection, or Redis is loading */
};

static bool not_ready(const spillway_rv *v)
{
    /* Redis refuses a script while it loads its data set (a restart) or
     * runs another script too long: nothing ran, later it will. */
    return v->type == SW_RV_ERROR && (spillway_rv_starts(v, "LOADING") || spillway_rv_starts(v, "BUSY"));
}

/* The connection of an attempt, registered for the interrupt: a pooled one
 * (the first attempt) or a fresh one with these timeouts (the retries: a
 * pooled one would most likely be as dead as the one that lost the reply).
 * NULL with *result when there is none. */
static spillway_sconn *attempt_conn(spillway_publish_call *c, bool fresh, uint32_t connect_ms, uint32_t command_ms,
                                    int *result)
{
    spillway_sconn *conn;
    if (c->p->cfg.sentinels != NULL) spillway_pub_recheck_primary(c->p);
    conn = fresh ? NULL : pool_take(c->p);
    if (conn == NULL) conn = spillway_pub_connect(c->p, c, connect_ms, command_ms);
    if (conn == NULL) {
        *result = c->rc == -EPROTO ? A_FAILED : A_NOT_RUN;
        return NULL;
    }
    if (set_call_fd(c, conn->fd)) {
        set_call_fd(c, -1);
        spillway_pub_set_err(c, -EINTR, "interrupted");
        spillway_sconn_close(conn);
        *result = A_FAILED;
        return NULL;
    }
    return conn;
}

/* The publish got no reply (r, why: what went wrong): the command may have
 * reached Redis. */
static int reply_lost(spillway_publish_call *c, spillway_sconn *conn, int r, const char *why)
{
    char target[160];
    spillway_pub_describe_target(c->p, target, sizeof(target));
    spillway_sconn_close(conn);
    if (call_interrupted(c)) {
        spillway_pub_set_err(c, -EINTR, "interrupted");
        return A_FAILED;
    }
    if (r == -ETIMEDOUT) spillway_pub_set_err(c, -ETIMEDOUT, "Redis at %.100s did not answer within command_timeout", target);
    else spillway_pub_set_err(c, -EIO, "Redis connection failed during publish (%.100s: %.150s)", target, why);
    return A_LOST;
}

/* EVAL cached the script: learn its SHA1 for next time. false when the
 * connection broke meanwhile. */
static bool learn_sha(spillway_publisher *p, spillway_sconn *conn, uint32_t command_ms)
{
    const char *argv[3] = {"SCRIPT", "LOAD", spillway_lua_publish};
    char why[200];
    spillway_rv *v = NULL;
    if (spillway_sconn_command(conn, 3, argv, NULL, command_ms, &v, why, sizeof(why)) != 0) return false;
    if (v->type == SW_RV_STRING && v->str != NULL && v->str->len == 40) {
        pthread_mutex_lock(&p->lock);
        memcpy(p->sha, v->str->data, 40);
        p->sha[40] = '\0';
        pthread_mutex_unlock(&p->lock);
    }
    spillway_rv_free(v);
    return true;
}

/* What the publish script's reply v says; the connection goes back to the
 * pool unless it broke. */
static int publish_reply(spillway_publish_call *c, spillway_sconn *conn, spillway_rv *v, bool by_text,
                         uint32_t command_ms)
{
    char text[200];
    spillway_rv_text(v, 180, text, sizeof(text));
    if (not_ready(v)) {
        spillway_pub_set_err(c, -EAGAIN, "Redis is not ready: %.180s", text);
        spillway_rv_free(v);
        pool_give(c->p, conn);
        return A_NOT_RUN;
    }
    if (c->p->cfg.sentinels != NULL && spillway_sentinel_demoted(v)) {
        /* A failover made this node a replica: nothing ran; the next
         * connection asks the sentinels for the new primary. */
        spillway_pub_set_err(c, -EAGAIN, "the Redis primary became a replica (a failover): %.180s", text);
        spillway_rv_free(v);
        spillway_sconn_close(conn);
        return A_NOT_RUN;
    }
    if (v->type != SW_RV_STRING || v->str == NULL || v->str->len >= SPILLWAY_ID_TEXT_MAX) {
        spillway_pub_set_err(c, -EPROTO, "Redis refused the publish: %.180s", v->type == SW_RV_ERROR ? text : "unexpected reply");
        spillway_rv_free(v);
        pool_give(c->p, conn);
        return A_FAILED;
    }
    memcpy(c->id, v->str->data, v->str->len);
    c->id[v->str->len] = '\0';
    spillway_rv_free(v);
    spillway_pub_witness_note(c->p, c);
    if (by_text && !learn_sha(c->p, conn, command_ms)) spillway_sconn_close(conn);
    else pool_give(c->p, conn);
    return A_DONE;
}

/* One attempt: EVALSHA (EVAL until the SHA1 is known, or after NOSCRIPT). */
static int attempt(spillway_publish_call *c, bool fresh, uint32_t connect_ms, uint32_t command_ms)
{
    spillway_publisher *p = c->p;
    spillway_rv *v = NULL;
    char why[200];
    bool by_text;
    int result, r;
    spillway_sconn *conn = attempt_conn(c, fresh, connect_ms, command_ms, &result);

    if (conn == NULL) return result;
    pthread_mutex_lock(&p->lock);
    by_text = p->sha[0] == '\0';
    pthread_mutex_unlock(&p->lock);
    r = eval_publish(p, conn, c, by_text, command_ms, &v, why, sizeof(why));
    if (r == 0 && v->type == SW_RV_ERROR && spillway_rv_starts(v, "NOSCRIPT")) {
        spillway_rv_free(v);
        r = eval_publish(p, conn, c, true, command_ms, &v, why, sizeof(why));
        by_text = true;
    }
    set_call_fd(c, -1);
    if (r != 0) return reply_lost(c, conn, r, why);
    return publish_reply(c, conn, v, by_text, command_ms);
}

/* Waits ms unless the call is interrupted first; true when it was. */
static bool pause_call(spillway_publish_call *c, uint32_t ms)
{
    struct timespec until = spillway_timespec_after(CLOCK_MONOTONIC, ms);
    bool interrupted;
    pthread_mutex_lock(&c->lock);
    while (!c->interrupted && pthread_cond_timedwait(&c->wake, &c->lock, &until) != ETIMEDOUT) {
    }
    interrupted = c->interrupted != 0;
    pthread_mutex_unlock(&c->lock);
    return interrupted;
}

/* After a lost reply: the attempts again on fresh connections, under the
 * same key, while the budget (limit) lasts. The last attempt's result. */
static int retry_lost(spillway_publish_call *c, uint64_t limit)
{
    spillway_publisher *p = c->p;
    const spillway_redis_config *rc = &p->cfg;
    uint32_t pause = RETRY_PAUSE_MIN_MS;
    int r = A_LOST;

    while (r == A_LOST || r == A_NOT_RUN) {
        uint64_t now = mono_ms();
        uint32_t left;
        if (c->retries >= SPILLWAY_PUBLISH_RETRIES || now >= limit) break;
        if (r == A_NOT_RUN) {
            /* Refused or loading: a restart, most likely. Give it a moment. */
            if (pause_call(c, (uint32_t)SW_MIN((uint64_t)pause, limit - now))) {
                spillway_pub_set_err(c, -EINTR, "interrupted");
                return A_FAILED;
            }
            pause = SW_MIN(pause * 2, RETRY_PAUSE_MAX_MS);
            now = mono_ms();
            if (now >= limit) break;
        } else if (call_interrupted(c)) {
            spillway_pub_set_err(c, -EINTR, "interrupted");
            return A_FAILED;
        }
        left = (uint32_t)(limit - now);
        c->retries++;
        atomic_fetch_add(&p->retried, 1);
        r = attempt(c, true, SW_MIN(rc->connect_timeout_ms, left), SW_MIN(rc->command_timeout_ms, left));
    }
    return r;
}

void spillway_publish_run(spillway_publish_call *c)
{
    spillway_publisher *p = c->p;
    const spillway_redis_config *rc = &p->cfg;
    uint64_t start = mono_ms(), limit;
    bool lost;
    int r;

    c->rc = 0;
    c->id[0] = '\0';
    c->retries = 0;
    if (c->key == NULL) {
        spillway_idem_generate(c->genkey);
        c->key = c->genkey;
        c->keylen = SPILLWAY_IDEM_GEN_LEN;
    }
    /* The budget of the retries, and no later than the key certainly lives:
     * an attempt that ran set it no earlier than start, and a retry runs in
     * Redis before its command timeout, which is cut to fit, or it is lost
     * too. */
    limit = start + rc->connect_timeout_ms + 2u * (uint64_t)rc->command_timeout_ms;
    limit = SW_MIN(limit, start + key_ttl_ms(p, c));
    r = attempt(c, false, rc->connect_timeout_ms, rc->command_timeout_ms);
    lost = r == A_LOST;
    /* Sentinel: a failover under way (no primary yet, a replica named) is
     * waited out like a lost reply, within the same budget. */
    if (lost || (r == A_NOT_RUN && p->cfg.sentinels != NULL)) r = retry_lost(c, limit);
    if (r == A_DONE) {
        /* What a lost attempt left there is no error of this call. */
        c->rc = 0;
        c->err[0] = '\0';
        atomic_fetch_add(&p->published, 1);
        return;
    }
    if (lost && c->rc != -EINTR) {
        /* Say what the caller needs to know: it may well be in Redis. */
        char last[sizeof(c->err)];
        memcpy(last, c->err, sizeof(last));
        spillway_pub_set_err(c, c->rc,
                "%.250s; a reply was lost and the publish was retried %u time%s within %llu ms: it may have "
                "been published (publishing it again under the same idempotency_key is safe)",
                last, c->retries, c->retries == 1 ? "" : "s", (unsigned long long)(mono_ms() - start));
    }
    atomic_fetch_add(&p->failed, 1);
}

/* One command on a pooled connection, for the reads (cursor, last id):
 * the reply in *v and the connection to give back in *conn, or an error
 * in c naming what was read. 0 or -1. */
static int read_command(spillway_publish_call *c, int argc, const char **argv, const char *what, spillway_rv **v,
                        spillway_sconn **conn)
{
    spillway_publisher *p = c->p;
    char why[200];
    int r = -EINTR;

    c->rc = 0;
    c->id[0] = '\0';
    *conn = pool_take(p);
    if (*conn == NULL) *conn = spillway_pub_connect(p, c, p->cfg.connect_timeout_ms, p->cfg.command_timeout_ms);
    if (*conn == NULL) return -1;
    snprintf(why, sizeof(why), "interrupted");
    if (!set_call_fd(c, (*conn)->fd))
        r = spillway_sconn_command(*conn, argc, argv, NULL, p->cfg.command_timeout_ms, v, why, sizeof(why));
    set_call_fd(c, -1);
    if (r == 0) return 0;
    spillway_pub_set_err(c, call_interrupted(c) ? -EINTR : -EIO, "Redis connection failed while reading %s (%.150s)", what, why);
    spillway_sconn_close(*conn);
    return -1;
}

/* A reply's id (a bulk string shorter than an id's longest text) into c. */
static bool take_id(spillway_publish_call *c, const spillway_rv *id)
{
    if (id == NULL || id->type != SW_RV_STRING || id->str == NULL || id->str->len >= SPILLWAY_ID_TEXT_MAX) return false;
    memcpy(c->id, id->str->data, id->str->len);
    c->id[id->str->len] = '\0';
    return true;
}

static void refused(spillway_publish_call *c, const char *what, const spillway_rv *v)
{
    char text[200];
    spillway_pub_set_err(c, -EPROTO, "Redis refused the %s read: %.180s", what,
            v->type == SW_RV_ERROR ? spillway_rv_text(v, 180, text, sizeof(text)) : "unexpected reply");
}

void spillway_publish_cursor(spillway_publish_call *c)
{
    spillway_publisher *p = c->p;
    const char *argv[5] = {"EVAL", spillway_lua_cursor, "2", p->keys.id, p->keys.since};
    spillway_sconn *conn;
    spillway_rv *v = NULL;

    if (read_command(c, 5, argv, "the cursor", &v, &conn) != 0) return;
    if (!take_id(c, v)) refused(c, "cursor", v);
    spillway_rv_free(v);
    pool_give(p, conn);
}

void spillway_publish_last_id(spillway_publish_call *c)
{
    spillway_publisher *p = c->p;
    const char *argv[6] = {"XREVRANGE", NULL, "+", "-", "COUNT", "1"};
    spillway_sconn *conn;
    spillway_rv *v = NULL;
    char *key = malloc(p->keys.stream_len + c->chlen + 1);
    int r;

    if (key == NULL) {
        spillway_pub_set_err(c, -ENOMEM, "out of memory");
        return;
    }
    memcpy(key, p->keys.stream, p->keys.stream_len);
    memcpy(key + p->keys.stream_len, c->channel, c->chlen);
    key[p->keys.stream_len + c->chlen] = '\0';
    argv[1] = key;
    r = read_command(c, 6, argv, "the last id", &v, &conn);
    free(key);
    if (r != 0) return;
    if (v->type != SW_RV_ARRAY) {
        refused(c, "last id", v);
    } else if (v->elements > 0) {
        const spillway_rv *e = v->element[0];
        if (!take_id(c, e->type == SW_RV_ARRAY && e->elements > 0 ? e->element[0] : NULL))
            spillway_pub_set_err(c, -EPROTO, "Redis answered the last id read with an unexpected reply");
    }
    spillway_rv_free(v);
    pool_give(p, conn);
}

void spillway_publish_interrupt(spillway_publish_call *c)
{
    pthread_mutex_lock(&c->lock);
    c->interrupted = 1;
    /* shutdown, not close: the owner frees the context; the blocked read
     * returns at once. Under the lock: the owner cannot close it meanwhile. */
    if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
    pthread_cond_broadcast(&c->wake); /* a pause between retries */
    pthread_mutex_unlock(&c->lock);
}

void spillway_publisher_close(spillway_publisher *p)
{
    pid_t me = getpid();
    pthread_mutex_lock(&p->lock);
    while (p->npool > 0) {
        spillway_sconn *pc = p->pool[--p->npool];
        if (pc->pid == me) spillway_sconn_close(pc);
        else spillway_sconn_abandon(pc); /* the parent's connection: only our copy */
    }
    pthread_mutex_unlock(&p->lock);
}

void spillway_publisher_abandon(spillway_publisher *p)
{
    /* Fork child, single-threaded: no lock (another parent thread may have
     * held it at fork time), close our copies, keep the memory. */
    for (uint32_t i = 0; i < p->npool; i++) spillway_sconn_abandon(p->pool[i]);
    p->npool = 0;
}

void spillway_publisher_free(spillway_publisher *p)
{
    if (p == NULL) return;
    spillway_publisher_close(p);
    free((char *)p->cfg.host);
    free((char *)p->cfg.path);
    free((char *)p->cfg.username);
    free((char *)p->cfg.password);
    free((char *)p->cfg.ns);
    free((char *)p->cfg.sentinels);
    free((char *)p->cfg.sentinel_master);
    free((char *)p->cfg.sentinel_password);
    spillway_tls_ctx_unref(p->cfg.tls);
    spillway_keys_free(&p->keys);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

void spillway_publisher_stats_get(spillway_publisher *p, spillway_publisher_stats *out)
{
    out->published = atomic_load(&p->published);
    out->failed = atomic_load(&p->failed);
    out->connects = atomic_load(&p->connects);
    out->retried = atomic_load(&p->retried);
    pthread_mutex_lock(&p->lock);
    out->pooled = p->npool;
    pthread_mutex_unlock(&p->lock);
}
