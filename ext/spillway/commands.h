/*
 * What the queue carries from Ruby's threads to the reactor (commands.c):
 * a stream to attach, a publish (memory: a whole frame whose id the hub
 * stamped; async: a body for the backend to publish), the stop.
 */
#ifndef SPILLWAY_COMMANDS_H
#define SPILLWAY_COMMANDS_H

#include <stdbool.h>
#include <stdint.h>

#include "frame.h"
#include "id.h"
#include "queue.h"

enum spillway_cmd_kind {
    SW_CMD_ATTACH = 1,
    SW_CMD_PUBLISH,
    SW_CMD_PUBLISH_ASYNC,
    SW_CMD_STOP
};

typedef struct spillway_cmd {
    spillway_qnode node; /* first: the queue links through it */
    int kind;
} spillway_cmd;

typedef struct spillway_cmd_attach {
    spillway_cmd base;
    int fd;
    unsigned flags;
    bool has_cursor;
    bool cursor_ok;
    spillway_id cursor;
    uint32_t nch;
    struct spillway_targets *ident; /* who the stream is (targets.h), or NULL; the command's reference */
    uint16_t *lens; /* points into the same allocation */
    char *names;    /* the names back to back, no separators */
} spillway_cmd_attach;

typedef struct spillway_cmd_publish {
    spillway_cmd base;
    spillway_frame *frame; /* the full frame (memory) or the body after the id line (async) */
    uint64_t seq;          /* async ticket */
    /* Async: its idempotency key (as given: the backend names it in its
     * store), stored right after the channel; how long Redis keeps it; when it was put on the command
     * link for the attempt Redis may have run (CLOCK_MONOTONIC ms); and
     * whether Redis may have run it already (written, reply lost): then it
     * is sent again only while its key certainly lives (idem.h). */
    uint32_t keylen;
    uint32_t key_ttl_ms;
    uint64_t first_ms;
    bool maybe_ran;
    uint32_t chlen;
    char channel[]; /* the channel, then (async) the key */
} spillway_cmd_publish;

/* A publish command for channel (copied), taking over the reference to
 * frame; keyspace: bytes after the channel for the async idempotency key.
 * NULL when out of memory (frame is then still the caller's). */
spillway_cmd_publish *spillway_cmd_publish_new(int kind, const char *channel, size_t chlen, spillway_frame *frame,
                                               size_t keyspace);
/* Frees a command and what it holds (a publish's frame reference); an
 * attach's descriptor is the caller's to close. */
void spillway_cmd_free(spillway_cmd *cmd);

#endif
