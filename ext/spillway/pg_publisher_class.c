/*
 * Spillway::Native::PgPublisher: synchronous publishes to PostgreSQL from
 * Ruby threads (pg_publisher.h). The round trip runs without the GVL.
 * Spillway::Native::POSTGRES says whether the gem was built with libpq.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "binding.h"
#include "targets.h"
#include "frame.h"
#include "idem.h"
#include "pg_publisher.h"
#include "sse.h"

typedef struct pub_wrap {
    spillway_pgpub *p;
    pid_t pid;
    bool abandoned;
} pub_wrap;

static void pub_free(void *ptr)
{
    pub_wrap *w = ptr;
    if (w->p != NULL) {
        if (w->abandoned || w->pid != getpid()) spillway_pgpub_abandon(w->p);
        else spillway_pgpub_free(w->p);
    }
    xfree(w);
}

static size_t pub_size(const void *ptr)
{
    SW_UNUSED(ptr);
    return sizeof(pub_wrap) + 512;
}

static const rb_data_type_t pub_type = {
    .wrap_struct_name = "Spillway::Native::PgPublisher",
    .function = {.dmark = NULL, .dfree = pub_free, .dsize = pub_size},
    .flags = RUBY_TYPED_FREE_IMMEDIATELY,
};

static VALUE pub_alloc(VALUE klass)
{
    pub_wrap *w;
    VALUE obj = TypedData_Make_Struct(klass, pub_wrap, &pub_type, w);
    w->p = NULL;
    w->pid = getpid();
    return obj;
}

static pub_wrap *get_open(VALUE self)
{
    pub_wrap *w;
    TypedData_Get_Struct(self, pub_wrap, &pub_type, w);
    if (w->p == NULL) rb_raise(spillway_eError, "the publisher is closed");
    return w;
}

/* The publisher, open and made by this process (a fork child has its own). */
static pub_wrap *get(VALUE self)
{
    pub_wrap *w = get_open(self);
    if (w->pid != getpid()) rb_raise(spillway_eError, "publisher of process %d used in %d", (int)w->pid, (int)getpid());
    return w;
}

/* A NUL-terminated copy of s on the heap (xfree it): the String may change
 * once the GVL is released. */
static char *copy_string(VALUE s)
{
    size_t len = (size_t)RSTRING_LEN(s);
    char *copy = ruby_xmalloc(len + 1);
    memcpy(copy, RSTRING_PTR(s), len);
    copy[len] = '\0';
    return copy;
}

/* PgPublisher.new(options) — the PostgreSQL part of the hub options. */
static VALUE pub_initialize(VALUE self, VALUE opts)
{
    pub_wrap *w;
    spillway_pg_config cfg;
    char err[256] = "";
    Check_Type(opts, T_HASH);
    TypedData_Get_Struct(self, pub_wrap, &pub_type, w);
    memset(&cfg, 0, sizeof(cfg));
    spillway_fill_pg_config(opts, &cfg);
    if (cfg.conninfo == NULL) rb_raise(rb_eArgError, "no PostgreSQL configured");
    if (spillway_pgpub_new(&cfg, &w->p, err, sizeof(err)) != 0) rb_raise(spillway_eError, "%s", err);
    RB_GC_GUARD(opts);
    w->pid = getpid();
    return self;
}

static void *publish_nogvl(void *ptr)
{
    spillway_pgpub_publish(ptr);
    return NULL;
}

static void publish_ubf(void *ptr)
{
    spillway_pgpub_interrupt(ptr);
}

/* publisher.publish(channel, data, event, idempotency_key) -> id */
/* The targets line a targeted message's body starts with (targets.h),
 * checked; 0 bytes without targets. */
