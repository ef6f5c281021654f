/*
 * Spillway: shared definitions of the C core.
 *
 * Nothing in the C core includes ruby.h. The core is plain C99 + POSIX +
 * Linux (epoll, eventfd) and is unit-tested on its own (spec/c).
 */
#ifndef SPILLWAY_COMMON_H
#define SPILLWAY_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* Debug output that still type-checks when it is off. */
#ifndef SPILLWAY_DEBUG
#define SPILLWAY_DEBUG 0
#endif
#define sw_debug(...)                                   \
    do {                                                \
        if (SPILLWAY_DEBUG) {                           \
            fprintf(stderr, "spillway[debug]: ");       \
            fprintf(stderr, __VA_ARGS__);               \
            fputc('\n', stderr);                        \
        }                                               \
    } while (0)

#define SW_UNUSED(x) ((void)(x))
#define SW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SW_MAX(a, b) ((a) > (b) ? (a) : (b))
/* The text of a macro's value: SW_STR(SPILLWAY_MAX_CHANNELS_PER_CONN) is "1024". */
#define SW_STR_(x) #x
#define SW_STR(x) SW_STR_(x)

/* Milliseconds of CLOCK_MONOTONIC: timers, deadlines, heartbeats. */
uint64_t spillway_mono_ms(void);
/* Milliseconds of CLOCK_REALTIME: message ids (the memory backend). */
uint64_t spillway_wall_ms(void);
/* clock's now + ms, for pthread_cond_timedwait (CLOCK_REALTIME unless the
 * condition variable was made for another clock) and timedjoin. */
struct timespec spillway_timespec_after(clockid_t clock, uint32_t ms);

#endif
