#include "sconn.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "resolve.h"
#include "tls.h"

#define READ_CHUNK 16384

/* Waits until fd is ready for events or the deadline passes: 1 ready, 0
 * timed out, -1 error (errno). */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = spillway_mono_ms();
        struct pollfd p = {fd, events, 0};
        int r;
        if (now >= deadline) return 0;
        r = poll(&p, 1, (int)SW_MIN(deadline - now, (uint64_t)INT32_MAX));
        if (r > 0) return 1;
        if (r < 0 && errno != EINTR) return -1;
    }
}

/* The wait a transport answer asks for (1 ready, 0 timed out, -1). */
static int wait_want(int fd, spillway_tls_rc want, uint64_t deadline)
{
    return wait_fd(fd, want == SW_TLS_WANT_READ ? POLLIN : POLLOUT, deadline);
}

/* ---- connecting -------------------------------------------------------- */

/* One address: 0 with the connected socket in *fd, or -errno. */
static int connect_one(const struct sockaddr *sa, socklen_t len, uint64_t deadline, int *fd)
{
    int s = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, err = 0, r;
    socklen_t elen = sizeof(err);

    if (s < 0) return -errno;
    if (sa->sa_family != AF_UNIX) setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(s, sa, len) != 0) {
        if (errno != EINPROGRESS && errno != EAGAIN) err = errno;
        else if ((r = wait_fd(s, POLLOUT, deadline)) <= 0) err = r == 0 ? ETIMEDOUT : errno;
        else if (getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) err = errno;
    }
    if (err != 0) {
        close(s);
        return -err;
    }
    *fd = s;
    return 0;
}

/* The addresses of cfg's Redis: 1 unix path, a numeric address, or what
 * getaddrinfo finds (blocking: this runs on a caller's thread, never the
 * reactor's). The count, or -1 with err filled. */
static int addresses(const spillway_redis_config *cfg, struct sockaddr_storage *ss, socklen_t *lens, char *err,
                     size_t errlen)
{
    const char *host = cfg->host ? cfg->host : "127.0.0.1";
    struct addrinfo hints, *res = NULL, *ai;
    char port[16];
    int n = 0, rc;

    if (cfg->path != NULL) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        memset(un, 0, sizeof(*un));
        un->sun_family = AF_UNIX;
        if (strlen(cfg->path) >= sizeof(un->sun_path)) {
            snprintf(err, errlen, "unix socket path too long");
            return -1;
        }
        memcpy(un->sun_path, cfg->path, strlen(cfg->path) + 1);
        lens[0] = sizeof(*un);
        return 1;
    }
    if (spillway_resolve_numeric(host, cfg->port, &ss[0], &lens[0]) == 0) return 1;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", cfg->port);
    if ((rc = getaddrinfo(host, port, &hints, &res)) != 0) {
        snprintf(err, errlen, "%s", gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai != NULL && n < SPILLWAY_RESOLVE_MAX; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(ss[n])) continue;
        memcpy(&ss[n], ai->ai_addr, ai->ai_addrlen);
        lens[n++] = ai->ai_addrlen;
    }
    freeaddrinfo(res);
    if (n == 0) snprintf(err, errlen, "no address for %s", host);
    return n > 0 ? n : -1;
}

/* The TLS handshake on c->fd by the deadline: 0, or -1 with err filled. */
static int tls_open(spillway_sconn *c, const spillway_redis_config *cfg, uint64_t deadline, int *rc, char *err,
                    size_t errlen)
{
    spillway_tls_rc t;
    c->tls = spillway_tls_new(cfg->tls, c->fd, cfg->host, err, errlen);
    if (c->tls == NULL) {
        *rc = -ENOMEM;
        return -1;
    }
    while ((t = spillway_tls_handshake(c->tls)) == SW_TLS_WANT_READ || t == SW_TLS_WANT_WRITE) {
        int w = wait_want(c->fd, t, deadline);
        if (w <= 0) {
            *rc = -ETIMEDOUT;
            snprintf(err, errlen, "TLS handshake: %s", w == 0 ? "timed out" : strerror(errno));
            return -1;
        }
    }
    if (t == SW_TLS_OK) return 0;
    /* Refused for a reason that will not change by trying again. */
    *rc = -ECONNREFUSED;
    snprintf(err, errlen, "TLS handshake: %s", spillway_tls_error(c->tls));
    return -1;
}

