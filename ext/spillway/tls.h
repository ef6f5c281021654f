/*
 * TLS to Redis (rediss://), over OpenSSL, on a socket its caller owns.
 *
 * Two objects:
 *   spillway_tls_ctx  what the configuration says (CA store, client
 *                     certificate, verification, server name): one
 *                     SSL_CTX, reference-counted, shared by the hub's links
 *                     and the publisher's connections (OpenSSL allows an
 *                     SSL_CTX to be used from many threads once it is set up)
 *   spillway_tls      one connection's session, on a non-blocking socket:
 *                     the caller waits for readiness (epoll in the reactor,
 *                     poll in the publisher) whenever a call returns
 *                     SW_TLS_WANT_READ or SW_TLS_WANT_WRITE, and calls again
 *
 * Verification is on unless asked otherwise: the peer's chain against the
 * CA file/path given, or the system store; its name against server_name,
 * or the host of the URL (an IP address is checked as one, and sent no SNI,
 * which is for names only).
 *
 * Every call clears this thread's OpenSSL error queue first, so an error
 * text is the one of that call. A session is used by one thread at a time.
 * No Ruby here: the core's own module.
 */
#ifndef SPILLWAY_TLS_H
#define SPILLWAY_TLS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct spillway_tls_options {
    const char *ca_file;     /* PEM bundle of trusted CAs (NULL: see ca_path) */
    const char *ca_path;     /* directory of hashed CA certificates (c_rehash) */
    const char *cert_file;   /* client certificate (PEM), for --tls-auth-clients */
    const char *key_file;    /* its private key (PEM; NULL: in cert_file) */
    const char *server_name; /* the name to verify and send as SNI (NULL: the host) */
    bool verify;             /* false: no verification at all (logged by the caller) */
} spillway_tls_options;

typedef struct spillway_tls_ctx spillway_tls_ctx;
typedef struct spillway_tls spillway_tls;

typedef enum spillway_tls_rc {
    SW_TLS_OK,         /* done (read/write: *n bytes moved, at least 1) */
    SW_TLS_WANT_READ,  /* call again once the socket is readable */
    SW_TLS_WANT_WRITE, /* call again once the socket is writable */
    SW_TLS_CLOSED,     /* read: the peer closed the connection */
    SW_TLS_ERROR       /* for good: spillway_tls_error says why */
} spillway_tls_rc;

/* A context for these options: 0, or -1 with a message in err (a file that
 * cannot be read, a key that does not match the certificate...). With no CA
 * file nor path, the system's default store. */
int spillway_tls_ctx_new(const spillway_tls_options *o, spillway_tls_ctx **out, char *err, size_t errlen);
/* Another reference (NULL stays NULL). */
spillway_tls_ctx *spillway_tls_ctx_ref(spillway_tls_ctx *c);
/* Drops a reference; the last one frees it. NULL is fine. */
void spillway_tls_ctx_unref(spillway_tls_ctx *c);
bool spillway_tls_ctx_verifies(const spillway_tls_ctx *c);

/* A session on fd (connected, non-blocking) to host (what the name is
 * checked against unless the context has a server_name). NULL with a
 * message in err. The caller keeps owning fd. */
spillway_tls *spillway_tls_new(spillway_tls_ctx *c, int fd, const char *host, char *err, size_t errlen);
/* Drives the handshake: SW_TLS_OK once it is done and the peer verified. */
spillway_tls_rc spillway_tls_handshake(spillway_tls *t);
/* Reads up to len bytes into buf (*n: how many). Keep calling until it
 * returns WANT_*: bytes OpenSSL already decrypted are not signalled by the
 * socket (SSL_pending). WANT_WRITE is possible (the peer asked for a key
 * update and the socket is full). */
spillway_tls_rc spillway_tls_read(spillway_tls *t, void *buf, size_t len, size_t *n);
/* Writes up to len bytes of buf (*n: how many; partial writes allowed).
 * After WANT_*, call again with the same bytes (the buffer may have moved
 * and grown meanwhile, not changed). */
spillway_tls_rc spillway_tls_write(spillway_tls *t, const void *buf, size_t len, size_t *n);
/* Why the last call failed: "certificate verify failed: certificate has
 * expired", "certificate verify failed: hostname mismatch", OpenSSL's
 * reason... */
const char *spillway_tls_error(const spillway_tls *t);
/* Sends close_notify when the session is healthy (once, without waiting:
 * the socket is non-blocking), then frees the session. The caller closes
 * the descriptor afterwards. NULL is fine. */
void spillway_tls_close(spillway_tls *t);
/* Frees the session without a word to the peer (a dead connection). */
void spillway_tls_free(spillway_tls *t);

#endif
