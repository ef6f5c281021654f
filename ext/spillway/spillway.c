/*
 * Init of the extension. The binding files (the only ones that include
 * ruby.h) are this one, native.c, options.c, hub_class.c and
 * publisher_class.c: one per Ruby class or module.
 */
#include "binding.h"

VALUE spillway_mSpillway, spillway_mNative, spillway_eError, spillway_eQueueFull,
    spillway_eRedisError, spillway_ePostgresError;

__attribute__((visibility("default"))) void Init_spillway_ext(void)
{
    spillway_mSpillway = rb_define_module("Spillway");
    spillway_mNative = rb_define_module_under(spillway_mSpillway, "Native");
    spillway_eError = rb_define_class_under(spillway_mSpillway, "Error", rb_eStandardError);
    spillway_eQueueFull = rb_define_class_under(spillway_mSpillway, "QueueFull", spillway_eError);
    spillway_eRedisError = rb_define_class_under(spillway_mSpillway, "RedisError", spillway_eError);
    spillway_ePostgresError = rb_define_class_under(spillway_mSpillway, "PostgresError", spillway_eError);

    Init_spillway_sse();
    Init_spillway_hub();
    Init_spillway_publisher();
    Init_spillway_pg_publisher();
}
