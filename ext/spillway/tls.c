#include "tls.h"

#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct spillway_tls_ctx {
    SSL_CTX *ssl;
    char *server_name;
    bool verify;
    atomic_uint refs;
};

struct spillway_tls {
    SSL *ssl;
    bool verify;
    bool fatal;     /* a fatal error: no close_notify (OpenSSL forbids SSL_shutdown then) */
    bool connected; /* the handshake is done */
    char err[256];
};

/* OpenSSL's reason for the oldest error of this thread's queue (the cause;
 * later ones tend to be "the handshake failed"), or fallback. */
static const char *queue_reason(const char *fallback, unsigned long *code)
{
    unsigned long e = ERR_peek_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (code != NULL) *code = e;
    return r != NULL ? r : fallback;
}

static int ctx_fail(SSL_CTX *ssl, char *err, size_t errlen, const char *what, const char *file)
{
    snprintf(err, errlen, "redis_tls: %s %s: %s", what, file, queue_reason("unknown error", NULL));
    ERR_clear_error();
    SSL_CTX_free(ssl);
    return -1;
}

/* The trust store and the client certificate of o. 0, or -1 (ssl freed). */
static int ctx_load(SSL_CTX *ssl, const spillway_tls_options *o, char *err, size_t errlen)
{
    if (o->ca_file != NULL || o->ca_path != NULL) {
        if (SSL_CTX_load_verify_locations(ssl, o->ca_file, o->ca_path) != 1)
            return ctx_fail(ssl, err, errlen, "cannot load the CA certificates", o->ca_file ? o->ca_file : o->ca_path);
    } else if (SSL_CTX_set_default_verify_paths(ssl) != 1) {
        return ctx_fail(ssl, err, errlen, "cannot load the system's CA store", "");
    }
    if (o->key_file != NULL && o->cert_file == NULL) {
        snprintf(err, errlen, "redis_tls: key_file without cert_file");
        SSL_CTX_free(ssl);
        return -1;
    }
    if (o->cert_file != NULL) {
        const char *key = o->key_file ? o->key_file : o->cert_file;
        if (SSL_CTX_use_certificate_chain_file(ssl, o->cert_file) != 1)
            return ctx_fail(ssl, err, errlen, "cannot load the client certificate", o->cert_file);
        if (SSL_CTX_use_PrivateKey_file(ssl, key, SSL_FILETYPE_PEM) != 1)
            return ctx_fail(ssl, err, errlen, "cannot load the client key", key);
        if (SSL_CTX_check_private_key(ssl) != 1)
            return ctx_fail(ssl, err, errlen, "the client key does not match the certificate", o->cert_file);
    }
    return 0;
}

int spillway_tls_ctx_new(const spillway_tls_options *o, spillway_tls_ctx **out, char *err, size_t errlen)
{
    spillway_tls_ctx *c;
    SSL_CTX *ssl;

    *out = NULL;
    ERR_clear_error();
    ssl = SSL_CTX_new(TLS_client_method());
    if (ssl == NULL) {
        snprintf(err, errlen, "redis_tls: SSL_CTX_new: %s", queue_reason("out of memory", NULL));
        return -1;
    }
    SSL_CTX_set_min_proto_version(ssl, TLS1_2_VERSION);
    /* Writes go out of a buffer that grows while a write waits (the
     * retry sends the same bytes from wherever they are now), record by
     * record. */
    SSL_CTX_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
    SSL_CTX_set_verify(ssl, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (ctx_load(ssl, o, err, errlen) != 0) return -1;
    c = calloc(1, sizeof(*c));
    if (c == NULL || (o->server_name != NULL && (c->server_name = strdup(o->server_name)) == NULL)) {
        free(c);
        SSL_CTX_free(ssl);
        snprintf(err, errlen, "redis_tls: out of memory");
        return -1;
    }
    c->ssl = ssl;
    c->verify = o->verify;
    atomic_init(&c->refs, 1);
    *out = c;
    return 0;
}

spillway_tls_ctx *spillway_tls_ctx_ref(spillway_tls_ctx *c)
{
    if (c != NULL) atomic_fetch_add(&c->refs, 1);
    return c;
}

void spillway_tls_ctx_unref(spillway_tls_ctx *c)
{
    if (c == NULL || atomic_fetch_sub(&c->refs, 1) != 1) return;
    SSL_CTX_free(c->ssl);
    free(c->server_name);
    free(c);
}

bool spillway_tls_ctx_verifies(const spillway_tls_ctx *c)
{
    return c->verify;
}

static bool is_ip(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* What the peer's certificate must name, and the SNI. */
static int set_name(spillway_tls *t, const char *name)
{
    if (name == NULL || name[0] == '\0') return 0;
    if (is_ip(name)) {
        /* No SNI for an address (RFC 6066); the certificate must list it
         * as an IP subjectAltName. */
        if (t->verify && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name) != 1) return -1;
        return 0;
    }
    if (SSL_set_tlsext_host_name(t->ssl, name) != 1) return -1;
    if (t->verify) {
        SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(t->ssl, name) != 1) return -1;
    }
    return 0;
}

