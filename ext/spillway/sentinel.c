#include "sentinel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>

#include "hub.h"
#include "resolve.h"
#include "sconn.h"
#include "tls.h"

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

spillway_sentinel_cfg *spillway_sentinel_copy(const char *sentinels, const char *master, const char *password,
                                              uint32_t connect_ms, uint32_t command_ms,
                                              struct spillway_tls_ctx *tls)
{
    spillway_sentinel_cfg *s = calloc(1, sizeof(*s));
    if (s == NULL) return NULL;
    s->sentinels = dup_or_null(sentinels);
    s->master = dup_or_null(master);
    s->password = dup_or_null(password);
    s->connect_timeout_ms = connect_ms;
    s->command_timeout_ms = command_ms;
    s->tls = spillway_tls_ctx_ref(tls);
    if (s->sentinels == NULL || s->master == NULL || (password != NULL && s->password == NULL)) {
        spillway_sentinel_free(s);
        return NULL;
    }
    return s;
}

void spillway_sentinel_free(spillway_sentinel_cfg *s)
{
    if (s == NULL) return;
    free(s->sentinels);
    free(s->master);
    free(s->password);
    spillway_tls_ctx_unref(s->tls);
    free(s);
}

static size_t count_sentinels(const char *list)
{
    size_t n = 1;
    for (const char *p = list; *p; p++) n += *p == ',';
    return n;
}

uint64_t spillway_sentinel_budget_ms(const spillway_sentinel_cfg *s)
{
    /* A connect, AUTH and the question for each. */
    return count_sentinels(s->sentinels) * ((uint64_t)s->connect_timeout_ms + 2u * s->command_timeout_ms);
}

/* Splits "host:port" or "[v6]:port" (len bytes) into host and *port: 0 or -1. */
static int split_addr(const char *a, size_t len, char *host, size_t hostlen, int *port)
{
    const char *colon = NULL, *h = a;
    size_t hl;
    for (size_t i = 0; i < len; i++)
        if (a[i] == ':') colon = a + i;
    if (colon == NULL || colon + 1 == a + len) return -1;
    hl = (size_t)(colon - a);
    if (hl >= 2 && a[0] == '[' && a[hl - 1] == ']') {
        h = a + 1;
        hl -= 2;
    }
    if (hl == 0 || hl >= hostlen) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = 0;
    for (const char *p = colon + 1; p < a + len; p++) {
        if (*p < '0' || *p > '9' || *port > 65535) return -1;
        *port = *port * 10 + (*p - '0');
    }
    return *port > 0 && *port <= 65535 ? 0 : -1;
}

/* One command on c: the reply or NULL with why. */
static spillway_rv *ask(spillway_sconn *c, const spillway_sentinel_cfg *s, int argc, const char **argv, char *why,
                        size_t whylen)
{
    spillway_rv *v = NULL;
    if (spillway_sconn_command(c, argc, argv, NULL, s->command_timeout_ms, &v, why, whylen) != 0) return NULL;
    return v;
}

/* What one sentinel says: 1 an address (host, port), 0 it does not know the
 * master, -1 it could not be asked (why). */
static int ask_one(const spillway_sentinel_cfg *s, const char *shost, int sport, char *host, size_t hostlen,
                   int *port, char *why, size_t whylen)
{
    spillway_redis_config rc;
    spillway_sconn *c;
    spillway_rv *v;
    char text[120];
    int r, result = -1;

    memset(&rc, 0, sizeof(rc));
    rc.host = shost;
    rc.port = sport;
    rc.tls = s->tls;
    c = spillway_sconn_open(&rc, s->connect_timeout_ms, &r, why, whylen);
    if (c == NULL) return -1;
    if (s->password != NULL) {
        const char *argv[2] = {"AUTH", s->password};
        if ((v = ask(c, s, 2, argv, why, whylen)) == NULL) goto out;
        r = v->type == SW_RV_ERROR;
        if (r) snprintf(why, whylen, "AUTH refused: %s", spillway_rv_text(v, 100, text, sizeof(text)));
        spillway_rv_free(v);
        if (r) goto out;
    }
    {
        const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", s->master};
        if ((v = ask(c, s, 3, argv, why, whylen)) == NULL) goto out;
    }
    if (v->type == SW_RV_NIL) {
        result = 0;
    } else if (v->type == SW_RV_ARRAY && v->elements == 2 && v->element[0]->type == SW_RV_STRING &&
               v->element[1]->type == SW_RV_STRING && v->element[0]->str != NULL && v->element[1]->str != NULL) {
        char addr[300];
        int n = snprintf(addr, sizeof(addr), "%.*s:%.*s", (int)SW_MIN(v->element[0]->str->len, 255u),
                         v->element[0]->str->data, (int)SW_MIN(v->element[1]->str->len, 20u), v->element[1]->str->data);
        result = split_addr(addr, (size_t)n, host, hostlen, port) == 0 ? 1 : -1;
        if (result < 0) snprintf(why, whylen, "an address that does not parse (%.100s)", addr);
    } else {
        snprintf(why, whylen, "not a sentinel? it answered %s", spillway_rv_describe(v, text, sizeof(text)));
    }
    spillway_rv_free(v);
out:
    spillway_sconn_close(c);
    return result;
}

