/*
 * loadgen — open many streaming HTTP subscriptions and measure what arrives.
 *
 * One process, one thread, one epoll loop, non-blocking sockets. It opens N
 * HTTP/1.1 requests to one URL on 127.0.0.1, spreading the client source
 * addresses over 127.0.0.A..B so ephemeral ports never run out, with at most
 * K connection attempts in flight. Bodies may be chunked or close-delimited.
 *
 * Modes:
 *   sse  GET the URL and parse Server-Sent Events (id/event/data/retry,
 *        comments, CR/LF/CRLF, multi-line data, the BOM).
 *   mb   message_bus's streaming long poll: POST <base>/<client_id>/poll with
 *        "<channel>=<last id>&__seq=<n>"; the chunked body carries JSON arrays
 *        separated by "\r\n|\r\n"; when the server ends a poll, poll again from
 *        the last message id, as message_bus's own JavaScript client does.
 *
 * Payload convention: a message's data starts with "<seq> <t_ns>", seq being
 * a per-channel counter from 1 and t_ns the CLOCK_REALTIME nanoseconds at
 * publish (see util.h). From that the loadgen derives publish-to-receive
 * latency and, per connection, lost (gaps), duplicated and out-of-order.
 *
 * The summary is one JSON object on stdout. In hold mode (-H) it also prints
 * a {"event":"ready"} line when every attempt is resolved and accepts
 * commands on stdin: "add N", "status [S]", "quit"; EOF on stdin stops it.
 * Run with no arguments for the option list.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* Limits, named so a failure can say which one it hit. */
#define LG_MAX_CONNS 19900         /* below `ulimit -n` 20000 with room for stdio and epoll */
#define LG_MAX_HEAD (64 * 1024)    /* response head */
#define LG_MAX_LINE (1024 * 1024)  /* one SSE line or one message_bus chunk */
#define LG_MAX_DATA (1024 * 1024)  /* one SSE event's data */
#define LG_READ_BUF (256 * 1024)
#define LG_MAX_EXPECT (1 << 22)    /* -e: per-connection seen-bitmap size */

enum mode { MODE_SSE, MODE_MB };
enum cstate { C_IDLE, C_CONNECTING, C_HEAD, C_BODY, C_WAIT_RETRY, C_DEAD };
enum ckstate { CK_SIZE, CK_EXT, CK_DATA, CK_DATA_END, CK_TRAILER, CK_END };

enum err {
    E_CONNECT, E_REFUSED, E_RESET, E_TIMEOUT, E_EOF_HEAD, E_STATUS, E_PROTO, E_SOCKET, E_NERR
};
static const char *err_names[E_NERR] = {
    "connect", "refused", "reset", "timeout", "eof_before_head", "bad_status", "protocol", "socket"
};

struct conn {
    int fd;
    uint8_t state;
    uint8_t chunked;
    uint8_t ever_ok;  /* counted in `connected` */
    uint8_t cr;       /* SSE: the previous span ended with CR */
    uint8_t body_seen; /* at least one body byte since the head */
    uint8_t ckstate;
    uint8_t ck_digits;
    uint8_t has_clen;
    uint16_t retries;
    int64_t clen;     /* remaining Content-Length when has_clen */
    int64_t ck_left;  /* chunk bytes left, or trailer line length */
    int64_t t_attempt; /* mono ns when this attempt started */
    char *buf;        /* head, partial line, or partial message_bus segment */
    uint32_t len, cap;
    char *data;       /* SSE data buffer of the event being assembled */
    uint32_t dlen, dcap;
    uint32_t msgs;
    uint32_t unique;
    uint32_t lost, dup, ooo;
    uint32_t polls;
    int64_t last_seq;  /* highest seq seen; -1 until the first one */
    int64_t mb_pos;    /* message_bus: last message id seen on our channel */
    uint64_t *seen;    /* bitmap of seqs 1..expect when -e is given */
    uint16_t local_port;
};

static struct {
    enum mode mode;
    struct url url;
    int target;          /* connections wanted */
    int launched;        /* connections whose first attempt started */
    int in_flight;       /* started, neither connected nor given up */
    int max_in_flight;
    int addr_lo, addr_hi;
    int max_retries;
    int64_t connect_timeout_ns;
    int64_t deadline_ns;   /* absolute mono, 0 = none */
    int64_t idle_ns;       /* stop after this long without a message, 0 = never */
    int64_t want_msgs;     /* -M */
    int64_t expect;        /* -e */
    int hold;
    int quiet;
    int ready_on_body;
    int64_t batch_ns;      /* -b: minimum loop period, lets bytes pile up per read */
    char mb_channel[256];
    char mb_channel_enc[768];

