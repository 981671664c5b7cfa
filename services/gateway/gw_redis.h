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
    /* A presence change published by a gateway: {user, status, last_seen, viewers}. */
    void (*on_presence)(void *ud, json_t *note);
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
/* Says this gateway holds a member of group conv until until_ms (ZADD on pl_key_convgw(), and
 * lapsed entries pruned), or no longer (until_ms 0: ZREM). Dropped while Redis is away. */
void gw_redis_interest(gw_redis_t *r, const char *conv, long long until_ms);
/* Asks whether session sid was revoked; fn(arg, rc) runs during the call when Redis is down
 * (failing open), else on a later turn. */
void gw_redis_check_revoked(gw_redis_t *r, const char *sid, gw_redis_answer_fn fn, void *arg);
/* The answer of a presence change: announce = 1 when this gateway is to announce it (the
 * user's announced state changed), at_ms its time. Nothing is announced while Redis is away. */
typedef void (*gw_redis_change_fn)(void *arg, int announce, long long at_ms);
/* One of the reaper's users: offline since at_ms. */
typedef void (*gw_redis_user_fn)(void *arg, const char *user, long long at_ms);

/* The first device of user on this gateway (id): recorded as by gw_redis_presence_add, and
 * "online" unless it already was. quiet: a device registered again after Redis lost its
 * data; it announces only what Redis still knew as offline. */
void gw_redis_went_online(gw_redis_t *r, const char *user, uint64_t id, int quiet,
                          gw_redis_change_fn fn, void *arg);
/* user has had no device on this gateway for the grace: "offline" when it has none on any
 * live gateway either. */
void gw_redis_went_offline(gw_redis_t *r, const char *user, gw_redis_change_fn fn, void *arg);
/* The reaper: gateways whose liveness has been gone longer than grace_ms lose their devices;
 * fn(arg, user, at) for each user that went offline by it. */
void gw_redis_reap(gw_redis_t *r, long long grace_ms, gw_redis_user_fn fn, void *arg);
/* Publishes text (a delivery envelope) once to every live gateway holding a device of any of
 * users[0..n), in one script (dropped while Redis is away). For typing: nothing stored. */
void gw_redis_fanout(gw_redis_t *r, const char *const *users, size_t n, const char *text);
/* PUBLISH text on channel (dropped while Redis is away). */
void gw_redis_publish(gw_redis_t *r, const char *channel, const char *text);

/* 1 when both connections are up and the delivery channel subscribed. Thread-safe. */
int gw_redis_ready(const gw_redis_t *r);

#endif
