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
    spillway_eRedisError;

/* One Init per Ruby class or module, each in its own file. */
void Init_spillway_sse(void);       /* native.c: Spillway::Native's functions */
void Init_spillway_hub(void);       /* hub_class.c: Spillway::Native::Hub */
void Init_spillway_publisher(void); /* publisher_class.c: Spillway::Native::Publisher */

/* options.c: readers for the Hash the Ruby layer passes in. */
uint32_t spillway_opt_u32(VALUE opts, const char *key, uint32_t def);
uint64_t spillway_opt_u64(VALUE opts, const char *key, uint64_t def);
int spillway_opt_int(VALUE opts, const char *key, int def);
/* A C string owned by the Hash's String (valid while opts lives), or NULL. */
const char *spillway_opt_str(VALUE opts, const char *key);
/* The redis_* options, namespace and the Redis timeouts and limits. */
void spillway_fill_redis_config(VALUE opts, spillway_redis_config *r);

#endif
