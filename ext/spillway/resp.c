#include "resp.h"

#include <stdlib.h>
#include <string.h>

#if __has_include(<hiredis/read.h>)
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#else
#include <hiredis.h>
#include <read.h>
#endif

struct spillway_resp_reader {
    redisReader *reader;
    bool too_deep; /* the reader failed on SPILLWAY_RESP_MAX_DEPTH, not on its own */
};

#define SW_STR_(x) #x
#define SW_STR(x) SW_STR_(x)
static const char too_deep_msg[] =
    "Protocol error: a reply nested more than " SW_STR(SPILLWAY_RESP_MAX_DEPTH) " arrays deep";

/* ---- reply objects: hiredis reader hooks ------------------------------- */

/* Puts v into its parent array at the task's index. The parent's slots grow
 * as its elements arrive: an array announcing four billion elements costs
 * nothing until they are sent. hiredis fills the slots in order, so the
 * first `elements` slots are always set. -1 on ENOMEM (v not attached). */
static int attach(const redisReadTask *task, spillway_rv *v)
{
    spillway_rv *parent;
    size_t idx;
    if (task->parent == NULL) return 0;
    parent = task->parent->obj;
    idx = (size_t)task->idx;
    if (idx >= parent->cap) {
        size_t n = parent->cap ? parent->cap * 2 : 16;
        spillway_rv **el;
        while (n <= idx) n *= 2;
        el = realloc(parent->element, n * sizeof(*el));
        if (el == NULL) return -1;
        parent->element = el;
        parent->cap = n;
    }
    parent->element[idx] = v;
    parent->elements = idx + 1;
    return 0;
}

/* Attaches a new value, or frees it and returns NULL (hiredis then fails the
 * reply with "Out of memory"). */
static void *adopt(const redisReadTask *task, spillway_rv *v)
{
    if (v != NULL && attach(task, v) != 0) {
        spillway_rv_free(v);
        return NULL;
    }
    return v;
}

static spillway_rv *rv_new(int type)
{
    spillway_rv *v = calloc(1, sizeof(*v));
    if (v != NULL) v->type = type;
    return v;
}

static int map_type(int t)
{
    switch (t) {
    case REDIS_REPLY_STRING: return SW_RV_STRING;
    case REDIS_REPLY_STATUS: return SW_RV_STATUS;
    case REDIS_REPLY_ERROR: return SW_RV_ERROR;
    default: return SW_RV_OTHER;
    }
}

static void *create_string(const redisReadTask *task, char *str, size_t len)
{
    spillway_rv *v;
    if (len > SPILLWAY_FRAME_MAX) {
        /* Too big to be a frame here: a value the caller drops and reports,
         * rather than a parse error that would break the link (and break it
         * again on every read of the same backlog entry). */
        v = rv_new(SW_RV_TOOBIG);
        if (v != NULL) v->integer = (long long)len;
        return adopt(task, v);
    }
    v = rv_new(map_type(task->type));
    if (v == NULL) return NULL;
    v->str = spillway_frame_copy(str, len);
    if (v->str == NULL) {
        free(v);
        return NULL;
    }
    return adopt(task, v);
}

/* Arrays above the task (its depth: 0 for the root), counted up to the cap. */
static int depth_of(const redisReadTask *task)
{
    int d = 0;
    for (const redisReadTask *t = task->parent; t != NULL && d < SPILLWAY_RESP_MAX_DEPTH; t = t->parent) d++;
    return d;
}

#if HIREDIS_MAJOR >= 1
static void *create_array(const redisReadTask *task, size_t elements)
#else
static void *create_array(const redisReadTask *task, int elements)
#endif
{
    spillway_rv *v;
    size_t n = elements > 0 ? (size_t)elements : 0;

    if (depth_of(task) >= SPILLWAY_RESP_MAX_DEPTH) {
        /* hiredis 1.x would go on building (and we freeing) replies nested
         * as deep as the peer likes. NULL fails the reply; the reader
         * remembers why, for the error text. */
        spillway_resp_reader *r = task->privdata;
        if (r != NULL) r->too_deep = true;
        return NULL;
    }
    /* RESP3 aggregates (maps, sets, pushes) are never asked for: their
     * elements are kept only to be freed. */
    v = rv_new(task->type == REDIS_REPLY_ARRAY ? SW_RV_ARRAY : SW_RV_OTHER);
    if (v == NULL) return NULL;
    if (n > 0) {
        /* Small arrays get their exact size at once; big ones grow (attach). */
        v->cap = SW_MIN(n, 64u);
        v->element = malloc(v->cap * sizeof(*v->element));
        if (v->element == NULL) {
            free(v);
            return NULL;
        }
    }
    return adopt(task, v);
}

