/* Shared by the binding files; the C core never includes this. */
#ifndef SPILLWAY_BINDING_H
#define SPILLWAY_BINDING_H

/* Ruby 3.1's own headers are not -Wextra clean (unused parameters in inline
 * functions); keep our warnings meaningful by silencing only theirs. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ruby.h>
#include <ruby/encoding.h>
#include <ruby/thread.h>
#pragma GCC diagnostic pop

#include "hub.h"

extern VALUE spillway_mSpillway, spillway_mNative, spillway_eError, spillway_eQueueFull,
    spillway_eRedisError, spillway_ePostgresError;

/* One Init per Ruby class or module, each in its own file. */
void Init_spillway_sse(void);       /* native.c: Spillway::Native's functions */
void Init_spillway_hub(void);       /* hub_class.c: Spillway::Native::Hub */
void Init_spillway_publisher(void); /* publisher_class.c: Spillway::Native::Publisher */
void Init_spillway_pg_publisher(void); /* pg_publisher_class.c: Spillway::Native::PgPublisher */

/* options.c: readers for the Hash the Ruby layer passes in. */
uint32_t spillway_opt_u32(VALUE opts, const char *key, uint32_t def);
uint64_t spillway_opt_u64(VALUE opts, const char *key, uint64_t def);
int spillway_opt_int(VALUE opts, const char *key, int def);
/* A C string owned by the Hash's String (valid while opts lives), or NULL. */
const char *spillway_opt_str(VALUE opts, const char *key);
/* The redis_tls option (a Hash: ca_file, ca_path, cert_file, key_file,
 * server_name, verify) as a new TLS context (the caller's reference), or
 * NULL without one. ArgumentError when a file cannot be used. */
struct spillway_tls_ctx *spillway_opt_tls(VALUE opts);
/* The redis_* options, namespace and the Redis timeouts and limits. r->tls
 * is a reference of the caller's: spillway_tls_ctx_unref it once the hub
 * or publisher made (or failed to make) its own. */
void spillway_fill_redis_config(VALUE opts, spillway_redis_config *r);
/* The postgres_conninfo option (NULL: no PostgreSQL), namespace, timeouts
 * and backlog limits. */
void spillway_fill_pg_config(VALUE opts, spillway_pg_config *pg);

#endif
