#include "resolve.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct spillway_resolve {
    atomic_int refs;
    int efd;
    char *host;
    int port;
    spillway_resolve_ask_fn *ask;    /* asked for host and port first (Sentinel), or NULL */
    spillway_resolve_free_fn *ask_free;
    void *ask_arg;
    char found[300];                 /* with ask: "host:port" it named */
    int rc;
    int naddr;
    struct sockaddr_storage addrs[SPILLWAY_RESOLVE_MAX];
    socklen_t lens[SPILLWAY_RESOLVE_MAX];
    char err[640];
};

static void unref(spillway_resolve *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1) {
        if (r->efd >= 0) close(r->efd);
        free(r->host);
        if (r->ask_free) r->ask_free(r->ask_arg);
        free(r);
    }
}

static void lookup(spillway_resolve *r, const char *host, int port)
{
    struct addrinfo hints, *res = NULL;
    char sport[16];
    int rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(sport, sizeof(sport), "%d", port);
    rc = getaddrinfo(host, sport, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(r->err, sizeof(r->err), "getaddrinfo(%s): %s", host,
                 rc != 0 ? gai_strerror(rc) : "no address");
        r->rc = -1;
    } else {
        /* All of them: "localhost" is ::1 first on Debian, and a Redis that
         * listens on 127.0.0.1 only must still be found. */
        for (struct addrinfo *a = res; a != NULL && r->naddr < SPILLWAY_RESOLVE_MAX; a = a->ai_next) {
            if (a->ai_addrlen > sizeof(r->addrs[0])) continue;
            memcpy(&r->addrs[r->naddr], a->ai_addr, a->ai_addrlen);
            r->lens[r->naddr] = a->ai_addrlen;
            r->naddr++;
        }
        r->rc = r->naddr > 0 ? 0 : -1;
        if (r->rc != 0) snprintf(r->err, sizeof(r->err), "getaddrinfo(%s): no usable address", host);
    }
    if (res != NULL) freeaddrinfo(res);
}

static void *resolve_main(void *arg)
{
    spillway_resolve *r = arg;
    uint64_t one = 1;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    if (r->ask != NULL) {
        char host[256];
        int port;
        if (r->ask(r->ask_arg, host, sizeof(host), &port, r->err, sizeof(r->err)) != 0) {
            r->rc = -1;
        } else {
            snprintf(r->found, sizeof(r->found), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
            lookup(r, host, port);
        }
    } else {
        lookup(r, r->host, r->port);
    }
    /* The reactor may have let go already; the eventfd is still ours. */
    if (write(r->efd, &one, sizeof(one)) < 0) { /* nothing to do */
    }
    unref(r);
    return NULL;
}

static void free_arg(spillway_resolve_free_fn *fn, void *arg)
{
    if (fn != NULL) fn(arg);
}

static spillway_resolve *start(const char *host, int port, spillway_resolve_ask_fn *ask,
                               spillway_resolve_free_fn *ask_free, void *arg)
{
    pthread_attr_t attr;
    pthread_t t;
    int rc;
    spillway_resolve *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        free_arg(ask_free, arg);
        return NULL;
    }
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->host = strdup(host);
    r->port = port;
    r->ask = ask;
    r->ask_free = ask_free;
    r->ask_arg = arg;
    r->rc = -1;
    atomic_init(&r->refs, 2);
    if (r->efd < 0 || r->host == NULL) {
        int e = errno;
        if (r->efd >= 0) close(r->efd);
        free(r->host);
        free(r);
        free_arg(ask_free, arg);
        errno = e ? e : ENOMEM;
        return NULL;
    }
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    rc = pthread_create(&t, &attr, resolve_main, r);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        close(r->efd);
        free(r->host);
        free(r);
        free_arg(ask_free, arg);
        errno = rc;
        return NULL;
    }
    return r;
}

spillway_resolve *spillway_resolve_start(const char *host, int port)
{
    return start(host, port, NULL, NULL, NULL);
}

spillway_resolve *spillway_resolve_start_asking(const char *name, spillway_resolve_ask_fn *ask,
                                                spillway_resolve_free_fn *ask_free, void *arg)
{
    return start(name, 0, ask, ask_free, arg);
}

const char *spillway_resolve_found(const spillway_resolve *r)
{
    return r->found;
}

int spillway_resolve_fd(const spillway_resolve *r)
{
    return r->efd;
}

int spillway_resolve_result(spillway_resolve *r, struct sockaddr_storage *addrs, socklen_t *lens,
                            char *err, size_t errlen)
{
    if (r->rc != 0) {
        snprintf(err, errlen, "%s", r->err[0] ? r->err : "resolution failed");
        return -1;
    }
    for (int i = 0; i < r->naddr; i++) {
        addrs[i] = r->addrs[i];
        lens[i] = r->lens[i];
    }
    return r->naddr;
}

void spillway_resolve_release(spillway_resolve *r)
{
    if (r != NULL) unref(r);
}

void spillway_resolve_abandon(spillway_resolve *r)
{
    if (r != NULL && r->efd >= 0) close(r->efd);
}

int spillway_resolve_numeric(const char *host, int port, struct sockaddr_storage *addr,
                             socklen_t *len)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
    memset(addr, 0, sizeof(*addr));
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof(*a4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a6);
        return 0;
    }
    return -1;
}
