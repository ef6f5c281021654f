/*
 * The command queue: many producers (Ruby threads), one consumer (the reactor).
 *
 * A linked list under a short mutex plus one eventfd. Wake-ups are coalesced:
 * a producer writes the eventfd only when no wake-up is pending yet, so a
 * burst of a thousand publishes costs the reactor one wake-up. The queue is
 * bounded by a node count; a push beyond it fails instead of growing.
 *
 * Nodes are intrusive: embed a spillway_qnode as the FIRST member of your
 * command struct. The queue never allocates or frees nodes.
 */
#ifndef SPILLWAY_QUEUE_H
#define SPILLWAY_QUEUE_H

#include <pthread.h>

#include "common.h"

typedef struct spillway_qnode {
    struct spillway_qnode *next;
} spillway_qnode;

typedef struct spillway_queue {
    pthread_mutex_t lock;
    spillway_qnode *head;
    spillway_qnode **tailp;
    uint32_t count;
    uint32_t limit;
    int efd;
    bool wake_pending;
    bool closed;
} spillway_queue;

/* Called with the queue lock held, right before the node is linked in: lets
 * a producer stamp something whose order must match the queue order (the
 * memory backend's message ids). Must be short and must not push. */
typedef void (*spillway_queue_stamp_fn)(spillway_qnode *node, void *arg);

/* Ignore the limit (the stop command must always get through). */
#define SPILLWAY_QUEUE_FORCE 1u

/* Creates the eventfd; 0 or -errno. */
int spillway_queue_init(spillway_queue *q, uint32_t limit);
/* Closes the eventfd. Nodes still queued are not freed: take them first. */
void spillway_queue_destroy(spillway_queue *q);
/* Fork child: close the inherited eventfd, nothing else (another thread of
 * the parent may have held the mutex at fork time). */
void spillway_queue_abandon(spillway_queue *q);

/* 0 when queued; -EAGAIN when full, -EPIPE when closed (nothing queued
 * then, the caller still owns the node); other -errno when the wake-up write
 * failed (the node IS queued). */
int spillway_queue_push(spillway_queue *q, spillway_qnode *node, unsigned flags,
                        spillway_queue_stamp_fn stamp, void *arg);

/* Consumer: clears the eventfd and returns every queued node in FIFO order
 * (NULL when none). */
spillway_qnode *spillway_queue_take(spillway_queue *q);

/* Refuses every later push and returns what is still queued. */
spillway_qnode *spillway_queue_close(spillway_queue *q);

static inline int spillway_queue_fd(const spillway_queue *q) { return q->efd; }

#endif
