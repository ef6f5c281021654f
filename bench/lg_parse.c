/*
 * The loadgen's body parsers: HTTP body framing (chunked, Content-Length,
 * close-delimited), the Server-Sent Events line grammar, and message_bus's
 * streaming JSON arrays. Each is fed the bytes of one read() as they come
 * (any split is allowed: CRLF across reads, a chunk size in the middle of a
 * line) and reports messages through lg_on_data().
 */
#define _GNU_SOURCE
#include <string.h>

#include "lg.h"

int64_t lg_now_real;
int64_t lg_now_mono;

int lg_grow_append(char **b, uint32_t *len, uint32_t *cap, const char *p, size_t n, size_t limit)
{
    if ((size_t)*len + n > limit)
        return -1;
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n)
            nc *= 2;
        char *nb = realloc(*b, nc);
        if (!nb) {
            fprintf(stderr, "loadgen: out of memory\n");
            exit(2);
        }
        *b = nb;
        *cap = (uint32_t)nc;
    }
    memcpy(*b + *len, p, n);
    *len += (uint32_t)n;
    return 0;
}

/* ---------- SSE ---------- */

static void sse_dispatch(struct conn *c)
{
    if (c->dlen == 0)
        return; /* per the spec: an event with an empty data buffer is not dispatched */
    size_t n = c->dlen;
    if (c->data[n - 1] == '\n')
        n--; /* drop the LF appended after the last data line */
    lg_on_data(c, c->data, n, lg_now_real);
    c->dlen = 0;
}

/* One complete line (without its terminator). Returns -1 on a protocol error. */
static int sse_line(struct conn *c, const char *p, size_t n)
{
    if (n == 0) {
        sse_dispatch(c);
        return 0;
    }
    if (p[0] == ':') {
        lg.comments++;
        return 0;
    }
    const char *colon = memchr(p, ':', n);
    size_t nl = colon ? (size_t)(colon - p) : n;
    const char *v = colon ? colon + 1 : p + n;
    size_t vl = (size_t)(p + n - v);
    if (vl && *v == ' ') {
        v++;
        vl--;
    }
    if (nl == 4 && memcmp(p, "data", 4) == 0) {
        if (lg_grow_append(&c->data, &c->dlen, &c->dcap, v, vl, LG_MAX_DATA) < 0 ||
            lg_grow_append(&c->data, &c->dlen, &c->dcap, "\n", 1, LG_MAX_DATA) < 0)
            return -1;
    } else if (nl == 2 && memcmp(p, "id", 2) == 0) {
        if (!memchr(v, 0, vl)) {
            lg.ids++;
            /* lp: the cursor of the next poll (an id too long for it is an error, not a silent cut) */
            if (lg.mode == MODE_LP) {
                if (vl >= sizeof c->lp_id)
                    return -1;
                memcpy(c->lp_id, v, vl);
                c->lp_id[vl] = 0;
            }
        }
    } else if (nl == 5 && memcmp(p, "retry", 5) == 0) {
        size_t k = 0;
        while (k < vl && v[k] >= '0' && v[k] <= '9')
            k++;
        if (k == vl && vl > 0)
            lg.retry_fields++;
    }
    /* "event" only names the type; the benchmark counts every dispatched event. */
    return 0;
}

static int sse_feed(struct conn *c, const char *p, size_t n)
{
    if (!c->body_seen && n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
        p += 3;
        n -= 3;
    }
    if (c->cr && n && *p == '\n') {
        p++;
        n--;
    }
    c->cr = 0;
    const char *end = p + n;
    while (p < end) {
        size_t rem = (size_t)(end - p);
        const char *lf = memchr(p, '\n', rem);
        const char *cr = memchr(p, '\r', lf ? (size_t)(lf - p) : rem);
        const char *e = cr ? cr : lf;
        if (!e) {
            if (lg_grow_append(&c->buf, &c->len, &c->cap, p, rem, LG_MAX_LINE) < 0)
                return -1;
            return 0;
        }
        int r;
        if (c->len) {
            if (lg_grow_append(&c->buf, &c->len, &c->cap, p, (size_t)(e - p), LG_MAX_LINE) < 0)
                return -1;
            r = sse_line(c, c->buf, c->len);
            c->len = 0;
        } else
            r = sse_line(c, p, (size_t)(e - p));
        if (r < 0)
            return -1;
        if (*e == '\r') {
            if (e + 1 < end) {
                if (e[1] == '\n')
                    e++;
            } else
                c->cr = 1; /* a LF may start the next span */
        }
        p = e + 1;
    }
    return 0;
}

/* ---------- message_bus: JSON arrays of {global_id, message_id, channel, data} ---------- */

