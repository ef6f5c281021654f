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
 *        mb-lp: the same with a "Dont-Chunk: true" header, which asks for a
 *        plain long poll (one JSON array, then the server closes), as
 *        message_bus's client does with enableChunkedEncoding off.
 *   lp   a long-poll that answers an SSE body (Spillway's transport=long-poll:
 *        Content-Length, then close): poll again at once with Last-Event-ID =
 *        the last id of the answer. A poll counts as connected when its
 *        request is written (the answer only comes with a message), so the
 *        first poll should carry a cursor (-I) for nothing to fall between
 *        "ready" and the server holding it.
 *
 * Payload convention: a message's data starts with "<seq> <t_ns>", seq being
 * a per-channel counter from 1 and t_ns the CLOCK_REALTIME nanoseconds at
 * publish (see util.h). From that the loadgen derives publish-to-receive
 * latency and, per connection, lost (gaps), duplicated and out-of-order.
 *
 * The summary is one JSON object on stdout. In hold mode (-H) it also prints
 * a {"event":"ready"} line when every attempt is resolved and accepts
 * commands on stdin: "add N", "status [S]", "quit"; EOF on stdin stops it.
 * Run with no arguments for the option list. The parsers are in lg_parse.c,
 * the bookkeeping and output in lg_stats.c (see lg.h).
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

#include "lg.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

struct lg_state lg;
volatile sig_atomic_t lg_stop;

static void on_signal(int sig)
{
    (void)sig;
    lg_stop = 1;
}

/* ---------- connections ---------- */

static void conn_start(int i);
static void conn_close_fd(struct conn *c);

/* An open stream ended (the server closed it, or a re-poll failed). */
static void stream_gone(struct conn *c)
{
    lg.open--;
    lg.closed_by_server++;
    c->state = C_DEAD;
    lg_pub_conn_lost(c);
}

static void give_up(struct conn *c, enum lg_err why)
{
    lg.errs[why]++;
    conn_close_fd(c);
    if (!c->ever_ok && c->retries < lg.max_retries && !lg_stop) {
        c->retries++;
        lg.retries++;
        c->state = C_WAIT_RETRY;
        c->t_attempt = mono_ns(); /* retry after a short back-off, see retry_due() */
        return;
    }
    if (c->ever_ok) {
        /* A message_bus re-poll that failed: the stream is gone. */
        stream_gone(c);
    } else {
        lg.failed++;
        lg.in_flight--;
    }
    c->state = C_DEAD;
}

/* The server ended the response (terminating chunk, Content-Length, or EOF). */
static void end_of_response(struct conn *c)
{
    if (lg.mode == MODE_MB && !c->chunked && c->len) {
        /* A plain (non-streaming) poll answer is one JSON array without separators. */
        lg_mb_segment(c, c->buf, c->len);
        c->len = 0;
    }
    conn_close_fd(c);
    if (lg.mode != MODE_SSE && !lg_stop) {
        lg.repolls++;
        c->polls++;
        conn_start((int)(c - lg.c));
        return;
    }
    stream_gone(c);
}

/* A stream counts as connected at its 200 head, or with -R at its first body
 * byte (for servers that subscribe upstream before they say anything). */
void lg_mark_connected(struct conn *c)
{
    if (c->ever_ok)
        return;
    c->ever_ok = 1;
    c->t_head = lg_now_mono; /* set by on_readable(), which read the bytes that connect it */
    lg.connected++;
    lg.open++;
    lg.in_flight--;
    int64_t lat = mono_ns() - c->t_attempt;
    lg.connect_lat_sum_ns += (uint64_t)lat;
    if (lat > lg.connect_lat_max_ns)
        lg.connect_lat_max_ns = lat;
    if (lg.connected + lg.failed == lg.target)
        lg.all_connected_mono_ns = mono_ns();
}

