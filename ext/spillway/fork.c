/*
 * Fork safety.
 *
 * Every live hub is on a registry. Around fork() the forking thread waits
 * until each reactor is parked in epoll_wait (it holds loop_lock otherwise),
 * so the child inherits consistent structures. The child then closes every
 * descriptor it inherited from the hub (so the parent's clients still see
 * EOF when the parent closes them) and marks the hub abandoned; it frees no
 * memory (copy-on-write pages stay shared) and never writes to a socket.
 */
#include <pthread.h>
#include <unistd.h>

#include "commands.h"
#include "fork.h"
#include "hub_internal.h"

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static spillway_hub *registry;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
    /* Same order as the reactor (loop_lock, then the queue's lock): the
     * queue, with streams not yet attached, is consistent too. */
    for (spillway_hub *h = registry; h != NULL; h = h->reg_next) {
        pthread_mutex_lock(&h->loop_lock);
        pthread_mutex_lock(&h->q.lock);
    }
}

static void atfork_parent(void)
{
    for (spillway_hub *h = registry; h != NULL; h = h->reg_next) {
        pthread_mutex_unlock(&h->q.lock);
        pthread_mutex_unlock(&h->loop_lock);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void abandon(spillway_hub *hub)
{
    atomic_store(&hub->abandoned, true);
    atomic_store(&hub->running, false);
    for (spillway_conn *c = hub->streams; c != NULL; c = c->anext)
        if (c->h.fd >= 0) close(c->h.fd);
    /* Streams handed over but not attached yet. */
    for (spillway_qnode *n = hub->q.head; n != NULL; n = n->next)
        if (((spillway_cmd *)n)->kind == SW_CMD_ATTACH) close(((spillway_cmd_attach *)n)->fd);
    if (hub->backend.ops != NULL && hub->backend.ops->abandon != NULL) hub->backend.ops->abandon(hub->backend.self);
    spillway_queue_abandon(&hub->q);
    if (hub->epfd >= 0) close(hub->epfd);
    hub->epfd = -1;
}

static void atfork_child(void)
{
    spillway_hub *h = registry;
    registry = NULL;
    while (h != NULL) {
        spillway_hub *next = h->reg_next;
        abandon(h);
        /* atfork_prepare locked these in the thread that forked, which is the
         * child's only thread: release them, or the first call in the child
         * that takes one (spillway_hub_flush takes the queue lock) blocks
         * forever. */
        pthread_mutex_unlock(&h->q.lock);
        pthread_mutex_unlock(&h->loop_lock);
        h->reg_next = NULL;
        h = next;
    }
    pthread_mutex_unlock(&registry_lock);
}

static void install_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

void spillway_fork_register(spillway_hub *hub)
{
    pthread_once(&atfork_once, install_atfork);
    pthread_mutex_lock(&registry_lock);
    hub->reg_next = registry;
    registry = hub;
    pthread_mutex_unlock(&registry_lock);
}

void spillway_fork_unregister(spillway_hub *hub)
{
    pthread_mutex_lock(&registry_lock);
    for (spillway_hub **pp = &registry; *pp != NULL; pp = &(*pp)->reg_next) {
        if (*pp == hub) {
            *pp = hub->reg_next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}