    int ep;
    struct conn *c;
    char *rbuf;

    /* counters */
    int connected, failed, closed_by_server, open;
    uint64_t retries, repolls, messages, other_events, comments, ids, retry_fields, bytes;
    uint64_t errs[E_NERR];
    int64_t first_pub_ns, first_rx_ns, last_rx_ns;
    int64_t start_real_ns, start_mono_ns, all_connected_mono_ns;
    int64_t last_msg_mono_ns;
    double cpu_at_first_rx;
    int ready_printed_for;
    int stdin_open;
    uint64_t connect_lat_sum_ns;
    int64_t connect_lat_max_ns;
} G;

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---------- latency histogram: 128 linear buckets, then 64 per octave (<1.6% error) ---------- */

#define H_SUB 64
#define H_BUCKETS (128 + 64 * 40)
static uint64_t hist[H_BUCKETS];
static uint64_t hist_n, hist_max_ns;
static double hist_sum_us;

static int h_index(uint64_t us)
{
    if (us < 128)
        return (int)us;
    int msb = 63 - __builtin_clzll(us);
    int shift = msb - 6;
    int idx = 128 + (msb - 7) * H_SUB + (int)((us >> shift) - 64);
    return idx < H_BUCKETS ? idx : H_BUCKETS - 1;
}

/* Midpoint of a bucket, in microseconds. */
static double h_value(int idx)
{
    if (idx < 128)
        return idx + 0.5;
    int octave = (idx - 128) / H_SUB;
    int sub = (idx - 128) % H_SUB;
    int shift = octave + 1;
    double lo = (double)((uint64_t)(sub + 64) << shift);
    return lo + (double)(1ULL << shift) / 2;
}

static void h_add(int64_t ns)
{
    if (ns < 0)
        ns = 0;
    uint64_t us = (uint64_t)ns / 1000;
    hist[h_index(us)]++;
    hist_n++;
    hist_sum_us += (double)us;
    if ((uint64_t)ns > hist_max_ns)
        hist_max_ns = (uint64_t)ns;
}

static double h_pct(double p)
{
    if (hist_n == 0)
        return 0;
    uint64_t want = (uint64_t)(p * (double)hist_n);
    if (want < 1)
        want = 1;
    uint64_t acc = 0;
    for (int i = 0; i < H_BUCKETS; i++) {
        acc += hist[i];
        if (acc >= want) {
            double v = h_value(i);
            double mx = (double)hist_max_ns / 1000.0;
            return v > mx ? mx : v;
        }
    }
    return (double)hist_max_ns / 1000.0;
}

/* ---------- buffers ---------- */

/* Append to a growable buffer; returns -1 when it would pass `limit`. */
static int grow_append(char **b, uint32_t *len, uint32_t *cap, const char *p, size_t n, size_t limit)
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

/* ---------- messages ---------- */

static void record(struct conn *c, int64_t seq, int64_t tns, int64_t now_real)
{
    G.messages++;
    c->msgs++;
    G.last_msg_mono_ns = mono_ns();
    h_add(now_real - tns);
    if (G.first_pub_ns == 0 || tns < G.first_pub_ns)
        G.first_pub_ns = tns;
    if (G.first_rx_ns == 0) {
        G.first_rx_ns = now_real;
        G.cpu_at_first_rx = cpu_now();
    }
    G.last_rx_ns = now_real;

    if (c->last_seq < 0)
        c->last_seq = G.expect > 0 ? 0 : seq - 1; /* with -e every seq from 1 is owed */
    int tracked = c->seen && seq >= 1 && seq <= G.expect;
    int was_seen = tracked && (c->seen[(seq - 1) >> 6] >> ((seq - 1) & 63) & 1);
    if (seq > c->last_seq) {
        if (seq > c->last_seq + 1)
            c->lost += (uint32_t)(seq - c->last_seq - 1);
        c->last_seq = seq;
        c->unique++;
    } else if (tracked) {
        if (was_seen)
            c->dup++;
        else {
            c->ooo++; /* it arrived late: it was counted as lost when the gap opened */
            if (c->lost)
                c->lost--;
            c->unique++;
        }
    } else if (seq == c->last_seq)
        c->dup++;
    else
        c->ooo++;
    if (tracked)
        c->seen[(seq - 1) >> 6] |= 1ULL << ((seq - 1) & 63);
}

/* A message's data: "<seq> <t_ns>[ ...]". Anything else is an "other" event. */
static void on_data(struct conn *c, const char *d, size_t n, int64_t now_real)
{
    size_t i = 0;
    int64_t seq = 0, tns = 0;
    while (i < n && d[i] >= '0' && d[i] <= '9')
        seq = seq * 10 + (d[i++] - '0');
    if (i == 0 || i >= n || d[i] != ' ') {
        G.other_events++;
        return;
    }
    size_t j = ++i;
    while (i < n && d[i] >= '0' && d[i] <= '9')
        tns = tns * 10 + (d[i++] - '0');
    if (i == j) {
        G.other_events++;
        return;
    }
    record(c, seq, tns, now_real);
}

