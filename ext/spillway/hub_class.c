/*
 * Spillway::Native::Hub: the Ruby face of the native hub (hub.h).
 * Every method runs on a Ruby thread; the hub's own thread never calls
 * into Ruby.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "binding.h"
#include "tls.h"
#include "hub.h"
#include "sse.h"

static VALUE cHub;

typedef struct hub_wrap {
    spillway_hub *hub;
} hub_wrap;

static void hub_wrap_free(void *p)
{
    hub_wrap *w = p;
    /* dfree never blocks: a running hub is asked to stop without waiting
     * (a zero timeout); if its thread has not finished, the hub is left to
     * it. A stopped or abandoned (fork child) hub is freed. */
    if (w->hub != NULL && spillway_hub_stop(w->hub, 0) == 0) spillway_hub_free(w->hub);
    xfree(w);
}

static size_t hub_wrap_size(const void *p)
{
    const hub_wrap *w = p;
    return sizeof(*w) + (w->hub ? spillway_hub_memsize(w->hub) : 0);
}

static const rb_data_type_t hub_type = {
    .wrap_struct_name = "Spillway::Native::Hub",
    .function = {
        .dmark = NULL,
        .dfree = hub_wrap_free,
        .dsize = hub_wrap_size,
    },
    .flags = RUBY_TYPED_FREE_IMMEDIATELY,
};

static VALUE hub_alloc(VALUE klass)
{
    hub_wrap *w;
    VALUE obj = TypedData_Make_Struct(klass, hub_wrap, &hub_type, w);
    w->hub = NULL;
    return obj;
}

static spillway_hub *get_hub(VALUE self)
{
    hub_wrap *w;
    TypedData_Get_Struct(self, hub_wrap, &hub_type, w);
    if (w->hub == NULL) rb_raise(spillway_eError, "the hub is not initialized");
    if (spillway_hub_owner(w->hub) != getpid())
        rb_raise(spillway_eError, "this hub belongs to process %d, not %d (forked?)",
                 (int)spillway_hub_owner(w->hub), (int)getpid());
    return w->hub;
}

/* Hub.new(options) — options are checked and defaulted by
 * Spillway::Configuration; this only converts them. */
static VALUE hub_initialize(VALUE self, VALUE opts)
{
    hub_wrap *w;
    spillway_config cfg;
    char err[256] = "";
    int rc;

    Check_Type(opts, T_HASH);
    TypedData_Get_Struct(self, hub_wrap, &hub_type, w);
    if (w->hub != NULL) rb_raise(spillway_eError, "already initialized");
    memset(&cfg, 0, sizeof(cfg));
    cfg.heartbeat_ms = spillway_opt_u32(opts, "heartbeat_ms", 15000);
    cfg.retry_ms = spillway_opt_u32(opts, "retry_ms", 2000);
    cfg.max_connections = spillway_opt_u32(opts, "max_connections", 10000);
    cfg.max_channels_per_conn = spillway_opt_u32(opts, "max_channels_per_connection", 32);
    cfg.outbox_limit = spillway_opt_u32(opts, "outbox_limit", 1u << 20);
    cfg.max_lag_ms = spillway_opt_u32(opts, "max_lag_ms", 10000);
    cfg.memory_limit = spillway_opt_u64(opts, "memory_limit", 256ull << 20);
    cfg.backlog_size = spillway_opt_u32(opts, "backlog_size", 1000);
    cfg.backlog_ttl_s = spillway_opt_u32(opts, "backlog_ttl", 86400);
    cfg.backlog_window_ms = spillway_opt_u64(opts, "backlog_window_ms", 0);
    cfg.max_backlog_channels = spillway_opt_u32(opts, "max_backlog_channels", 100000);
    cfg.queue_limit = spillway_opt_u32(opts, "queue_limit", 65536);
    cfg.extra_headers = spillway_opt_str(opts, "extra_headers");
    cfg.log_interval_ms = spillway_opt_u32(opts, "log_interval_ms", 10000);
    cfg.long_poll_timeout_ms = spillway_opt_u32(opts, "long_poll_timeout_ms", 25000);
    spillway_fill_redis_config(opts, &cfg.redis);
    spillway_fill_pg_config(opts, &cfg.pg);

    rc = spillway_hub_new(&cfg, &w->hub, err, sizeof(err));
    spillway_tls_ctx_unref(cfg.redis.tls); /* the hub holds its own */
    RB_GC_GUARD(opts);
    if (rc != 0) {
        w->hub = NULL;
        if (rc == -EINVAL) rb_raise(rb_eArgError, "%s", err);
        rb_raise(spillway_eError, "%s", err);
    }
    return self;
}

