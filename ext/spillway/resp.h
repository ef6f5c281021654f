/*
 * RESP: commands out, replies in.
 *
 * Replies are parsed by hiredis's redisReader with our own object functions
 * (its public hook), so a bulk string is copied exactly once, straight into a
 * spillway_frame that can go to sockets as it is. hiredis 0.14 and 1.x both
 * work; RESP2 only.
 *
 * The peer is not trusted to be well-formed: nesting is capped (hiredis 1.x
 * does not cap it, and a deep reply would otherwise be built and freed by
 * recursion), an array's memory grows with the elements that actually
 * arrive (not with the count it announces), and freeing is iterative.
 */
#ifndef SPILLWAY_RESP_H
#define SPILLWAY_RESP_H

#include "common.h"
#include "frame.h"

enum {
    SW_RV_STRING = 1,
    SW_RV_ARRAY,
    SW_RV_INTEGER,
    SW_RV_NIL,
    SW_RV_STATUS,
    SW_RV_ERROR,
    SW_RV_TOOBIG, /* a bulk string over SPILLWAY_FRAME_MAX: integer holds its length, no bytes */
    SW_RV_OTHER   /* RESP3 types (never asked for): doubles, booleans, maps, sets, pushes */
};

/* Arrays nested deeper than this are refused with a protocol error. Spillway
 * never asks for a reply nested more than two deep (the resume script's);
 * the cap sits below hiredis 0.14's own (8) so that every hiredis refuses the
 * same replies with the same error. */
#define SPILLWAY_RESP_MAX_DEPTH 4

typedef struct spillway_rv {
    int type;
    long long integer;   /* INTEGER; TOOBIG: the length */
    spillway_frame *str; /* STRING, STATUS, ERROR: the bytes (a frame) */
    size_t elements;     /* ARRAY (and RESP3 aggregates): all of them once the reply is whole */
    struct spillway_rv **element; /* never NULL inside a whole reply */
    size_t cap;                   /* resp.c: slots allocated in element */
    struct spillway_rv *next;     /* resp.c: the list spillway_rv_free walks */
} spillway_rv;

typedef struct spillway_resp_reader spillway_resp_reader;

/* A reader; NULL on ENOMEM. */
spillway_resp_reader *spillway_resp_reader_new(void);
void spillway_resp_reader_free(spillway_resp_reader *r);
/* 0, or -1 with the reader's error text in *err. */
int spillway_resp_feed(spillway_resp_reader *r, const char *buf, size_t len, const char **err);
/* 1 and *out (owned by the caller, free with spillway_rv_free) when a whole
 * reply is there; 0 when more bytes are needed; -1 on a protocol error (a
 * reply nested deeper than SPILLWAY_RESP_MAX_DEPTH is one). After -1 the
 * reader stays broken: the connection has to be dropped. */
int spillway_resp_next(spillway_resp_reader *r, spillway_rv **out, const char **err);
/* Frees v and everything in it, at any depth, without recursion. */
void spillway_rv_free(spillway_rv *v);

/* true when v is a STRING/STATUS/ERROR equal to s (case-sensitive). */
bool spillway_rv_is(const spillway_rv *v, const char *s);
/* true when v is a STRING/STATUS/ERROR that starts with prefix. */
bool spillway_rv_starts(const spillway_rv *v, const char *prefix);
/* v's bytes for a log line (STRING, STATUS, ERROR; "" for others): at most
 * max of them, anything but printable ASCII as '?' (the peer may send CR,
 * LF, NUL or escape codes). Writes into buf (n bytes) and returns it. */
const char *spillway_rv_text(const spillway_rv *v, size_t max, char *buf, size_t n);
/* What v is, for an error message: "nil", "an integer (42)", "a bulk string
 * of 10 bytes", "an array of 3 elements", "an error (-ERR ...)". Writes
 * into buf (n bytes) and returns it. */
const char *spillway_rv_describe(const spillway_rv *v, char *buf, size_t n);

/* ---- commands ---- */

typedef struct spillway_buf {
    char *data;
    size_t len, cap, off; /* off: bytes already written out */
} spillway_buf;

void spillway_buf_free(spillway_buf *b);
void spillway_buf_reset(spillway_buf *b);
/* Appends a command (argc arguments) in RESP. 0, or -1 on ENOMEM. */
int spillway_buf_command(spillway_buf *b, int argc, const char *const *argv, const size_t *lens);
/* Incremental form for commands with many arguments:
 * begin(argc) then argc times arg(). */
int spillway_buf_begin(spillway_buf *b, size_t argc);
int spillway_buf_arg(spillway_buf *b, const char *s, size_t len);
int spillway_buf_arg2(spillway_buf *b, const char *a, size_t alen, const char *c, size_t clen);

#endif