static void head_done(struct conn *c, const char *h, size_t hl)
{
    int status = http_status(h, hl);
    if (status != 200) {
        if (!lg.quiet && lg.errs[E_STATUS] < 3)
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
    if (!lg.ready_on_body)
        lg_mark_connected(c);
}

static void on_readable(struct conn *c)
{
    ssize_t n = read(c->fd, lg.rbuf, LG_READ_BUF);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        if (c->state == C_HEAD) {
            give_up(c, errno == ECONNRESET ? E_RESET : E_SOCKET);
            return;
        }
        lg.errs[errno == ECONNRESET ? E_RESET : E_SOCKET]++;
        end_of_response(c);
        return;
    }
    lg_now_real = real_ns();
    lg_now_mono = mono_ns();
    lg.bytes += (uint64_t)n;
    if (n == 0) {
        if (c->state == C_HEAD)
            give_up(c, E_EOF_HEAD);
        else
            end_of_response(c);
        return;
    }
    const char *p = lg.rbuf;
    size_t len = (size_t)n;
    if (c->state == C_HEAD) {
        size_t old = c->len;
        if (lg_grow_append(&c->buf, &c->len, &c->cap, p, len, LG_MAX_HEAD) < 0) {
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
        p = lg.rbuf + (len - rest);
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
    int r = lg_body_feed(c, p, len);
    if (r < 0) {
        lg.errs[E_PROTO]++;
        c->len = 0;
        conn_close_fd(c);
        stream_gone(c);
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
    if (lg.mode != MODE_MB) {
        /* -I: every stream resumes from the same cursor, as EventSource
         * sends it after a reconnect; lp: a poll after the first resumes
         * from the last id of the previous answer. */
        const char *cursor = lg.mode == MODE_LP && c->lp_id[0] ? c->lp_id : lg.last_event_id;
        char resume[sizeof lg.last_event_id + 32] = "";
        if (cursor[0])
            snprintf(resume, sizeof resume, "Last-Event-ID: %s\r\n", cursor);
        n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n%sUser-Agent: spillway-loadgen\r\n\r\n",
                     lg.url.path, lg.url.host, lg.url.port, resume);
    } else {
        char body[1024];
        int bl = snprintf(body, sizeof body, "%s=%lld&__seq=%u", lg.mb_channel_enc,
                          (long long)c->mb_pos, c->polls + 1);
        n = snprintf(req, sizeof req,
                     "POST %s/lg%dx%d/poll HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: spillway-loadgen\r\n%s"
                     "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s",
                     lg.url.path, (int)getpid(), idx, lg.url.host, lg.url.port,
                     lg.mb_plain ? "Dont-Chunk: true\r\n" : "", bl, body);
    }
    ssize_t w = send(c->fd, req, (size_t)n, MSG_NOSIGNAL);
    if (w != n) {
        give_up(c, E_SOCKET);
        return;
    }
    c->state = C_HEAD;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
    epoll_ctl(lg.ep, EPOLL_CTL_MOD, c->fd, &ev);
    if (lg.mode == MODE_LP && !c->ever_ok) {
        lg_now_mono = mono_ns();
        lg_mark_connected(c); /* held by the server from here on (see the mode list above) */
    }
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
    struct conn *c = &lg.c[i];
    c->t_attempt = mono_ns();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        if (!lg.quiet)
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
    int span = lg.addr_hi - lg.addr_lo + 1;
    src.sin_addr.s_addr = htonl((127u << 24) | (uint32_t)(lg.addr_lo + i % span));
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
        if (!lg.quiet)
            fprintf(stderr, "loadgen: bind(): %s\n", strerror(errno));
        give_up(c, E_SOCKET);
        return;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lg.url.port)};
    inet_pton(AF_INET, lg.url.host, &dst.sin_addr);
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
    epoll_ctl(lg.ep, EPOLL_CTL_ADD, fd, &ev);
    c->state = C_CONNECTING;
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
    lg.target = t;
    lg.all_connected_mono_ns = 0;
}

