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

extern VALUE spillway_mSpillway, spillway_mNative, spillway_eError, spillway_eQueueFull,
    spillway_eRedisError;

void Init_spillway_sse(void);
void Init_spillway_hub(void);
void Init_spillway_publisher(void);

/* Option readers for the Hash the Ruby layer passes in. */
uint32_t spillway_opt_u32(VALUE opts, const char *key, uint32_t def);
int spillway_opt_int(VALUE opts, const char *key, int def);
/* A C string owned by the Hash's String (valid while opts lives), or NULL. */
const char *spillway_opt_str(VALUE opts, const char *key);

#endif
