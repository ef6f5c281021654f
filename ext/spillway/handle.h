/*
 * What an epoll event of the hub points at (handle.h): the first member of
 * every registered object, so the reactor dispatches on its kind.
 */
#ifndef SPILLWAY_HANDLE_H
#define SPILLWAY_HANDLE_H

enum spillway_kind {
    SW_KIND_CONN = 1,
    SW_KIND_WAKE,
    SW_KIND_REDIS,
    SW_KIND_RESOLVER
};

typedef struct spillway_handle {
    int kind;
    int fd;
} spillway_handle;

#endif
