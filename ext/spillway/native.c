/*
 * Spillway::Native's own functions (the classes under it are hub_class.c
 * and publisher_class.c): the SSE encoder, for tests and tools.
 */
#include "binding.h"
#include "id.h"
#include "sse.h"
#include "tls.h"

/* Spillway::Native.sse_encode(id, event, data) -> String */
static VALUE native_sse_encode(VALUE mod, VALUE id, VALUE event, VALUE data)
{
    ssize_t need, len;
    VALUE out;
    SW_UNUSED(mod);
    if (!NIL_P(id)) StringValue(id);
    if (!NIL_P(event)) StringValue(event);
    StringValue(data);
    need = spillway_sse_size(NIL_P(id) ? NULL : RSTRING_PTR(id), NIL_P(id) ? 0 : (size_t)RSTRING_LEN(id),
                             NIL_P(event) ? NULL : RSTRING_PTR(event),
                             NIL_P(event) ? 0 : (size_t)RSTRING_LEN(event), RSTRING_PTR(data),
                             (size_t)RSTRING_LEN(data));
    if (need < 0) rb_raise(rb_eArgError, "%s", spillway_sse_strerror(need));
    out = rb_str_buf_new(need);
    len = spillway_sse_encode(RSTRING_PTR(out), (size_t)need, NIL_P(id) ? NULL : RSTRING_PTR(id),
                              NIL_P(id) ? 0 : (size_t)RSTRING_LEN(id),
                              NIL_P(event) ? NULL : RSTRING_PTR(event),
                              NIL_P(event) ? 0 : (size_t)RSTRING_LEN(event), RSTRING_PTR(data),
                              (size_t)RSTRING_LEN(data));
    if (len < 0) rb_raise(rb_eArgError, "%s", spillway_sse_strerror(len));
    rb_str_set_len(out, len);
    rb_enc_associate(out, rb_utf8_encoding());
    return out;
}

/* Native.check_tls(options): builds the TLS context of options[:redis_tls]
 * and drops it, so that a CA, certificate or key file that cannot be used
 * fails at configure time (ArgumentError), not at the first connect. */
static VALUE native_check_tls(VALUE self, VALUE opts)
{
    SW_UNUSED(self);
    Check_Type(opts, T_HASH);
    spillway_tls_ctx_unref(spillway_opt_tls(opts));
    return Qnil;
}

void Init_spillway_sse(void)
{
    rb_define_module_function(spillway_mNative, "check_tls", native_check_tls, 1);
    rb_define_module_function(spillway_mNative, "sse_encode", native_sse_encode, 3);
    rb_define_const(spillway_mNative, "ID_TEXT_MAX", INT2NUM(SPILLWAY_ID_TEXT_MAX - 1));
}
