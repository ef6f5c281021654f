/*
 * tls.c and sconn.c against a real redis-server with --tls-port (its
 * plaintext port off), with certificates made by the openssl CLI in a
 * temporary directory: contexts from options and their errors, the
 * handshake and round trips on a non-blocking socket (a reply bigger than
 * a TLS record, a command bigger than the socket buffer), verification
 * failures naming their cause (wrong CA, name mismatch), verify off, and a
 * connection the server closes.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "sconn.h"
#include "tls.h"

static char dir[64];
static char path_ca[128], path_other_ca[128], path_srv[128], path_srv_key[128];
static int redis_port;
static pid_t redis_pid = -1;

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    if (system(cmd) != 0) {
        fprintf(stderr, "failed: %s\n", cmd);
        exit(2);
    }
}

/* A CA, a second CA, and a server certificate for 127.0.0.1 and localhost
 * signed by the first. */
static void make_certs(void)
{
    const char *q = ">/dev/null 2>&1";
    snprintf(path_ca, sizeof(path_ca), "%s/ca.pem", dir);
    snprintf(path_other_ca, sizeof(path_other_ca), "%s/other.pem", dir);
    snprintf(path_srv, sizeof(path_srv), "%s/srv.pem", dir);
    snprintf(path_srv_key, sizeof(path_srv_key), "%s/srv.key", dir);
    sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
       "-subj /CN=test-ca -keyout ca.key -out ca.pem %s", dir, q);
    sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
       "-subj /CN=other-ca -keyout other.key -out other.pem %s", dir, q);
    sh("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost "
       "-keyout srv.key -out srv.csr %s", dir, q);
    sh("cd %s && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf && openssl x509 -req -in srv.csr "
       "-CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem %s", dir, q);
}

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int s = socket(AF_INET, SOCK_STREAM, 0), port;
    bind(s, (struct sockaddr *)&a, sizeof(a));
    getsockname(s, (struct sockaddr *)&a, &len);
    port = ntohs(a.sin_port);
    close(s);
    return port;
}

