/*
 * A minimal epoll loop: level-triggered watchers embedded in their owners. The gateway's
 * main thread runs it; no other thread may call these functions.
 */
#include "gw_loop.h"
#include "parley/err.h"

#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_EVENTS 256

struct gw_loop_s {
    int ep;
};

gw_loop_t *gw_loop_new(void)
{
    gw_loop_t *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return NULL;
    }
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    if (l->ep < 0) {
        free(l);
        return NULL;
    }
    return l;
}

void gw_loop_free(gw_loop_t **pl)
{
    if (pl == NULL || *pl == NULL) {
        return;
    }
    close((*pl)->ep);
    free(*pl);
    *pl = NULL;
}

int gw_loop_add(gw_loop_t *l, gw_watch_t *w, int fd, uint32_t events, gw_io_fn cb, void *ud)
{
    struct epoll_event ev = {.events = events, .data.ptr = w};
    w->fd = fd;
    w->events = events;
    w->cb = cb;
    w->ud = ud;
    return epoll_ctl(l->ep, EPOLL_CTL_ADD, fd, &ev) == 0 ? PL_OK : PL_ERR_IO;
}

int gw_loop_mod(gw_loop_t *l, gw_watch_t *w, uint32_t events)
{
    if (w->events == events) {
        return PL_OK;
    }
    struct epoll_event ev = {.events = events, .data.ptr = w};
    w->events = events;
    return epoll_ctl(l->ep, EPOLL_CTL_MOD, w->fd, &ev) == 0 ? PL_OK : PL_ERR_IO;
}

void gw_loop_del(gw_loop_t *l, gw_watch_t *w)
{
    if (w->fd >= 0) {
        epoll_ctl(l->ep, EPOLL_CTL_DEL, w->fd, NULL);
    }
    w->fd = -1;
    w->cb = NULL;
}

void gw_loop_turn(gw_loop_t *l, int timeout_ms)
{
    struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(l->ep, evs, MAX_EVENTS, timeout_ms);
    for (int i = 0; i < n; i++) {
        gw_watch_t *w = evs[i].data.ptr;
        /* A watcher removed earlier in this turn has no callback; its owner is freed only at
         * the end of the turn (see gw_ws_end_turn), so the pointer is still valid here. */
        if (w->cb != NULL) {
            w->cb(w, evs[i].events);
        }
    }
}
