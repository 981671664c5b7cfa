/*
 * The long-poll transport (DESIGN 7.6): the second transport of the session layer, for
 * clients whose network blocks WebSockets. A long-poll session is one device to the session
 * layer, exactly like a socket: the same frames, budgets, presence and revocation. Over HTTP:
 *
 *   POST /v1/lp/open[?sid=<proposed>]   -> {"sid":…}
 *   GET  /v1/lp/poll?sid=…&ack=<n>      -> {"frames":[…],"next":<n>}, held up to hold_ms
 *   POST /v1/lp/send?sid=…  [frame, …]  -> 202; acks and errors come back in a poll
 *
 * Server frames are numbered per session and kept until a later poll acknowledges them
 * (ack=next of the answer it got), so a response lost on the way costs nothing: the next
 * poll gets the same frames again. Held polls cost no thread: libmicrohttpd suspends them
 * (pl_http_hold) and this module answers them from the loop thread.
 *
 * The HTTP handlers (gw_lp_http) run on the HTTP thread: they check the request (token in
 * the Authorization header only, sid, ack, body) and hand it to the loop through a queue;
 * everything else runs on the loop thread.
 */
#ifndef PARLEY_GW_LP_H
#define PARLEY_GW_LP_H

#include "gw_link.h"
#include "gw_loop.h"
#include "parley/http.h"
#include "parley/jwt.h"
#include "parley/metrics.h"

#include <stddef.h>

/* A proposed sid: 16-64 characters of [A-Za-z0-9_-] (the edge routes by it, so a client
 * behind several gateways proposes a random one with its open). */
#define GW_LP_SID_MIN 16
#define GW_LP_SID_MAX 64
/* Frames one send may carry. */
#define GW_LP_SEND_MAX 100

typedef struct gw_lp_s gw_lp_t;

typedef struct gw_lp_cfg_s {
    gw_loop_t *loop;                   /* borrowed */
    pl_metrics_t *metrics;             /* borrowed; may be NULL */
    gw_link_cbs_t cbs;                 /* copied: where sessions' events go */
    void *cbs_ud;                      /* their ud */
    const pl_jwt_verifier_t *verifier; /* borrowed; checks every request's token */
    size_t buf_max;                    /* bytes of unacknowledged frames before the end */
    long hold_ms;                      /* how long a poll waits for frames */
    long idle_ms;                      /* a session with no poll this long ends */
    long max_sessions;                 /* per gateway */
    long user_max;                     /* per user on this gateway */
} gw_lp_cfg_t;

/* Creates the transport and watches its request queue on cfg->loop. NULL on failure. */
gw_lp_t *gw_lp_new(const gw_lp_cfg_t *cfg);
/* Ends every session (on_closed for each; held polls must have been answered by
 * gw_lp_shutdown() while the HTTP server ran) and frees the transport; sets *lp to NULL. */
void gw_lp_free(gw_lp_t **lp);

/* The HTTP handler of /v1/lp/open, /v1/lp/poll and /v1/lp/send (HTTP thread; the server
 * needs allow_hold). */
void gw_lp_http(gw_lp_t *lp, pl_http_req_t *req, pl_http_resp_t *resp);

/* Answers polls that have frames, delivers frames that waited, ends closed sessions. Call
 * once per loop turn. */
void gw_lp_end_turn(gw_lp_t *lp);
/* Once a second: polls held to their limit are answered empty, idle sessions end. */
void gw_lp_tick(gw_lp_t *lp);
/* Draining: new sessions are refused with 503 (held polls are answered as the session layer
 * closes their sessions). Thread-safe. */
void gw_lp_drain(gw_lp_t *lp);
/* Answers every held poll (a close frame for sessions still open) and every request still
 * queued, before the HTTP server stops. */
void gw_lp_shutdown(gw_lp_t *lp);
/* Sessions not yet closing (the drain waits for these). */
long gw_lp_count(const gw_lp_t *lp);

#endif