static void *create_integer(const redisReadTask *task, long long value)
{
    spillway_rv *v = rv_new(SW_RV_INTEGER);
    if (v != NULL) v->integer = value;
    return adopt(task, v);
}

static void *create_nil(const redisReadTask *task)
{
    return adopt(task, rv_new(SW_RV_NIL));
}

#if HIREDIS_MAJOR >= 1
/* RESP3 types: never requested (no HELLO 3), kept as opaque values. */
static void *create_double(const redisReadTask *task, double value, char *str, size_t len)
{
    SW_UNUSED(value);
    SW_UNUSED(str);
    SW_UNUSED(len);
    return adopt(task, rv_new(SW_RV_OTHER));
}

static void *create_bool(const redisReadTask *task, int value)
{
    SW_UNUSED(value);
    return adopt(task, rv_new(SW_RV_OTHER));
}
#endif

/* Iterative: every value waiting to be freed is on one list threaded through
 * its own `next` field, so no depth of nesting can exhaust the stack, and
 * freeing needs no memory. */
void spillway_rv_free(spillway_rv *v)
{
    spillway_rv *todo = v;
    if (v != NULL) v->next = NULL;
    while (todo != NULL) {
        spillway_rv *cur = todo;
        todo = cur->next;
        for (size_t i = 0; i < cur->elements; i++) {
            spillway_rv *child = cur->element[i];
            if (child == NULL) continue;
            child->next = todo;
            todo = child;
        }
        free(cur->element);
        spillway_frame_unref(cur->str);
        free(cur);
    }
}

static void free_object(void *p)
{
    spillway_rv_free(p);
}

static redisReplyObjectFunctions functions = {
    .createString = create_string,
    .createArray = create_array,
    .createInteger = create_integer,
#if HIREDIS_MAJOR >= 1
    .createDouble = create_double,
#endif
    .createNil = create_nil,
#if HIREDIS_MAJOR >= 1
    .createBool = create_bool,
#endif
    .freeObject = free_object,
};

spillway_resp_reader *spillway_resp_reader_new(void)
{
    spillway_resp_reader *r = calloc(1, sizeof(*r));
    if (r == NULL) return NULL;
    r->reader = redisReaderCreateWithFunctions(&functions);
    if (r->reader == NULL) {
        free(r);
        return NULL;
    }
    /* Every task carries it: create_array reports the depth cap through it. */
    r->reader->privdata = r;
    return r;
}

void spillway_resp_reader_free(spillway_resp_reader *r)
{
    if (r == NULL) return;
    redisReaderFree(r->reader);
    free(r);
}

int spillway_resp_feed(spillway_resp_reader *r, const char *buf, size_t len, const char **err)
{
    if (redisReaderFeed(r->reader, buf, len) != REDIS_OK) {
        *err = r->too_deep ? too_deep_msg : r->reader->errstr;
        return -1;
    }
    return 0;
}

int spillway_resp_next(spillway_resp_reader *r, spillway_rv **out, const char **err)
{
    void *reply = NULL;
    if (redisReaderGetReply(r->reader, &reply) != REDIS_OK) {
        *err = r->too_deep ? too_deep_msg : r->reader->errstr;
        return -1;
    }
    if (reply == NULL) return 0;
    *out = reply;
    return 1;
}

bool spillway_rv_is(const spillway_rv *v, const char *s)
{
    size_t n = strlen(s);
    return v != NULL && v->str != NULL && v->str->len == n && memcmp(v->str->data, s, n) == 0;
}

bool spillway_rv_starts(const spillway_rv *v, const char *prefix)
{
    size_t n = strlen(prefix);
    return v != NULL && v->str != NULL && v->str->len >= n && memcmp(v->str->data, prefix, n) == 0;
}

