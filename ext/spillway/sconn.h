/*
 * A blocking connection to Redis with deadlines, for the synchronous
 * publisher (publisher.c): one command, one reply, each within its own
 * timeout. Plaintext and TLS (tls.h) share the code path: the socket is
 * non-blocking underneath and every wait is a poll() bounded by the
 * deadline, so a TLS session's WANT_READ/WANT_WRITE are just two more
 * waits. Commands are encoded with resp.h's spillway_buf, replies parsed
 * with its reader.
 *
 * One thread at a time per connection. Another thread may shutdown(2) fd
 * to end a wait at once (the publisher's interrupt); the owner then sees
 * the connection closed.
 */
#ifndef SPILLWAY_SCONN_H
#define SPILLWAY_SCONN_H

#include <sys/types.h>

#include "hub.h"
#include "resp.h"

typedef struct spillway_sconn {
    int fd;
    struct spillway_tls *tls; /* rediss://, or NULL */
    spillway_resp_reader *reader;
    spillway_buf out;         /* the command being sent */
    pid_t pid;                /* the process that opened it */
    uint32_t gen;             /* the owner's: which primary it was opened to (Sentinel) */
} spillway_sconn;

/* Connects to cfg's Redis (unix socket, or host and port: every address
 * the name resolves to, in order) and, with cfg->tls, makes the TLS
 * handshake, all within timeout_ms. Returns a new connection, or NULL with
 * err filled (strerror's text, "timed out", the TLS cause: "TLS handshake:
 * certificate verify failed: ...") and *rc: -ECONNREFUSED, -ETIMEDOUT,
 * -ENOMEM. No Redis command is sent. */
spillway_sconn *spillway_sconn_open(const spillway_redis_config *cfg, uint32_t timeout_ms, int *rc, char *err,
                                    size_t errlen);

/* Sends what c->out holds (then empties it) and waits for one reply, all
 * within timeout_ms. 0 and *out (spillway_rv_free it), or with err filled:
 * -ETIMEDOUT (no whole reply in time), -EIO (the connection failed or
 * closed), -EPROTO (a reply that does not parse). After an error the
 * connection is of no more use. */
int spillway_sconn_roundtrip(spillway_sconn *c, uint32_t timeout_ms, spillway_rv **out, char *err, size_t errlen);
/* The same for a command given as arguments (lens NULL: NUL-terminated). */
int spillway_sconn_command(spillway_sconn *c, int argc, const char *const *argv, const size_t *lens,
                           uint32_t timeout_ms, spillway_rv **out, char *err, size_t errlen);

/* Whether an idle connection is still usable: nothing to read (Redis sends
 * nothing unasked; readable means it closed the connection). */
bool spillway_sconn_idle_ok(spillway_sconn *c);

/* Closes it (a TLS session says close_notify first) and frees it. */
void spillway_sconn_close(spillway_sconn *c);
/* Fork child: closes this process's copy of the descriptor and nothing
 * else; the TLS session and the memory are the parent's (copy-on-write),
 * left as they are. */
void spillway_sconn_abandon(spillway_sconn *c);

#endif
