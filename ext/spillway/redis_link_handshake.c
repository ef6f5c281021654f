/*
 * The Redis handshake of a link (redis_link.h), once its socket (and TLS)
 * is up: AUTH, CLIENT SETNAME, SELECT, ROLE under Sentinel, SCRIPT LOAD of
 * the link's scripts, each reply checked; the link is READY when the last
 * one answers.
 */
#include "redis_link.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sentinel.h"

static spillway_rq_fn on_handshake_reply;

/* The privdata of the handshake's ROLE (Sentinel): the node must be the
 * primary. */
static char role_marker;

/* One request of the handshake; sha: where a SCRIPT LOAD's SHA1 goes (NULL:
 * the reply must be +OK). */
static void handshake_queue(spillway_hub *hub, spillway_rlink *l, char *sha, int argc, const char *const *argv)
{
    spillway_rq *q = spillway_rq_new(on_handshake_reply, 0);
    if (q != NULL) q->privdata = sha;
    spillway_link_queue(hub, l, q, argc, argv, NULL);
    l->handshake_left++;
}

void spillway_link_handshake(spillway_hub *hub, spillway_rlink *l)
{
    const spillway_redis_config *rc = &hub->cfg.redis;
    char name[64], db[16];

    l->state = SW_LS_HANDSHAKE;
    l->deadline = hub->now + rc->connect_timeout_ms + rc->command_timeout_ms;
    l->handshake_left = 0;
    if (rc->password != NULL) {
        const char *argv[] = {"AUTH", rc->username ? rc->username : rc->password, rc->password};
        handshake_queue(hub, l, NULL, rc->username ? 3 : 2, argv);
    }
    snprintf(name, sizeof(name), "spillway-%s-%d", l->opt.tag, (int)getpid());
    {
        const char *argv[] = {"CLIENT", "SETNAME", name};
        handshake_queue(hub, l, NULL, 3, argv);
    }
    if (l->opt.select_db && rc->db != 0) {
        const char *argv[] = {"SELECT", db};
        snprintf(db, sizeof(db), "%d", rc->db);
        handshake_queue(hub, l, NULL, 2, argv);
    }
    if (rc->sentinels != NULL) {
        const char *argv[] = {"ROLE"};
        handshake_queue(hub, l, &role_marker, 1, argv);
    }
    for (uint32_t i = 0; i < l->opt.nscripts; i++) {
        const char *argv[] = {"SCRIPT", "LOAD", l->opt.scripts[i]};
        handshake_queue(hub, l, l->sha[i], 3, argv);
    }
    spillway_link_write(hub, l);
}

/* What each handshake request must get back (an error reply fails the
 * handshake on its own): +OK, or a script's SHA1 as 40 hex digits. */
static bool handshake_reply_ok(const spillway_rq *q, const spillway_rv *v)
{
    if (q->privdata == &role_marker) return v->type == SW_RV_ARRAY;
    if (q->privdata == NULL) return v->type == SW_RV_STATUS && spillway_rv_is(v, "OK");
    if (v->type != SW_RV_STRING || v->str == NULL || v->str->len != 40) return false;
    for (int i = 0; i < 40; i++) {
        char c = v->str->data[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return false;
    }
    return true;
}

static void copy_sha(char *dst, const spillway_rv *v)
{
    memcpy(dst, v->str->data, 40);
    dst[40] = '\0';
}

/* A handshake request's callback (privdata: where its SHA1 goes, or NULL
 * for +OK). A link that dropped needs nothing from it. */
static void on_handshake_reply(spillway_hub *hub, spillway_rlink *l, spillway_rq *q, spillway_rv *v)
{
    char msg[300], what[100];
    if (v == NULL) return;
    if (v->type == SW_RV_ERROR) {
        spillway_rv_text(v, 150, msg, sizeof(msg));
        spillway_link_fail(hub, l, "handshake", msg);
        return;
    }
    if (!handshake_reply_ok(q, v)) {
        snprintf(msg, sizeof(msg), "the handshake got %s instead of %s", spillway_rv_describe(v, what, sizeof(what)),
                 q->privdata == NULL ? "+OK" : q->privdata == &role_marker ? "ROLE's array" : "a script's SHA1");
        spillway_link_protocol_error(hub, l, msg);
        return;
    }
    if (q->privdata == &role_marker && !spillway_sentinel_role_ok(v, what, sizeof(what))) {
        /* A sentinel that has not caught up with a failover yet: ask again
         * after the backoff. */
        snprintf(msg, sizeof(msg), "%.60s (named by the sentinels as the primary of %.60s) is a %.40s, not the primary",
                 l->primary, hub->cfg.redis.sentinel_master, what);
        spillway_link_fail(hub, l, "role", msg);
        return;
    }
    if (q->privdata != NULL && q->privdata != &role_marker) copy_sha(q->privdata, v);
    if (--l->handshake_left == 0) {
        l->state = SW_LS_READY;
        l->ever_ready = true;
        l->backoff_ms = 0;
        l->next_ping = hub->now + hub->cfg.redis.health_interval_ms;
        l->next_check = hub->now + SENTINEL_CHECK_MS;
        l->hooks.on_ready(hub, l);
    }
}