const char *spillway_rv_text(const spillway_rv *v, size_t max, char *buf, size_t n)
{
    size_t k = 0;
    if (n == 0) return buf;
    if (v != NULL && v->str != NULL) {
        for (; k < v->str->len && k < max && k + 1 < n; k++) {
            unsigned char c = (unsigned char)v->str->data[k];
            buf[k] = c >= 0x20 && c < 0x7f ? (char)c : '?';
        }
    }
    buf[k] = '\0';
    return buf;
}

const char *spillway_rv_describe(const spillway_rv *v, char *buf, size_t n)
{
    char text[64];
    const char *s = spillway_rv_text(v, 60, text, sizeof(text));
    if (v == NULL) {
        snprintf(buf, n, "nothing");
        return buf;
    }
    switch (v->type) {
    case SW_RV_STRING: snprintf(buf, n, "a bulk string of %u bytes", v->str ? v->str->len : 0u); break;
    case SW_RV_STATUS: snprintf(buf, n, "a status (+%s)", s); break;
    case SW_RV_ERROR: snprintf(buf, n, "an error (-%s)", s); break;
    case SW_RV_INTEGER: snprintf(buf, n, "an integer (%lld)", v->integer); break;
    case SW_RV_NIL: snprintf(buf, n, "nil"); break;
    case SW_RV_ARRAY: snprintf(buf, n, "an array of %zu element%s", v->elements, v->elements == 1 ? "" : "s"); break;
    case SW_RV_TOOBIG: snprintf(buf, n, "a bulk string of %lld bytes (over SPILLWAY_FRAME_MAX)", v->integer); break;
    default: snprintf(buf, n, "a RESP3 value"); break;
    }
    return buf;
}

/* ---- commands ---------------------------------------------------------- */

void spillway_buf_free(spillway_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = b->off = 0;
}

void spillway_buf_reset(spillway_buf *b)
{
    b->len = b->off = 0;
    if (b->cap > 1u << 20) spillway_buf_free(b); /* give a burst's memory back */
}

static int reserve(spillway_buf *b, size_t more)
{
    size_t need = b->len + more, n;
    char *d;
    if (need <= b->cap) return 0;
    if (b->off > 0 && b->off == b->len) {
        b->len = b->off = 0;
        if (more <= b->cap) return 0;
    }
    n = b->cap ? b->cap : 1024;
    while (n < need) n *= 2;
    d = realloc(b->data, n);
    if (d == NULL) return -1;
    b->data = d;
    b->cap = n;
    return 0;
}

static int put_len_line(spillway_buf *b, char tag, size_t n)
{
    char tmp[32];
    int k = snprintf(tmp, sizeof(tmp), "%c%zu\r\n", tag, n);
    if (reserve(b, (size_t)k) != 0) return -1;
    memcpy(b->data + b->len, tmp, (size_t)k);
    b->len += (size_t)k;
    return 0;
}

int spillway_buf_begin(spillway_buf *b, size_t argc)
{
    return put_len_line(b, '*', argc);
}

int spillway_buf_arg2(spillway_buf *b, const char *a, size_t alen, const char *c, size_t clen)
{
    if (put_len_line(b, '$', alen + clen) != 0 || reserve(b, alen + clen + 2) != 0) return -1;
    if (alen > 0) memcpy(b->data + b->len, a, alen);
    if (clen > 0) memcpy(b->data + b->len + alen, c, clen);
    b->len += alen + clen;
    b->data[b->len++] = '\r';
    b->data[b->len++] = '\n';
    return 0;
}

int spillway_buf_arg(spillway_buf *b, const char *s, size_t len)
{
    return spillway_buf_arg2(b, s, len, NULL, 0);
}

int spillway_buf_command(spillway_buf *b, int argc, const char *const *argv, const size_t *lens)
{
    if (spillway_buf_begin(b, (size_t)argc) != 0) return -1;
    for (int i = 0; i < argc; i++) {
        size_t n = lens ? lens[i] : strlen(argv[i]);
        if (spillway_buf_arg(b, argv[i], n) != 0) return -1;
    }
    return 0;
}
