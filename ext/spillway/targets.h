/*
 * Targets and identities (targets.c): who a message is for, and who a
 * stream is. Both are lists of user ids, group ids and client ids, written
 * as text the same way:
 *
 *   u=7,8;g=admins;c=9f2c1b
 *
 * (any of the three parts may be missing; each at most once, values of
 * 1..SPILLWAY_TARGET_ID_MAX bytes of A-Z a-z 0-9 _ . @ : + / -, at most
 * SPILLWAY_TARGET_IDS values in all). A stream's identity has at most one
 * user and one client.
 *
 * A message with targets reaches a stream when (no users and no groups are
 * named, or the stream's user is one of the users, or one of its groups is
 * one of the groups) and (no clients are named, or the stream's client is
 * one of them): message_bus's rule. A message without targets reaches
 * everyone; a stream without an identity only untargeted messages.
 *
 * Over Redis a targeted message's frame carries its targets in an
 * "x-targets: <text>" line right after its id line (the body the
 * publisher sends starts with it); the hub takes it out when the frame
 * arrives (spillway_targets_take), so no stream ever sees it.
 *
 * A targets value is immutable once made and reference-counted like the
 * frames that point at it (not atomic: made on any thread, then only the
 * reactor touches it).
 */
#ifndef SPILLWAY_TARGETS_H
#define SPILLWAY_TARGETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define SPILLWAY_TARGET_ID_MAX 128
#define SPILLWAY_TARGET_IDS 1024
/* The line a targeted frame carries over Redis, after its id line. */
#define SPILLWAY_TARGETS_FIELD "x-targets: "

enum { SW_TK_USER, SW_TK_GROUP, SW_TK_CLIENT, SW_TK_KINDS };

typedef struct spillway_target_id {
    uint32_t off; /* into text */
    uint16_t len;
} spillway_target_id;

typedef struct spillway_targets {
    uint32_t refs;
    uint32_t n[SW_TK_KINDS];     /* how many of each kind */
    uint32_t first[SW_TK_KINDS]; /* where each kind's ids start in ids */
    spillway_target_id *ids;     /* in the same allocation */
    char *text;                  /* the parsed text, in the same allocation */
} spillway_targets;

/* Parses s[0..len) (the format above). NULL with *why set when it is not
 * well formed (or out of memory: why says so). identity: at most one user
 * and one client. */
spillway_targets *spillway_targets_parse(const char *s, size_t len, bool identity, const char **why);

/* Whether a message for t reaches a stream that is `who` (NULL: a stream
 * without an identity). */
bool spillway_targets_match(const spillway_targets *t, const spillway_targets *who);

/* A frame read from Redis (its id already parsed) whose next line is
 * SPILLWAY_TARGETS_FIELD: *out gets its targets (NULL when it has none)
 * and the frame is rewritten without that line. 0, or -1 when the line is
 * malformed or memory runs out (*why says which). */
struct spillway_frame;
int spillway_targets_take(struct spillway_frame *f, spillway_targets **out, const char **why);

static inline spillway_targets *spillway_targets_ref(spillway_targets *t)
{
    if (t != NULL) t->refs++;
    return t;
}

static inline void spillway_targets_unref(spillway_targets *t)
{
    if (t != NULL && --t->refs == 0) free(t);
}

#endif
