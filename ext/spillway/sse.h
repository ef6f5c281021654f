/*
 * Server-Sent Events encoding: a pure function, no allocation, no state.
 *
 * Contract
 * --------
 * A frame is, in this order:
 *   "id: <id>\n"          when id is not NULL (id must not contain CR, LF, NUL)
 *   "event: <event>\n"    when event is not NULL and not empty (same rule)
 *   "data: <line>\n"      once per line of data; data is split on CRLF, CR and
 *                         LF, so a browser's EventSource hands the application
 *                         the data with every line break turned into LF. Empty
 *                         data gives one "data: \n" line.
 *   "\n"                  the blank line that dispatches the event.
 * Data may contain any other byte, NUL included (the encoder does not check
 * UTF-8; the Ruby layer does). data may be NULL when datalen is 0; id and
 * event may be NULL (no such line).
 *
 * spillway_sse_size() returns the exact length spillway_sse_encode() writes, or
 * a negative SPILLWAY_SSE_E* code when a field is invalid. spillway_sse_encode()
 * writes at most cap bytes and returns the length written, or a negative code
 * (SPILLWAY_SSE_ESPACE when cap is too small; nothing useful is in out then).
 */
#ifndef SPILLWAY_SSE_H
#define SPILLWAY_SSE_H

#include <sys/types.h>

#include "common.h"

enum {
    SPILLWAY_SSE_EID = -1,    /* CR, LF or NUL in the id */
    SPILLWAY_SSE_EEVENT = -2, /* CR, LF or NUL in the event name */
    SPILLWAY_SSE_ESPACE = -3  /* the output buffer is too small */
};

/* true when s[0..len) holds no CR, LF or NUL: usable as an id or event. */
bool spillway_sse_field_ok(const char *s, size_t len);

ssize_t spillway_sse_size(const char *id, size_t idlen, const char *event, size_t evlen,
                          const char *data, size_t datalen);

ssize_t spillway_sse_encode(char *out, size_t cap, const char *id, size_t idlen,
                            const char *event, size_t evlen, const char *data,
                            size_t datalen);

/* A human-readable name for a negative code. */
const char *spillway_sse_strerror(ssize_t code);

#endif