static size_t targets_head(VALUE targets)
{
    const char *why = NULL;
    spillway_targets *t;
    if (NIL_P(targets)) return 0;
    StringValue(targets);
    t = spillway_targets_parse(RSTRING_PTR(targets), (size_t)RSTRING_LEN(targets), false, &why);
    if (t == NULL) rb_raise(rb_eArgError, "targets %s", why);
    spillway_targets_unref(t);
    return sizeof(SPILLWAY_TARGETS_FIELD) - 1 + (size_t)RSTRING_LEN(targets) + 1;
}

/* publisher.publish(channel, data, event, key, targets = nil) -> id */
static VALUE pub_publish(int argc, VALUE *argv, VALUE self)
{
    pub_wrap *w = get(self);
    spillway_pgpub_call call;
    ssize_t need;
    char *body, *keycopy = NULL;
    VALUE channel, data, event, key, targets;
    size_t head;

    rb_scan_args(argc, argv, "41", &channel, &data, &event, &key, &targets);

    StringValue(channel);
    StringValue(data);
    if (!NIL_P(event)) StringValue(event);
    if (!NIL_P(key)) {
        StringValue(key);
        if (!spillway_idem_key_ok(RSTRING_PTR(key), (size_t)RSTRING_LEN(key)))
            rb_raise(rb_eArgError, "invalid idempotency key: 1 to %d bytes, no CR, LF or NUL", SPILLWAY_IDEM_KEY_MAX);
    }
    need = spillway_sse_size(NULL, 0, NIL_P(event) ? NULL : RSTRING_PTR(event),
                             NIL_P(event) ? 0 : (size_t)RSTRING_LEN(event), RSTRING_PTR(data),
                             (size_t)RSTRING_LEN(data));
    if (need < 0) rb_raise(rb_eArgError, "%s", spillway_sse_strerror(need));
    head = targets_head(targets);
    if ((size_t)need + head + SPILLWAY_ID_TEXT_MAX + 4 > SPILLWAY_FRAME_MAX)
        rb_raise(rb_eArgError, "a frame of %zd bytes is over SPILLWAY_FRAME_MAX (%u)", need, SPILLWAY_FRAME_MAX);
    /* Encoded here, with the GVL: the Strings may change once it is gone. */
    body = ruby_xmalloc(head + (size_t)need + 1);
    if (head > 0) {
        memcpy(body, SPILLWAY_TARGETS_FIELD, sizeof(SPILLWAY_TARGETS_FIELD) - 1);
        memcpy(body + sizeof(SPILLWAY_TARGETS_FIELD) - 1, RSTRING_PTR(targets), (size_t)RSTRING_LEN(targets));
        body[head - 1] = '\n';
    }
    spillway_sse_encode(body + head, (size_t)need, NULL, 0, NIL_P(event) ? NULL : RSTRING_PTR(event),
                        NIL_P(event) ? 0 : (size_t)RSTRING_LEN(event), RSTRING_PTR(data),
                        (size_t)RSTRING_LEN(data));
    spillway_pgpub_call_init(&call, w->p);
    call.chlen = (size_t)RSTRING_LEN(channel);
    call.channel = copy_string(channel);
    call.body = body;
    call.bodylen = head + (size_t)need;
    if (!NIL_P(key)) {
        /* Copied like the channel: the String may change once the GVL is gone. */
        call.keylen = (size_t)RSTRING_LEN(key);
        call.key = keycopy = copy_string(key);
    }
    rb_thread_call_without_gvl(publish_nogvl, &call, publish_ubf, &call);
    spillway_pgpub_call_done(&call);
    xfree(body);
    xfree((char *)call.channel);
    if (keycopy != NULL) xfree(keycopy);
    RB_GC_GUARD(data);
    RB_GC_GUARD(event);
    RB_GC_GUARD(key);
    RB_GC_GUARD(targets);
    if (call.rc == -EINTR) rb_thread_check_ints();
    if (call.rc != 0) rb_raise(spillway_ePostgresError, "Spillway.publish: %s", call.err);
    return rb_str_new_cstr(call.id);
}

static void *cursor_nogvl(void *ptr)
{
    spillway_pgpub_cursor(ptr);
    return NULL;
}

