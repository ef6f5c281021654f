/*
 * A reference parser for text/event-stream, written from the WHATWG HTML
 * standard, section "Interpreting an event stream", and used as the oracle of
 * the encoder tests, the fuzz target and the hub's end-to-end tests:
 *
 *   - lines end at CRLF, a lone LF or a lone CR (a CR at the end of one chunk
 *     and an LF at the start of the next are one line break);
 *   - an empty line dispatches the event; a line starting with ':' is a
 *     comment; otherwise the field name is what precedes the first ':' (the
 *     whole line when there is none) and the value what follows it, minus ONE
 *     leading space;
 *   - "event" sets the type buffer, "data" appends the value and an LF to the
 *     data buffer, "id" sets the last-event-id buffer unless the value holds a
 *     NUL, "retry" sets the reconnection time when the value is all ASCII
 *     digits, anything else is ignored;
 *   - dispatch: the last-event-id buffer becomes the event's lastEventId (and
 *     stays for later events); empty data dispatches nothing; one trailing LF
 *     of the data is removed; an empty type means "message".
 *
 * It works on bytes: the UTF-8 decoding step (and the leading-BOM rule, which
 * only applies to the first byte of a whole stream) are left out because the
 * encoder does not check UTF-8 (the Ruby layer does).
 *
 * Ownership: sse_parser_free() frees everything the parser and its events
 * hold; tbuf memory belongs to whatever embeds it. Allocation failure
 * aborts (tests only).
 */
#ifndef SPILLWAY_SSE_REF_H
#define SPILLWAY_SSE_REF_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sse.h"
#include "tbuf.h"

#define SSE_REF_API static __attribute__((unused))

typedef struct sse_event {
    tbuf id;     /* lastEventId at dispatch */
    bool id_field;  /* this event's block had an id field */
    tbuf type;   /* "message" when the stream gave none */
    tbuf data;
} sse_event;

typedef struct sse_parser {
    tbuf line;  /* the line being read, without its terminator */
    bool skip_lf;  /* the last line ended with CR: an LF right after belongs to it */
    tbuf data, type, last_id;
    bool id_field;
    sse_event *events;
    size_t nevents, capevents;
    size_t comments;   /* comment lines (": ...", heartbeats) */
    size_t retries;    /* valid retry fields */
    long long retry;   /* the last valid retry value */
    size_t unknown;    /* fields with other names, and invalid retry values */
    size_t bytes;      /* bytes fed so far */
} sse_parser;

SSE_REF_API void sse_parser_init(sse_parser *p)
{
    memset(p, 0, sizeof(*p));
    p->retry = -1;
}

SSE_REF_API void sse_parser_free(sse_parser *p)
{
    for (size_t i = 0; i < p->nevents; i++) {
        tbuf_free(&p->events[i].id);
        tbuf_free(&p->events[i].type);
        tbuf_free(&p->events[i].data);
    }
    free(p->events);
    tbuf_free(&p->line);
    tbuf_free(&p->data);
    tbuf_free(&p->type);
    tbuf_free(&p->last_id);
    sse_parser_init(p);
}

SSE_REF_API void sse_ref_dispatch(sse_parser *p)
{
    sse_event *e;
    bool had_id = p->id_field;
    p->id_field = false;
    if (p->data.len == 0) {
        p->type.len = 0;
        return;
    }
    if (p->nevents == p->capevents) {
        p->capevents = p->capevents ? p->capevents * 2 : 8;
        p->events = realloc(p->events, p->capevents * sizeof(*p->events));
        if (p->events == NULL) abort();
    }
    e = &p->events[p->nevents++];
    memset(e, 0, sizeof(*e));
    tbuf_set(&e->id, p->last_id.p, p->last_id.len);
    e->id_field = had_id;
    if (p->type.len > 0) tbuf_set(&e->type, p->type.p, p->type.len);
    else tbuf_set(&e->type, "message", 7);
    /* The data buffer always ends with the LF its last data line added. */
    tbuf_set(&e->data, p->data.p, p->data.len - 1);
    p->data.len = 0;
    p->type.len = 0;
}

SSE_REF_API void sse_ref_line(sse_parser *p)
{
    const char *l = p->line.p ? p->line.p : "";
    size_t n = p->line.len, flen = n;
    const char *value = "";
    size_t vlen = 0;
    const char *colon;

    if (n == 0) {
        sse_ref_dispatch(p);
        return;
    }
    if (l[0] == ':') {
        p->comments++;
        return;
    }
    colon = memchr(l, ':', n);
    if (colon != NULL) {
        flen = (size_t)(colon - l);
        value = colon + 1;
        vlen = n - flen - 1;
        if (vlen > 0 && value[0] == ' ') {
            value++;
            vlen--;
        }
    }
    if (flen == 5 && memcmp(l, "event", 5) == 0) {
        tbuf_set(&p->type, value, vlen);
    } else if (flen == 4 && memcmp(l, "data", 4) == 0) {
        tbuf_put(&p->data, value, vlen);
        tbuf_put(&p->data, "\n", 1);
    } else if (flen == 2 && memcmp(l, "id", 2) == 0) {
        if (memchr(value, '\0', vlen) == NULL) {
            tbuf_set(&p->last_id, value, vlen);
            p->id_field = true;
        }
    } else if (flen == 5 && memcmp(l, "retry", 5) == 0) {
        bool digits = vlen > 0;
        long long v = 0;
        for (size_t i = 0; i < vlen; i++) {
            if (value[i] < '0' || value[i] > '9') digits = false;
            else if (v < 1000000000000LL) v = v * 10 + (value[i] - '0');
        }
        if (digits) {
            p->retry = v;
            p->retries++;
        } else {
            p->unknown++;
        }
    } else {
        p->unknown++;
    }
}

