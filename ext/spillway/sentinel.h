/*
 * Redis Sentinel: which node is the primary of a monitored master. Blocking
 * (sconn.h: poll-based deadlines), for the publisher's connects and for the
 * hub's links, which ask on the resolver's helper thread (resolve.h), never
 * in the loop.
 *
 * Each sentinel of the list is asked in turn, SENTINEL
 * get-master-addr-by-name <master>, each within connect_timeout for the
 * connect and command_timeout for the reply; the first that names an address
 * wins. Whoever connects there checks ROLE (spillway_sentinel_role_ok): a
 * sentinel that has not yet heard of a failover may still name the old
 * primary, now a replica.
 */
#ifndef SPILLWAY_SENTINEL_H
#define SPILLWAY_SENTINEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resp.h"

struct spillway_tls_ctx;

/* What asking needs: an owned copy (spillway_sentinel_copy) travels to a
 * helper thread that may outlive the hub that started it. */
typedef struct spillway_sentinel_cfg {
    char *sentinels; /* "host:port,host:port,..." ([v6]:port too) */
    char *master;    /* the monitored master's name */
    char *password;  /* AUTH to the sentinels, NULL: none */
    uint32_t connect_timeout_ms, command_timeout_ms;
    struct spillway_tls_ctx *tls; /* rediss://: the sentinels speak TLS too (a reference), NULL: plaintext */
} spillway_sentinel_cfg;

/* A copy owning its strings and a TLS reference; NULL when out of memory. */
spillway_sentinel_cfg *spillway_sentinel_copy(const char *sentinels, const char *master, const char *password,
                                              uint32_t connect_ms, uint32_t command_ms,
                                              struct spillway_tls_ctx *tls);
void spillway_sentinel_free(spillway_sentinel_cfg *s);

/* How long asking every sentinel may take at most. */
uint64_t spillway_sentinel_budget_ms(const spillway_sentinel_cfg *s);

/* The primary's address: 0 with host (NUL-terminated) and *port, or -1 with
 * err naming the cause: every sentinel unreachable or silent ("no sentinel
 * answered: 127.0.0.1:26379: Connection refused; ..."), or no sentinel
 * knows the master ("no sentinel knows a master named \"x\" ..."). */
int spillway_sentinel_lookup(const spillway_sentinel_cfg *s, char *host, size_t hostlen, int *port, char *err,
                             size_t errlen);

/* Whether a ROLE reply says "master"; the role it names otherwise goes into
 * role ("slave", "sentinel", or a description of an odd reply). */
bool spillway_sentinel_role_ok(const spillway_rv *v, char *role, size_t rolelen);

/* Whether an error reply means the node is no primary any more (READONLY:
 * a replica now, after a failover). */
bool spillway_sentinel_demoted(const spillway_rv *v);

/* The hub's links: a resolver request (resolve.h) whose helper thread asks
 * the sentinels of rc, then resolves the address they name; *budget_ms:
 * how long asking may take. NULL with errno on failure to start. */
struct spillway_redis_config;
struct spillway_resolve;
struct spillway_sconn;
struct spillway_resolve *spillway_sentinel_resolve_start(const struct spillway_redis_config *rc,
                                                         uint64_t *budget_ms);

/* The publisher: asks the sentinels of cfg and opens a blocking connection
 * (sconn.h, TLS as cfg says) to the primary they name, "host:port" in
 * where. NULL with *rc (-ECONNREFUSED, -ETIMEDOUT, -ENOMEM) and err. No
 * command is sent. */
struct spillway_sconn *spillway_sentinel_connect(const struct spillway_redis_config *cfg, uint32_t connect_ms,
                                                 uint32_t command_ms, char *where, size_t wherelen, int *rc,
                                                 char *err, size_t errlen);

/* ROLE on conn (after AUTH): 0 a primary, -EAGAIN a replica (err says),
 * -EIO the connection failed. */
int spillway_sentinel_check_role(struct spillway_sconn *conn, uint32_t command_ms, const char *master,
                                 const char *where, char *err, size_t errlen);

#endif