/* ---- the socket BIO ------------------------------------------------------
 * OpenSSL's own socket BIO writes with write(2): on a connection the peer
 * closed that raises SIGPIPE, which would kill a process that does not
 * ignore it. This one sends with MSG_NOSIGNAL, and otherwise does what
 * the stock one does for a non-blocking socket. */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int bio_fd(BIO *b)
{
    return (int)(intptr_t)BIO_get_data(b);
}

static int bio_write(BIO *b, const char *buf, int len)
{
    ssize_t n;
    BIO_clear_retry_flags(b);
    do n = send(bio_fd(b), buf, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
    return (int)n;
}

static int bio_read(BIO *b, char *buf, int len)
{
    ssize_t n;
    BIO_clear_retry_flags(b);
    do n = recv(bio_fd(b), buf, (size_t)len, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    SW_UNUSED(b);
    SW_UNUSED(num);
    SW_UNUSED(ptr);
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "spillway socket");
    if (m == NULL) return;
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    bio_method = m; /* for the process's lifetime */
}

/* A BIO on fd that leaves it open when freed. */
static BIO *bio_new(int fd)
{
    BIO *b;
    pthread_once(&bio_once, bio_method_init);
    if (bio_method == NULL || (b = BIO_new(bio_method)) == NULL) return NULL;
    BIO_set_data(b, (void *)(intptr_t)fd);
    BIO_set_init(b, 1);
    return b;
}

spillway_tls *spillway_tls_new(spillway_tls_ctx *c, int fd, const char *host, char *err, size_t errlen)
{
    spillway_tls *t = calloc(1, sizeof(*t));
    BIO *bio;
    ERR_clear_error();
    if (t == NULL || (t->ssl = SSL_new(c->ssl)) == NULL) {
        snprintf(err, errlen, "TLS: cannot create a session: %s", queue_reason("out of memory", NULL));
        free(t);
        return NULL;
    }
    t->verify = c->verify;
    bio = bio_new(fd);
    if (bio != NULL) SSL_set_bio(t->ssl, bio, bio); /* the session owns it */
    if (bio == NULL || set_name(t, c->server_name ? c->server_name : host) != 0) {
        snprintf(err, errlen, "TLS: cannot set up the session: %s", queue_reason("unknown error", NULL));
        spillway_tls_free(t);
        return NULL;
    }
    SSL_set_connect_state(t->ssl);
    return t;
}

/* Why ret (what an SSL_ call returned) is no success: WANT_*, CLOSED, or
 * ERROR with t->err filled. */
static spillway_tls_rc outcome(spillway_tls *t, int ret, const char *during)
{
    int e = SSL_get_error(t->ssl, ret);
    int saved = errno;
    unsigned long code = 0;
    const char *reason;

    switch (e) {
    case SSL_ERROR_WANT_READ: return SW_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return SW_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: /* close_notify */
        snprintf(t->err, sizeof(t->err), "the connection was closed (TLS close_notify)");
        return SW_TLS_CLOSED;
    default: break;
    }
    t->fatal = true;
    if (!t->connected && t->verify && SSL_get_verify_result(t->ssl) != X509_V_OK) {
        long vr = SSL_get_verify_result(t->ssl);
        snprintf(t->err, sizeof(t->err), "certificate verify failed: %s", X509_verify_cert_error_string(vr));
        ERR_clear_error();
        return SW_TLS_ERROR;
    }
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        if (saved == 0) {
            snprintf(t->err, sizeof(t->err), "the connection was closed during the TLS %s", during);
            return t->connected ? SW_TLS_CLOSED : SW_TLS_ERROR;
        }
        snprintf(t->err, sizeof(t->err), "TLS %s: %s", during, strerror(saved));
        return SW_TLS_ERROR;
    }
    reason = queue_reason("unknown error", &code);
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
    if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        snprintf(t->err, sizeof(t->err), "the connection was closed during the TLS %s (no close_notify)", during);
        ERR_clear_error();
        return t->connected ? SW_TLS_CLOSED : SW_TLS_ERROR;
    }
