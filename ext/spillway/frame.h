/*
 * Frames: the bytes of one SSE event (or a control chunk: the HTTP head, a
 * heartbeat comment, a retry hint), encoded once and shared by reference by
 * every connection that sends it and by the memory backlog.
 *
 * Ownership: a frame is created with one reference, owned by the caller.
 * The reference count is NOT atomic: a frame may be built on any thread, but
 * from the moment it is handed to the hub (queue push) only the reactor
 * thread touches it.
 *
 * Exclusivity. A stream's outbox takes its references through
 * spillway_frame_enqueue/dequeue, which also keep `queued` (how many of the
 * references are outboxes') and `holders` (the XOR of those outboxes'
 * accounts). A frame is exclusive to a stream when that stream's outbox holds
 * the only reference left (refs == 1 and queued == 1): its bytes then stay
 * alive for that stream alone, and `holders` is that stream's account. Every
 * function here that changes refs or queued moves the frame's size in or out
 * of the account on the transitions, so each stream knows, in O(1), the bytes
 * only it keeps alive (conn.c's slow-stream policy, docs/design.md). So len
 * never changes once a frame has been handed on.
 */
#ifndef SPILLWAY_FRAME_H
#define SPILLWAY_FRAME_H

#include <stdlib.h>
#include <string.h>

#include "id.h"
#include "targets.h"

typedef struct spillway_frame {
    uint32_t refs;
    uint32_t len;
    spillway_id id;    /* zero for control frames: they never move a cursor */
    uint32_t queued;   /* of refs, the references held by stream outboxes */
    uintptr_t holders; /* XOR of the accounts (uint64_t *) of those outboxes */
    /* The same message with its channel named (spillway_frame_tagged,
     * frames.c), built on first need by the reactor and owned by this
     * frame: one reference, dropped when this frame is freed. */
    struct spillway_frame *tagged;
    /* Who the message is for (targets.h); NULL: everyone. One reference. */
    spillway_targets *targets;
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
    f->queued = 0;
    f->holders = 0;
    f->tagged = NULL;
    f->targets = NULL;
    return f;
}

static inline void spillway_frame_unref(spillway_frame *f);

/* The last reference went. */
static inline void spillway_frame_free_(spillway_frame *f)
{
    if (f->tagged != NULL) spillway_frame_unref(f->tagged);
    spillway_targets_unref(f->targets);
    free(f);
}

/* A frame holding a copy of s[0..len). */
static inline spillway_frame *spillway_frame_copy(const char *s, size_t len)
{
    spillway_frame *f = spillway_frame_new(len);
    if (f != NULL && len > 0) memcpy(f->data, s, len);
    return f;
}

/* Bytes of heap a frame holds (for memsize, stats and the outbox budget). */
static inline size_t spillway_frame_size(const spillway_frame *f)
{
    return sizeof(*f) + f->len;
}

/* The account of the stream f is exclusive to, or NULL. */
static inline uint64_t *spillway_frame_sole_holder(const spillway_frame *f)
{
    return f->refs == 1 && f->queued == 1 ? (uint64_t *)f->holders : NULL;
}

/* A reference that is not an outbox's (the backlog, a held list, a reply
 * being merged). */
static inline spillway_frame *spillway_frame_ref(spillway_frame *f)
{
    uint64_t *sole = spillway_frame_sole_holder(f);
    if (sole != NULL) *sole -= spillway_frame_size(f); /* shared from now on */
    f->refs++;
    return f;
}

static inline void spillway_frame_unref(spillway_frame *f)
{
    uint64_t *sole;
    if (f == NULL) return;
    if (--f->refs == 0) {
        spillway_frame_free_(f);
        return;
    }
    sole = spillway_frame_sole_holder(f);
    if (sole != NULL) *sole += spillway_frame_size(f); /* one stream keeps it alive alone now */
}

/* An outbox with account *acct takes a reference. Returns the frame's size
 * when it was in no outbox before (what the memory of all outboxes grows
 * by), else 0. */
static inline size_t spillway_frame_enqueue(spillway_frame *f, uint64_t *acct)
{
    uint64_t *sole = spillway_frame_sole_holder(f);
    if (sole != NULL) *sole -= spillway_frame_size(f);
    f->refs++;
    f->holders ^= (uintptr_t)acct;
    return f->queued++ == 0 ? spillway_frame_size(f) : 0;
}

/* The outbox with account *acct drops its reference; f may be freed.
 * Returns the frame's size when it is in no outbox any more (what the
 * memory of all outboxes shrinks by), else 0. */
static inline size_t spillway_frame_dequeue(spillway_frame *f, uint64_t *acct)
{
    size_t size = spillway_frame_size(f);
    uint64_t *sole;
    if (f->refs == 1) {
        /* Ours alone, and the last reference. */
        *acct -= size;
        spillway_frame_free_(f);
        return size;
    }
    f->refs--;
    f->holders ^= (uintptr_t)acct;
    f->queued--;
    sole = spillway_frame_sole_holder(f);
    if (sole != NULL) *sole += size;
    return f->queued == 0 ? size : 0;
}

#endif
