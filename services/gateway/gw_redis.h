/*
 * The gateway's two Redis connections, on the event loop through a hiredis async adapter:
 * one for commands (presence, liveness, revocation checks) and one subscribed to this
 * gateway's delivery channel and to the revocation channel. Either reconnects by itself after
 * Redis goes away. What arrives is reported through gw_redis_cbs_t; this module knows nothing
 * of sessions or sockets. Loop thread only, except gw_redis_ready().
 */
#ifndef PARLEY_GW_REDIS_H
#define PARLEY_GW_REDIS_H

#include "gw_loop.h"

#include <jansson.h>
#include <stdint.h>

typedef struct gw_redis_s gw_redis_t;

/* What the connections report upward; every pointer is valid during the call only. */
typedef struct gw_redis_cbs_s {
    void *ud;
    /* A committed message published to this gateway's channel. */
    void (*on_push)(void *ud, json_t *msg);
    /* A notice of parley-auth about user: a revoked session (sid, else NULL), and whether
     * what is cached about messages to user is stale (forget: the account was disabled, or a
     * contact, block or setting changed who may message user). */
    void (*on_revoke)(void *ud, const char *user, const char *sid, int forget);
    /* The command connection is up and subscribed again (after a start or an outage):
     * everything this gateway registers should be registered again. */
    void (*on_resync)(void *ud);
} gw_redis_cbs_t;

/* Answer to gw_redis_check_revoked: rc PL_OK (live, or unknown: fails open) or PL_ERR_REVOKED. */
typedef void (*gw_redis_answer_fn)(void *arg, int rc);

/* Connects to host:port on loop as gateway gw_id (copied). NULL when out of memory. */
gw_redis_t *gw_redis_new(gw_loop_t *loop, const char *host, int port, const char *gw_id,
                         const gw_redis_cbs_t *cbs);
/* Closes both connections; sets *r to NULL. Accepts NULL. */
void gw_redis_free(gw_redis_t **r);
/* Reconnects dropped connections (call every loop turn: it is cheap). */
void gw_redis_tick(gw_redis_t *r);
/* Renews this gateway's liveness key while its delivery channel is subscribed. */
void gw_redis_heartbeat(gw_redis_t *r);
/* Removes the liveness key (drain), so the router stops sending here. */
void gw_redis_goodbye(gw_redis_t *r);
/* Records one device (field "<gateway>:<id>") of user in presence, or removes it. Dropped
 * while Redis is away: on_resync asks for everything again. */
void gw_redis_presence_add(gw_redis_t *r, const char *user, uint64_t id);
void gw_redis_presence_del(gw_redis_t *r, const char *user, uint64_t id);
/* Asks whether session sid was revoked; fn(arg, rc) runs during the call when Redis is down
 * (failing open), else on a later turn. */
void gw_redis_check_revoked(gw_redis_t *r, const char *sid, gw_redis_answer_fn fn, void *arg);
/* 1 when both connections are up and the delivery channel subscribed. Thread-safe. */
int gw_redis_ready(const gw_redis_t *r);

#endif
