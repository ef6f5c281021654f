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
    int rc;
    int naddr;
    struct sockaddr_storage addrs[SPILLWAY_RESOLVE_MAX];
    socklen_t lens[SPILLWAY_RESOLVE_MAX];
    char err[160];
};

static void unref(spillway_resolve *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1) {
        if (r->efd >= 0) close(r->efd);
        free(r->host);
        free(r);
    }
}

static void *resolve_main(void *arg)
{
    spillway_resolve *r = arg;
    struct addrinfo hints, *res = NULL;
    char port[16];
    int rc;
    uint64_t one = 1;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", r->port);
    rc = getaddrinfo(r->host, port, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(r->err, sizeof(r->err), "getaddrinfo(%s): %s", r->host,
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
        if (r->rc != 0) snprintf(r->err, sizeof(r->err), "getaddrinfo(%s): no usable address", r->host);
    }
    if (res != NULL) freeaddrinfo(res);
    /* The reactor may have let go already; the eventfd is still ours. */
    if (write(r->efd, &one, sizeof(one)) < 0) { /* nothing to do */
    }
    unref(r);
    return NULL;
}

spillway_resolve *spillway_resolve_start(const char *host, int port)
{
    pthread_attr_t attr;
    pthread_t t;
    int rc;
    spillway_resolve *r = calloc(1, sizeof(*r));

    if (r == NULL) return NULL;
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->host = strdup(host);
    r->port = port;
    r->rc = -1;
    atomic_init(&r->refs, 2);
    if (r->efd < 0 || r->host == NULL) {
        int e = errno;
        if (r->efd >= 0) close(r->efd);
        free(r->host);
        free(r);
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
        errno = rc;
        return NULL;
    }
    return r;
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
