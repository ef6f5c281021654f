/*
 * ceiling — the least work any SSE server can do per message.
 *
 * One thread, one epoll loop. `GET /sub...` gets an SSE head and stays open.
 * `POST /pub` (keep-alive; the body is the message data) turns the body into
 * one SSE frame, "id: n\ndata: <body>\n\n" (a LF inside the body starts a new
 * data line), and writes it to every subscriber with exactly ONE write() per
 * subscriber: no batching, no outbox, no EPOLLOUT. If a write is short or
 * would block, that subscriber is dropped. The response to the publisher
 * says how many subscribers took the frame, and is sent after the fan-out,
 * so a publisher that waits for it is paced by the fan-out.
 *
 * `GET /stats` answers {"subscribers":..,"published":..,"delivered":..,"dropped":..};
 * `GET /ping` is an ordinary request (the harness times it while streams are held).
 *
 * It is the reference for Spillway's per-message fan-out; everything a real
 * server adds (outboxes, coalescing, heartbeats, Redis) costs relative to it.
 *
 * usage: ceiling PORT
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

#define CEIL_MAX_CONNS 20000
#define CEIL_MAX_REQ (1024 * 1024) /* request head + body */
#define CEIL_MAX_FRAME (2 * 1024 * 1024)

enum role { R_NEW, R_SUB, R_PUB };

struct cconn {
    int fd;
    int role;
    int sub_idx; /* index in subs[] while a subscriber */
    char *buf;
    size_t len, cap;
};

static struct cconn *conns; /* indexed by fd */
static int *subs;
static int nsubs;
static int ep;
static uint64_t published, delivered, dropped, next_id = 1;
static char *frame;
static volatile sig_atomic_t stop;

static void on_signal(int s)
{
    (void)s;
    stop = 1;
}

static void drop_conn(int fd)
{
    struct cconn *c = &conns[fd];
    if (c->role == R_SUB) {
        int last = subs[--nsubs];
        subs[c->sub_idx] = last;
        conns[last].sub_idx = c->sub_idx;
    }
    free(c->buf);
    memset(c, 0, sizeof *c);
    close(fd);
}

static void reply(int fd, const char *status, const char *body)
{
    char out[512];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     status, strlen(body), body);
    /* Publisher answers are tiny; a short write to a publisher means it is gone. */
    if (send(fd, out, (size_t)n, MSG_NOSIGNAL) != n)
        drop_conn(fd);
}

static void publish(const char *data, size_t n)
{
    size_t fl = 0;
    fl += (size_t)snprintf(frame, 64, "id: %llu\ndata: ", (unsigned long long)next_id++);
    for (size_t i = 0; i < n && fl + 16 < CEIL_MAX_FRAME; i++) {
        if (data[i] == '\n') {
            memcpy(frame + fl, "\ndata: ", 7);
            fl += 7;
        } else if (data[i] != '\r')
            frame[fl++] = data[i];
    }
    frame[fl++] = '\n';
    frame[fl++] = '\n';
    published++;
    for (int i = 0; i < nsubs;) {
        int fd = subs[i];
        ssize_t w = send(fd, frame, fl, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w == (ssize_t)fl) {
            delivered++;
            i++;
        } else {
            dropped++;
            drop_conn(fd); /* swaps the last subscriber into slot i */
        }
    }
}

/* Handle every complete request in c->buf. Returns -1 if fd was dropped. */
static int handle(int fd)
{
    struct cconn *c = &conns[fd];
    for (;;) {
        char *eoh = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!eoh)
            return 0;
        size_t hl = (size_t)(eoh - c->buf) + 4;
        size_t vl;
        const char *cl = http_header(c->buf, hl, "Content-Length:", &vl);
        size_t blen = cl ? (size_t)atoll(cl) : 0;
        if (hl + blen > CEIL_MAX_REQ) {
            reply(fd, "413 Payload Too Large", "{\"error\":\"CEIL_MAX_REQ\"}");
            if (conns[fd].fd)
                drop_conn(fd);
            return -1;
        }
        if (c->len < hl + blen)
            return 0;
        if (strncmp(c->buf, "GET /sub", 8) == 0) {
            static const char head[] =
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                "Connection: close\r\n\r\n:ok\n\n";
            if (send(fd, head, sizeof head - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof head - 1)) {
                drop_conn(fd);
                return -1;
            }
            c->role = R_SUB;
            c->sub_idx = nsubs;
            subs[nsubs++] = fd;
            free(c->buf); /* a subscriber sends nothing more we care about */
            c->buf = NULL;
            c->len = c->cap = 0;
            return 0;
        } else if (strncmp(c->buf, "POST /pub", 9) == 0) {
            c->role = R_PUB;
            publish(c->buf + hl, blen);
            char body[128];
            snprintf(body, sizeof body, "{\"id\":%llu,\"subscribers\":%d}",
                     (unsigned long long)(next_id - 1), nsubs);
            reply(fd, "200 OK", body);
        } else if (strncmp(c->buf, "GET /ping", 9) == 0) {
            reply(fd, "200 OK", "\"pong\"");
        } else if (strncmp(c->buf, "GET /stats", 10) == 0) {
            char body[256];
            snprintf(body, sizeof body,
                     "{\"subscribers\":%d,\"published\":%llu,\"delivered\":%llu,\"dropped\":%llu}", nsubs,
                     (unsigned long long)published, (unsigned long long)delivered,
                     (unsigned long long)dropped);
            reply(fd, "200 OK", body);
        } else
            reply(fd, "404 Not Found", "{}");
        if (conns[fd].fd != fd)
            return -1;
        memmove(c->buf, c->buf + hl + blen, c->len - hl - blen);
        c->len -= hl + blen;
    }
}

static void on_read(int fd)
{
    struct cconn *c = &conns[fd];
    if (c->role == R_SUB) {
        char tmp[4096];
        ssize_t n = read(fd, tmp, sizeof tmp);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            drop_conn(fd);
        return;
    }
    for (;;) {
        if (c->cap - c->len < 65536) {
            size_t nc = c->cap ? c->cap * 2 : 65536;
            if (nc > CEIL_MAX_REQ * 2) {
                drop_conn(fd);
                return;
            }
            c->buf = realloc(c->buf, nc);
            c->cap = nc;
        }
        ssize_t n = read(fd, c->buf + c->len, c->cap - c->len);
        if (n > 0) {
            c->len += (size_t)n;
            if (handle(fd) < 0 || conns[fd].role == R_SUB)
                return;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            drop_conn(fd);
        return;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: ceiling PORT\n");
        return 2;
    }
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    conns = calloc(CEIL_MAX_CONNS + 64, sizeof *conns);
    subs = calloc(CEIL_MAX_CONNS + 64, sizeof *subs);
    frame = malloc(CEIL_MAX_FRAME + 64);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0) {
        fprintf(stderr, "ceiling: bind/listen 127.0.0.1:%s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fprintf(stderr, "ceiling: listening on 127.0.0.1:%s pid %d\n", argv[1], (int)getpid());
    struct epoll_event evs[512];
    while (!stop) {
        int n = epoll_wait(ep, evs, 512, 500);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0)
                        break;
                    if (cfd >= CEIL_MAX_CONNS) {
                        close(cfd);
                        continue;
                    }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[cfd].fd = cfd;
                    conns[cfd].role = R_NEW;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            if (conns[fd].fd != fd)
                continue; /* dropped earlier in this batch */
            on_read(fd);
        }
    }
    return 0;
}
