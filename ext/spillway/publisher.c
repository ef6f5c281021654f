#include "publisher.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#if __has_include(<hiredis/hiredis.h>)
#include <hiredis/hiredis.h>
#else
#include <hiredis.h>
#endif

#include "scripts.h"

#define POOL_MAX 16
/* Pauses between retries while Redis refuses connections or is loading. */
#define RETRY_PAUSE_MIN_MS 20u
#define RETRY_PAUSE_MAX_MS 250u

typedef struct pconn {
    redisContext *ctx;
    pid_t pid;
} pconn;

struct spillway_publisher {
    spillway_redis_config cfg; /* strings owned */
    spillway_keys keys;        /* the namespace's key names (scripts.h) */
    pthread_mutex_t lock;
    pconn pool[POOL_MAX];
    uint32_t npool;
    char sha[41];
    atomic_uint_fast64_t published, failed, connects, retried;
};

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
    if (p->cfg.ns == NULL || spillway_keys_init(&p->keys, ns) != 0) {
        spillway_publisher_free(p);
        goto oom;
    }
    pthread_mutex_init(&p->lock, NULL);
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

static struct timeval tv_ms(uint32_t ms)
{
    struct timeval tv;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    return tv;
}

/* A connection from the pool, or NULL: the caller connects. Connections of
 * another process, or that Redis closed while they sat idle, are dropped. */
static redisContext *pool_take(spillway_publisher *p)
{
    redisContext *ctx = NULL;
    pid_t me = getpid();
    pthread_mutex_lock(&p->lock);
    while (ctx == NULL && p->npool > 0) {
        pconn pc = p->pool[--p->npool];
        if (pc.pid != me) {
            /* Inherited over fork: close our copy, never speak on it. */
            close(pc.ctx->fd);
            continue;
        }
        {
            struct pollfd pfd = {pc.ctx->fd, POLLIN | POLLRDHUP, 0};
            /* Idle connections never have data to read: readable means
             * Redis closed it (restart, timeout, CLIENT KILL). */
            if (poll(&pfd, 1, 0) != 0) {
                redisFree(pc.ctx);
                continue;
            }
        }
        ctx = pc.ctx;
    }
    pthread_mutex_unlock(&p->lock);
    return ctx;
}

static void pool_give(spillway_publisher *p, redisContext *ctx)
{
    pthread_mutex_lock(&p->lock);
    if (p->npool < POOL_MAX) {
        p->pool[p->npool].ctx = ctx;
        p->pool[p->npool].pid = getpid();
        p->npool++;
        ctx = NULL;
    }
    pthread_mutex_unlock(&p->lock);
    if (ctx != NULL) redisFree(ctx);
}

