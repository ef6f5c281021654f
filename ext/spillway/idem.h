/*
 * Idempotency keys of publishes (Redis backend).
 *
 * A publish may carry a key; the publish script stores the message id under
 * NS:k:<key> (SET NX PX) in the same run that publishes, and a repeat while
 * that key lives returns the stored id and publishes nothing. A publish whose
 * reply was lost (a killed connection, a timeout, a restart) can therefore be
 * sent again without a risk of a duplicate. The callers who gave no key get
 * one made up here, so that their retries are safe too.
 */
#ifndef SPILLWAY_IDEM_H
#define SPILLWAY_IDEM_H

#include "hub.h"

/* A key given by the app: 1 to this many bytes, no CR, LF or NUL (the
 * Ruby layer checks first and names the limit; Spillway::MAX_IDEMPOTENCY_KEY_LENGTH,
 * 256). A site's key is "<site>|<key>" (hub.h, multisite), so that two sites
 * never share one: room for the longest site. */
#define SPILLWAY_IDEM_KEY_MAX (256 + 1 + SPILLWAY_MAX_SITE_LEN)
/* A generated key: 128 random bits as lowercase hex. */
#define SPILLWAY_IDEM_GEN_LEN 32

/* Whether key (len bytes) is a valid app-given key. */
bool spillway_idem_key_ok(const char *key, size_t len);

/* Fills out with SPILLWAY_IDEM_GEN_LEN hex digits and a NUL. From
 * getrandom(); should the kernel have no entropy to give yet, from the
 * clock, the pid, the thread and a counter: unique, which is all a key must
 * be. Thread-safe. */
void spillway_idem_generate(char out[SPILLWAY_IDEM_GEN_LEN + 1]);

/* How long Redis keeps a generated key, in ms: long enough for every retry
 * a publisher makes (spillway_publish_run: connect_timeout plus twice
 * command_timeout after the first attempt, doubled for safety), and at least
 * SPILLWAY_IDEM_GEN_TTL_MIN_MS so that an async publish caught by a killed
 * link can be sent again after a reconnect that takes a while. Far shorter
 * than idempotency_ttl: every publish without a key leaves one (about 190
 * bytes of Redis memory) for this long. */
#define SPILLWAY_IDEM_GEN_TTL_MIN_MS 30000u
uint32_t spillway_idem_generated_ttl_ms(const spillway_redis_config *rc);

/* Whether a publish first put on the wire at first_ms (CLOCK_MONOTONIC) under
 * a key that lives ttl_ms may still be sent again at now_ms: only while its
 * key, if the first attempt ran, certainly still exists when Redis runs the
 * repeat, which it does within command_timeout_ms or the repeat counts as
 * lost too. */
bool spillway_idem_may_resend(uint64_t first_ms, uint32_t ttl_ms, uint64_t now_ms,
                              uint32_t command_timeout_ms);

#endif
