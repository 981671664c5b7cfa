/*
 * The WebSocket transport: sockets handed over after the HTTP upgrade, RFC 6455 framing
 * (pl_ws_rx_feed), pings, the close handshake, bounded per-socket send queues written once per
 * loop turn, and reading held back while a socket is held or throttled. It reports every
 * connection, text frame and close to the session layer through gw_link_cbs_t and knows
 * nothing of users, tokens or messages. Everything but gw_ws_handoff() runs on the loop thread.
 */
#ifndef PARLEY_GW_WS_H
#define PARLEY_GW_WS_H

#include "gw_link.h"
#include "gw_loop.h"
#include "parley/jwt.h"
#include "parley/metrics.h"

#include <stddef.h>
#include <stdint.h>

typedef struct gw_ws_s gw_ws_t;

typedef struct gw_ws_cfg_s {
    gw_loop_t *loop;       /* borrowed */
    pl_metrics_t *metrics; /* borrowed; may be NULL */
    gw_link_cbs_t cbs;     /* copied: where events go */
    void *cbs_ud;          /* their ud */
    size_t sendq_max;      /* bytes queued per socket before it is closed with 1013 */
    long ping_interval_ms; /* a quiet socket is pinged after this */
    long dead_after_ms;    /* and dropped when no pong came this long after the ping */
} gw_ws_cfg_t;

/* Creates the transport and watches its handoff eventfd on cfg->loop. NULL on failure. */
gw_ws_t *gw_ws_new(const gw_ws_cfg_t *cfg);
/* Drops every socket (without a close handshake: the session layer's close_all and a few loop
 * turns first make it clean), reports on_closed for each, frees the transport, sets *w to
 * NULL. Accepts NULL. */
void gw_ws_free(gw_ws_t **w);

/*
 * Hands an upgraded, non-blocking socket to the loop; thread-safe (the HTTP thread calls it).
 * extra (copied) holds bytes the client sent right behind its handshake; claims (copied) the
 * token verified at the upgrade, or NULL. The socket is the transport's from now on, even on
 * failure.
 */
void gw_ws_handoff(gw_ws_t *w, int fd, const char *extra, size_t extra_len,
                   const pl_jwt_claims_t *claims);

/* Writes every socket with queued frames and frees what closed this turn. Call once per
 * loop turn, after gw_loop_turn(). */
void gw_ws_end_turn(gw_ws_t *w);
/* Lets throttled sockets whose time has come be read again; returns the milliseconds until
 * the next one is due (at most max_ms), for the loop's wait. */
int gw_ws_unthrottle(gw_ws_t *w, int max_ms);
/* Once a second: pings, dead peers, close handshakes that never finish. */
void gw_ws_tick(gw_ws_t *w);
/* Sockets held, in any state. */
long gw_ws_count(const gw_ws_t *w);

#endif
