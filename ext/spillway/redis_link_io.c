/*
 * The Redis links' I/O (redis_link.h): bytes to and from the link's
 * connection, the socket itself or a TLS session on it (tls.c). Below
 * redis_link.c, which drives the link's states.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "redis_link.h"
#include "tls.h"

/* What the link asks of its connection, with the answers of tls.h for
 * both: OK (*n bytes moved), WANT_* (wait for the socket), CLOSED (read:
 * the peer closed), ERROR (*why). */
spillway_tls_rc spillway_link_send(spillway_rlink *l, const char *p, size_t len, size_t *n, const char **why)
{
    ssize_t r;
    if (l->tls != NULL) {
        spillway_tls_rc rc = spillway_tls_write(l->tls, p, len, n);
        if (rc == SW_TLS_CLOSED) rc = SW_TLS_ERROR;
        if (rc == SW_TLS_ERROR) *why = spillway_tls_error(l->tls);
        return rc;
    }
    do r = send(l->h.fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    *n = r > 0 ? (size_t)r : 0;
    if (r > 0) return SW_TLS_OK;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return SW_TLS_WANT_WRITE;
    *why = r < 0 ? strerror(errno) : "closed";
    return SW_TLS_ERROR;
}

spillway_tls_rc spillway_link_recv(spillway_rlink *l, char *p, size_t len, size_t *n, const char **why)
{
    ssize_t r;
    if (l->tls != NULL) {
        spillway_tls_rc rc = spillway_tls_read(l->tls, p, len, n);
        if (rc == SW_TLS_ERROR) *why = spillway_tls_error(l->tls);
        return rc;
    }
    do r = recv(l->h.fd, p, len, MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    *n = r > 0 ? (size_t)r : 0;
    if (r > 0) return SW_TLS_OK;
    if (r == 0) return SW_TLS_CLOSED;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return SW_TLS_WANT_READ;
    *why = strerror(errno);
    return SW_TLS_ERROR;
}
