/*
 * A growable byte buffer for the C tests (the SSE reference parser, the RESP
 * tests): always NUL-terminated past len, for printing. Allocation failure
 * aborts (tests only). Everything is static: include it where it is used.
 */
#ifndef SPILLWAY_TBUF_H
#define SPILLWAY_TBUF_H

#include <stdlib.h>
#include <string.h>

#define TBUF_API static __attribute__((unused))

typedef struct tbuf {
    char *p;
    size_t len, cap;
} tbuf;

TBUF_API void tbuf_put(tbuf *b, const void *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 32;
        while (cap < b->len + n + 1) cap *= 2;
        b->p = realloc(b->p, cap);
        if (b->p == NULL) abort();
        b->cap = cap;
    }
    if (n > 0) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0'; /* handy for printing; never part of len */
}

TBUF_API void tbuf_set(tbuf *b, const void *s, size_t n)
{
    b->len = 0;
    tbuf_put(b, s, n);
}

TBUF_API void tbuf_free(tbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* s as an empty-safe pointer for memcmp and printing. */
TBUF_API const char *tbuf_str(const tbuf *b)
{
    return b->p ? b->p : "";
}

#endif