static const char *js_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* p at '"'. Decodes into out (if not NULL) and returns the byte after the
 * closing quote, or NULL if the string is cut. \uXXXX becomes '?': the
 * benchmark only reads ASCII digits out of strings. */
static const char *js_str(const char *p, const char *e, char **out, uint32_t *olen, uint32_t *ocap)
{
    p++;
    while (p < e) {
        const char *q = p;
        while (q < e && *q != '"' && *q != '\\')
            q++;
        if (out && q > p && lg_grow_append(out, olen, ocap, p, (size_t)(q - p), LG_MAX_DATA) < 0)
            return NULL;
        if (q >= e)
            return NULL;
        if (*q == '"')
            return q + 1;
        if (q + 1 >= e)
            return NULL;
        char ch = q[1];
        const char *next = q + 2;
        switch (ch) {
        case 'n': ch = '\n'; break;
        case 't': ch = '\t'; break;
        case 'r': ch = '\r'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'u':
            if (q + 6 > e)
                return NULL;
            ch = '?';
            next = q + 6;
            break;
        default: break; /* \" \\ \/ */
        }
        if (out && lg_grow_append(out, olen, ocap, &ch, 1, LG_MAX_DATA) < 0)
            return NULL;
        p = next;
    }
    return NULL;
}

static const char *js_skip(const char *p, const char *e)
{
    p = js_ws(p, e);
    if (p >= e)
        return NULL;
    if (*p == '"')
        return js_str(p, e, NULL, NULL, NULL);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < e) {
            if (*p == '"') {
                p = js_str(p, e, NULL, NULL, NULL);
                if (!p)
                    return NULL;
                continue;
            }
            if (*p == '{' || *p == '[')
                depth++;
            else if (*p == '}' || *p == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (p < e && *p != ',' && *p != '}' && *p != ']')
        p++;
    return p;
}

static int64_t js_int(const char *p, const char *e)
{
    int neg = 0;
    int64_t v = 0;
    p = js_ws(p, e);
    if (p < e && *p == '-') {
        neg = 1;
        p++;
    }
    while (p < e && *p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    return neg ? -v : v;
}

static char *g_keyp; /* the last object key read by js_key(), heap-grown */
static uint32_t g_keylen, g_keycap;

/* Read one "key": returns pointer after ':' or NULL. The key lands in g_keyp. */
static const char *js_key(const char *p, const char *e)
{
    p = js_ws(p, e);
    if (p >= e || *p != '"')
        return NULL;
    g_keylen = 0;
    p = js_str(p, e, &g_keyp, &g_keylen, &g_keycap);
    if (!p)
        return NULL;
    p = js_ws(p, e);
    if (p >= e || *p != ':')
        return NULL;
    return p + 1;
}

/* The /__status message's data: {"<channel>": last_id, ...}. */
static void mb_status(struct conn *c, const char *p, const char *e)
{
    p = js_ws(p, e);
    if (p >= e || *p != '{')
        return;
    p++;
    for (;;) {
        p = js_ws(p, e);
        if (p >= e || *p == '}')
            return;
        p = js_key(p, e);
        if (!p)
            return;
        int ours = g_keylen == strlen(lg.mb_channel) && memcmp(g_keyp, lg.mb_channel, g_keylen) == 0;
        if (ours)
            c->mb_pos = js_int(p, e);
        p = js_skip(p, e);
        if (!p)
            return;
        p = js_ws(p, e);
        if (p < e && *p == ',')
            p++;
    }
}

int lg_mb_segment(struct conn *c, const char *p, size_t n)
{
    const char *e = p + n;
    p = js_ws(p, e);
    if (p >= e)
        return 0;
    if (*p != '[')
        return -1;
    p++;
    char chan[256];
    for (;;) {
        p = js_ws(p, e);
        if (p >= e)
            return -1;
        if (*p == ']')
            return 0;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p != '{')
            return -1;
        p++;
        int64_t msg_id = -1;
        const char *data = NULL, *data_end = NULL;
        chan[0] = 0;
        c->dlen = 0;
        int data_is_str = 0;
        for (;;) {
            p = js_ws(p, e);
            if (p >= e)
                return -1;
            if (*p == '}') {
                p++;
                break;
            }
            if (*p == ',') {
                p++;
                continue;
            }
            p = js_key(p, e);
            if (!p)
                return -1;
            const char *v = js_ws(p, e);
            if (g_keylen == 10 && memcmp(g_keyp, "message_id", 10) == 0) {
                msg_id = js_int(v, e);
                p = js_skip(v, e);
            } else if (g_keylen == 7 && memcmp(g_keyp, "channel", 7) == 0 && v < e && *v == '"') {
                char *cp = NULL;
                uint32_t cl = 0, cc = 0;
                p = js_str(v, e, &cp, &cl, &cc);
                size_t k = cl < sizeof chan - 1 ? cl : sizeof chan - 1;
                if (cp)
                    memcpy(chan, cp, k);
                chan[k] = 0;
                free(cp);
            } else if (g_keylen == 4 && memcmp(g_keyp, "data", 4) == 0) {
                data = v;
                if (v < e && *v == '"') {
                    data_is_str = 1;
                    p = js_str(v, e, &c->data, &c->dlen, &c->dcap);
                } else
                    p = js_skip(v, e);
                data_end = p;
            } else
                p = js_skip(v, e);
            if (!p)
                return -1;
        }
        if (strcmp(chan, "/__status") == 0) {
            if (data && !data_is_str)
                mb_status(c, data, data_end);
        } else if (strcmp(chan, lg.mb_channel) == 0) {
            if (msg_id > c->mb_pos)
                c->mb_pos = msg_id;
            if (data_is_str)
                lg_on_data(c, c->data, c->dlen, lg_now_real);
            else
                lg.other_events++;
        }
        c->dlen = 0;
    }
}

static const char MB_SEP[] = "\r\n|\r\n";

static int mb_feed(struct conn *c, const char *p, size_t n)
{
    if (lg_grow_append(&c->buf, &c->len, &c->cap, p, n, LG_MAX_LINE) < 0)
        return -1;
    size_t off = 0;
    for (;;) {
        char *s = memmem(c->buf + off, c->len - off, MB_SEP, 5);
        if (!s)
            break;
        if (lg_mb_segment(c, c->buf + off, (size_t)(s - (c->buf + off))) < 0)
            return -1;
        off = (size_t)(s - c->buf) + 5;
    }
    if (off) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= (uint32_t)off;
    }
    return 0;
}

