/*
 * The option readers of the binding: the Hash that Spillway::Configuration
 * builds (checked and defaulted in Ruby) converted to the core's values.
 */
#include "binding.h"
#include "hub.h"
#include "tls.h"

static VALUE opt(VALUE opts, const char *key)
{
    return rb_hash_aref(opts, ID2SYM(rb_intern(key)));
}

uint32_t spillway_opt_u32(VALUE opts, const char *key, uint32_t def)
{
    VALUE v = opt(opts, key);
    unsigned long long n;
    if (NIL_P(v)) return def;
    n = NUM2ULL(v);
    if (n > UINT32_MAX) rb_raise(rb_eArgError, "%s is too large (%llu)", key, n);
    return (uint32_t)n;
}

uint64_t spillway_opt_u64(VALUE opts, const char *key, uint64_t def)
{
    VALUE v = opt(opts, key);
    return NIL_P(v) ? def : (uint64_t)NUM2ULL(v);
}

int spillway_opt_int(VALUE opts, const char *key, int def)
{
    VALUE v = opt(opts, key);
    return NIL_P(v) ? def : NUM2INT(v);
}

const char *spillway_opt_str(VALUE opts, const char *key)
{
    VALUE v = opt(opts, key);
    if (NIL_P(v)) return NULL;
    StringValue(v);
    return StringValueCStr(v);
}

struct spillway_tls_ctx *spillway_opt_tls(VALUE opts)
{
    VALUE tls = opt(opts, "redis_tls");
    spillway_tls_options o;
    spillway_tls_ctx *ctx;
    VALUE verify;
    char err[512];

    if (NIL_P(tls)) return NULL;
    Check_Type(tls, T_HASH);
    o.ca_file = spillway_opt_str(tls, "ca_file");
    o.ca_path = spillway_opt_str(tls, "ca_path");
    o.cert_file = spillway_opt_str(tls, "cert_file");
    o.key_file = spillway_opt_str(tls, "key_file");
    o.server_name = spillway_opt_str(tls, "server_name");
    verify = opt(tls, "verify");
    o.verify = NIL_P(verify) || RTEST(verify);
    if (spillway_tls_ctx_new(&o, &ctx, err, sizeof(err)) != 0) rb_raise(rb_eArgError, "%s", err);
    RB_GC_GUARD(tls);
    return ctx;
}

void spillway_fill_redis_config(VALUE opts, spillway_redis_config *r)
{
    r->host = spillway_opt_str(opts, "redis_host");
    r->port = spillway_opt_int(opts, "redis_port", 6379);
    r->path = spillway_opt_str(opts, "redis_path");
    r->username = spillway_opt_str(opts, "redis_username");
    r->password = spillway_opt_str(opts, "redis_password");
    r->db = spillway_opt_int(opts, "redis_db", 0);
    r->sentinels = spillway_opt_str(opts, "redis_sentinels");
    r->sentinel_master = spillway_opt_str(opts, "redis_sentinel_master");
    r->sentinel_password = spillway_opt_str(opts, "sentinel_password");
    r->ns = spillway_opt_str(opts, "namespace");
    r->connect_timeout_ms = spillway_opt_u32(opts, "connect_timeout_ms", 1000);
    r->command_timeout_ms = spillway_opt_u32(opts, "command_timeout_ms", 1000);
    r->health_interval_ms = spillway_opt_u32(opts, "health_interval_ms", 5000);
    r->backlog_size = spillway_opt_u32(opts, "backlog_size", 1000);
    r->backlog_ttl_s = spillway_opt_u32(opts, "backlog_ttl", 86400);
    r->backlog_window_ms = spillway_opt_u64(opts, "backlog_window_ms", 0);
    r->async_limit = spillway_opt_u32(opts, "async_limit", 10000);
    r->unsubscribe_linger_ms = spillway_opt_u32(opts, "unsubscribe_linger_ms", 1000);
    r->idempotency_ttl_ms = spillway_opt_u32(opts, "idempotency_ttl_ms", 300000);
    /* Last: nothing may raise once the caller holds a reference. */
    r->tls = spillway_opt_tls(opts);
}

void spillway_fill_pg_config(VALUE opts, spillway_pg_config *pg)
{
    pg->conninfo = spillway_opt_str(opts, "postgres_conninfo");
    pg->ns = spillway_opt_str(opts, "namespace");
    pg->connect_timeout_ms = spillway_opt_u32(opts, "connect_timeout_ms", 1000);
    pg->command_timeout_ms = spillway_opt_u32(opts, "command_timeout_ms", 1000);
    pg->backlog_size = spillway_opt_u32(opts, "backlog_size", 1000);
    pg->backlog_ttl_s = spillway_opt_u32(opts, "backlog_ttl", 86400);
    pg->idempotency_ttl_ms = spillway_opt_u32(opts, "idempotency_ttl_ms", 300000);
}