/* ---- streams ----------------------------------------------------------- */

/* An optional String argument (nil: none). */
#define OPT_PTR(v) (NIL_P(v) ? NULL : RSTRING_PTR(v))
#define OPT_LEN(v) (NIL_P(v) ? 0 : (size_t)RSTRING_LEN(v))

static VALUE hub_reserve(VALUE self)
{
    return spillway_hub_reserve(get_hub(self)) == 0 ? Qtrue : Qfalse;
}

static VALUE hub_unreserve(VALUE self)
{
    spillway_hub_unreserve(get_hub(self));
    return Qnil;
}

static int io_fd(VALUE io)
{
    if (RB_INTEGER_TYPE_P(io)) return NUM2INT(io);
    return NUM2INT(rb_funcall(io, rb_intern("fileno"), 0));
}

/*
 * hub.attach(io, channels, cursor, flags, identity = nil) — takes a
 * duplicate of io's descriptor (close-on-exec, non-blocking) and hands it to
 * the hub, with the reservation made by #reserve. The caller closes io
 * afterwards; the hub's copy lives on. identity: "u=..;g=..;c=.."
 * (targets.h), matched against targeted messages.
 */
static VALUE hub_attach(int argc, VALUE *argv, VALUE self)
{
    spillway_hub *hub = get_hub(self);
    VALUE io, channels, cursor, vflags, ident;
    long n;
    const char **names;
    size_t *lens;
    char err[256] = "";
    int fd, dupfd, fl, rc;

    rb_scan_args(argc, argv, "41", &io, &channels, &cursor, &vflags, &ident);
    if (!NIL_P(ident)) StringValue(ident);
    Check_Type(channels, T_ARRAY);
    n = RARRAY_LEN(channels);
    if (n <= 0 || n > SPILLWAY_MAX_CHANNELS_PER_CONN)
        rb_raise(rb_eArgError, "between 1 and %d channels, got %ld", SPILLWAY_MAX_CHANNELS_PER_CONN, n);
    if (!NIL_P(cursor)) StringValue(cursor);
    names = ALLOCA_N(const char *, n);
    lens = ALLOCA_N(size_t, n);
    for (long i = 0; i < n; i++) {
        VALUE s = RARRAY_AREF(channels, i);
        StringValue(s);
        names[i] = RSTRING_PTR(s);
        lens[i] = (size_t)RSTRING_LEN(s);
    }

    fd = io_fd(io);
    dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (dupfd < 0) rb_sys_fail("Spillway::Native::Hub#attach: fcntl(F_DUPFD_CLOEXEC)");
    fl = fcntl(dupfd, F_GETFL);
    if (fl < 0 || fcntl(dupfd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int e = errno;
        close(dupfd);
        errno = e;
        rb_sys_fail("Spillway::Native::Hub#attach: fcntl(F_SETFL, O_NONBLOCK)");
    }
    rc = spillway_hub_attach_as(hub, dupfd, NUM2UINT(vflags), names, lens, (size_t)n, OPT_PTR(cursor),
                                OPT_LEN(cursor), OPT_PTR(ident), OPT_LEN(ident), err, sizeof(err));
    RB_GC_GUARD(channels);
    RB_GC_GUARD(cursor);
    RB_GC_GUARD(ident);
    if (rc != 0) {
        close(dupfd);
        if (rc == -EINVAL) rb_raise(rb_eArgError, "%s", err);
        rb_raise(spillway_eError, "%s", err);
    }
    return Qnil;
}

/* ---- publishing -------------------------------------------------------- */

static void raise_publish(int rc, const char *err)
{
    if (rc == -EINVAL) rb_raise(rb_eArgError, "%s", err);
    if (rc == -EAGAIN) rb_raise(spillway_eQueueFull, "%s", err);
    rb_raise(spillway_eError, "%s", err);
}


/* hub.publish(channel, data, event, targets = nil) -> id (memory backend);
 * targets: "u=..;g=..;c=.." (targets.h) or nil for everyone */
static VALUE hub_publish(int argc, VALUE *argv, VALUE self)
{
    spillway_hub *hub = get_hub(self);
    char id[SPILLWAY_ID_TEXT_MAX], err[256] = "";
    VALUE channel, data, event, targets;
    int rc;

    rb_scan_args(argc, argv, "31", &channel, &data, &event, &targets);
    StringValue(channel);
    StringValue(data);
    if (!NIL_P(event)) StringValue(event);
    if (!NIL_P(targets)) StringValue(targets);
    rc = spillway_hub_publish_to(hub, RSTRING_PTR(channel), (size_t)RSTRING_LEN(channel), OPT_PTR(event),
                                 OPT_LEN(event), RSTRING_PTR(data), (size_t)RSTRING_LEN(data), OPT_PTR(targets),
                                 OPT_LEN(targets), id, err, sizeof(err));
    RB_GC_GUARD(channel);
    RB_GC_GUARD(data);
    RB_GC_GUARD(event);
    RB_GC_GUARD(targets);
    if (rc != 0) raise_publish(rc, err);
    return rb_str_new_cstr(id);
}

/* hub.cursor -> the newest id issued (memory backend) */
static VALUE hub_cursor(VALUE self)
{
    char id[SPILLWAY_ID_TEXT_MAX];
    spillway_hub_cursor(get_hub(self), id);
    return rb_str_new_cstr(id);
}

/* hub.publish_async(channel, data, event, idempotency_key, targets = nil)
 * -> ticket (Redis backend). The key may be nil: the hub makes one up. */
static VALUE hub_publish_async(int argc, VALUE *argv, VALUE self)
{
    spillway_hub *hub = get_hub(self);
    char err[256] = "";
    uint64_t seq = 0;
    VALUE channel, data, event, key, targets;
    int rc;

    rb_scan_args(argc, argv, "41", &channel, &data, &event, &key, &targets);
    StringValue(channel);
    StringValue(data);
    if (!NIL_P(event)) StringValue(event);
    if (!NIL_P(key)) StringValue(key);
    if (!NIL_P(targets)) StringValue(targets);
    rc = spillway_hub_publish_async_to(hub, RSTRING_PTR(channel), (size_t)RSTRING_LEN(channel), OPT_PTR(event),
                                       OPT_LEN(event), RSTRING_PTR(data), (size_t)RSTRING_LEN(data),
                                       OPT_PTR(targets), OPT_LEN(targets), OPT_PTR(key), OPT_LEN(key), &seq, err,
                                       sizeof(err));
    RB_GC_GUARD(channel);
    RB_GC_GUARD(data);
    RB_GC_GUARD(event);
    RB_GC_GUARD(key);
    RB_GC_GUARD(targets);
    if (rc != 0) raise_publish(rc, err);
    return ULL2NUM(seq);
}

struct flush_args {
    spillway_hub *hub;
    uint32_t timeout_ms;
    spillway_waiter w; /* this call's own interrupt flag */
    int rc;
};

static void *flush_nogvl(void *p)
{
    struct flush_args *a = p;
    a->rc = spillway_hub_flush(a->hub, a->timeout_ms, &a->w);
    return NULL;
}

/* Runs on another thread while this one is in flush_nogvl (never after
 * rb_thread_call_without_gvl returned, so a, on this thread's stack, is
 * alive). */
static void flush_ubf(void *p)
{
    struct flush_args *a = p;
    spillway_hub_flush_interrupt(a->hub, &a->w);
}

/* Seconds (a Numeric) to milliseconds, clamped to [0, 1 day]. */
static uint32_t timeout_ms(VALUE seconds)
{
    double ms = NUM2DBL(seconds) * 1000.0;
    if (!(ms > 0)) return 0; /* negative, NaN */
    if (ms > 86400000.0) return 86400000u;
    return (uint32_t)ms;
}

/* hub.flush(timeout_seconds) -> true when every async publish made before
 * the call is acknowledged, false on timeout. */
static VALUE hub_flush(VALUE self, VALUE timeout)
{
    struct flush_args a;
    a.hub = get_hub(self);
    a.timeout_ms = timeout_ms(timeout);
    a.w = (spillway_waiter)SPILLWAY_WAITER_INIT;
    a.rc = 0;
    rb_thread_call_without_gvl(flush_nogvl, &a, flush_ubf, &a);
    if (a.rc == -EINTR) rb_thread_check_ints();
    return a.rc == 0 ? Qtrue : Qfalse;
}

/* ---- events ----------------------------------------------------------- */

#define EVENTS_BATCH 32

struct events_args {
    spillway_hub *hub;
    uint32_t timeout_ms;
    spillway_waiter w; /* this call's own interrupt flag */
    spillway_event out[EVENTS_BATCH];
    uint64_t dropped;
    int rc;
};

static void *events_nogvl(void *p)
{
    struct events_args *a = p;
    a->rc = spillway_hub_events_wait(a->hub, a->out, EVENTS_BATCH, a->timeout_ms, &a->w, &a->dropped);
    return NULL;
}

/* As log_ubf. */
static void events_ubf(void *p)
{
    struct events_args *a = p;
    spillway_hub_events_interrupt(a->hub, &a->w);
}

/* hub.events_enable(bool): record stream closes, resets and Redis errors
 * (or stop recording them). */
static VALUE hub_events_enable(VALUE self, VALUE on)
{
    spillway_hub_events_enable(get_hub(self), RTEST(on));
    return on;
}

static VALUE event_kind(spillway_event_kind k)
{
    switch (k) {
    case SW_EV_STREAM_CLOSE: return ID2SYM(rb_intern("stream_close"));
    case SW_EV_RESET: return ID2SYM(rb_intern("reset"));
    case SW_EV_REDIS_ERROR: return ID2SYM(rb_intern("redis_error"));
    case SW_EV_KINDS: break;
    }
    return ID2SYM(rb_intern("unknown"));
}

/*
 * hub.events_wait(timeout_seconds) -> [events, dropped] or nil.
 * Waits without the GVL for events (see hub.h); events is
 * [[kind, stream, wall_ms, reason, detail], ...] ([] on timeout or
 * interrupt), kind :stream_close, :reset or :redis_error, dropped how many
 * the hub let go so far. nil once the hub has stopped and everything was
 * taken.
 */
static VALUE hub_events_wait(VALUE self, VALUE timeout)
{
    struct events_args a; /* about 8 KB: on this Ruby thread's stack */
    VALUE list;

    a.hub = get_hub(self);
    a.timeout_ms = timeout_ms(timeout);
    a.w = (spillway_waiter)SPILLWAY_WAITER_INIT;
    a.dropped = 0;
    a.rc = 0;
    rb_thread_call_without_gvl(events_nogvl, &a, events_ubf, &a);
    if (a.rc == -EPIPE) return Qnil;
    list = rb_ary_new_capa(a.rc > 0 ? a.rc : 0);
    for (int i = 0; i < a.rc; i++) {
        const spillway_event *e = &a.out[i];
        VALUE row = rb_ary_new_capa(5);
        rb_ary_push(row, event_kind(e->kind));
        rb_ary_push(row, ULL2NUM(e->id));
        rb_ary_push(row, ULL2NUM(e->wall_ms));
        rb_ary_push(row, rb_enc_associate(rb_str_new_cstr(e->reason), rb_utf8_encoding()));
        rb_ary_push(row, rb_enc_associate(rb_str_new_cstr(e->detail), rb_utf8_encoding()));
        rb_ary_push(list, row);
    }
    rb_thread_check_ints();
    return rb_assoc_new(list, ULL2NUM(a.dropped));
}

/* ---- the log ----------------------------------------------------------- */

#define LOG_BATCH 16

struct log_args {
    spillway_hub *hub;
    uint32_t timeout_ms;
    spillway_waiter w; /* this call's own interrupt flag */
    spillway_log_entry out[LOG_BATCH];
    int rc;
};

static void *log_nogvl(void *p)
{
    struct log_args *a = p;
    a->rc = spillway_hub_log_wait(a->hub, a->out, LOG_BATCH, a->timeout_ms, &a->w);
    return NULL;
}

/* As flush_ubf: runs only while this thread is in log_nogvl. */
static void log_ubf(void *p)
{
    struct log_args *a = p;
    spillway_hub_log_interrupt(a->hub, &a->w);
}

/*
 * hub.log_wait(timeout_seconds) -> [[kind, level, count, seconds, message], ...]
 * or nil. Waits without the GVL until log entries are due (see hub.h);
 * [] on timeout or interrupt, nil once the hub has stopped and everything
 * was taken. kind is a String ("redis_link"), level :error or :warn,
 * seconds the time the count covers.
 */
static VALUE hub_log_wait(VALUE self, VALUE timeout)
{
    struct log_args a; /* about 5 KB: on this Ruby thread's stack */
    VALUE list;

    a.hub = get_hub(self);
    a.timeout_ms = timeout_ms(timeout);
    a.w = (spillway_waiter)SPILLWAY_WAITER_INIT;
    a.rc = 0;
    rb_thread_call_without_gvl(log_nogvl, &a, log_ubf, &a);
    if (a.rc == -EPIPE) return Qnil;
    list = rb_ary_new_capa(a.rc > 0 ? a.rc : 0);
    for (int i = 0; i < a.rc; i++) {
        const spillway_log_entry *e = &a.out[i];
        VALUE row = rb_ary_new_capa(5);
        rb_ary_push(row, rb_str_new_cstr(e->kind));
        rb_ary_push(row, ID2SYM(rb_intern(e->warning ? "warn" : "error")));
        rb_ary_push(row, ULL2NUM(e->count));
        rb_ary_push(row, DBL2NUM((double)e->span_ms / 1000.0));
        rb_ary_push(row, rb_enc_associate(rb_str_new_cstr(e->message), rb_utf8_encoding()));
        rb_ary_push(list, row);
    }
    /* An interrupt (Thread#kill, raise) takes effect here. */
    rb_thread_check_ints();
    return list;
}

/* ---- stats, stop ------------------------------------------------------- */

#define SET(key, val) rb_hash_aset(h, ID2SYM(rb_intern(key)), ULL2NUM(val))

static VALUE hub_stats(VALUE self)
{
    spillway_stats st;
    VALUE h = rb_hash_new();
    spillway_hub_stats(get_hub(self), &st);
    SET("connections", st.connections);
    SET("channels", st.channels);
    SET("messages_in", st.messages_in);
    SET("delivered", st.delivered);
    SET("dropped_slow", st.dropped_slow);
    SET("outbox_bytes", st.outbox_bytes);
    SET("bytes_out", st.bytes_out);
    SET("accepted", st.accepted);
    SET("closed", st.closed);
    SET("fallback_streams", st.fallback_streams);
    SET("fallback_total", st.fallback_total);
    SET("resumes", st.resumes);
    SET("resets", st.resets);
    SET("joining", st.joining);
    SET("long_polls", st.long_polls);
    SET("polls_answered", st.polls_answered);
    SET("backlog_messages", st.backlog_messages);
    SET("backlog_bytes", st.backlog_bytes);
    SET("redis_reconnects", st.redis_reconnects);
    SET("redis_messages", st.redis_messages);
    SET("gap_repairs", st.gap_repairs);
    SET("async_pending", st.async_pending);
    SET("async_failed", st.async_failed);
    SET("errors", st.errors);
    SET("loop_iterations", st.loop_iterations);
    rb_hash_aset(h, ID2SYM(rb_intern("redis_connected")), st.redis_connected ? Qtrue : Qfalse);
    rb_hash_aset(h, ID2SYM(rb_intern("last_error")),
                 st.last_error[0] ? rb_str_new_cstr(st.last_error) : Qnil);
    return h;
}

#undef SET

struct stop_args {
    spillway_hub *hub;
    uint32_t timeout_ms;
    int rc;
};

static void *stop_nogvl(void *p)
{
    struct stop_args *a = p;
    a->rc = spillway_hub_stop(a->hub, a->timeout_ms);
    return NULL;
}

/* hub.stop(timeout_seconds) -> true when the thread finished in time. */
static VALUE hub_stop(VALUE self, VALUE timeout)
{
    hub_wrap *w;
    struct stop_args a;
    TypedData_Get_Struct(self, hub_wrap, &hub_type, w);
    if (w->hub == NULL) return Qtrue;
    if (spillway_hub_owner(w->hub) != getpid()) return Qtrue;
    a.hub = w->hub;
    a.timeout_ms = timeout_ms(timeout);
    a.rc = 0;
    rb_thread_call_without_gvl(stop_nogvl, &a, NULL, NULL);
    /* Not freed here: another Ruby thread may be inside #flush without the
     * GVL, on this hub's condition variable. The memory goes with the
     * object (dfree), once no frame refers to it any more. */
    return a.rc == 0 ? Qtrue : Qfalse;
}

/* ---- busiest channels -------------------------------------------------- */

#define BUSIEST_MAX 100

struct busiest_args {
    spillway_hub *hub;
    spillway_channel_info *out;
    size_t max;
    int rc;
};

static void *busiest_nogvl(void *p)
{
    struct busiest_args *a = p;
    a->rc = spillway_hub_busiest_channels(a->hub, a->out, a->max, 1000);
    return NULL;
}

/* hub.busiest_channels(max) -> [{name:, subscribers:, messages:,
 * messages_per_s:}, ...], busiest first (at most 100); [] when the loop
 * stayed busy for a second. */
static VALUE hub_busiest_channels(VALUE self, VALUE vmax)
{
    long max = NUM2LONG(vmax);
    struct busiest_args a;
    VALUE list;

    if (max < 0 || max > BUSIEST_MAX) rb_raise(rb_eArgError, "busiest_channels: max must be 0..%d", BUSIEST_MAX);
    a.hub = get_hub(self);
    a.max = (size_t)max;
    a.out = malloc((a.max ? a.max : 1) * sizeof(*a.out));
    if (a.out == NULL) rb_raise(rb_eNoMemError, "busiest_channels: out of memory");
    a.rc = 0;
    rb_thread_call_without_gvl(busiest_nogvl, &a, NULL, NULL);
    list = rb_ary_new_capa(a.rc > 0 ? a.rc : 0);
    for (int i = 0; i < a.rc; i++) {
        VALUE h = rb_hash_new();
        rb_hash_aset(h, ID2SYM(rb_intern("name")), rb_utf8_str_new(a.out[i].name, (long)a.out[i].namelen));
        rb_hash_aset(h, ID2SYM(rb_intern("subscribers")), UINT2NUM(a.out[i].subscribers));
        rb_hash_aset(h, ID2SYM(rb_intern("messages")), ULL2NUM(a.out[i].messages));
        rb_hash_aset(h, ID2SYM(rb_intern("messages_per_s")), DBL2NUM(a.out[i].messages_per_s));
        rb_ary_push(list, h);
    }
    free(a.out);
    return list;
}

/* hub.last_id(channel) -> the newest id the loop has seen on it, or nil
 * (Spillway.last_id, memory backend). Waits up to a second for the loop. */
struct last_args {
    spillway_hub *hub;
    const char *name;
    size_t len;
    char id[SPILLWAY_ID_TEXT_MAX];
    int rc;
};

static void *last_nogvl(void *p)
{
    struct last_args *a = p;
    a->rc = spillway_hub_channel_last(a->hub, a->name, a->len, a->id, 1000);
    return NULL;
}

static VALUE hub_last_id(VALUE self, VALUE channel)
{
    struct last_args a;
    StringValue(channel);
    a.hub = get_hub(self);
    a.name = RSTRING_PTR(channel);
    a.len = (size_t)RSTRING_LEN(channel);
    a.rc = 0;
    rb_thread_call_without_gvl(last_nogvl, &a, NULL, NULL);
    RB_GC_GUARD(channel);
    if (a.rc < 0) rb_raise(spillway_eError, "Spillway.last_id: the native loop stayed busy for a second");
    return a.rc == 1 ? rb_str_new_cstr(a.id) : Qnil;
}

static VALUE hub_pid(VALUE self)
{
    hub_wrap *w;
    TypedData_Get_Struct(self, hub_wrap, &hub_type, w);
    return w->hub ? INT2NUM((int)spillway_hub_owner(w->hub)) : Qnil;
}

static VALUE hub_running_p(VALUE self)
{
    hub_wrap *w;
    TypedData_Get_Struct(self, hub_wrap, &hub_type, w);
    return w->hub && spillway_hub_owner(w->hub) == getpid() && spillway_hub_running(w->hub)
               ? Qtrue
               : Qfalse;
}

void Init_spillway_hub(void)
{
    cHub = rb_define_class_under(spillway_mNative, "Hub", rb_cObject);
    rb_define_alloc_func(cHub, hub_alloc);
    rb_define_method(cHub, "initialize", hub_initialize, 1);
    rb_define_method(cHub, "reserve", hub_reserve, 0);
    rb_define_method(cHub, "unreserve", hub_unreserve, 0);
    rb_define_method(cHub, "attach", hub_attach, -1);
    rb_define_method(cHub, "publish", hub_publish, -1);
    rb_define_method(cHub, "publish_async", hub_publish_async, -1);
    rb_define_method(cHub, "cursor", hub_cursor, 0);
    rb_define_method(cHub, "flush", hub_flush, 1);
    rb_define_method(cHub, "log_wait", hub_log_wait, 1);
    rb_define_method(cHub, "events_enable", hub_events_enable, 1);
    rb_define_method(cHub, "events_wait", hub_events_wait, 1);
    rb_define_method(cHub, "stats", hub_stats, 0);
    rb_define_method(cHub, "busiest_channels", hub_busiest_channels, 1);
    rb_define_method(cHub, "last_id", hub_last_id, 1);
    rb_define_method(cHub, "stop", hub_stop, 1);
    rb_define_method(cHub, "pid", hub_pid, 0);
    rb_define_method(cHub, "running?", hub_running_p, 0);
    rb_define_const(cHub, "ATTACH_HEAD", UINT2NUM(SPILLWAY_ATTACH_HEAD));
    rb_define_const(cHub, "ATTACH_FALLBACK", UINT2NUM(SPILLWAY_ATTACH_FALLBACK));
    rb_define_const(cHub, "ATTACH_TURBO", UINT2NUM(SPILLWAY_ATTACH_TURBO));
    rb_define_const(cHub, "ATTACH_POLL", UINT2NUM(SPILLWAY_ATTACH_POLL));
    rb_define_const(cHub, "ATTACH_LONG_POLL", UINT2NUM(SPILLWAY_ATTACH_LONG_POLL));
    rb_define_const(cHub, "ATTACH_CHANNEL", UINT2NUM(SPILLWAY_ATTACH_CHANNEL));
    rb_define_const(cHub, "ATTACH_ALL", UINT2NUM(SPILLWAY_ATTACH_ALL));
    rb_define_const(cHub, "POLL_BODY_MAX", UINT2NUM(SPILLWAY_POLL_BODY_MAX));
}
