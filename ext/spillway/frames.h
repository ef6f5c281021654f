/*
 * The fixed frames and the reset frame (frames.c).
 */
#ifndef SPILLWAY_FRAMES_H
#define SPILLWAY_FRAMES_H

#include "hub_internal.h"

/* Builds hub->f_head (with cfg.extra_headers), f_open, f_retry and
 * f_heartbeat; 0, or -1 when out of memory (spillway_frames_free frees what
 * was built). */
int spillway_frames_build(spillway_hub *hub);
void spillway_frames_free(spillway_hub *hub);
/* The `event: reset` frame for c: its cursor is older than what the backlog
 * still holds for the channels flagged in reset (one flag per membership
 * slot). Its id moves the client's cursor to `now`, so a reconnect does not
 * report the same hole again. For a Turbo stream (SW_CF_TURBO) a message
 * holding <turbo-stream action="refresh"> instead, with the same id. The
 * caller owns the frame; NULL when out of memory. */
spillway_frame *spillway_frame_reset(const spillway_conn *c, const bool *reset, spillway_id now);
/* The stream's channel names (only those flagged in which, unless NULL),
 * one per line, cut to fit n bytes and terminated (an event's detail). */
void spillway_frame_channel_names(const spillway_conn *c, const bool *which, char *out, size_t n);

#endif
