/*
 * The seam between a transport (WebSocket today, long-poll next) and the session layer. A
 * transport owns sockets and framing; the session layer owns everything a device is
 * (authentication, send budget, acks, pushes). The session layer talks to a transport's link
 * only through gw_link_ops_t; a transport reports upward only through gw_link_cbs_t, set at
 * start-up. Neither includes the other's header, so adding a transport touches no session
 * code. Header only: no module behind it.
 */
#ifndef PARLEY_GW_LINK_H
#define PARLEY_GW_LINK_H

#include "parley/jwt.h"

#include <stddef.h>
#include <stdint.h>

typedef struct gw_sess_s gw_sess_t;

/*
 * What a session may ask of its link. No operation reports on_closed before it returns (a
 * link found dead is released at the end of the loop turn), so a session stays valid across
 * every call. All run on the gateway's loop thread.
 */
typedef struct gw_link_ops_s {
    /* Queues one text frame (copied). PL_OK; PL_ERR_UNAVAIL once the link is closing;
     * PL_ERR_TOOBIG when it would take the link's send queue over its cap: the link is
     * then closed (the client reads too slowly and must resync). */
    int (*send_text)(void *link, const char *text, size_t len);
    /* Starts closing: status is an RFC 6455 close code, reason a short ASCII text. Nothing
     * more is delivered up once called; on_closed follows when the link is gone. */
    void (*close)(void *link, uint16_t status, const char *reason);
    /* Stops taking frames from the client (what it sends waits in the kernel) until resume. */
    void (*hold)(void *link);
    /* Takes frames again, from the end of the current loop turn on (frames that waited are
     * delivered then, in order; never inside this call). */
    void (*resume)(void *link);
    /* Over budget: frames already read are still delivered (and refused), nothing more is
     * read for ms milliseconds. */
    void (*throttle)(void *link, long ms);
} gw_link_ops_t;

/* What a transport reports upward. ud is the session layer's, given at start-up. */
typedef struct gw_link_cbs_s {
    /*
     * A client connected. claims is the token verified during the handshake, or NULL (the
     * client must authenticate with a first frame). Returns the session the transport hands
     * back with every later event, or NULL (out of memory: the transport drops the link).
     */
    gw_sess_t *(*on_open)(void *ud, void *link, const gw_link_ops_t *ops,
                          const pl_jwt_claims_t *claims);
    /* One complete text frame, valid UTF-8 (the transport checks framing and encoding).
     * data is valid during the call only. */
    void (*on_text)(void *ud, gw_sess_t *s, const char *data, size_t len);
    /* The link is gone: s must forget it. Called once, never from inside an ops call. */
    void (*on_closed)(void *ud, gw_sess_t *s);
} gw_link_cbs_t;

#endif