static spillway_sconn *sconn_new(int fd)
{
    spillway_sconn *c = calloc(1, sizeof(*c));
    if (c == NULL) return NULL;
    c->fd = fd;
    c->pid = getpid();
    c->reader = spillway_resp_reader_new();
    if (c->reader == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

spillway_sconn *spillway_sconn_open(const spillway_redis_config *cfg, uint32_t timeout_ms, int *rc, char *err,
                                    size_t errlen)
{
    struct sockaddr_storage ss[SPILLWAY_RESOLVE_MAX];
    socklen_t lens[SPILLWAY_RESOLVE_MAX];
    uint64_t deadline = spillway_mono_ms() + timeout_ms;
    int n = addresses(cfg, ss, lens, err, errlen), fd = -1, r = -ECONNREFUSED;
    spillway_sconn *c;

    *rc = -ECONNREFUSED;
    if (n < 0) return NULL;
    for (int i = 0; i < n && fd < 0; i++) r = connect_one((struct sockaddr *)&ss[i], lens[i], deadline, &fd);
    if (fd < 0) {
        *rc = r == -ETIMEDOUT ? -ETIMEDOUT : -ECONNREFUSED;
        snprintf(err, errlen, "%s", r == -ETIMEDOUT ? "timed out (connect_timeout)" : strerror(-r));
        return NULL;
    }
    if ((c = sconn_new(fd)) == NULL) {
        close(fd);
        *rc = -ENOMEM;
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (cfg->tls != NULL && tls_open(c, cfg, deadline, rc, err, errlen) != 0) {
        spillway_sconn_close(c);
        return NULL;
    }
    *rc = 0;
    return c;
}

/* ---- commands and replies ---------------------------------------------- */

static spillway_tls_rc sc_send(spillway_sconn *c, const char *p, size_t len, size_t *n, const char **why)
{
    ssize_t r;
    if (c->tls != NULL) {
        spillway_tls_rc rc = spillway_tls_write(c->tls, p, len, n);
        if (rc == SW_TLS_CLOSED) rc = SW_TLS_ERROR;
        if (rc == SW_TLS_ERROR) *why = spillway_tls_error(c->tls);
        return rc;
    }
    do r = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    *n = r > 0 ? (size_t)r : 0;
    if (r > 0) return SW_TLS_OK;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return SW_TLS_WANT_WRITE;
    *why = r < 0 ? strerror(errno) : "connection closed";
    return SW_TLS_ERROR;
}

static spillway_tls_rc sc_recv(spillway_sconn *c, char *p, size_t len, size_t *n, const char **why)
{
    ssize_t r;
    if (c->tls != NULL) {
        spillway_tls_rc rc = spillway_tls_read(c->tls, p, len, n);
        if (rc == SW_TLS_ERROR) *why = spillway_tls_error(c->tls);
        return rc;
    }
    do r = recv(c->fd, p, len, MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    *n = r > 0 ? (size_t)r : 0;
    if (r > 0) return SW_TLS_OK;
    if (r == 0) return SW_TLS_CLOSED;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return SW_TLS_WANT_READ;
    *why = strerror(errno);
    return SW_TLS_ERROR;
}

static int send_all(spillway_sconn *c, uint64_t deadline, char *err, size_t errlen)
{
    while (c->out.off < c->out.len) {
        const char *why = "connection closed";
        size_t n = 0;
        spillway_tls_rc rc = sc_send(c, c->out.data + c->out.off, c->out.len - c->out.off, &n, &why);
        int w;
        if (rc == SW_TLS_OK) {
            c->out.off += n;
            continue;
        }
        if (rc == SW_TLS_ERROR) {
            snprintf(err, errlen, "%s", why);
            return -EIO;
        }
        if ((w = wait_want(c->fd, rc, deadline)) <= 0) {
            snprintf(err, errlen, "%s", w == 0 ? "timed out" : strerror(errno));
            return w == 0 ? -ETIMEDOUT : -EIO;
        }
    }
    spillway_buf_reset(&c->out);
    return 0;
}

/* A whole reply the reader already holds: 1, 0 (more bytes needed), or
 * -EPROTO. */
static int parsed(spillway_sconn *c, spillway_rv **out, char *err, size_t errlen)
{
    const char *why = NULL;
    int r = spillway_resp_next(c->reader, out, &why);
    if (r >= 0) return r;
    snprintf(err, errlen, "%s", why ? why : "a reply that does not parse");
    return -EPROTO;
}

static int read_reply(spillway_sconn *c, uint64_t deadline, spillway_rv **out, char *err, size_t errlen)
{
    char buf[READ_CHUNK];
    int r;
    /* Decrypted bytes OpenSSL holds are not seen by poll: read first. */
    while ((r = parsed(c, out, err, errlen)) == 0) {
        const char *why = "connection lost";
        size_t n = 0;
        spillway_tls_rc rc = sc_recv(c, buf, sizeof(buf), &n, &why);
        int w;
        if (rc == SW_TLS_OK) {
            if (spillway_resp_feed(c->reader, buf, n, &why) != 0) {
                snprintf(err, errlen, "%s", why ? why : "a reply that does not parse");
                return -EPROTO;
            }
            continue;
        }
        if (rc == SW_TLS_CLOSED || rc == SW_TLS_ERROR) {
            snprintf(err, errlen, "%s", rc == SW_TLS_CLOSED ? "connection closed by Redis" : why);
            return -EIO;
        }
        if ((w = wait_want(c->fd, rc, deadline)) <= 0) {
            snprintf(err, errlen, "%s", w == 0 ? "timed out" : strerror(errno));
            return w == 0 ? -ETIMEDOUT : -EIO;
        }
    }
    return r < 0 ? r : 0;
}

int spillway_sconn_roundtrip(spillway_sconn *c, uint32_t timeout_ms, spillway_rv **out, char *err, size_t errlen)
{
    uint64_t deadline = spillway_mono_ms() + timeout_ms;
    int r = send_all(c, deadline, err, errlen);
    *out = NULL;
    if (r != 0) return r;
    return read_reply(c, deadline, out, err, errlen);
}

int spillway_sconn_command(spillway_sconn *c, int argc, const char *const *argv, const size_t *lens,
                           uint32_t timeout_ms, spillway_rv **out, char *err, size_t errlen)
{
    *out = NULL;
    if (spillway_buf_command(&c->out, argc, argv, lens) != 0) {
        spillway_buf_reset(&c->out);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return spillway_sconn_roundtrip(c, timeout_ms, out, err, errlen);
}

bool spillway_sconn_idle_ok(spillway_sconn *c)
{
    struct pollfd p = {c->fd, POLLIN | POLLRDHUP, 0};
    return poll(&p, 1, 0) == 0;
}

void spillway_sconn_close(spillway_sconn *c)
{
    if (c == NULL) return;
    spillway_tls_close(c->tls);
    if (c->fd >= 0) close(c->fd);
    spillway_resp_reader_free(c->reader);
    spillway_buf_free(&c->out);
    free(c);
}

void spillway_sconn_abandon(spillway_sconn *c)
{
    if (c != NULL && c->fd >= 0) close(c->fd);
}