/* ---------- HTTP body framing ---------- */

static int body_consume(struct conn *c, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    int r = lg.mode == MODE_MB ? mb_feed(c, p, n) : sse_feed(c, p, n);
    c->body_seen = 1;
    if (!c->ever_ok)
        lg_mark_connected(c);
    return r;
}

static int chunk_feed(struct conn *c, const char *p, size_t n)
{
    const char *e = p + n;
    while (p < e) {
        switch (c->ckstate) {
        case CK_SIZE: {
            char ch = *p++;
            int v = -1;
            if (ch >= '0' && ch <= '9')
                v = ch - '0';
            else if (ch >= 'a' && ch <= 'f')
                v = ch - 'a' + 10;
            else if (ch >= 'A' && ch <= 'F')
                v = ch - 'A' + 10;
            if (v >= 0) {
                if (c->ck_left > (INT64_MAX >> 5))
                    return -1;
                c->ck_left = c->ck_left * 16 + v;
                c->ck_digits = 1;
            } else if (ch == '\n') {
                if (!c->ck_digits)
                    return -1;
                c->ckstate = c->ck_left ? CK_DATA : CK_TRAILER;
                if (!c->ck_left)
                    c->ck_left = 0; /* trailer line length */
            } else if (ch == ';' || ch == ' ' || ch == '\t')
                c->ckstate = CK_EXT;
            else if (ch != '\r')
                return -1;
            break;
        }
        case CK_EXT:
            while (p < e && *p != '\n')
                p++;
            if (p < e) {
                p++;
                c->ckstate = c->ck_left ? CK_DATA : CK_TRAILER;
            }
            break;
        case CK_DATA: {
            size_t take = (size_t)(e - p);
            if ((int64_t)take > c->ck_left)
                take = (size_t)c->ck_left;
            if (body_consume(c, p, take) < 0)
                return -1;
            p += take;
            c->ck_left -= (int64_t)take;
            if (c->ck_left == 0)
                c->ckstate = CK_DATA_END;
            break;
        }
        case CK_DATA_END: {
            char ch = *p++;
            if (ch == '\n') {
                c->ckstate = CK_SIZE;
                c->ck_left = 0;
                c->ck_digits = 0;
            } else if (ch != '\r')
                return -1;
            break;
        }
        case CK_TRAILER: {
            char ch = *p++;
            if (ch == '\n') {
                if (c->ck_left == 0) {
                    c->ckstate = CK_END;
                    return 1;
                }
                c->ck_left = 0;
            } else if (ch != '\r')
                c->ck_left++;
            break;
        }
        case CK_END:
            return 1;
        }
    }
    return 0;
}

int lg_body_feed(struct conn *c, const char *p, size_t n)
{
    if (c->chunked)
        return chunk_feed(c, p, n);
    if (c->has_clen) {
        size_t take = (int64_t)n > c->clen ? (size_t)c->clen : n;
        if (body_consume(c, p, take) < 0)
            return -1;
        c->clen -= (int64_t)take;
        return c->clen == 0 ? 1 : 0;
    }
    return body_consume(c, p, n) < 0 ? -1 : 0;
}