/* Appends "; what" to the message so far. */
static void add(char *buf, size_t n, const char *what)
{
    size_t len = strlen(buf);
    if (len + 3 < n) snprintf(buf + len, n - len, "%s%s", len ? "; " : "", what);
}

int spillway_sentinel_lookup(const spillway_sentinel_cfg *s, char *host, size_t hostlen, int *port, char *err,
                             size_t errlen)
{
    char failures[600] = "", unknown[300] = "";
    const char *p = s->sentinels;

    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char shost[256], why[200], line[512];
        int sport, r;
        if (split_addr(p, len, shost, sizeof(shost), &sport) != 0) {
            snprintf(why, sizeof(why), "not host:port");
            r = -1;
        } else {
            r = ask_one(s, shost, sport, host, hostlen, port, why, sizeof(why));
        }
        if (r == 1) return 0;
        snprintf(line, sizeof(line), "%.*s%s%s", (int)SW_MIN(len, 200u), p, r < 0 ? ": " : "", r < 0 ? why : "");
        add(r < 0 ? failures : unknown, r < 0 ? sizeof(failures) : sizeof(unknown), line);
        p = end ? end + 1 : p + len;
    }
    if (unknown[0] != '\0')
        snprintf(err, errlen, "no sentinel knows a master named \"%.100s\" (asked %s%s%s)", s->master, unknown,
                 failures[0] ? "; unreachable: " : "", failures);
    else
        snprintf(err, errlen, "no sentinel answered for master \"%.100s\": %s", s->master, failures);
    return -1;
}

bool spillway_sentinel_role_ok(const spillway_rv *v, char *role, size_t rolelen)
{
    char what[100];
    if (v->type == SW_RV_ARRAY && v->elements >= 1 && v->element[0]->type == SW_RV_STRING) {
        if (spillway_rv_is(v->element[0], "master")) return true;
        spillway_rv_text(v->element[0], 40, role, rolelen);
        return false;
    }
    snprintf(role, rolelen, "%s", spillway_rv_describe(v, what, sizeof(what)));
    return false;
}

bool spillway_sentinel_demoted(const spillway_rv *v)
{
    return v->type == SW_RV_ERROR && spillway_rv_starts(v, "READONLY");
}

static int ask_sentinels(void *arg, char *host, size_t hostlen, int *port, char *err, size_t errlen)
{
    return spillway_sentinel_lookup(arg, host, hostlen, port, err, errlen);
}

static void free_sentinels(void *arg)
{
    spillway_sentinel_free(arg);
}

spillway_resolve *spillway_sentinel_resolve_start(const spillway_redis_config *rc, uint64_t *budget_ms)
{
    spillway_sentinel_cfg *s = spillway_sentinel_copy(rc->sentinels, rc->sentinel_master, rc->sentinel_password,
                                                      rc->connect_timeout_ms, rc->command_timeout_ms, rc->tls);
    if (s == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    *budget_ms = spillway_sentinel_budget_ms(s);
    return spillway_resolve_start_asking(s->master, ask_sentinels, free_sentinels, s);
}

spillway_sconn *spillway_sentinel_connect(const spillway_redis_config *cfg, uint32_t connect_ms,
                                          uint32_t command_ms, char *where, size_t wherelen, int *rc, char *err,
                                          size_t errlen)
{
    spillway_sentinel_cfg s = {(char *)cfg->sentinels, (char *)cfg->sentinel_master,
                               (char *)cfg->sentinel_password, connect_ms, command_ms, cfg->tls};
    spillway_redis_config to = *cfg;
    char host[256], why[640];
    spillway_sconn *conn;

    if (spillway_sentinel_lookup(&s, host, sizeof(host), &to.port, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "cannot find the Redis primary: %.330s", why);
        *rc = -ECONNREFUSED;
        return NULL;
    }
    snprintf(where, wherelen, "%.140s:%d", host, to.port);
    to.host = host;
    to.path = NULL;
    conn = spillway_sconn_open(&to, connect_ms, rc, why, sizeof(why));
    if (conn == NULL)
        snprintf(err, errlen, "cannot connect to the Redis primary of %.60s at %.100s: %.200s", cfg->sentinel_master,
                 where, why);
    return conn;
}

int spillway_sentinel_check_role(spillway_sconn *conn, uint32_t command_ms, const char *master, const char *where,
                                 char *err, size_t errlen)
{
    const char *argv[1] = {"ROLE"};
    char why[200], role[100];
    spillway_rv *v = NULL;
    if (spillway_sconn_command(conn, 1, argv, NULL, command_ms, &v, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "Redis connection setup failed at %.100s: %.180s", where, why);
        return -EIO;
    }
    if (!spillway_sentinel_role_ok(v, role, sizeof(role))) {
        snprintf(err, errlen, "%.100s, named by the sentinels as the primary of %.60s, is a %.60s, not the primary",
                 where, master, role);
        spillway_rv_free(v);
        return -EAGAIN;
    }
    spillway_rv_free(v);
    return 0;
}
