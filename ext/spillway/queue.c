#include "queue.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

int spillway_queue_init(spillway_queue *q, uint32_t limit)
{
    int rc;
    q->head = NULL;
    q->tailp = &q->head;
    q->count = 0;
    q->limit = limit;
    q->wake_pending = false;
    q->closed = false;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0) return -errno;
    rc = pthread_mutex_init(&q->lock, NULL);
    if (rc != 0) {
        close(q->efd);
        q->efd = -1;
        return -rc;
    }
    return 0;
}

void spillway_queue_destroy(spillway_queue *q)
{
    if (q->efd >= 0) close(q->efd);
    q->efd = -1;
    pthread_mutex_destroy(&q->lock);
}

void spillway_queue_abandon(spillway_queue *q)
{
    if (q->efd >= 0) close(q->efd);
    q->efd = -1;
}

int spillway_queue_push(spillway_queue *q, spillway_qnode *node, unsigned flags,
                        spillway_queue_stamp_fn stamp, void *arg)
{
    bool wake;
    node->next = NULL;

    pthread_mutex_lock(&q->lock);
    if (q->closed) {
        pthread_mutex_unlock(&q->lock);
        return -EPIPE;
    }
    if (q->count >= q->limit && !(flags & SPILLWAY_QUEUE_FORCE)) {
        pthread_mutex_unlock(&q->lock);
        return -EAGAIN;
    }
    if (stamp != NULL) stamp(node, arg);
    *q->tailp = node;
    q->tailp = &node->next;
    q->count++;
    wake = !q->wake_pending;
    q->wake_pending = true;
    pthread_mutex_unlock(&q->lock);

    if (wake) {
        uint64_t one = 1;
        ssize_t n;
        do {
            n = write(q->efd, &one, sizeof(one));
        } while (n < 0 && errno == EINTR);
        /* EAGAIN means the counter is saturated: the reactor is due to wake
         * anyway. Any other failure: let the next push try the wake-up
         * again, or nothing would ever wake the reactor for this queue. */
        if (n < 0 && errno != EAGAIN) {
            int e = errno;
            pthread_mutex_lock(&q->lock);
            q->wake_pending = false;
            pthread_mutex_unlock(&q->lock);
            return -e;
        }
    }
    return 0;
}

spillway_qnode *spillway_queue_take(spillway_queue *q)
{
    uint64_t junk;
    spillway_qnode *list;
    ssize_t n;

    do {
        n = read(q->efd, &junk, sizeof(junk));
    } while (n < 0 && errno == EINTR);

    pthread_mutex_lock(&q->lock);
    list = q->head;
    q->head = NULL;
    q->tailp = &q->head;
    q->count = 0;
    q->wake_pending = false;
    pthread_mutex_unlock(&q->lock);
    return list;
}

spillway_qnode *spillway_queue_close(spillway_queue *q)
{
    spillway_qnode *list;
    pthread_mutex_lock(&q->lock);
    q->closed = true;
    list = q->head;
    q->head = NULL;
    q->tailp = &q->head;
    q->count = 0;
    pthread_mutex_unlock(&q->lock);
    return list;
}
