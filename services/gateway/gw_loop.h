/*
 * A minimal epoll loop: level-triggered watchers embedded in their owners. The gateway's
 * main thread runs it; no other thread may call these functions (other threads wake it
 * through an eventfd or a pipe it watches).
 */
#ifndef PARLEY_GW_LOOP_H
#define PARLEY_GW_LOOP_H

#include <stdint.h>

typedef struct gw_loop_s gw_loop_t;
typedef struct gw_watch_s gw_watch_t;
typedef void (*gw_io_fn)(gw_watch_t *w, uint32_t events);

/* A file descriptor watched by the loop; embedded in its owner, which must outlive it. */
struct gw_watch_s {
    int fd;
    uint32_t events;
    gw_io_fn cb;
    void *ud;
};

gw_loop_t *gw_loop_new(void);
void gw_loop_free(gw_loop_t **l);
/* Watches fd for events (EPOLLIN, …). PL_OK or PL_ERR_IO. */
int gw_loop_add(gw_loop_t *l, gw_watch_t *w, int fd, uint32_t events, gw_io_fn cb, void *ud);
int gw_loop_mod(gw_loop_t *l, gw_watch_t *w, uint32_t events);
/* Stops watching; w->cb becomes NULL, so an event already fetched this turn is skipped. */
void gw_loop_del(gw_loop_t *l, gw_watch_t *w);
/* Runs one turn: waits at most timeout_ms and dispatches ready watchers. */
void gw_loop_turn(gw_loop_t *l, int timeout_ms);

#endif