static void on_stdin(void)
{
    ssize_t n = read(0, g_cmd + g_cmdlen, sizeof g_cmd - 1 - g_cmdlen);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            epoll_ctl(lg.ep, EPOLL_CTL_DEL, 0, NULL);
            lg.stdin_open = 0;
            if (lg.hold)
                lg_stop = 1;
        }
        return;
    }
    g_cmdlen += (size_t)n;
    char *nl;
    while ((nl = memchr(g_cmd, '\n', g_cmdlen))) {
        *nl = 0;
        if (strncmp(g_cmd, "add ", 4) == 0)
            set_target(lg.target + atoi(g_cmd + 4));
        else if (strncmp(g_cmd, "status", 6) == 0)
            lg_print_status(atoll(g_cmd + 6));
        else if (strcmp(g_cmd, "go") == 0)
            lg.pub.go = 1;
        else if (strcmp(g_cmd, "quit") == 0)
            lg_stop = 1;
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
            "  -m MODE       sse, lp, mb or mb-lp (default sse; see the top of loadgen.c).\n"
            "                For mb and mb-lp, URL is message_bus's base\n"
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
            "  -q            fewer messages on stderr\n"
            "Resuming (the reconnect storm):\n"
            "  -I ID         every stream resumes from ID: SSE sends Last-Event-ID: ID, mb polls\n"
            "                from message id ID (an integer) instead of -1\n"
            "  -B SEQ        messages 1..SEQ came before the cursor: one that arrives anyway\n"
            "                counts as stale, and -e N owes SEQ+1..SEQ+N\n"
            "  -G SEC        once every stream has -M unique messages, read on SEC more seconds\n"
            "                (a duplicate sent right after still counts), then stop\n"
            "Lockstep publishing (closed loop; see lg_pub.c):\n"
            "  -P URL        publish to URL (http://127.0.0.1:P/pub?channel=C) once every attempt\n"
            "                is resolved; the next batch when every open stream has every message\n"
            "  -p app|raw    app: one POST URL&count=K per batch, the app stamps (default);\n"
            "                raw: K pipelined POSTs, body \"<seq> <t_ns> pad\" stamped here\n"
            "  -K K          messages per batch (default 1)\n"
            "  -n N          messages at most (default 200)\n"
            "  -D SEC        start no new batch after SEC seconds (once -N batches are complete)\n"
            "  -N B          batches at least (default 1)\n"
            "  -L SEC        a batch not complete after SEC seconds ends the run (default 30)\n"
            "  -s SIZE       pad messages to about SIZE bytes\n"
            "  -g            publish only after a \"go\" line on stdin\n",
            LG_MAX_CONNS);
    exit(2);
}

