#include "sse.h"

#include <string.h>

static const char ID_PREFIX[] = "id: ";
static const char EVENT_PREFIX[] = "event: ";
static const char DATA_PREFIX[] = "data: ";

#define LIT_LEN(s) (sizeof(s) - 1)

bool spillway_sse_field_ok(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '\r' || c == '\n' || c == '\0') return false;
    }
    return true;
}

/*
 * Counts the lines of data and the bytes that are not line breaks. A CRLF is
 * one break; a lone CR or LF is one break; the text after the last break is a
 * line even when empty (so "a\n" is two lines, "a" and "").
 */
static void count_lines(const char *data, size_t len, size_t *lines, size_t *text)
{
    size_t n = 1, breaks_bytes = 0;
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        if (c == '\n') {
            n++;
            breaks_bytes++;
        } else if (c == '\r') {
            n++;
            breaks_bytes++;
            if (i + 1 < len && data[i + 1] == '\n') {
                i++;
                breaks_bytes++;
            }
        }
    }
    *lines = n;
    *text = len - breaks_bytes;
}

static ssize_t check_fields(const char *id, size_t idlen, const char *event, size_t evlen)
{
    if (id != NULL && !spillway_sse_field_ok(id, idlen)) return SPILLWAY_SSE_EID;
    if (event != NULL && !spillway_sse_field_ok(event, evlen)) return SPILLWAY_SSE_EEVENT;
    return 0;
}

ssize_t spillway_sse_size(const char *id, size_t idlen, const char *event, size_t evlen,
                          const char *data, size_t datalen)
{
    size_t lines, text, total = 0;
    ssize_t rc = check_fields(id, idlen, event, evlen);
    if (rc < 0) return rc;

    if (id != NULL) total += LIT_LEN(ID_PREFIX) + idlen + 1;
    if (event != NULL && evlen > 0) total += LIT_LEN(EVENT_PREFIX) + evlen + 1;
    count_lines(data, datalen, &lines, &text);
    total += lines * (LIT_LEN(DATA_PREFIX) + 1) + text;
    total += 1;
    return (ssize_t)total;
}

static char *put(char *p, const char *s, size_t n)
{
    if (n > 0) memcpy(p, s, n);
    return p + n;
}

ssize_t spillway_sse_encode(char *out, size_t cap, const char *id, size_t idlen,
                            const char *event, size_t evlen, const char *data,
                            size_t datalen)
{
    ssize_t need = spillway_sse_size(id, idlen, event, evlen, data, datalen);
    char *p = out;
    size_t start = 0;

    if (need < 0) return need;
    if ((size_t)need > cap) return SPILLWAY_SSE_ESPACE;

    if (id != NULL) {
        p = put(p, ID_PREFIX, LIT_LEN(ID_PREFIX));
        p = put(p, id, idlen);
        *p++ = '\n';
    }
    if (event != NULL && evlen > 0) {
        p = put(p, EVENT_PREFIX, LIT_LEN(EVENT_PREFIX));
        p = put(p, event, evlen);
        *p++ = '\n';
    }
    if (datalen == 0) {
        /* data may be NULL then: no pointer arithmetic on it. */
        p = put(p, DATA_PREFIX, LIT_LEN(DATA_PREFIX));
        *p++ = '\n';
        *p++ = '\n';
        return (ssize_t)(p - out);
    }
    for (size_t i = 0; i <= datalen; i++) {
        if (i == datalen || data[i] == '\n' || data[i] == '\r') {
            p = put(p, DATA_PREFIX, LIT_LEN(DATA_PREFIX));
            p = put(p, data + start, i - start);
            *p++ = '\n';
            if (i < datalen && data[i] == '\r' && i + 1 < datalen && data[i + 1] == '\n') i++;
            start = i + 1;
        }
    }
    *p++ = '\n';
    return (ssize_t)(p - out);
}

const char *spillway_sse_strerror(ssize_t code)
{
    switch (code) {
    case SPILLWAY_SSE_EID: return "the id contains CR, LF or NUL";
    case SPILLWAY_SSE_EEVENT: return "the event name contains CR, LF or NUL";
    case SPILLWAY_SSE_ESPACE: return "the output buffer is too small";
    default: return "unknown SSE encoder error";
    }
}