/* ---------- SSE ---------- */

static int64_t g_now_real; /* CLOCK_REALTIME when the bytes being parsed were read */

static void sse_dispatch(struct conn *c)
{
    if (c->dlen == 0)
        return; /* per the spec: an event with an empty data buffer is not dispatched */
    size_t n = c->dlen;
    if (c->data[n - 1] == '\n')
        n--; /* drop the LF appended after the last data line */
    on_data(c, c->data, n, g_now_real);
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
        G.comments++;
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
        if (grow_append(&c->data, &c->dlen, &c->dcap, v, vl, LG_MAX_DATA) < 0 ||
            grow_append(&c->data, &c->dlen, &c->dcap, "\n", 1, LG_MAX_DATA) < 0)
            return -1;
    } else if (nl == 2 && memcmp(p, "id", 2) == 0) {
        if (!memchr(v, 0, vl))
            G.ids++;
    } else if (nl == 5 && memcmp(p, "retry", 5) == 0) {
        size_t k = 0;
        while (k < vl && v[k] >= '0' && v[k] <= '9')
            k++;
        if (k == vl && vl > 0)
            G.retry_fields++;
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
            if (grow_append(&c->buf, &c->len, &c->cap, p, rem, LG_MAX_LINE) < 0)
                return -1;
            return 0;
        }
        int r;
        if (c->len) {
            if (grow_append(&c->buf, &c->len, &c->cap, p, (size_t)(e - p), LG_MAX_LINE) < 0)
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
        if (out && q > p && grow_append(out, olen, ocap, p, (size_t)(q - p), LG_MAX_DATA) < 0)
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
        if (out && grow_append(out, olen, ocap, &ch, 1, LG_MAX_DATA) < 0)
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
        int ours = g_keylen == strlen(G.mb_channel) && memcmp(g_keyp, G.mb_channel, g_keylen) == 0;
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

/* One JSON array of messages. Returns -1 if it does not parse. */
static int mb_segment(struct conn *c, const char *p, size_t n)
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
        } else if (strcmp(chan, G.mb_channel) == 0) {
            if (msg_id > c->mb_pos)
                c->mb_pos = msg_id;
            if (data_is_str)
                on_data(c, c->data, c->dlen, g_now_real);
            else
                G.other_events++;
        }
        c->dlen = 0;
    }
}

static const char MB_SEP[] = "\r\n|\r\n";

static int mb_feed(struct conn *c, const char *p, size_t n)
{
    if (grow_append(&c->buf, &c->len, &c->cap, p, n, LG_MAX_LINE) < 0)
        return -1;
    size_t off = 0;
    for (;;) {
        char *s = memmem(c->buf + off, c->len - off, MB_SEP, 5);
        if (!s)
            break;
        if (mb_segment(c, c->buf + off, (size_t)(s - (c->buf + off))) < 0)
            return -1;
        off = (size_t)(s - c->buf) + 5;
    }
    if (off) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= (uint32_t)off;
    }
    return 0;
}

/* ---------- connections ---------- */

static void conn_start(int i);
static void conn_close_fd(struct conn *c);

static void mark_connected(struct conn *c);

static int body_consume(struct conn *c, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    int r = G.mode == MODE_SSE ? sse_feed(c, p, n) : mb_feed(c, p, n);
    c->body_seen = 1;
    if (!c->ever_ok)
        mark_connected(c);
    return r;
}

static void give_up(struct conn *c, enum err why)
{
    G.errs[why]++;
    conn_close_fd(c);
    if (!c->ever_ok && c->retries < G.max_retries && !g_stop) {
        c->retries++;
        G.retries++;
        c->state = C_WAIT_RETRY;
        c->t_attempt = mono_ns(); /* retry after a short back-off, see retry_due() */
        return;
    }
    if (c->ever_ok) {
        /* A message_bus re-poll that failed: the stream is gone. */
        G.open--;
        G.closed_by_server++;
    } else {
        G.failed++;
        G.in_flight--;
    }
    c->state = C_DEAD;
}

