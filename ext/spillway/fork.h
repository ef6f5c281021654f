/*
 * Fork safety (fork.c): the registry of live hubs and the atfork handlers
 * that make a fork child close what it inherited and touch nothing else.
 */
#ifndef SPILLWAY_FORK_H
#define SPILLWAY_FORK_H

#include "hub.h"

/* A hub is live from spillway_hub_new until it stops or is freed. */
void spillway_fork_register(spillway_hub *hub);
void spillway_fork_unregister(spillway_hub *hub);

#endif
