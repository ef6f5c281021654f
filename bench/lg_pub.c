/*
 * The lockstep (closed-loop) publisher: -P URL.
 *
 * The loadgen publishes batch b+1 only when every open stream has received
 * every message of batches 1..b, so no server can coalesce across batches:
 *
 *   -K 1    "one message at a time": the pure per-message fan-out cost.
 *   -K 100  "bursts of 100": 100 messages back to back, then wait until
 *           every stream has all of them. This is where coalescing shows.
 *
 * It speaks HTTP/1.1 on one keep-alive connection of its own, in the same
 * epoll loop as the streams (so it sees each stream's progress the moment it
 * is parsed, and nothing has to cross a process boundary):
 *
 *   app  one POST URL&count=K per batch (body: the padding); the peer app
 *        publishes K messages and stamps each one right before its publish
 *        call (live, message_bus, spillway).
 *   raw  K pipelined POST URL per batch, in one write; each body is
 *        "<seq> <t_ns>[ pad]", stamped here while the batch is built
 *        (nchan and the ceiling take the message body as is).
 *
 * The next batch does not wait for the answers to the previous one (a
 * server may answer before or after its fan-out; only delivery counts).
 * Answers are read and counted; a non-2xx answer is reported.
 *
 * Result: deliveries/s = (streams x messages of the complete batches) /
 * (last receive of the last complete batch - the moment the first batch was
 * written), all on CLOCK_REALTIME, plus the per-batch round times.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lg.h"

#define PUB_MAX_PAD (1024 * 1024)
#define PUB_MAX_BATCH 10000

static struct lg_pub *const P = &lg.pub;
static double cpu_at_first_send, cpu_at_done;
static int64_t done_mono_ns;

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        fprintf(stderr, "loadgen: out of memory\n");
        exit(2);
    }
    return q;
}

static void watch(uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.u32 = LG_ID_PUB};
    epoll_ctl(lg.ep, EPOLL_CTL_MOD, P->fd, &ev);
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "loadgen: publisher socket(): %s\n", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)P->url.port)};
    inet_pton(AF_INET, P->url.host, &a.sin_addr);
    /* A blocking connect on loopback: immediate, and done before any stream. */
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "loadgen: publisher connect %s:%d: %s\n", P->url.host, P->url.port, strerror(errno));
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = LG_ID_PUB};
    if (epoll_ctl(lg.ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        fprintf(stderr, "loadgen: publisher epoll_ctl: %s\n", strerror(errno));
        close(fd);
        return -1;
    }
    P->fd = fd;
    P->in_len = 0;
    return 0;
}

/* Checks the options. The connection is made right before the first batch:
 * Puma closes a connection that sends nothing for 30 s (first_data_timeout),
 * and opening thousands of streams can take longer. */
int lg_pub_start(void)
{
    if (P->batch < 1 || P->batch > PUB_MAX_BATCH || P->total < 1 || P->size > PUB_MAX_PAD) {
        fprintf(stderr, "loadgen: -K must be 1..%d, -n at least 1, -s at most %d\n", PUB_MAX_BATCH,
                PUB_MAX_PAD);
        return -1;
    }
    /* The stamp "<seq> <t_ns> " takes about 32 bytes; pad the rest with 'x'. */
    P->padlen = P->size > 32 ? (size_t)P->size - 32 : 0;
    P->pad = xrealloc(NULL, P->padlen + 1);
    memset(P->pad, 'x', P->padlen);
    P->pad[P->padlen] = 0;
    P->go = !P->wait_go;
    P->fd = -1;
    return 0;
}

static void out_append(const char *s, size_t n)
{
    if (P->out_len + n > P->out_cap) {
        size_t nc = P->out_cap ? P->out_cap : 65536;
        while (nc < P->out_len + n)
            nc *= 2;
        P->out = xrealloc(P->out, nc);
        P->out_cap = nc;
    }
    memcpy(P->out + P->out_len, s, n);
    P->out_len += n;
}

static void flush_out(void)
{
    while (P->out_off < P->out_len) {
        ssize_t w = send(P->fd, P->out + P->out_off, P->out_len - P->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                watch(EPOLLIN | EPOLLOUT);
                return;
            }
            return; /* the read side sees the broken connection */
        }
        P->out_off += (size_t)w;
    }
    P->out_off = P->out_len = 0;
    watch(EPOLLIN);
}

static void finish(void);