/* The server ended the response (terminating chunk, Content-Length, or EOF). */
static void end_of_response(struct conn *c)
{
    if (G.mode == MODE_MB && !c->chunked && c->len) {
        /* A plain (non-streaming) poll answer is one JSON array without separators. */
        mb_segment(c, c->buf, c->len);
        c->len = 0;
    }
    conn_close_fd(c);
    if (G.mode == MODE_MB && !g_stop) {
        G.repolls++;
        c->polls++;
        conn_start((int)(c - G.c));
        return;
    }
    G.open--;
    G.closed_by_server++;
    c->state = C_DEAD;
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

/* Body bytes as read from the socket. Returns 1 when the response is complete. */
static int body_feed(struct conn *c, const char *p, size_t n)
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

static void print_ready(void);

/* A stream counts as connected at its 200 head, or with -R at its first body
 * byte (for servers that subscribe upstream before they say anything). */
static void mark_connected(struct conn *c)
{
    if (c->ever_ok)
        return;
    c->ever_ok = 1;
    G.connected++;
    G.open++;
    G.in_flight--;
    int64_t lat = mono_ns() - c->t_attempt;
    G.connect_lat_sum_ns += (uint64_t)lat;
    if (lat > G.connect_lat_max_ns)
        G.connect_lat_max_ns = lat;
    if (G.connected + G.failed == G.target)
        G.all_connected_mono_ns = mono_ns();
}

static void head_done(struct conn *c, const char *h, size_t hl)
{
    int status = http_status(h, hl);
    if (status != 200) {
        if (!G.quiet && G.errs[E_STATUS] < 3)
            fprintf(stderr, "loadgen: status %d: %.*s\n", status, (int)(hl > 200 ? 200 : hl), h);
        give_up(c, E_STATUS);
        return;
    }
    size_t vl;
    const char *te = http_header(h, hl, "Transfer-Encoding:", &vl);
    c->chunked = te && memcasemem(te, vl, "chunked") != NULL;
    const char *cl = http_header(h, hl, "Content-Length:", &vl);
    c->has_clen = !c->chunked && cl != NULL;
    c->clen = c->has_clen ? atoll(cl) : 0;
    c->ckstate = CK_SIZE;
    c->ck_left = 0;
    c->ck_digits = 0;
    c->state = C_BODY;
    c->body_seen = 0;
    c->cr = 0;
    if (!G.ready_on_body)
        mark_connected(c);
}

static void on_readable(struct conn *c)
{
    ssize_t n = read(c->fd, G.rbuf, LG_READ_BUF);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        if (c->state == C_HEAD) {
            give_up(c, errno == ECONNRESET ? E_RESET : E_SOCKET);
            return;
        }
        G.errs[errno == ECONNRESET ? E_RESET : E_SOCKET]++;
        end_of_response(c);
        return;
    }
    g_now_real = real_ns();
    G.bytes += (uint64_t)n;
    if (n == 0) {
        if (c->state == C_HEAD)
            give_up(c, E_EOF_HEAD);
        else
            end_of_response(c);
        return;
    }
    const char *p = G.rbuf;
    size_t len = (size_t)n;
    if (c->state == C_HEAD) {
        size_t old = c->len;
        if (grow_append(&c->buf, &c->len, &c->cap, p, len, LG_MAX_HEAD) < 0) {
            give_up(c, E_PROTO);
            return;
        }
        size_t from = old > 3 ? old - 3 : 0;
        char *eoh = memmem(c->buf + from, c->len - from, "\r\n\r\n", 4);
        size_t seplen = 4;
        if (!eoh) {
            eoh = memmem(c->buf + from, c->len - from, "\n\n", 2);
            seplen = 2;
        }
        if (!eoh)
            return;
        size_t hl = (size_t)(eoh - c->buf) + seplen;
        size_t rest = c->len - hl;
        /* Leftover body bytes sit at the end of the read buffer: parse them from there. */
        p = G.rbuf + (len - rest);
        len = rest;
        head_done(c, c->buf, hl);
        c->len = 0;
        if (c->state != C_BODY)
            return;
        if (c->has_clen && c->clen == 0) {
            end_of_response(c);
            return;
        }
    }
    int r = body_feed(c, p, len);
    if (r < 0) {
        G.errs[E_PROTO]++;
        c->len = 0;
        conn_close_fd(c);
        G.open--;
        G.closed_by_server++;
        c->state = C_DEAD;
        return;
    }
    if (r > 0)
        end_of_response(c);
}

static void conn_close_fd(struct conn *c)
{
    if (c->fd >= 0) {
        close(c->fd); /* close() also drops it from the epoll set */
        c->fd = -1;
    }
    c->len = 0;
    c->dlen = 0;
}

