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
/* f as it goes to a stream that asked for channel names
 * (SPILLWAY_ATTACH_CHANNEL): "channel: <name>\n" after its id line, built
 * once and kept in f->tagged (a borrowed pointer, alive as long as f).
 * A frame without an id (a control frame) is returned as it is; NULL when
 * out of memory. */
spillway_frame *spillway_frame_tagged(spillway_frame *f, const char *name, size_t namelen);
/* The same for c: f itself unless c asked for channel names; NULL when out
 * of memory (c is doomed then). */
spillway_frame *spillway_frame_for(spillway_hub *hub, spillway_conn *c, spillway_frame *f, const spillway_channel *ch);
/* spillway_frame_for over frames[0..n), in place (the frames are borrowed:
 * each tagged copy lives as long as its frame). False when out of memory. */
bool spillway_frames_for(spillway_hub *hub, spillway_conn *c, spillway_frame **frames, size_t n,
                         const spillway_channel *ch);

/* The stream's channel names (only those flagged in which, unless NULL),
 * one per line, cut to fit n bytes and terminated (an event's detail). */
void spillway_frame_channel_names(const spillway_conn *c, const bool *which, char *out, size_t n);

#endif
