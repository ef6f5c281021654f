/*
 * What an epoll event of the hub points at (handle.h): the first member of
 * every registered object, so the reactor dispatches on its kind.
 */
#ifndef SPILLWAY_HANDLE_H
#define SPILLWAY_HANDLE_H

enum spillway_kind {
    SW_KIND_CONN = 1, /* a stream (conn.c) */
    SW_KIND_WAKE,     /* the command queue's eventfd */
    SW_KIND_BACKEND   /* one of the backend's own descriptors (backend.h on_event) */
};

typedef struct spillway_handle {
    int kind;
    int fd;
} spillway_handle;

#endif