/* Feeds n bytes; complete lines are interpreted at once. */
SSE_REF_API void sse_parser_feed(sse_parser *p, const char *s, size_t n)
{
    p->bytes += n;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (p->skip_lf) {
            p->skip_lf = false;
            if (c == '\n') continue;
        }
        if (c == '\r' || c == '\n') {
            sse_ref_line(p);
            p->line.len = 0;
            p->skip_lf = c == '\r';
        } else {
            tbuf_put(&p->line, &c, 1);
        }
    }
}

/* true when nothing is half-read: no partial line, no undispatched field. */
SSE_REF_API bool sse_parser_idle(const sse_parser *p)
{
    return p->line.len == 0 && p->data.len == 0 && p->type.len == 0 && !p->id_field;
}

/* The data as a browser hands it over: every CRLF, CR and LF becomes LF.
 * The caller frees the result (*outlen bytes, NUL-terminated). */
SSE_REF_API char *sse_normalize_breaks(const char *s, size_t n, size_t *outlen)
{
    char *out = malloc(n + 1);
    size_t k = 0;
    if (out == NULL) abort();
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            out[k++] = '\n';
            if (i + 1 < n && s[i + 1] == '\n') i++;
        } else {
            out[k++] = s[i];
        }
    }
    out[k] = '\0';
    *outlen = k;
    return out;
}

SSE_REF_API bool sse_ref_field_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return false;
    return true;
}

/*
 * The encoder's whole contract for one input, checked against the parser:
 * the right error code for a bad id or event; size() == encode()'s length;
 * encode() into exactly that many bytes of heap (so ASan sees any byte past
 * the end) and ESPACE with one byte less; the frame ends with the blank line,
 * decodes to exactly one event with the same id, type and data (line breaks
 * as LF), and leaves the parser idle.
 *
 * Returns NULL when all of that holds, else a description of what broke
 * (static text).
 */
SSE_REF_API const char *sse_roundtrip(const char *id, size_t idlen, const char *ev, size_t evlen,
                                      const char *data, size_t datalen)
{
    ssize_t size = spillway_sse_size(id, idlen, ev, evlen, data, datalen);
    const char *why = NULL;
    char *frame = NULL, *small = NULL, *want = NULL;
    size_t wantlen;
    ssize_t n;
    sse_parser p;

    if (id != NULL && !sse_ref_field_ok(id, idlen)) {
        if (size != SPILLWAY_SSE_EID) return "size() did not return EID for a bad id";
        if (spillway_sse_encode(NULL, 0, id, idlen, ev, evlen, data, datalen) != SPILLWAY_SSE_EID)
            return "encode() did not return EID for a bad id";
        return NULL;
    }
    if (ev != NULL && !sse_ref_field_ok(ev, evlen)) {
        if (size != SPILLWAY_SSE_EEVENT) return "size() did not return EEVENT for a bad event";
        if (spillway_sse_encode(NULL, 0, id, idlen, ev, evlen, data, datalen) != SPILLWAY_SSE_EEVENT)
            return "encode() did not return EEVENT for a bad event";
        return NULL;
    }
    if (size <= 0) return "size() failed for valid fields";
    if (spillway_sse_field_ok(id ? id : "", id ? idlen : 0) != true) return "field_ok(id) false";
    if (spillway_sse_field_ok(ev ? ev : "", ev ? evlen : 0) != true) return "field_ok(event) false";

    frame = malloc((size_t)size);
    small = malloc((size_t)size);
    if (frame == NULL || small == NULL) abort();
    n = spillway_sse_encode(frame, (size_t)size, id, idlen, ev, evlen, data, datalen);
    if (n != size) {
        why = "encode() length differs from size()";
        goto out;
    }
    if (spillway_sse_encode(small, (size_t)size - 1, id, idlen, ev, evlen, data, datalen) !=
        SPILLWAY_SSE_ESPACE) {
        why = "encode() into size-1 bytes did not return ESPACE";
        goto out;
    }
    if (size < 2 || frame[size - 1] != '\n' || frame[size - 2] != '\n') {
        why = "frame does not end with a blank line";
        goto out;
    }
    sse_parser_init(&p);
    sse_parser_feed(&p, frame, (size_t)size);
    want = sse_normalize_breaks(data, datalen, &wantlen);
    if (p.nevents != 1) why = "frame does not decode to exactly one event";
    else if (!sse_parser_idle(&p)) why = "parser not idle after the frame";
    else if (p.comments != 0 || p.retries != 0 || p.unknown != 0) why = "frame has stray lines";
    else if (p.events[0].id_field != (id != NULL)) why = "id field presence differs";
    else if (id != NULL && (p.events[0].id.len != idlen || memcmp(p.events[0].id.p, id, idlen) != 0))
        why = "id differs";
    else if (ev != NULL && evlen > 0 &&
             (p.events[0].type.len != evlen || memcmp(p.events[0].type.p, ev, evlen) != 0))
        why = "event type differs";
    else if ((ev == NULL || evlen == 0) && strcmp(p.events[0].type.p, "message") != 0)
        why = "event type is not the default";
    else if (p.events[0].data.len != wantlen ||
             (wantlen > 0 && memcmp(p.events[0].data.p, want, wantlen) != 0))
        why = "data differs";
    sse_parser_free(&p);
out:
    free(want);
    free(small);
    free(frame);
    return why;
}

#endif