static void send_batch(void)
{
    int64_t k = P->total - P->published < P->batch ? P->total - P->published : P->batch;
    char head[2048];
    if (P->fd < 0 && dial() < 0) {
        P->errors++;
        finish();
        return;
    }
    int64_t now = real_ns();
    if (!P->first_send_real_ns) {
        P->first_send_real_ns = now;
        P->first_send_mono_ns = mono_ns();
        cpu_at_first_send = lg_cpu_now();
    }
    P->batch_send_real_ns = now;
    P->batch_send_mono_ns = mono_ns();
    /* Nobody can have a message of this batch yet. */
    P->target = P->published + k;
    P->batch_k = k;
    P->reached = 0;
    P->batches++;
    if (P->raw) {
        for (int64_t i = 0; i < k; i++) {
            char stamp[64];
            int sl = snprintf(stamp, sizeof stamp, "%lld %lld%s", (long long)(P->published + 1 + i),
                              (long long)real_ns(), P->padlen ? " " : "");
            int hl = snprintf(head, sizeof head,
                              "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\n"
                              "Content-Length: %zu\r\n\r\n",
                              P->url.path, P->url.host, P->url.port, (size_t)sl + P->padlen);
            out_append(head, (size_t)hl);
            out_append(stamp, (size_t)sl);
            out_append(P->pad, P->padlen);
        }
        P->requests += k;
    } else {
        int hl = snprintf(head, sizeof head,
                          "POST %s%ccount=%lld HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\n"
                          "Content-Length: %zu\r\n\r\n",
                          P->url.path, strchr(P->url.path, '?') ? '&' : '?', (long long)k, P->url.host,
                          P->url.port, P->padlen);
        out_append(head, (size_t)hl);
        out_append(P->pad, P->padlen);
        P->requests++;
    }
    P->published += k;
    flush_out();
}

static void finish(void)
{
    P->done = 1;
    cpu_at_done = lg_cpu_now();
    done_mono_ns = mono_ns();
}

void lg_pub_tick(void)
{
    if (!P->on || P->done || !P->go)
        return;
    int resolved = lg.launched == lg.target && lg.connected + lg.failed == lg.target;
    if (P->batches == 0) {
        if (!resolved)
            return;
        if (lg.open == 0) {
            fprintf(stderr, "loadgen: no open stream to publish to\n");
            finish();
            return;
        }
        send_batch();
        return;
    }
    if (P->reached >= lg.open && P->batches_done < P->batches) {
        /* Every open stream has every message so far. */
        int64_t round = lg.last_rx_ns - P->batch_send_real_ns;
        if (P->batches_done >= P->round_cap) {
            P->round_cap = P->round_cap ? P->round_cap * 2 : 256;
            P->round_ns = xrealloc(P->round_ns, (size_t)P->round_cap * sizeof *P->round_ns);
        }
        P->round_ns[P->batches_done++] = round;
        P->done_real_ns = lg.last_rx_ns;
        P->delivered_done += (int64_t)lg.open * P->batch_k;
        P->messages_done += P->batch_k;
        int out_of_time = P->duration_ns && mono_ns() - P->first_send_mono_ns >= P->duration_ns && P->batches_done >= P->min_batches;
        if (P->published >= P->total || out_of_time || lg.open == 0)
            finish();
        else
            send_batch();
        return;
    }
    if (P->stall_ns && mono_ns() - P->batch_send_mono_ns > P->stall_ns) {
        fprintf(stderr, "loadgen: lockstep stalled: %d of %d open streams have seq %lld after %.1f s\n",
                P->reached, lg.open, (long long)P->target, (double)P->stall_ns / 1e9);
        P->stalled = 1;
        finish();
    }
}

/* ---------- answers ---------- */

/* One complete response at the start of P->in: its length, 0 if it is not
 * all there yet, -1 if it does not parse. *status gets its status code. */
static ssize_t answer_len(int *status)
{
    char *eoh = memmem(P->in, P->in_len, "\r\n\r\n", 4);
    if (!eoh)
        return P->in_len > LG_MAX_HEAD ? -1 : 0;
    size_t hl = (size_t)(eoh - P->in) + 4;
    *status = http_status(P->in, hl);
    if (*status < 0)
        return -1;
    size_t vl;
    const char *te = http_header(P->in, hl, "Transfer-Encoding:", &vl);
    if (te && memcasemem(te, vl, "chunked")) {
        size_t off = hl;
        for (;;) {
            char *nl = memmem(P->in + off, P->in_len - off, "\r\n", 2);
            if (!nl)
                return 0;
            long long sz = strtoll(P->in + off, NULL, 16);
            if (sz < 0)
                return -1;
            off = (size_t)(nl - P->in) + 2;
            if (P->in_len < off + (size_t)sz + 2)
                return 0;
            off += (size_t)sz + 2; /* the chunk and its CRLF; no trailers from these servers */
            if (sz == 0)
                return (ssize_t)off;
        }
    }
    const char *cl = http_header(P->in, hl, "Content-Length:", &vl);
    size_t blen = cl ? (size_t)atoll(cl) : 0;
    if (P->in_len < hl + blen)
        return 0;
    return (ssize_t)(hl + blen);
}

