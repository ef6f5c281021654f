/*
 * A new connection of the publisher's pool: connect (plain, TLS, or to the
 * primary the sentinels name), AUTH and SELECT, ROLE under Sentinel, and
 * the witness question (scripts.h): is the newest publish this process had
 * acknowledged still in this Redis's history?
 */
#include "publisher_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sentinel.h"

void spillway_pub_set_err(spillway_publish_call *c, int rc, const char *fmt, ...)
{
    va_list ap;
    c->rc = rc;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

void spillway_pub_describe_target(const spillway_publisher *p, char *buf, size_t n)
{
    if (p->cfg.sentinels) snprintf(buf, n, "the primary of %.60s (sentinels %.60s)", p->cfg.sentinel_master, p->cfg.sentinels);
    else if (p->cfg.path) snprintf(buf, n, "unix://%s", p->cfg.path);
    else snprintf(buf, n, "%s://%s:%d", p->cfg.tls ? "rediss" : "redis", p->cfg.host ? p->cfg.host : "127.0.0.1",
                  p->cfg.port);
}

/* One command of the connection setup: 0, or -1 with c->rc and c->err. */
static int setup_command(spillway_sconn *conn, spillway_publish_call *c, uint32_t command_ms, int argc,
                         const char **argv)
{
    char why[200], text[160];
    spillway_rv *v = NULL;
    int r = spillway_sconn_command(conn, argc, argv, NULL, command_ms, &v, why, sizeof(why));
    if (r != 0) {
        spillway_pub_set_err(c, -EIO, "Redis connection setup failed: %.180s", why);
        return -1;
    }
    if (v->type == SW_RV_ERROR) {
        spillway_pub_set_err(c, -EPROTO, "Redis refused the connection setup: %.150s", spillway_rv_text(v, 150, text, sizeof(text)));
        spillway_rv_free(v);
        return -1;
    }
    spillway_rv_free(v);
    return 0;
}

/* AUTH and SELECT as configured. Over TLS at least one round trip: Redis
 * refuses a missing client certificate only after the handshake (TLS
 * 1.3), and that must fail the connect, not look like a lost publish. */
static int handshake(spillway_publisher *p, spillway_sconn *conn, spillway_publish_call *c, uint32_t command_ms)
{
    char db[16];
    bool said = false;
    if (p->cfg.password != NULL) {
        const char *argv[3] = {"AUTH", p->cfg.username ? p->cfg.username : p->cfg.password, p->cfg.password};
        if (setup_command(conn, c, command_ms, p->cfg.username ? 3 : 2, argv) != 0) return -1;
        said = true;
    }
    if (p->cfg.db != 0) {
        const char *argv[2] = {"SELECT", db};
        snprintf(db, sizeof(db), "%d", p->cfg.db);
        if (setup_command(conn, c, command_ms, 2, argv) != 0) return -1;
        said = true;
    }
    if (p->cfg.tls != NULL && !said && p->cfg.sentinels == NULL) {
        const char *argv[1] = {"PING"};
        if (setup_command(conn, c, command_ms, 1, argv) != 0) return -1;
    }
    return 0;
}

/* Sentinel: the node they named must be the primary (ROLE); a replica (a
 * sentinel behind a failover) is no error of the publish: not run, asked
 * again. 0, or -1 with c->rc and c->err. */
static int check_role(spillway_publisher *p, spillway_sconn *conn, spillway_publish_call *c, uint32_t command_ms,
                      const char *where)
{
    int r = spillway_sentinel_check_role(conn, command_ms, p->cfg.sentinel_master, where, c->err, sizeof(c->err));
    if (r != 0) c->rc = r == -EAGAIN ? -EAGAIN : -EIO;
    return r == 0 ? 0 : -1;
}

/* Sentinel: asks them for the primary and opens a connection there. */
static spillway_sconn *open_primary(spillway_publisher *p, spillway_publish_call *c, uint32_t connect_ms,
                                    uint32_t command_ms, char *where, size_t wherelen)
{
    int r;
    spillway_sconn *conn =
        spillway_sentinel_connect(&p->cfg, connect_ms, command_ms, where, wherelen, &r, c->err, sizeof(c->err));
    if (conn == NULL) c->rc = r == -ENOMEM ? -ENOMEM : -ECONNREFUSED;
    return conn;
}

/* Sentinel: every SENTINEL_CHECK_MS, asks them whether the pool's primary still
 * is the primary. After a failover the old one may go on accepting writes
 * for a while (until the sentinels turn it into a replica, which discards
 * them): the pool's connections to it must not be used. A sentinel that
 * does not answer changes nothing. */
void spillway_pub_recheck_primary(spillway_publisher *p)
{
    spillway_sentinel_cfg s = {(char *)p->cfg.sentinels, (char *)p->cfg.sentinel_master,
                               (char *)p->cfg.sentinel_password, p->cfg.connect_timeout_ms, p->cfg.command_timeout_ms,
                               p->cfg.tls};
    char host[256], where[160], err[640];
    uint64_t now = spillway_mono_ms();
    int port;

    pthread_mutex_lock(&p->lock);
    if (p->primary[0] == '\0' || now < p->checked_ms + SENTINEL_CHECK_MS) {
        pthread_mutex_unlock(&p->lock);
        return;
    }
    p->checked_ms = now; /* one caller asks, the others go on */
    pthread_mutex_unlock(&p->lock);
    if (spillway_sentinel_lookup(&s, host, sizeof(host), &port, err, sizeof(err)) != 0) return;
    snprintf(where, sizeof(where), "%.140s:%d", host, port);
    pthread_mutex_lock(&p->lock);
    if (strcmp(where, p->primary) != 0) {
        p->primary[0] = '\0';
        p->gen++;
    }
    pthread_mutex_unlock(&p->lock);
}

/* Records an acknowledged publish as the witness when it is the newest. */
void spillway_pub_witness_note(spillway_publisher *p, const spillway_publish_call *c)
{
    spillway_id id;
    if (spillway_id_parse(c->id, strlen(c->id), &id) != 0 || c->chlen > sizeof(p->w_chan)) return;
    pthread_mutex_lock(&p->lock);
    if (spillway_id_cmp(id, p->w_id) > 0) {
        p->w_id = id;
        memcpy(p->w_chan, c->channel, c->chlen);
        p->w_chlen = c->chlen;
    }
    pthread_mutex_unlock(&p->lock);
}

/* A new connection asks whether the newest publish this process had
 * acknowledged is still in Redis's history (a failover may have lost it).
 * 0, or -1 with c->rc and c->err when the connection failed; a refusal is
 * no reason not to publish. */
static int witness_check(spillway_publisher *p, spillway_sconn *conn, spillway_publish_call *c, uint32_t command_ms)
{
    char chan[SPILLWAY_MAX_CHANNEL_LEN], id[SPILLWAY_ID_TEXT_MAX], why[200];
    size_t chlen;
    spillway_rv *v = NULL;
    spillway_id w;

    pthread_mutex_lock(&p->lock);
    w = p->w_id;
    chlen = p->w_chlen;
    memcpy(chan, p->w_chan, chlen);
    pthread_mutex_unlock(&p->lock);
    if (spillway_id_is_zero(w)) return 0;
    spillway_id_format(w, id);
    if (spillway_buf_witness(&conn->out, &p->keys, chan, chlen, id, p->cfg.backlog_ttl_s, p->cfg.backlog_size > 0) != 0) {
        spillway_pub_set_err(c, -ENOMEM, "out of memory");
        return -1;
    }
    if (spillway_sconn_roundtrip(conn, command_ms, &v, why, sizeof(why)) != 0) {
        spillway_pub_set_err(c, -EIO, "Redis connection setup failed: %.180s", why);
        return -1;
    }
    spillway_rv_free(v);
    return 0;
}

/* A new connection with these timeouts (a retry cuts them to what is left
 * of its budget), or NULL with c->rc and c->err set. */
spillway_sconn *spillway_pub_connect(spillway_publisher *p, spillway_publish_call *c, uint32_t connect_ms,
                                     uint32_t command_ms)
{
    char target[160], why[300];
    int rc;
    spillway_sconn *conn;

    atomic_fetch_add(&p->connects, 1);
    if (p->cfg.sentinels != NULL) {
        conn = open_primary(p, c, connect_ms, command_ms, target, sizeof(target));
        if (conn == NULL) return NULL;
        if (handshake(p, conn, c, command_ms) != 0 || check_role(p, conn, c, command_ms, target) != 0 ||
            witness_check(p, conn, c, command_ms) != 0) {
            spillway_sconn_close(conn);
            return NULL;
        }
        pthread_mutex_lock(&p->lock);
        if (strcmp(p->primary, target) != 0) {
            /* A new primary: the pool's connections to the old one go. */
            snprintf(p->primary, sizeof(p->primary), "%s", target);
            p->gen++;
        }
        p->checked_ms = spillway_mono_ms();
        conn->gen = p->gen;
        pthread_mutex_unlock(&p->lock);
        return conn;
    }
    conn = spillway_sconn_open(&p->cfg, connect_ms, &rc, why, sizeof(why));
    if (conn == NULL) {
        spillway_pub_describe_target(p, target, sizeof(target));
        spillway_pub_set_err(c, rc == -ENOMEM ? -ENOMEM : -ECONNREFUSED, "cannot connect to Redis at %.100s: %.250s", target, why);
        return NULL;
    }
    if (handshake(p, conn, c, command_ms) != 0 || witness_check(p, conn, c, command_ms) != 0) {
        spillway_sconn_close(conn);
        return NULL;
    }
    return conn;
}

