/*
 * The reactor thread (reactor.c).
 */
#ifndef SPILLWAY_REACTOR_H
#define SPILLWAY_REACTOR_H

/* The thread's function; arg is the hub. Runs until the stop command. */
void *spillway_reactor_main(void *arg);

#endif