static void send_request(struct conn *c, int idx)
{
    char req[2048];
    int n;
    if (G.mode == MODE_SSE) {
        n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\nUser-Agent: spillway-loadgen\r\n\r\n",
                     G.url.path, G.url.host, G.url.port);
    } else {
        char body[1024];
        int bl = snprintf(body, sizeof body, "%s=%lld&__seq=%u", G.mb_channel_enc,
                          (long long)c->mb_pos, c->polls + 1);
        n = snprintf(req, sizeof req,
                     "POST %s/lg%dx%d/poll HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: spillway-loadgen\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s",
                     G.url.path, (int)getpid(), idx, G.url.host, G.url.port, bl, body);
    }
    ssize_t w = send(c->fd, req, (size_t)n, MSG_NOSIGNAL);
    if (w != n) {
        give_up(c, E_SOCKET);
        return;
    }
    c->state = C_HEAD;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
    epoll_ctl(G.ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void on_writable(struct conn *c, int idx)
{
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        give_up(c, err == ECONNREFUSED ? E_REFUSED : E_CONNECT);
        return;
    }
    send_request(c, idx);
}

static void conn_start(int i)
{
    struct conn *c = &G.c[i];
    c->t_attempt = mono_ns();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        if (!G.quiet)
            fprintf(stderr, "loadgen: socket(): %s\n", strerror(errno));
        c->fd = -1;
        give_up(c, E_SOCKET);
        return;
    }
    c->fd = fd;
    int one = 1;
    setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET};
    int span = G.addr_hi - G.addr_lo + 1;
    src.sin_addr.s_addr = htonl((127u << 24) | (uint32_t)(G.addr_lo + i % span));
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
        if (!G.quiet)
            fprintf(stderr, "loadgen: bind(): %s\n", strerror(errno));
        give_up(c, E_SOCKET);
        return;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)G.url.port)};
    inet_pton(AF_INET, G.url.host, &dst.sin_addr);
    int r = connect(fd, (struct sockaddr *)&dst, sizeof dst);
    if (r < 0 && errno != EINPROGRESS) {
        give_up(c, errno == ECONNREFUSED ? E_REFUSED : E_CONNECT);
        return;
    }
    struct sockaddr_in me;
    socklen_t ml = sizeof me;
    if (getsockname(fd, (struct sockaddr *)&me, &ml) == 0)
        c->local_port = ntohs(me.sin_port);
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
    epoll_ctl(G.ep, EPOLL_CTL_ADD, fd, &ev);
    c->state = C_CONNECTING;
}

/* ---------- reporting ---------- */

static void conn_stats(uint64_t *lost, uint64_t *dup, uint64_t *ooo, uint64_t *missing,
                       int64_t *minm, int64_t *maxm, int *with_all)
{
    *lost = *dup = *ooo = *missing = 0;
    *minm = -1;
    *maxm = 0;
    *with_all = 0;
    for (int i = 0; i < G.launched; i++) {
        struct conn *c = &G.c[i];
        if (!c->ever_ok)
            continue;
        *lost += c->lost;
        *dup += c->dup;
        *ooo += c->ooo;
        if (G.expect > 0 && c->unique < G.expect)
            *missing += (uint64_t)(G.expect - c->unique);
        if (*minm < 0 || c->msgs < *minm)
            *minm = c->msgs;
        if (c->msgs > *maxm)
            *maxm = c->msgs;
        if (G.want_msgs > 0 && c->msgs >= G.want_msgs)
            (*with_all)++;
    }
    if (*minm < 0)
        *minm = 0;
}

static void print_ready(void)
{
    int lp = G.launched > 0 ? G.c[0].local_port : 0;
    printf("{\"event\":\"ready\",\"target\":%d,\"connected\":%d,\"failed\":%d,\"open\":%d,"
           "\"first_local_addr\":\"127.0.0.%d\",\"first_local_port\":%d,\"elapsed_s\":%.3f}\n",
           G.target, G.connected, G.failed, G.open, G.addr_lo, lp,
           (double)(mono_ns() - G.start_mono_ns) / 1e9);
    fflush(stdout);
}

static void print_status(int64_t seq)
{
    int have = 0;
    for (int i = 0; i < G.launched; i++)
        if (G.c[i].ever_ok && G.c[i].state != C_DEAD && G.c[i].last_seq >= seq)
            have++;
    printf("{\"event\":\"status\",\"target\":%d,\"launched\":%d,\"connected\":%d,\"failed\":%d,"
           "\"open\":%d,\"closed_by_server\":%d,\"in_flight\":%d,\"messages\":%llu,\"seq\":%lld,"
           "\"have_seq\":%d,\"repolls\":%llu}\n",
           G.target, G.launched, G.connected, G.failed, G.open, G.closed_by_server, G.in_flight,
           (unsigned long long)G.messages, (long long)seq, have, (unsigned long long)G.repolls);
    fflush(stdout);
}