#endif
#ifdef SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED
    if (ERR_GET_REASON(code) == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED) {
        snprintf(t->err, sizeof(t->err), "TLS %s: %s (Redis wants a client certificate: redis_tls cert_file/key_file)",
                 during, reason);
        ERR_clear_error();
        return SW_TLS_ERROR;
    }
#endif
    snprintf(t->err, sizeof(t->err), "TLS %s: %s", during, reason);
    ERR_clear_error();
    return SW_TLS_ERROR;
}

spillway_tls_rc spillway_tls_handshake(spillway_tls *t)
{
    int ret;
    ERR_clear_error();
    errno = 0;
    ret = SSL_connect(t->ssl);
    if (ret == 1) {
        t->connected = true;
        return SW_TLS_OK;
    }
    return outcome(t, ret, "handshake");
}

/* After a failed write: whether the peer's alert explains it (t->err then
 * says so). */
static bool pending_alert(spillway_tls *t)
{
    char scratch[512];
    size_t n = 0;
    int ret;
    ERR_clear_error();
    ret = SSL_read_ex(t->ssl, scratch, sizeof(scratch), &n);
    if (ret == 1 || SSL_get_error(t->ssl, ret) != SSL_ERROR_SSL) {
        ERR_clear_error();
        return false;
    }
    outcome(t, ret, "read");
    return true;
}

spillway_tls_rc spillway_tls_read(spillway_tls *t, void *buf, size_t len, size_t *n)
{
    int ret;
    *n = 0;
    ERR_clear_error();
    errno = 0;
    ret = SSL_read_ex(t->ssl, buf, len, n);
    if (ret == 1) return SW_TLS_OK;
    return outcome(t, ret, "read");
}

spillway_tls_rc spillway_tls_write(spillway_tls *t, const void *buf, size_t len, size_t *n)
{
    int ret;
    *n = 0;
    ERR_clear_error();
    errno = 0;
    ret = SSL_write_ex(t->ssl, buf, len, n);
    if (ret == 1) return SW_TLS_OK;
    if (SSL_get_error(t->ssl, ret) == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        /* The peer reset the connection: most likely after an alert that
         * says why (a TLS 1.3 server refuses a client certificate only
         * after the handshake), still unread in the socket. */
        char why[sizeof(t->err)];
        int saved = errno;
        snprintf(why, sizeof(why), "TLS write: %s", strerror(saved));
        if (pending_alert(t)) return SW_TLS_ERROR;
        memcpy(t->err, why, sizeof(why));
        t->fatal = true;
        return SW_TLS_ERROR;
    }
    return outcome(t, ret, "write");
}

const char *spillway_tls_error(const spillway_tls *t)
{
    return t->err[0] ? t->err : "TLS error";
}

void spillway_tls_close(spillway_tls *t)
{
    if (t == NULL) return;
    if (t->connected && !t->fatal) {
        /* One try: the socket is non-blocking and about to be closed;
         * the peer's close_notify is not waited for. */
        ERR_clear_error();
        SSL_shutdown(t->ssl);
        ERR_clear_error();
    }
    spillway_tls_free(t);
}

void spillway_tls_free(spillway_tls *t)
{
    if (t == NULL) return;
    SSL_free(t->ssl);
    free(t);
}
