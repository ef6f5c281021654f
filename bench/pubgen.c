/*
 * pubgen — the benchmark publisher. One keep-alive HTTP/1.1 connection,
 * blocking I/O (it sends little and must not be the bottleneck).
 *
 * Every message's data starts with "<seq> <t_ns>" (seq from 1 per channel,
 * t_ns = CLOCK_REALTIME nanoseconds at publish), optionally padded. Who
 * writes that stamp depends on the mode:
 *
 *   app  One request per burst: POST URL&count=K&seq=S, body = the padding.
 *        The peer app publishes K messages (seqs S..S+K-1) and stamps each
 *        one itself, right before it hands it to its publish call (live,
 *        message_bus, spillway; only a peer that may run several processes,
 *        spillway, needs the seq: the others count per process).
 *   raw  One request per message: POST URL, body = "<seq> <t_ns> pad",
 *        stamped here right before the burst's write(). A burst of K is K
 *        pipelined requests in one write (nchan, ceiling: no app to stamp).
 *
 * Pacing: with -R 0 (default) the next burst goes out when every answer of
 * the previous one is in ("as fast as possible", paced by the server); with
 * -R RATE bursts start on a fixed schedule of K/RATE seconds.
 *
 * Prints one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util.h"

#define PUB_MAX_BURST 10000
#define PUB_MAX_PAD (1024 * 1024)

static struct url U;
static int fd = -1;
static char rbuf[1 << 16];
static size_t rlen;
static uint64_t status_2xx, status_other, reconnects;
static int io_timeout_s = 10; /* SO_RCVTIMEO/SO_SNDTIMEO: a hung server cannot hang the harness */

static int dial(void)
{
    if (fd >= 0)
        close(fd);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = io_timeout_s};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)U.port)};
    inet_pton(AF_INET, U.host, &a.sin_addr);
    rlen = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "pubgen: connect %s:%d: %s\n", U.host, U.port, strerror(errno));
        return -1;
    }
    return 0;
}

static int fill(void)
{
    if (rlen == sizeof rbuf)
        return -1;
    ssize_t n = read(fd, rbuf + rlen, sizeof rbuf - rlen);
    if (n <= 0)
        return -1;
    rlen += (size_t)n;
    return 0;
}

static void consume(size_t n)
{
    memmove(rbuf, rbuf + n, rlen - n);
    rlen -= n;
}

/* Read one response. Returns its status, or -1 if the connection broke.
 * *closes is set when the server will close after it. */
static int read_response(int *closes)
{
    char *eoh;
    while (!(eoh = memmem(rbuf, rlen, "\r\n\r\n", 4)))
        if (fill() < 0)
            return -1;
    size_t hl = (size_t)(eoh - rbuf) + 4;
    int status = http_status(rbuf, hl);
    size_t vl;
    const char *v = http_header(rbuf, hl, "Connection:", &vl);
    *closes = v && memcasemem(v, vl, "close") != NULL;
    const char *te = http_header(rbuf, hl, "Transfer-Encoding:", &vl);
    int chunked = te && memcasemem(te, vl, "chunked") != NULL;
    const char *cl = http_header(rbuf, hl, "Content-Length:", &vl);
    long long clen = cl ? atoll(cl) : -1;
    consume(hl);
    if (chunked) {
        for (;;) {
            char *nl;
            while (!(nl = memmem(rbuf, rlen, "\r\n", 2)))
                if (fill() < 0)
                    return -1;
            long long sz = strtoll(rbuf, NULL, 16);
            consume((size_t)(nl - rbuf) + 2);
            while (rlen < (size_t)sz + 2)
                if (fill() < 0)
                    return -1;
            consume((size_t)sz + 2);
            if (sz == 0)
                break; /* no trailers from the servers we talk to */
        }
    } else if (clen >= 0) {
        while (rlen < (size_t)clen)
            if (fill() < 0)
                return -1;
        consume((size_t)clen);
    } else {
        while (fill() == 0)
            rlen = 0;
        *closes = 1;
    }
    return status;
}