int main(int argc, char **argv)
{
    lg.mode = MODE_SSE;
    lg.target = 1;
    lg.max_in_flight = 256;
    lg.addr_lo = 2;
    lg.addr_hi = 250;
    lg.max_retries = 3;
    lg.connect_timeout_ns = 30LL * 1000000000LL;
    lg.pub.batch = 1;
    lg.pub.total = 200;
    lg.pub.min_batches = 1;
    lg.pub.stall_ns = 30LL * 1000000000LL;
    int opt;
    double t_total = 0, t_idle = 0;
    while ((opt = getopt(argc, argv, "m:C:c:k:a:r:T:M:e:t:i:HRb:qP:p:K:n:D:N:L:s:gI:B:G:")) != -1) {
        switch (opt) {
        case 'm':
            if (strcmp(optarg, "sse") == 0)
                lg.mode = MODE_SSE;
            else if (strcmp(optarg, "mb") == 0)
                lg.mode = MODE_MB;
            else if (strcmp(optarg, "mb-lp") == 0) {
                lg.mode = MODE_MB;
                lg.mb_plain = 1;
            } else if (strcmp(optarg, "lp") == 0)
                lg.mode = MODE_LP;
            else
                usage();
            break;
        case 'C': snprintf(lg.mb_channel, sizeof lg.mb_channel, "%s", optarg); break;
        case 'c': lg.target = atoi(optarg); break;
        case 'k': lg.max_in_flight = atoi(optarg); break;
        case 'a':
            if (sscanf(optarg, "%d-%d", &lg.addr_lo, &lg.addr_hi) != 2 || lg.addr_lo < 1 ||
                lg.addr_hi > 254 || lg.addr_lo > lg.addr_hi)
                usage();
            break;
        case 'r': lg.max_retries = atoi(optarg); break;
        case 'T': lg.connect_timeout_ns = (int64_t)(atof(optarg) * 1e9); break;
        case 'M': lg.want_msgs = atoll(optarg); break;
        case 'e': lg.expect = atoll(optarg); break;
        case 't': t_total = atof(optarg); break;
        case 'i': t_idle = atof(optarg); break;
        case 'H': lg.hold = 1; break;
        case 'R': lg.ready_on_body = 1; break;
        case 'b': lg.batch_ns = (int64_t)(atof(optarg) * 1e6); break;
        case 'q': lg.quiet = 1; break;
        case 'P':
            lg.pub.on = 1;
            if (url_parse(optarg, &lg.pub.url) < 0)
                usage();
            break;
        case 'p':
            if (strcmp(optarg, "raw") == 0)
                lg.pub.raw = 1;
            else if (strcmp(optarg, "app") == 0)
                lg.pub.raw = 0;
            else
                usage();
            break;
        case 'K': lg.pub.batch = atoll(optarg); break;
        case 'n': lg.pub.total = atoll(optarg); break;
        case 'D': lg.pub.duration_ns = (int64_t)(atof(optarg) * 1e9); break;
        case 'N': lg.pub.min_batches = atoll(optarg); break;
        case 'L': lg.pub.stall_ns = (int64_t)(atof(optarg) * 1e9); break;
        case 's': lg.pub.size = atoll(optarg); break;
        case 'g': lg.pub.wait_go = 1; break;
        case 'I':
            if (strlen(optarg) >= sizeof lg.last_event_id || strpbrk(optarg, "\r\n")) {
                fprintf(stderr, "loadgen: -I: at most %zu bytes, no CR or LF\n", sizeof lg.last_event_id - 1);
                return 2;
            }
            snprintf(lg.last_event_id, sizeof lg.last_event_id, "%s", optarg);
            break;
        case 'B': lg.seq_base = atoll(optarg); break;
        case 'G': lg.linger_ns = (int64_t)(atof(optarg) * 1e9); break;
        default: usage();
        }
    }
    if (optind != argc - 1 || url_parse(argv[optind], &lg.url) < 0)
        usage();
    if (lg.mode == MODE_MB && !lg.mb_channel[0]) {
        fprintf(stderr, "loadgen: -m mb needs -C CHANNEL\n");
        return 2;
    }
    int64_t mb_start = -1; /* message_bus: -1 = "from now on", as its JS client starts */
    if (lg.last_event_id[0] && lg.mode == MODE_MB) {
        char *end;
        mb_start = strtoll(lg.last_event_id, &end, 10);
        if (*end || mb_start < -1) {
            fprintf(stderr, "loadgen: -m mb -I needs a message id (an integer), got %s\n", lg.last_event_id);
            return 2;
        }
    }
    if (lg.expect > LG_MAX_EXPECT) {
        fprintf(stderr, "loadgen: -e %lld is over LG_MAX_EXPECT (%d)\n", (long long)lg.expect, LG_MAX_EXPECT);
        return 2;
    }
    if (lg.pub.on && lg_pub_start() < 0)
        return 2;
    /* form-encode the message_bus channel name (it usually starts with '/') */
    {
        char *o = lg.mb_channel_enc;
        for (const char *s = lg.mb_channel; *s; s++) {
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
    if (lg.target > LG_MAX_CONNS || (nofile > 0 && lg.target > nofile - 16)) {
        fprintf(stderr, "loadgen: -c %d is over the per-process limit (%d, ulimit -n %ld)\n", lg.target,
                LG_MAX_CONNS, nofile);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    lg.c = calloc(LG_MAX_CONNS, sizeof *lg.c);
    lg.rbuf = malloc(LG_READ_BUF);
    if (!lg.c || !lg.rbuf)
        return 2;
    for (int i = 0; i < LG_MAX_CONNS; i++) {
        lg.c[i].fd = -1;
        lg.c[i].last_seq = -1;
        lg.c[i].mb_pos = mb_start;
    }
    lg.ep = epoll_create1(EPOLL_CLOEXEC);
    lg.start_mono_ns = mono_ns();
    lg.start_real_ns = real_ns();
    lg.deadline_ns = t_total > 0 ? lg.start_mono_ns + (int64_t)(t_total * 1e9) : 0;
    lg.idle_ns = (int64_t)(t_idle * 1e9);
    lg.ready_printed_for = -1;

    {
        int fl = fcntl(0, F_GETFL);
        if (fl >= 0)
            fcntl(0, F_SETFL, fl | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = LG_ID_STDIN};
        lg.stdin_open = epoll_ctl(lg.ep, EPOLL_CTL_ADD, 0, &ev) == 0;
    }

    struct epoll_event evs[1024];
    int64_t last_scan = 0;
    int64_t done_at = 0; /* every stream had -M messages (the -G linger runs from here) */
    while (!lg_stop) {
        int64_t loop_start = mono_ns();
        /* launch new connections, never more than max_in_flight unresolved */
        while (lg.launched < lg.target && lg.in_flight < lg.max_in_flight) {
            int i = lg.launched++;
            lg.in_flight++;
            lg.c[i].t_first = mono_ns();
            if (i == 0)
                lg.first_launch_mono_ns = lg.c[i].t_first;
            if (lg.expect > 0 && !lg.c[i].seen) {
                lg.c[i].seen = calloc((size_t)(lg.expect + 63) / 64, 8);
                if (!lg.c[i].seen)
                    return 2;
            }
            conn_start(i);
        }
        int n = epoll_wait(lg.ep, evs, 1024, 20);
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            if (id == LG_ID_STDIN) {
                on_stdin();
                continue;
            }
            if (id == LG_ID_PUB) {
                lg_pub_on_event(evs[k].events);
                continue;
            }
            struct conn *c = &lg.c[id];
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
            for (int i = 0; i < lg.launched; i++) {
                struct conn *c = &lg.c[i];
                if (c->state == C_WAIT_RETRY && now - c->t_attempt > 100 * 1000000LL * c->retries)
                    conn_start(i);
                else if ((c->state == C_CONNECTING || c->state == C_HEAD) && !c->ever_ok &&
                         now - c->t_attempt > lg.connect_timeout_ns)
                    give_up(c, E_TIMEOUT);
            }
        }
        if (lg.launched == lg.target && lg.connected + lg.failed == lg.target &&
            lg.ready_printed_for != lg.target) {
            lg.ready_printed_for = lg.target;
            lg_print_ready();
        }
        lg_pub_tick();
        if (lg_pub_finished())
            break;
        if (lg.deadline_ns && now >= lg.deadline_ns)
            break;
        if (lg.batch_ns && n > 0 && now - loop_start < lg.batch_ns) {
            int64_t rest = lg.batch_ns - (now - loop_start);
            struct timespec ts = {.tv_sec = rest / 1000000000LL, .tv_nsec = rest % 1000000000LL};
            nanosleep(&ts, NULL);
        }
        if (lg.hold)
            continue;
        int resolved = lg.launched == lg.target && lg.connected + lg.failed == lg.target;
        if (resolved && lg.open == 0 && lg.mode == MODE_SSE)
            break; /* nothing left to listen to */
        if (lg.idle_ns && lg.messages && now - lg.last_msg_mono_ns > lg.idle_ns)
            break;
        if (scan && resolved && lg.want_msgs > 0) {
            /* With -e the owed messages are counted once each (a duplicate
             * must not stand in for one still missing). */
            int done = 1;
            for (int i = 0; i < lg.launched && done; i++) {
                struct conn *c = &lg.c[i];
                int64_t have = lg.expect > 0 ? c->unique : c->msgs;
                if (c->ever_ok && c->state != C_DEAD && have < lg.want_msgs)
                    done = 0;
            }
            if (done && !done_at)
                done_at = now;
            if (done && now - done_at >= lg.linger_ns)
                break;
        }
    }
    lg_stop = 1;
    lg_print_summary();
    return 0;
}