static bool port_open(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int s = socket(AF_INET, SOCK_STREAM, 0);
    bool ok = connect(s, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(s);
    return ok;
}

static void stop_redis(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
    if (dir[0] != '\0') sh("rm -rf %s", dir);
}

/* The server, once for the whole binary. */
static void start_redis(void)
{
    char port[16];
    if (redis_pid > 0) return;
    snprintf(dir, sizeof(dir), "/tmp/spillway-ctls-XXXXXX");
    if (mkdtemp(dir) == NULL) exit(2);
    make_certs();
    redis_port = free_port();
    snprintf(port, sizeof(port), "%d", redis_port);
    redis_pid = fork();
    if (redis_pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execlp("redis-server", "redis-server", "--port", "0", "--tls-port", port, "--bind", "127.0.0.1",
               "--tls-cert-file", path_srv, "--tls-key-file", path_srv_key, "--tls-ca-cert-file", path_ca,
               "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", dir, (char *)NULL);
        _exit(127);
    }
    atexit(stop_redis);
    if (!WAIT_UNTIL(port_open(redis_port), 10000)) {
        fprintf(stderr, "redis-server --tls-port %d did not come up\n", redis_port);
        exit(2);
    }
}

static spillway_tls_ctx *ctx_with(const char *ca, const char *server_name, bool verify)
{
    spillway_tls_options o = {.ca_file = ca, .server_name = server_name, .verify = verify};
    spillway_tls_ctx *c = NULL;
    char err[256];
    if (spillway_tls_ctx_new(&o, &c, err, sizeof(err)) != 0) fprintf(stderr, "ctx: %s\n", err);
    return c;
}

static spillway_redis_config config(spillway_tls_ctx *ctx, const char *host)
{
    spillway_redis_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.host = host;
    cfg.port = redis_port;
    cfg.tls = ctx;
    return cfg;
}

TEST(contexts_name_the_file_that_cannot_be_used)
{
    spillway_tls_options o = {.verify = true};
    spillway_tls_ctx *c = NULL;
    char err[256];

    o.ca_file = "/nonexistent/ca.pem";
    CHECK_INT(spillway_tls_ctx_new(&o, &c, err, sizeof(err)), ==, -1);
    CHECK(c == NULL);
    CHECK(strstr(err, "cannot load the CA certificates /nonexistent/ca.pem") != NULL);
    o.ca_file = NULL;
    o.key_file = "/nonexistent/key.pem";
    CHECK_INT(spillway_tls_ctx_new(&o, &c, err, sizeof(err)), ==, -1);
    CHECK(strstr(err, "key_file without cert_file") != NULL);
    o.key_file = NULL;
    o.cert_file = "/nonexistent/cert.pem";
    CHECK_INT(spillway_tls_ctx_new(&o, &c, err, sizeof(err)), ==, -1);
    CHECK(strstr(err, "cannot load the client certificate /nonexistent/cert.pem") != NULL);
    /* The system store by default; references. */
    o.cert_file = NULL;
    REQUIRE_INT(spillway_tls_ctx_new(&o, &c, err, sizeof(err)), ==, 0);
    CHECK(spillway_tls_ctx_verifies(c));
    CHECK(spillway_tls_ctx_ref(c) == c);
    spillway_tls_ctx_unref(c);
    spillway_tls_ctx_unref(c);
    spillway_tls_ctx_unref(NULL);
}

static void expect_pong(spillway_sconn *c)
{
    const char *argv[] = {"PING"};
    spillway_rv *v = NULL;
    char err[256] = "";
    REQUIRE_INT(spillway_sconn_command(c, 1, argv, NULL, 5000 * check_slow(), &v, err, sizeof(err)), ==, 0);
    CHECK(v->type == SW_RV_STATUS && spillway_rv_is(v, "PONG"));
    spillway_rv_free(v);
}

TEST(round_trips_over_tls_with_big_commands_and_replies)
{
    spillway_tls_ctx *ctx;
    spillway_redis_config cfg;
    spillway_sconn *c;
    char err[256] = "";
    int rc = 1;
    size_t big = 1u << 20; /* a megabyte: many records, a full socket buffer on the way out */
    char *val = malloc(big);
    spillway_rv *v = NULL;

    start_redis();
    ctx = ctx_with(path_ca, NULL, true);
    REQUIRE(ctx != NULL);
    cfg = config(ctx, "127.0.0.1");
    c = spillway_sconn_open(&cfg, 5000 * check_slow(), &rc, err, sizeof(err));
    if (c == NULL) fprintf(stderr, "open: %s\n", err);
    REQUIRE(c != NULL);
    CHECK_INT(rc, ==, 0);
    CHECK(c->tls != NULL);
    expect_pong(c);
    for (size_t i = 0; i < big; i++) val[i] = (char)('a' + i % 26);
    {
        const char *argv[] = {"SET", "tls:big", val};
        size_t lens[] = {3, 7, big};
        REQUIRE_INT(spillway_sconn_command(c, 3, argv, lens, 5000 * check_slow(), &v, err, sizeof(err)), ==, 0);
        CHECK(spillway_rv_is(v, "OK"));
        spillway_rv_free(v);
    }
    {
        const char *argv[] = {"GET", "tls:big"};
        REQUIRE_INT(spillway_sconn_command(c, 2, argv, NULL, 5000 * check_slow(), &v, err, sizeof(err)), ==, 0);
        REQUIRE(v->type == SW_RV_STRING && v->str != NULL);
        CHECK_MEM(v->str->data, (size_t)v->str->len, val, big);
        spillway_rv_free(v);
    }
    CHECK(spillway_sconn_idle_ok(c));
    spillway_sconn_close(c);
    spillway_tls_ctx_unref(ctx);
    free(val);
}

/* Opening fails; the error names cause. */
static void expect_refused(spillway_tls_ctx *ctx, const char *host, const char *cause)
{
    spillway_redis_config cfg = config(ctx, host);
    char err[256] = "";
    int rc = 0;
    spillway_sconn *c = spillway_sconn_open(&cfg, 5000 * check_slow(), &rc, err, sizeof(err));
    CHECK(c == NULL);
    CHECK_INT(rc, ==, -ECONNREFUSED);
    if (strstr(err, cause) == NULL) fprintf(stderr, "got: %s\n", err);
    CHECK(strstr(err, cause) != NULL);
    spillway_sconn_close(c);
}

TEST(verification_failures_name_their_cause)
{
    spillway_tls_ctx *other, *named, *plain;
    start_redis();
    other = ctx_with(path_other_ca, NULL, true);
    named = ctx_with(path_ca, "redis.example.com", true);
    /* An address as server_name is checked as one. */
    plain = ctx_with(path_ca, "10.0.0.1", true);
    REQUIRE(other != NULL && named != NULL && plain != NULL);
    expect_refused(other, "127.0.0.1", "TLS handshake: certificate verify failed: ");
    expect_refused(named, "127.0.0.1", "certificate verify failed: hostname mismatch");
    expect_refused(plain, "127.0.0.1", "certificate verify failed: IP address mismatch");
    spillway_tls_ctx_unref(other);
    spillway_tls_ctx_unref(named);
    spillway_tls_ctx_unref(plain);
}

TEST(verify_off_connects_to_what_it_cannot_verify)
{
    spillway_tls_ctx *ctx;
    spillway_redis_config cfg;
    spillway_sconn *c;
    char err[256] = "";
    int rc = 1;

    start_redis();
    ctx = ctx_with(path_other_ca, "redis.example.com", false);
    REQUIRE(ctx != NULL);
    CHECK(!spillway_tls_ctx_verifies(ctx));
    cfg = config(ctx, "127.0.0.1");
    c = spillway_sconn_open(&cfg, 5000 * check_slow(), &rc, err, sizeof(err));
    REQUIRE(c != NULL);
    expect_pong(c);
    spillway_sconn_close(c);
    spillway_tls_ctx_unref(ctx);
}

TEST(a_connection_the_server_closes_reads_as_closed)
{
    spillway_tls_ctx *ctx;
    spillway_redis_config cfg;
    spillway_sconn *c;
    spillway_rv *v = NULL;
    char err[256] = "";
    int rc = 1;
    const char *quit[] = {"QUIT"};

    start_redis();
    ctx = ctx_with(path_ca, NULL, true);
    REQUIRE(ctx != NULL);
    cfg = config(ctx, "127.0.0.1");
    c = spillway_sconn_open(&cfg, 5000 * check_slow(), &rc, err, sizeof(err));
    REQUIRE(c != NULL);
    REQUIRE_INT(spillway_sconn_command(c, 1, quit, NULL, 5000 * check_slow(), &v, err, sizeof(err)), ==, 0);
    CHECK(spillway_rv_is(v, "OK"));
    spillway_rv_free(v);
    CHECK(WAIT_UNTIL(!spillway_sconn_idle_ok(c), 5000));
    {
        const char *argv[] = {"PING"};
        rc = spillway_sconn_command(c, 1, argv, NULL, 5000 * check_slow(), &v, err, sizeof(err));
        CHECK(rc == -EIO);
        CHECK(v == NULL);
    }
    spillway_sconn_close(c);
    spillway_tls_ctx_unref(ctx);
}

TEST(a_plaintext_client_gets_nothing_from_a_tls_port_in_time)
{
    /* No plaintext fallback the other way either: a config without TLS on
     * the TLS port times out (Redis waits for a ClientHello) instead of
     * talking. */
    spillway_redis_config cfg;
    spillway_sconn *c;
    spillway_rv *v = NULL;
    char err[256] = "";
    int rc = 1;
    const char *argv[] = {"PING"};

    start_redis();
    cfg = config(NULL, "127.0.0.1");
    c = spillway_sconn_open(&cfg, 5000 * check_slow(), &rc, err, sizeof(err));
    REQUIRE(c != NULL);
    rc = spillway_sconn_command(c, 1, argv, NULL, 300, &v, err, sizeof(err));
    CHECK(rc == -ETIMEDOUT || rc == -EIO || rc == -EPROTO);
    CHECK(v == NULL);
    spillway_sconn_close(c);
}

CHECK_MAIN
