/*
 * Poll and long-poll answers (polls.c): a stream that is answered once and
 * closes. The reactor registers a long-poll's deadline at attach and runs
 * the timers; the end of an iteration (streams.c) answers the collecting
 * streams that are ready instead of flushing them.
 */
#ifndef SPILLWAY_POLLS_H
#define SPILLWAY_POLLS_H

#include <stdbool.h>
#include <stdint.h>

#include "hub_internal.h"

/* A new SW_CF_POLL stream: a long-poll's deadline starts now. */
void spillway_poll_attach(spillway_hub *hub, spillway_conn *c);
/* The stream closes: off the list of held long-polls. */
void spillway_poll_forget(spillway_hub *hub, spillway_conn *c);
/* Whether a collecting stream is to be answered now. */
bool spillway_poll_ready(const spillway_hub *hub, const spillway_conn *c);
/* Replaces the outbox with the answer (SW_CF_ANSWERED); the stream closes
 * once it is written. Out of memory dooms it. */
void spillway_poll_answer(spillway_hub *hub, spillway_conn *c);
/* The long-polls past their deadline are marked dirty (answered at the end
 * of the iteration); when the next one is due (UINT64_MAX: none). */
void spillway_poll_timers(spillway_hub *hub);
uint64_t spillway_poll_next_timer(const spillway_hub *hub);

#endif