static void write_all(const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return; /* the read side will notice */
        p += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv)
{
    int raw = 0, opt;
    long long total = 1, burst = 1, seq = 1, size = 0;
    double rate = 0, deadline_s = 0;
    while ((opt = getopt(argc, argv, "m:n:k:R:s:S:t:")) != -1) {
        switch (opt) {
        case 'm': raw = strcmp(optarg, "raw") == 0; break;
        case 'n': total = atoll(optarg); break;
        case 'k': burst = atoll(optarg); break;
        case 'R': rate = atof(optarg); break;
        case 's': size = atoll(optarg); break;
        case 'S': seq = atoll(optarg); break;
        case 't': deadline_s = atof(optarg); break;
        default: goto usage;
        }
    }
    if (optind != argc - 1 || url_parse(argv[optind], &U) < 0 || burst < 1 ||
        burst > PUB_MAX_BURST || size > PUB_MAX_PAD) {
    usage:
        fprintf(stderr,
                "usage: pubgen [-m app|raw] [-n TOTAL] [-k BURST] [-R MSGS_PER_S] [-s SIZE] [-S FIRST_SEQ]\n"
                "              [-t DEADLINE_S] URL\n"
                "  app: POST URL&count=K with the padding as body; the app stamps each message\n"
                "  raw: K pipelined POSTs per burst, body \"<seq> <t_ns> pad\" stamped here\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* The stamp "<seq> <t_ns> " takes about 32 bytes; pad the rest with 'x'. */
    size_t padlen = size > 32 ? (size_t)size - 32 : 0;
    char *pad = malloc(padlen + 1);
    memset(pad, 'x', padlen);
    pad[padlen] = 0;
    size_t reqcap = (size_t)burst * (padlen + 1024) + 4096;
    char *req = malloc(reqcap);
    if (dial() < 0)
        return 1;

    int64_t t0 = mono_ns(), first_ns = 0, last_ns = 0;
    long long sent = 0, requests = 0, errors = 0;
    double interval_ns = rate > 0 ? 1e9 * (double)burst / rate : 0;
    long long b = 0;
    int64_t deadline = deadline_s > 0 ? t0 + (int64_t)(deadline_s * 1e9) : 0;
    while (sent < total) {
        if (deadline && mono_ns() > deadline) {
            fprintf(stderr, "pubgen: deadline reached after %lld messages\n", sent);
            break;
        }
        long long k = total - sent < burst ? total - sent : burst;
        if (interval_ns > 0) {
            int64_t due = t0 + (int64_t)(interval_ns * (double)b);
            struct timespec ts = {.tv_sec = due / 1000000000LL, .tv_nsec = due % 1000000000LL};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
        }
        b++;
        size_t n = 0;
        int nreq;
        if (raw) {
            for (long long i = 0; i < k; i++) {
                char stamp[64];
                int64_t now = real_ns();
                if (!first_ns)
                    first_ns = now;
                last_ns = now;
                int sl = snprintf(stamp, sizeof stamp, "%lld %lld%s", seq++, (long long)now,
                                  padlen ? " " : "");
                n += (size_t)snprintf(req + n, reqcap - n,
                                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\n"
                                      "Content-Length: %zu\r\n\r\n%s%s",
                                      U.path, U.host, U.port, (size_t)sl + padlen, stamp, pad);
            }
            nreq = (int)k;
        } else {
            int64_t now = real_ns();
            if (!first_ns)
                first_ns = now;
            last_ns = now;
            n = (size_t)snprintf(req, reqcap,
                                 "POST %s%ccount=%lld&seq=%lld HTTP/1.1\r\nHost: %s:%d\r\n"
                                 "Content-Type: text/plain\r\nContent-Length: %zu\r\n\r\n%s",
                                 U.path, strchr(U.path, '?') ? '&' : '?', k, seq, U.host, U.port, padlen, pad);
            seq += k;
            nreq = 1;
        }
        write_all(req, n);
        requests += nreq;
        for (int i = 0; i < nreq; i++) {
            int closes = 0;
            int st = read_response(&closes);
            if (st < 0) {
                errors++;
                reconnects++;
                if (dial() < 0)
                    goto done;
                break; /* the rest of this burst is lost with the connection; counted as errors */
            }
            if (st >= 200 && st < 300)
                status_2xx++;
            else {
                status_other++;
                if (status_other <= 3)
                    fprintf(stderr, "pubgen: status %d\n", st);
            }
            if (closes) {
                reconnects++;
                if (i + 1 < nreq)
                    errors += nreq - i - 1;
                if (dial() < 0)
                    goto done;
                break;
            }
        }
        sent += k;
    }
done:;
    double el = (double)(mono_ns() - t0) / 1e9;
    printf("{\"mode\":\"%s\",\"published\":%lld,\"requests\":%lld,\"burst\":%lld,\"rate\":%.1f,"
           "\"ok\":%llu,\"bad_status\":%llu,\"errors\":%lld,\"reconnects\":%llu,\"elapsed_s\":%.6f,"
           "\"msgs_per_s\":%.1f,\"first_ns\":%lld,\"last_ns\":%lld,\"next_seq\":%lld}\n",
           raw ? "raw" : "app", sent, requests, burst, rate, (unsigned long long)status_2xx,
           (unsigned long long)status_other, errors, (unsigned long long)reconnects, el,
           el > 0 ? (double)sent / el : 0.0, (long long)first_ns, (long long)last_ns, seq);
    return 0;
}