static void print_summary(void)
{
    uint64_t lost, dup, ooo, missing;
    int64_t minm, maxm;
    int with_all;
    conn_stats(&lost, &dup, &ooo, &missing, &minm, &maxm, &with_all);
    double cpu = cpu_now();
    /* CPU spent from the first message on, over the receive window: near 1.0
     * means the loadgen itself was the bottleneck of that run. */
    double rx_window = G.last_rx_ns > G.first_rx_ns ? (double)(G.last_rx_ns - G.first_rx_ns) / 1e9 : 0;
    double busy = rx_window > 0 ? (cpu - G.cpu_at_first_rx) / rx_window : 0;
    /* The measurement window runs from the earliest publish stamp seen to the
     * last receive: it covers publishing and fan-out, and needs no agreement
     * between publisher and loadgen about when "start" was. */
    double window = 0;
    if (G.messages && G.last_rx_ns > G.first_pub_ns)
        window = (double)(G.last_rx_ns - G.first_pub_ns) / 1e9;
    printf("{\"mode\":\"%s\",\"url\":\"http://%s:%d%s\",\"target\":%d,\"connected\":%d,\"failed\":%d,"
           "\"retries\":%llu,\"closed_by_server\":%d,\"open_at_end\":%d,\"repolls\":%llu,"
           "\"messages\":%llu,\"other_events\":%llu,\"comments\":%llu,\"ids\":%llu,"
           "\"expect_per_conn\":%lld,\"conns_with_all\":%d,\"min_per_conn\":%lld,\"max_per_conn\":%lld,"
           "\"lost\":%llu,\"missing\":%llu,\"dup\":%llu,\"ooo\":%llu,"
           "\"first_publish_ns\":%lld,\"first_rx_ns\":%lld,\"last_rx_ns\":%lld,\"window_s\":%.6f,"
           "\"deliveries_per_s\":%.1f,"
           "\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f},"
           "\"connect_s\":{\"all\":%.3f,\"mean\":%.4f,\"max\":%.3f},"
           "\"bytes\":%llu,\"cpu_s\":%.3f,\"cpu_busy_in_window\":%.3f,\"deliveries_per_cpu_s\":%.0f,\"wall_s\":%.3f,\"errors\":{",
           G.mode == MODE_SSE ? "sse" : "mb", G.url.host, G.url.port, G.url.path, G.target,
           G.connected, G.failed, (unsigned long long)G.retries, G.closed_by_server, G.open,
           (unsigned long long)G.repolls, (unsigned long long)G.messages,
           (unsigned long long)G.other_events, (unsigned long long)G.comments,
           (unsigned long long)G.ids, (long long)G.expect, with_all, (long long)minm, (long long)maxm,
           (unsigned long long)lost, (unsigned long long)missing, (unsigned long long)dup,
           (unsigned long long)ooo, (long long)G.first_pub_ns, (long long)G.first_rx_ns,
           (long long)G.last_rx_ns, window, window > 0 ? (double)G.messages / window : 0.0,
           h_pct(0.50) / 1000, h_pct(0.90) / 1000, h_pct(0.99) / 1000, h_pct(0.999) / 1000,
           (double)hist_max_ns / 1e6, hist_n ? hist_sum_us / (double)hist_n / 1000 : 0.0,
           G.all_connected_mono_ns ? (double)(G.all_connected_mono_ns - G.start_mono_ns) / 1e9 : -1.0,
           G.connected ? (double)G.connect_lat_sum_ns / G.connected / 1e9 : 0.0,
           (double)G.connect_lat_max_ns / 1e9, (unsigned long long)G.bytes, cpu, busy,
           cpu > 0 ? (double)G.messages / cpu : 0.0, (double)(mono_ns() - G.start_mono_ns) / 1e9);
    int first = 1;
    for (int i = 0; i < E_NERR; i++) {
        if (!G.errs[i])
            continue;
        printf("%s\"%s\":%llu", first ? "" : ",", err_names[i], (unsigned long long)G.errs[i]);
        first = 0;
    }
    printf("}}\n");
    fflush(stdout);
}

/* ---------- stdin commands (hold mode) ---------- */

static char g_cmd[4096];
static size_t g_cmdlen;

static void set_target(int t)
{
    if (t > LG_MAX_CONNS) {
        fprintf(stderr, "loadgen: %d connections is over LG_MAX_CONNS (%d); use more processes\n", t,
                LG_MAX_CONNS);
        t = LG_MAX_CONNS;
    }
    G.target = t;
    G.all_connected_mono_ns = 0;
}

