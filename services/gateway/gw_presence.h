/*
 * Presence as people see it (DESIGN 7.3): which users have devices here, when one of them goes
 * online or offline for everyone (first device anywhere, none left after a grace), and the
 * presence frames for this gateway's devices. A change is decided in Redis (gw_redis), its
 * viewers come from parley-auth (gw_users), and it is published once on PL_CHANNEL_PRESENCE
 * with them: every gateway hears it and writes a frame to the viewers it holds, so a change
 * costs O(gateways) Redis work whatever the number of contacts. Knows nothing of sockets:
 * frames leave through gw_presence_cbs_t. Loop thread only.
 */
#ifndef PARLEY_GW_PRESENCE_H
#define PARLEY_GW_PRESENCE_H

#include "gw_redis.h"
#include "gw_users.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_presence_s gw_presence_t;

typedef struct gw_presence_cfg_s {
    gw_redis_t *redis; /* borrowed */
    gw_users_t *users; /* borrowed */
    long grace_ms;     /* a last device gone: offline only if none comes back within this */
    void *ud;
    /* Writes text (a presence frame) to every device user holds here. */
    void (*deliver)(void *ud, const char *user, const char *text, size_t len);
} gw_presence_cfg_t;

gw_presence_t *gw_presence_new(const gw_presence_cfg_t *cfg);
/* Frees the layer; changes still waiting for their viewers are dropped. Accepts NULL. */
void gw_presence_free(gw_presence_t **p);

/* A device (session id) of user opened here, or was registered again (periodic renewal). */
void gw_presence_add(gw_presence_t *p, const char *user, uint64_t id);
/* A device of user here closed. */
void gw_presence_del(gw_presence_t *p, const char *user, uint64_t id);
/* Redis came back (perhaps without its data): every user here is online again, quietly. */
void gw_presence_resync(gw_presence_t *p);
/* A change heard on PL_CHANNEL_PRESENCE (borrowed). */
void gw_presence_heard(gw_presence_t *p, json_t *note);
/* Call about every second: offline checks whose grace ended, and the dead-gateway reaper. */
void gw_presence_tick(gw_presence_t *p);
/* Users with devices here. */
size_t gw_presence_users(const gw_presence_t *p);

#endif