static void set_err(spillway_publish_call *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(spillway_publish_call *c, int rc, const char *fmt, ...)
{
    va_list ap;
    c->rc = rc;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

static void describe_target(const spillway_publisher *p, char *buf, size_t n)
{
    if (p->cfg.path) snprintf(buf, n, "unix://%s", p->cfg.path);
    else snprintf(buf, n, "redis://%s:%d", p->cfg.host ? p->cfg.host : "127.0.0.1", p->cfg.port);
}

/* Runs one command; the reply (or NULL with the context's error). */
static redisReply *run(redisContext *ctx, int argc, const char **argv, const size_t *lens)
{
    return redisCommandArgv(ctx, argc, argv, lens);
}

static int handshake(spillway_publisher *p, redisContext *ctx, spillway_publish_call *c)
{
    redisReply *rep;
    char db[16];
    if (p->cfg.password != NULL) {
        const char *argv[3] = {"AUTH", p->cfg.username ? p->cfg.username : p->cfg.password, p->cfg.password};
        rep = run(ctx, p->cfg.username ? 3 : 2, argv, NULL);
        if (rep == NULL || rep->type == REDIS_REPLY_ERROR) goto fail;
        freeReplyObject(rep);
    }
    if (p->cfg.db != 0) {
        const char *argv[2] = {"SELECT", db};
        snprintf(db, sizeof(db), "%d", p->cfg.db);
        rep = run(ctx, 2, argv, NULL);
        if (rep == NULL || rep->type == REDIS_REPLY_ERROR) goto fail;
        freeReplyObject(rep);
    }
    return 0;
fail:
    if (rep != NULL) {
        set_err(c, -EPROTO, "Redis refused the connection setup: %.150s", rep->str);
        freeReplyObject(rep);
    } else {
        set_err(c, -EIO, "Redis connection setup failed: %.120s", ctx->errstr);
    }
    return -1;
}

/* A new connection with these timeouts (a retry cuts them to what is left
 * of its budget), or NULL with c->rc and c->err set. */
static redisContext *connect_new(spillway_publisher *p, spillway_publish_call *c, uint32_t connect_ms,
                                 uint32_t command_ms)
{
    struct timeval ctv = tv_ms(connect_ms);
    struct timeval ttv = tv_ms(command_ms);
    char target[160];
    redisContext *ctx;

    atomic_fetch_add(&p->connects, 1);
    if (p->cfg.path != NULL) ctx = redisConnectUnixWithTimeout(p->cfg.path, ctv);
    else ctx = redisConnectWithTimeout(p->cfg.host ? p->cfg.host : "127.0.0.1", p->cfg.port, ctv);
    describe_target(p, target, sizeof(target));
    if (ctx == NULL || ctx->err) {
        set_err(c, -ECONNREFUSED, "cannot connect to Redis at %.100s: %.100s", target,
                ctx ? ctx->errstr : "out of memory");
        if (ctx != NULL) redisFree(ctx);
        return NULL;
    }
    redisSetTimeout(ctx, ttv);
    if (handshake(p, ctx, c) != 0) {
        redisFree(ctx);
        return NULL;
    }
    return ctx;
}

/* The key's TTL: the app's keys live idempotency_ttl, generated ones only
 * as long as a retry can come (idem.h). */
static uint32_t key_ttl_ms(const spillway_publisher *p, const spillway_publish_call *c)
{
    if (c->key != c->genkey) return SW_MAX(p->cfg.idempotency_ttl_ms, 1u);
    return spillway_idem_generated_ttl_ms(&p->cfg);
}

static redisReply *eval_publish(spillway_publisher *p, redisContext *ctx, spillway_publish_call *c,
                                bool by_text)
{
    char maxlen[16], ttl[16], kttl[16];
    char *skey = malloc(p->keys.stream_len + c->chlen + 1);
    char *chan = malloc(p->keys.chan_len + c->chlen + 1);
    char *ikey = malloc(p->keys.idem_len + c->keylen + 1);
    const char *argv[12];
    size_t lens[12];
    redisReply *rep = NULL;

    if (skey == NULL || chan == NULL || ikey == NULL) goto done;
    memcpy(skey, p->keys.stream, p->keys.stream_len);
    memcpy(skey + p->keys.stream_len, c->channel, c->chlen);
    memcpy(chan, p->keys.chan, p->keys.chan_len);
    memcpy(chan + p->keys.chan_len, c->channel, c->chlen);
    memcpy(ikey, p->keys.idem, p->keys.idem_len);
    memcpy(ikey + p->keys.idem_len, c->key, c->keylen);
    snprintf(maxlen, sizeof(maxlen), "%u", p->cfg.backlog_size);
    snprintf(ttl, sizeof(ttl), "%u", p->cfg.backlog_ttl_s);
    snprintf(kttl, sizeof(kttl), "%u", key_ttl_ms(p, c));
    argv[0] = by_text ? "EVAL" : "EVALSHA";
    argv[1] = by_text ? spillway_lua_publish : p->sha;
    argv[2] = "4";
    argv[3] = p->keys.id;
    argv[4] = skey;
    argv[5] = ikey;
    argv[6] = p->keys.since;
    argv[7] = chan;
    argv[8] = c->body;
    argv[9] = maxlen;
    argv[10] = ttl;
    argv[11] = kttl;
    for (int i = 0; i < 12; i++) {
        /* skey, ikey, chan and the body are not NUL-terminated. */
        if (i == 4) lens[i] = p->keys.stream_len + c->chlen;
        else if (i == 5) lens[i] = p->keys.idem_len + c->keylen;
        else if (i == 7) lens[i] = p->keys.chan_len + c->chlen;
        else if (i == 8) lens[i] = c->bodylen;
        else lens[i] = strlen(argv[i]);
    }
    rep = run(ctx, 12, argv, lens);
done:
    free(skey);
    free(chan);
    free(ikey);
    return rep;
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

static bool not_ready(const redisReply *rep)
{
    /* Redis refuses a script while it loads its data set (a restart) or
     * runs another script too long: nothing ran, later it will. */
    return rep->type == REDIS_REPLY_ERROR &&
           (strncmp(rep->str, "LOADING", 7) == 0 || strncmp(rep->str, "BUSY", 4) == 0);
}

/* One attempt: a pooled connection (the first attempt) or a fresh one with
 * these timeouts (the retries: a pooled one would most likely be as dead as
 * the one that lost the reply). */
static int attempt(spillway_publish_call *c, bool fresh, uint32_t connect_ms, uint32_t command_ms)
{
    spillway_publisher *p = c->p;
    redisContext *ctx = fresh ? NULL : pool_take(p);
    redisReply *rep;
    bool by_text;

    if (ctx == NULL) ctx = connect_new(p, c, connect_ms, command_ms);
    if (ctx == NULL) return c->rc == -EPROTO ? A_FAILED : A_NOT_RUN;
    if (set_call_fd(c, ctx->fd)) {
        set_call_fd(c, -1);
        set_err(c, -EINTR, "interrupted");
        redisFree(ctx);
        return A_FAILED;
    }
    pthread_mutex_lock(&p->lock);
    by_text = p->sha[0] == '\0';
    pthread_mutex_unlock(&p->lock);
    rep = eval_publish(p, ctx, c, by_text);
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(rep);
        rep = eval_publish(p, ctx, c, true);
        by_text = true;
    }
    set_call_fd(c, -1);
    if (rep == NULL) {
        char target[160];
        describe_target(p, target, sizeof(target));
        if (call_interrupted(c)) {
            set_err(c, -EINTR, "interrupted");
            redisFree(ctx);
            return A_FAILED;
        }
        if (ctx->err == REDIS_ERR_IO && strcmp(ctx->errstr, strerror(EAGAIN)) == 0)
            set_err(c, -ETIMEDOUT, "Redis at %.100s did not answer within command_timeout", target);
        else
            set_err(c, -EIO, "Redis connection failed during publish (%.100s: %.100s)", target,
                    ctx->errstr[0] ? ctx->errstr : "connection lost");
        redisFree(ctx);
        return A_LOST;
    }
    if (not_ready(rep)) {
        set_err(c, -EAGAIN, "Redis is not ready: %.180s", rep->str);
        freeReplyObject(rep);
        pool_give(p, ctx);
        return A_NOT_RUN;
    }
    if (rep->type != REDIS_REPLY_STRING || rep->len >= SPILLWAY_ID_TEXT_MAX) {
        set_err(c, -EPROTO, "Redis refused the publish: %.180s",
                rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        freeReplyObject(rep);
        pool_give(p, ctx);
        return A_FAILED;
    }
    memcpy(c->id, rep->str, rep->len);
    c->id[rep->len] = '\0';
    freeReplyObject(rep);
    if (by_text) {
        /* EVAL cached the script: learn its sha for next time. */
        const char *argv[3] = {"SCRIPT", "LOAD", spillway_lua_publish};
        redisReply *sha = run(ctx, 3, argv, NULL);
        if (sha != NULL && sha->type == REDIS_REPLY_STRING && sha->len == 40) {
            pthread_mutex_lock(&p->lock);
            memcpy(p->sha, sha->str, 40);
            p->sha[40] = '\0';
            pthread_mutex_unlock(&p->lock);
        }
        if (sha != NULL) freeReplyObject(sha);
        else {
            redisFree(ctx);
            ctx = NULL;
        }
    }
    if (ctx != NULL) pool_give(p, ctx);
    return A_DONE;
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

void spillway_publish_run(spillway_publish_call *c)
{
    spillway_publisher *p = c->p;
    const spillway_redis_config *rc = &p->cfg;
    uint64_t start = mono_ms(), limit;
    uint32_t pause = RETRY_PAUSE_MIN_MS;
    bool lost = false;
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
    while (r == A_LOST || (r == A_NOT_RUN && lost)) {
        uint64_t now = mono_ms();
        uint32_t left;
        lost = true;
        if (c->retries >= SPILLWAY_PUBLISH_RETRIES || now >= limit) break;
        if (r == A_NOT_RUN) {
            /* Refused or loading: a restart, most likely. Give it a moment. */
            if (pause_call(c, (uint32_t)SW_MIN((uint64_t)pause, limit - now))) {
                set_err(c, -EINTR, "interrupted");
                r = A_FAILED;
                break;
            }
            pause = SW_MIN(pause * 2, RETRY_PAUSE_MAX_MS);
            now = mono_ms();
            if (now >= limit) break;
        } else if (call_interrupted(c)) {
            set_err(c, -EINTR, "interrupted");
            r = A_FAILED;
            break;
        }
        left = (uint32_t)(limit - now);
        c->retries++;
        atomic_fetch_add(&p->retried, 1);
        r = attempt(c, true, SW_MIN(rc->connect_timeout_ms, left), SW_MIN(rc->command_timeout_ms, left));
    }
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
        set_err(c, c->rc,
                "%.250s; a reply was lost and the publish was retried %u time%s within %llu ms: it may have "
                "been published (publishing it again under the same idempotency_key is safe)",
                last, c->retries, c->retries == 1 ? "" : "s", (unsigned long long)(mono_ms() - start));
    }
    atomic_fetch_add(&p->failed, 1);
}

void spillway_publish_cursor(spillway_publish_call *c)
{
    spillway_publisher *p = c->p;
    redisContext *ctx = pool_take(p);
    redisReply *rep;
    const char *argv[5] = {"EVAL", spillway_lua_cursor, "2", p->keys.id, p->keys.since};

    c->rc = 0;
    c->id[0] = '\0';
    if (ctx == NULL) ctx = connect_new(p, c, p->cfg.connect_timeout_ms, p->cfg.command_timeout_ms);
    if (ctx == NULL) return;
    rep = set_call_fd(c, ctx->fd) ? NULL : run(ctx, 5, argv, NULL);
    set_call_fd(c, -1);
    if (rep == NULL) {
        set_err(c, call_interrupted(c) ? -EINTR : -EIO,
                "Redis connection failed while reading the cursor (%.100s)", ctx->errstr);
        redisFree(ctx);
        return;
    }
    if (rep->type != REDIS_REPLY_STRING || rep->len >= SPILLWAY_ID_TEXT_MAX) {
        set_err(c, -EPROTO, "Redis refused the cursor read: %.180s",
                rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    } else {
        memcpy(c->id, rep->str, rep->len);
        c->id[rep->len] = '\0';
    }
    freeReplyObject(rep);
    pool_give(p, ctx);
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
        pconn pc = p->pool[--p->npool];
        if (pc.pid == me) redisFree(pc.ctx);
        else close(pc.ctx->fd); /* the parent's connection: only our copy */
    }
    pthread_mutex_unlock(&p->lock);
}

void spillway_publisher_abandon(spillway_publisher *p)
{
    /* Fork child, single-threaded: no lock (another parent thread may have
     * held it at fork time), close our copies, keep the memory. */
    for (uint32_t i = 0; i < p->npool; i++) close(p->pool[i].ctx->fd);
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