/* publisher.cursor -> the namespace's newest id */
static VALUE pub_cursor(VALUE self)
{
    pub_wrap *w = get(self);
    spillway_pgpub_call call;
    spillway_pgpub_call_init(&call, w->p);
    rb_thread_call_without_gvl(cursor_nogvl, &call, publish_ubf, &call);
    spillway_pgpub_call_done(&call);
    if (call.rc == -EINTR) rb_thread_check_ints();
    if (call.rc != 0) rb_raise(spillway_ePostgresError, "Spillway.cursor: %s", call.err);
    return rb_str_new_cstr(call.id);
}

static void *last_id_nogvl(void *ptr)
{
    spillway_pgpub_last_id(ptr);
    return NULL;
}

/* publisher.last_id(channel) -> the newest id in the channel's backlog, or nil */
static VALUE pub_last_id(VALUE self, VALUE channel)
{
    pub_wrap *w = get(self);
    spillway_pgpub_call call;
    char *copy;
    StringValue(channel);
    spillway_pgpub_call_init(&call, w->p);
    call.chlen = (size_t)RSTRING_LEN(channel);
    call.channel = copy = copy_string(channel);
    rb_thread_call_without_gvl(last_id_nogvl, &call, publish_ubf, &call);
    spillway_pgpub_call_done(&call);
    xfree(copy);
    if (call.rc == -EINTR) rb_thread_check_ints();
    if (call.rc != 0) rb_raise(spillway_ePostgresError, "Spillway.last_id: %s", call.err);
    return call.id[0] ? rb_str_new_cstr(call.id) : Qnil;
}

static VALUE pub_close(VALUE self)
{
    pub_wrap *w;
    TypedData_Get_Struct(self, pub_wrap, &pub_type, w);
    if (w->p != NULL && !w->abandoned && w->pid == getpid()) spillway_pgpub_close(w->p);
    return Qnil;
}

/* In a fork child: close the inherited connections, send nothing. */
static VALUE pub_abandon(VALUE self)
{
    pub_wrap *w;
    TypedData_Get_Struct(self, pub_wrap, &pub_type, w);
    if (w->p != NULL && !w->abandoned && w->pid != getpid()) {
        spillway_pgpub_abandon(w->p);
        w->abandoned = true;
    }
    return Qnil;
}

static VALUE pub_stats(VALUE self)
{
    pub_wrap *w = get_open(self);
    spillway_pgpub_stats st;
    VALUE h = rb_hash_new();
    spillway_pgpub_stats_get(w->p, &st);
    rb_hash_aset(h, ID2SYM(rb_intern("published")), ULL2NUM(st.published));
    rb_hash_aset(h, ID2SYM(rb_intern("failed")), ULL2NUM(st.failed));
    rb_hash_aset(h, ID2SYM(rb_intern("connects")), ULL2NUM(st.connects));
    rb_hash_aset(h, ID2SYM(rb_intern("retried")), ULL2NUM(st.retried));
    rb_hash_aset(h, ID2SYM(rb_intern("pooled")), UINT2NUM(st.pooled));
    return h;
}

void Init_spillway_pg_publisher(void)
{
    VALUE c = rb_define_class_under(spillway_mNative, "PgPublisher", rb_cObject);
#ifdef SPILLWAY_HAVE_LIBPQ
    rb_define_const(spillway_mNative, "POSTGRES", Qtrue);
#else
    rb_define_const(spillway_mNative, "POSTGRES", Qfalse);
#endif
    rb_define_alloc_func(c, pub_alloc);
    rb_define_method(c, "initialize", pub_initialize, 1);
    rb_define_method(c, "publish", pub_publish, -1);
    rb_define_method(c, "cursor", pub_cursor, 0);
    rb_define_method(c, "last_id", pub_last_id, 1);
    rb_define_method(c, "close", pub_close, 0);
    rb_define_method(c, "abandon", pub_abandon, 0);
    rb_define_method(c, "stats", pub_stats, 0);
}