static void on_stdin(void)
{
    ssize_t n = read(0, g_cmd + g_cmdlen, sizeof g_cmd - 1 - g_cmdlen);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            epoll_ctl(G.ep, EPOLL_CTL_DEL, 0, NULL);
            G.stdin_open = 0;
            if (G.hold)
                g_stop = 1;
        }
        return;
    }
    g_cmdlen += (size_t)n;
    char *nl;
    while ((nl = memchr(g_cmd, '\n', g_cmdlen))) {
        *nl = 0;
        if (strncmp(g_cmd, "add ", 4) == 0)
            set_target(G.target + atoi(g_cmd + 4));
        else if (strncmp(g_cmd, "status", 6) == 0)
            print_status(atoll(g_cmd + 6));
        else if (strcmp(g_cmd, "quit") == 0)
            g_stop = 1;
        size_t used = (size_t)(nl - g_cmd) + 1;
        memmove(g_cmd, nl + 1, g_cmdlen - used);
        g_cmdlen -= used;
    }
    if (g_cmdlen == sizeof g_cmd - 1)
        g_cmdlen = 0;
}

/* ---------- main ---------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen [options] URL\n"
            "  -m sse|mb     protocol (default sse). For mb, URL is message_bus's base\n"
            "                (http://127.0.0.1:P/message-bus) and -C names the channel\n"
            "  -C CHANNEL    message_bus channel (e.g. /bench)\n"
            "  -c N          connections (default 1, at most %d per process)\n"
            "  -k K          connection attempts in flight at once (default 256)\n"
            "  -a LO-HI      client source addresses 127.0.0.LO..HI (default 2-250)\n"
            "  -r R          retries per connection before it counts as failed (default 3)\n"
            "  -T SEC        connect timeout: request sent to response head (default 30)\n"
            "  -M N          stop once every connection has N messages\n"
            "  -e N          messages 1..N are owed to every connection: count missing/dup/ooo\n"
            "                exactly with a bitmap (use together with -M N)\n"
            "  -t SEC        stop after SEC seconds in any case\n"
            "  -i SEC        stop SEC seconds after the last message (once one arrived)\n"
            "  -H            hold mode: take stdin commands (add N, status [S], quit), stop on EOF\n"
            "  -R            a stream counts as connected at its first body byte, not its head\n"
            "  -b MS         poll at most once per MS milliseconds (e.g. 1): messages pile up\n"
            "                and one read() takes several, so the loadgen spends less CPU per\n"
            "                delivery; adds up to MS to the measured latency\n"
            "  -q            fewer messages on stderr\n",
            LG_MAX_CONNS);
    exit(2);
}

int main(int argc, char **argv)
{
    G.mode = MODE_SSE;
    G.target = 1;
    G.max_in_flight = 256;
    G.addr_lo = 2;
    G.addr_hi = 250;
    G.max_retries = 3;
    G.connect_timeout_ns = 30LL * 1000000000LL;
    int opt;
    double t_total = 0, t_idle = 0;
    while ((opt = getopt(argc, argv, "m:C:c:k:a:r:T:M:e:t:i:HRb:q")) != -1) {
        switch (opt) {
        case 'm':
            if (strcmp(optarg, "sse") == 0)
                G.mode = MODE_SSE;
            else if (strcmp(optarg, "mb") == 0)
                G.mode = MODE_MB;
            else
                usage();
            break;
        case 'C': snprintf(G.mb_channel, sizeof G.mb_channel, "%s", optarg); break;
        case 'c': G.target = atoi(optarg); break;
        case 'k': G.max_in_flight = atoi(optarg); break;
        case 'a':
            if (sscanf(optarg, "%d-%d", &G.addr_lo, &G.addr_hi) != 2 || G.addr_lo < 1 ||
                G.addr_hi > 254 || G.addr_lo > G.addr_hi)
                usage();
            break;
        case 'r': G.max_retries = atoi(optarg); break;
        case 'T': G.connect_timeout_ns = (int64_t)(atof(optarg) * 1e9); break;
        case 'M': G.want_msgs = atoll(optarg); break;
        case 'e': G.expect = atoll(optarg); break;
        case 't': t_total = atof(optarg); break;
        case 'i': t_idle = atof(optarg); break;
        case 'H': G.hold = 1; break;
        case 'R': G.ready_on_body = 1; break;
        case 'b': G.batch_ns = (int64_t)(atof(optarg) * 1e6); break;
        case 'q': G.quiet = 1; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || url_parse(argv[optind], &G.url) < 0)
        usage();
    if (G.mode == MODE_MB && !G.mb_channel[0]) {
        fprintf(stderr, "loadgen: -m mb needs -C CHANNEL\n");
        return 2;
    }
    if (G.expect > LG_MAX_EXPECT) {
        fprintf(stderr, "loadgen: -e %lld is over LG_MAX_EXPECT (%d)\n", (long long)G.expect, LG_MAX_EXPECT);
        return 2;
    }
    /* form-encode the message_bus channel name (it usually starts with '/') */
    {
        char *o = G.mb_channel_enc;
        for (const char *s = G.mb_channel; *s; s++) {
            unsigned char ch = (unsigned char)*s;
            if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                ch == '-' || ch == '_' || ch == '.' || ch == '~')
                *o++ = (char)ch;
            else
                o += sprintf(o, "%%%02X", ch);
        }
        *o = 0;
    }
    long nofile = raise_nofile();
    if (G.target > LG_MAX_CONNS || (nofile > 0 && G.target > nofile - 16)) {
        fprintf(stderr, "loadgen: -c %d is over the per-process limit (%d, ulimit -n %ld)\n", G.target,
                LG_MAX_CONNS, nofile);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    G.c = calloc(LG_MAX_CONNS, sizeof *G.c);
    G.rbuf = malloc(LG_READ_BUF);
    if (!G.c || !G.rbuf)
        return 2;
    for (int i = 0; i < LG_MAX_CONNS; i++) {
        G.c[i].fd = -1;
        G.c[i].last_seq = -1;
        G.c[i].mb_pos = -1; /* message_bus: -1 = "from now on", as its JS client starts */
    }
    G.ep = epoll_create1(EPOLL_CLOEXEC);
    G.start_mono_ns = mono_ns();
    G.start_real_ns = real_ns();
    G.deadline_ns = t_total > 0 ? G.start_mono_ns + (int64_t)(t_total * 1e9) : 0;
    G.idle_ns = (int64_t)(t_idle * 1e9);
    G.ready_printed_for = -1;

    {
        int fl = fcntl(0, F_GETFL);
        if (fl >= 0)
            fcntl(0, F_SETFL, fl | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        G.stdin_open = epoll_ctl(G.ep, EPOLL_CTL_ADD, 0, &ev) == 0;
    }

    struct epoll_event evs[1024];
    int64_t last_scan = 0;
    while (!g_stop) {
        int64_t loop_start = mono_ns();
        /* launch new connections, never more than max_in_flight unresolved */
        while (G.launched < G.target && G.in_flight < G.max_in_flight) {
            int i = G.launched++;
            G.in_flight++;
            if (G.expect > 0 && !G.c[i].seen) {
                G.c[i].seen = calloc((size_t)(G.expect + 63) / 64, 8);
                if (!G.c[i].seen)
                    return 2;
            }
            conn_start(i);
        }
        int n = epoll_wait(G.ep, evs, 1024, 20);
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            if (id == UINT32_MAX) {
                on_stdin();
                continue;
            }
            struct conn *c = &G.c[id];
            if (c->fd < 0)
                continue;
            if (c->state == C_CONNECTING) {
                if (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                    on_writable(c, (int)id);
            } else if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(c);
        }
        int64_t now = mono_ns();
        int scan = now - last_scan > 50 * 1000000LL;
        if (scan) {
            last_scan = now;
            /* retries after back-off, and connect timeouts */
            for (int i = 0; i < G.launched; i++) {
                struct conn *c = &G.c[i];
                if (c->state == C_WAIT_RETRY && now - c->t_attempt > 100 * 1000000LL * c->retries)
                    conn_start(i);
                else if ((c->state == C_CONNECTING || c->state == C_HEAD) && !c->ever_ok &&
                         now - c->t_attempt > G.connect_timeout_ns)
                    give_up(c, E_TIMEOUT);
            }
        }
        if (G.launched == G.target && G.connected + G.failed == G.target &&
            G.ready_printed_for != G.target) {
            G.ready_printed_for = G.target;
            print_ready();
        }
        if (G.deadline_ns && now >= G.deadline_ns)
            break;
        if (G.batch_ns && n > 0 && now - loop_start < G.batch_ns) {
            int64_t rest = G.batch_ns - (now - loop_start);
            struct timespec ts = {.tv_sec = rest / 1000000000LL, .tv_nsec = rest % 1000000000LL};
            nanosleep(&ts, NULL);
        }
        if (G.hold)
            continue;
        int resolved = G.launched == G.target && G.connected + G.failed == G.target;
        if (resolved && G.open == 0 && G.mode == MODE_SSE)
            break; /* nothing left to listen to */
        if (G.idle_ns && G.messages && now - G.last_msg_mono_ns > G.idle_ns)
            break;
        if (scan && resolved && G.want_msgs > 0) {
            int done = 1;
            for (int i = 0; i < G.launched && done; i++) {
                struct conn *c = &G.c[i];
                if (c->ever_ok && c->state != C_DEAD && c->msgs < G.want_msgs)
                    done = 0;
            }
            if (done)
                break;
        }
    }
    g_stop = 1;
    print_summary();
    return 0;
}
