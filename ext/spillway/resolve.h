/*
 * Name resolution off the reactor thread. getaddrinfo() blocks (DNS), so a
 * short-lived helper thread runs it and pokes an eventfd the reactor
 * watches. Numeric addresses and unix paths need no thread.
 *
 * Ownership: the request is shared by the reactor and the helper (a
 * reference each); the last one to let go frees it.
 */
#ifndef SPILLWAY_RESOLVE_H
#define SPILLWAY_RESOLVE_H

#include <sys/socket.h>

#include "common.h"

typedef struct spillway_resolve spillway_resolve;

/* Starts resolving host:port. NULL on failure to start (errno set). The
 * eventfd spillway_resolve_fd() becomes readable when done. */
spillway_resolve *spillway_resolve_start(const char *host, int port);
/* Sentinel: the helper thread first calls ask(arg, ...) for the address
 * (blocking: sentinel.h's lookup; 0 with host and port, or -1 with err),
 * then resolves that. name is for messages. ask_free(arg) runs when the
 * request is freed, even on failure to start. Through function pointers:
 * the resolver stays below what asks. */
typedef int spillway_resolve_ask_fn(void *arg, char *host, size_t hostlen, int *port, char *err, size_t errlen);
typedef void spillway_resolve_free_fn(void *arg);
spillway_resolve *spillway_resolve_start_asking(const char *name, spillway_resolve_ask_fn *ask,
                                                spillway_resolve_free_fn *ask_free, void *arg);
/* Once readable, for an asking request: the "host:port" ask named ("" when
 * it named none). */
const char *spillway_resolve_found(const spillway_resolve *r);
int spillway_resolve_fd(const spillway_resolve *r);
#define SPILLWAY_RESOLVE_MAX 8

/* Once readable: the number of addresses found (up to SPILLWAY_RESOLVE_MAX,
 * in getaddrinfo's order) copied to addrs/lens, or -1 and a message. */
int spillway_resolve_result(spillway_resolve *r, struct sockaddr_storage *addrs, socklen_t *lens,
                            char *err, size_t errlen);
/* The reactor lets go (done with it, or giving up). */
void spillway_resolve_release(spillway_resolve *r);
/* Fork child: close the eventfd only. */
void spillway_resolve_abandon(spillway_resolve *r);

/* Numeric address or nothing: 0 and the address, -1 when host is a name. */
int spillway_resolve_numeric(const char *host, int port, struct sockaddr_storage *addr,
                             socklen_t *len);

#endif
