/*
 * Frames: the bytes of one SSE event (or a control chunk: the HTTP head, a
 * heartbeat comment, a retry hint), encoded once and shared by reference by
 * every connection that sends it and by the memory backlog.
 *
 * Ownership: a frame is created with one reference, owned by the caller.
 * The reference count is NOT atomic: a frame may be built on any thread, but
 * from the moment it is handed to the hub (queue push) only the reactor
 * thread touches it.
 */
#ifndef SPILLWAY_FRAME_H
#define SPILLWAY_FRAME_H

#include <stdlib.h>
#include <string.h>

#include "id.h"

typedef struct spillway_frame {
    uint32_t refs;
    uint32_t len;
    spillway_id id; /* zero for control frames: they never move a cursor */
    char data[];
} spillway_frame;

/* Largest frame the core accepts from anywhere (a safety net; the
 * configured message limit is far below it). */
#define SPILLWAY_FRAME_MAX (64u * 1024u * 1024u)

/* A frame of len bytes with uninitialised data and a zero id; NULL on ENOMEM
 * or when len is over SPILLWAY_FRAME_MAX. The caller owns the reference. */
static inline spillway_frame *spillway_frame_new(size_t len)
{
    spillway_frame *f;
    if (len > SPILLWAY_FRAME_MAX) return NULL;
    f = malloc(sizeof(*f) + len);
    if (f == NULL) return NULL;
    f->refs = 1;
    f->len = (uint32_t)len;
    f->id.ms = 0;
    f->id.seq = 0;
    return f;
}

/* A frame holding a copy of s[0..len). */
static inline spillway_frame *spillway_frame_copy(const char *s, size_t len)
{
    spillway_frame *f = spillway_frame_new(len);
    if (f != NULL && len > 0) memcpy(f->data, s, len);
    return f;
}

static inline spillway_frame *spillway_frame_ref(spillway_frame *f)
{
    f->refs++;
    return f;
}

static inline void spillway_frame_unref(spillway_frame *f)
{
    if (f != NULL && --f->refs == 0) free(f);
}

/* Bytes of heap a frame holds (for memsize and stats). */
static inline size_t spillway_frame_size(const spillway_frame *f)
{
    return sizeof(*f) + f->len;
}

#endif
