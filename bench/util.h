/*
 * Small helpers shared by the benchmark tools (loadgen, pubgen, ceiling).
 * Header-only on purpose: each tool is one translation unit plus this file,
 * so the Makefile stays trivial and nothing here is part of the gem.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>

/* Nanoseconds on CLOCK_MONOTONIC: for timeouts and pacing. */
static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * Nanoseconds on CLOCK_REALTIME. Every publish stamp (`<seq> <t_ns>` at the
 * start of a message's data) uses this clock, whoever stamps it (pubgen in
 * raw mode, the peer app in app mode), because Ruby and C can both read it
 * and every process on the machine shares it. Latency = receive - stamp.
 */
static inline int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Raise the soft fd limit to the hard one (20000 on these machines). */
static inline long raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    return (long)rl.rlim_cur;
}

/*
 * A parsed "http://127.0.0.1:PORT/path?query". Only IPv4 literals: the
 * benchmark runs on loopback and must never resolve names.
 */
struct url {
    char host[64];
    int port;
    char path[1024]; /* path plus query, starts with '/' */
};

/* Returns 0 on success, -1 (with a message on stderr) on a malformed URL. */
static inline int url_parse(const char *s, struct url *u)
{
    const char *p = s;
    if (strncmp(p, "http://", 7) == 0)
        p += 7;
    const char *colon = strchr(p, ':');
    const char *slash = strchr(p, '/');
    if (!slash)
        slash = p + strlen(p);
    const char *hend = (colon && colon < slash) ? colon : slash;
    size_t hl = (size_t)(hend - p);
    if (hl == 0 || hl >= sizeof u->host) {
        fprintf(stderr, "bad url (host): %s\n", s);
        return -1;
    }
    memcpy(u->host, p, hl);
    u->host[hl] = 0;
    u->port = 80;
    if (colon && colon < slash) {
        u->port = atoi(colon + 1);
        if (u->port <= 0 || u->port > 65535) {
            fprintf(stderr, "bad url (port): %s\n", s);
            return -1;
        }
    }
    if (*slash == 0)
        snprintf(u->path, sizeof u->path, "/");
    else if (strlen(slash) >= sizeof u->path) {
        fprintf(stderr, "bad url (path too long): %s\n", s);
        return -1;
    } else
        snprintf(u->path, sizeof u->path, "%s", slash);
    return 0;
}

/* Case-insensitive search for `needle` in the first n bytes of `hay`. */
static inline const char *memcasemem(const char *hay, size_t n, const char *needle)
{
    size_t nl = strlen(needle);
    if (nl == 0 || n < nl)
        return NULL;
    for (size_t i = 0; i + nl <= n; i++)
        if (strncasecmp(hay + i, needle, nl) == 0)
            return hay + i;
    return NULL;
}

/* Parse the status code from "HTTP/1.x NNN ..."; -1 if it is not one. */
static inline int http_status(const char *head, size_t n)
{
    if (n < 12 || strncmp(head, "HTTP/1.", 7) != 0 || head[8] != ' ')
        return -1;
    int code = 0;
    for (int i = 9; i < 12; i++) {
        if (head[i] < '0' || head[i] > '9')
            return -1;
        code = code * 10 + (head[i] - '0');
    }
    return code;
}

/*
 * Value of header `name` (with the trailing ':'), searched in a response or
 * request head of n bytes. Header names match case-insensitively at the
 * start of a line. Returns a pointer to the first non-blank byte of the
 * value, or NULL; *vlen gets its length up to CR/LF.
 */
static inline const char *http_header(const char *head, size_t n, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl < n; i++) {
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, name, nl) == 0) {
            size_t j = i + nl;
            while (j < n && (head[j] == ' ' || head[j] == '\t'))
                j++;
            size_t k = j;
            while (k < n && head[k] != '\r' && head[k] != '\n')
                k++;
            *vlen = k - j;
            return head + j;
        }
    }
    return NULL;
}

#endif
