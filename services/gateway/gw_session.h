/*
 * The session layer: one gw_sess_t per connected device, whatever its transport. It
 * authenticates (token at the handshake or in a first frame, then the revocation check),
 * keeps each user's send budget, turns "send" frames into parley.messages records and "read"
 * and "delivered" frames into parley.cursors records and acks them from the delivery report only,
 * pushes committed messages to the user's devices, and closes revoked or expired sessions. It does
 * no I/O of its own: frames come and go through gw_link.h, and Kafka, Redis and parley-auth are
 * reached through gw_outside_t, so unit tests drive it with scripted frames and fakes. Not for
 * framing, sockets or Redis protocol. Everything here runs on the gateway's loop thread.
 */
#ifndef PARLEY_GW_SESSION_H
#define PARLEY_GW_SESSION_H

#include "gw_link.h"
#include "parley/jwt.h"
#include "parley/metrics.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_sessions_s gw_sessions_t;

/* Completion of an asynchronous question to the outside: rc is PL_OK or a PL_ERR_* code. */
typedef void (*gw_done_fn)(gw_sessions_t *S, uint64_t sess_id, int rc);
/* The same for a question whose arg carries everything its answer needs. */
typedef void (*gw_answer_fn)(void *arg, int rc);

/*
 * What the session layer needs from outside the gateway, filled by main() (or a test). Each
 * answer may come during the call or on a later loop turn; sess_id names the session asked
 * for, which may be gone by then (the layer checks).
 */
typedef struct gw_outside_s {
    void *ud;
    /* Queues a record on topic; the delivery report comes back through
     * gw_sessions_delivered(opaque, err). PL_OK or PL_ERR_UNAVAIL (local queue full). */
    int (*produce)(void *ud, const char *topic, const char *key, const char *value, void *opaque);
    /* Registers or removes one device of user in presence. */
    void (*presence_add)(void *ud, const char *user, uint64_t sess_id);
    void (*presence_del)(void *ud, const char *user, uint64_t sess_id);
    /* Is session sid revoked? done(rc): PL_OK live, PL_ERR_REVOKED revoked. */
    void (*check_revoked)(void *ud, const char *sid, gw_sessions_t *S, uint64_t sess_id,
                          gw_done_fn done);
    /* May user from write to user to (to exists, is not disabled, and allows it: DESIGN 7.2)?
     * done(arg, rc): PL_OK, PL_ERR_NOTFOUND, PL_ERR_FORBIDDEN or PL_ERR_UNAVAIL. Asked for
     * every send (answered from a cache mostly), so it takes no allocation of its own. */
    void (*may_write)(void *ud, const char *from, const char *to, gw_answer_fn done, void *arg);
    /* May user post in group conv now? done(arg, rc): PL_OK (or not known for certain: the
     * store decides in stream order), PL_ERR_FORBIDDEN, or PL_ERR_UNAVAIL. */
    void (*may_post)(void *ud, const char *user, const char *conv, gw_answer_fn done, void *arg);
    /* Is user a member of group conv now (whatever the post policy)? done(arg, rc) as
     * may_post. */
    void (*is_member)(void *ud, const char *user, const char *conv, gw_answer_fn done, void *arg);
    /* user started (start 1) or stopped typing in conv: tell those who may know. done(arg,
     * rc): PL_OK, PL_ERR_FORBIDDEN (not a member) or PL_ERR_UNAVAIL. */
    void (*typing)(void *ud, const char *user, const char *conv, int start, gw_answer_fn done,
                   void *arg);
} gw_outside_t;

typedef struct gw_sessions_cfg_s {
    const char *gw_id;                 /* copied */
    const pl_jwt_verifier_t *verifier; /* borrowed; verifies first-frame tokens */
    gw_outside_t outside;              /* copied */
    pl_metrics_t *metrics;             /* borrowed */
    unsigned inflight_max;             /* unacknowledged sends per session */
    double user_rate, user_burst;      /* per-user token bucket on this gateway */
    double cursor_rate;                /* read/delivered frames per second per session */
    double typing_rate;                /* typing frames per second per session (burst 5x) */
    long auth_timeout_ms;              /* a first-frame token must come within this */
} gw_sessions_cfg_t;

/* Creates the layer. NULL when out of memory. */
gw_sessions_t *gw_sessions_new(const gw_sessions_cfg_t *cfg);
/* Frees every session still held (their links are the transports' to close) and the layer;
 * sets *S to NULL. Accepts NULL. */
void gw_sessions_free(gw_sessions_t **S);

/* The callbacks a transport reports to; pass S as their ud. */
extern const gw_link_cbs_t gw_sessions_link_cbs;

/* A record's delivery report (opaque as given to outside.produce). */
void gw_sessions_delivered(gw_sessions_t *S, void *opaque, int err);
/* A committed message (a parley.committed record as JSON, borrowed) for this gateway's
 * devices of its sender and receiver. */
void gw_sessions_push(gw_sessions_t *S, json_t *msg);
/* A receipt from the router (a parley.committed record of type "receipt", borrowed): to the
 * reader's devices here but the one that sent it, and when shared in a 1:1 conversation to
 * the other member's. Groups' other members are gw_groups_send_members()'. */
void gw_sessions_receipt(gw_sessions_t *S, json_t *rec);
/* Writes text (a server frame) to every open session of user here (none: nothing). */
void gw_sessions_send_user(gw_sessions_t *S, const char *user, const char *text, size_t len);
/* Closes the sessions of sid (revoked). */
void gw_sessions_revoke(gw_sessions_t *S, const char *user, const char *sid);
/* Registers every open session in presence again (Redis came back, or the periodic renewal). */
void gw_sessions_refresh_presence(gw_sessions_t *S);
/* Once a second: authentication timeouts and expired tokens. */
void gw_sessions_tick(gw_sessions_t *S);
/* Draining: new sends are refused, new sessions closed with 1001. */
void gw_sessions_drain(gw_sessions_t *S);
/* Closes every session's link with status. */
void gw_sessions_close_all(gw_sessions_t *S, uint16_t status, const char *reason);
/* Sessions held (any state). */
long gw_sessions_count(const gw_sessions_t *S);

#endif