static void parse_answers(void)
{
    for (;;) {
        int status = 0;
        ssize_t n = answer_len(&status);
        if (n == 0)
            return;
        if (n < 0) {
            fprintf(stderr, "loadgen: publisher: an answer that does not parse: %.*s\n",
                    (int)(P->in_len > 200 ? 200 : P->in_len), P->in);
            P->errors++;
            P->in_len = 0;
            return;
        }
        P->answers++;
        if (status >= 200 && status < 300)
            P->ok++;
        else {
            P->bad_status++;
            if (P->bad_status <= 3)
                fprintf(stderr, "loadgen: publisher: status %d\n", status);
        }
        memmove(P->in, P->in + n, P->in_len - (size_t)n);
        P->in_len -= (size_t)n;
    }
}

void lg_pub_on_event(uint32_t events)
{
    if (events & EPOLLOUT)
        flush_out();
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    for (;;) {
        if (P->in_cap - P->in_len < 65536) {
            P->in_cap = P->in_cap ? P->in_cap * 2 : 65536;
            P->in = xrealloc(P->in, P->in_cap);
        }
        ssize_t n = read(P->fd, P->in + P->in_len, P->in_cap - P->in_len);
        if (n > 0) {
            P->in_len += (size_t)n;
            parse_answers();
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        /* The server closed the publishing connection. Requests it did not
         * answer are errors (their messages may never come: the stall
         * timeout ends the run then); the next batch goes on a new one. */
        int64_t unanswered = P->requests - P->answers;
        if (unanswered > 0) {
            fprintf(stderr, "loadgen: publisher: connection closed with %lld requests unanswered\n",
                    (long long)unanswered);
            P->errors += unanswered;
            P->answers = P->requests;
        }
        P->reconnects++;
        close(P->fd); /* also leaves the epoll set */
        P->fd = -1;
        P->out_len = P->out_off = 0; /* the next batch dials again */
        return;
    }
}

/* ---------- stream progress ---------- */

void lg_pub_reached(struct conn *c, uint32_t before)
{
    if (P->on && P->target > 0 && before < P->target && c->unique >= P->target)
        P->reached++;
}

void lg_pub_conn_lost(struct conn *c)
{
    if (!P->on)
        return;
    if (P->target > 0 && c->unique >= P->target)
        P->reached--;
    if (c->unique < P->published)
        P->failed_streams++;
}

int lg_pub_finished(void)
{
    if (!P->on || !P->done)
        return 0;
    /* Give the last answers a moment; they are counted, not waited for. */
    return P->answers >= P->requests || mono_ns() - done_mono_ns > 2000000000LL;
}

/* ---------- report ---------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(const int64_t *sorted, int64_t n, double p)
{
    if (n == 0)
        return 0;
    int64_t i = (int64_t)(p * (double)(n - 1) + 0.5);
    return (double)sorted[i] / 1e6;
}

void lg_pub_print(void)
{
    if (!P->on)
        return;
    if (!P->done)
        finish(); /* the run ended early (deadline, signal): report what completed */
    double window = P->done_real_ns > P->first_send_real_ns
                        ? (double)(P->done_real_ns - P->first_send_real_ns) / 1e9 : 0;
    double cpu = cpu_at_done - cpu_at_first_send;
    double wall = (double)(done_mono_ns - P->first_send_mono_ns) / 1e9;
    int64_t n = P->batches_done;
    qsort(P->round_ns, (size_t)n, sizeof *P->round_ns, cmp_i64);
    printf(",\"lockstep\":{\"mode\":\"%s\",\"batch\":%lld,\"published\":%lld,\"batches\":%lld,"
           "\"batches_complete\":%lld,\"messages_complete\":%lld,\"deliveries\":%lld,\"window_s\":%.6f,"
           "\"deliveries_per_s\":%.1f,\"round_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
           "\"stalled\":%s,\"streams_lost\":%d,\"requests\":%lld,\"answers\":%lld,\"ok\":%lld,"
           "\"bad_status\":%lld,\"errors\":%lld,\"reconnects\":%lld,\"loadgen_cpu_s\":%.3f,"
           "\"loadgen_cpu_busy\":%.3f}",
           P->raw ? "raw" : "app", (long long)P->batch, (long long)P->published, (long long)P->batches,
           (long long)n, (long long)P->messages_done,
           (long long)P->delivered_done, window, window > 0 ? (double)P->delivered_done / window : 0.0,
           pct_ms(P->round_ns, n, 0.5), pct_ms(P->round_ns, n, 0.9), pct_ms(P->round_ns, n, 0.99),
           n ? (double)P->round_ns[n - 1] / 1e6 : 0.0, P->stalled ? "true" : "false", P->failed_streams,
           (long long)P->requests, (long long)P->answers, (long long)P->ok, (long long)P->bad_status,
           (long long)P->errors, (long long)P->reconnects, cpu, wall > 0 ? cpu / wall : 0.0);
}
