/*
 * Group delivery on a gateway (DESIGN 7.4): which local users are members of which groups,
 * the group records of interested gateways it keeps in Redis (pl_key_convgw), and the filter
 * every group item passes before it is written to a socket. A view per group holds the local
 * members with their windows [joined_seq, left_seq] and the membership version (mver) it is
 * current to; an item whose mver is newer is held until the view catches up, from the
 * membership change itself when it follows on from the view, or else from parley-auth. So a
 * member removed at seq s never gets an item after s, even when a push was missed. Knows
 * nothing of sockets: frames leave through deliver. Loop thread only.
 */
#ifndef PARLEY_GW_GROUPS_H
#define PARLEY_GW_GROUPS_H

#include "gw_redis.h"
#include "gw_users.h"
#include "parley/metrics.h"
#include "parley/proto.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_groups_s gw_groups_t;

typedef struct gw_groups_cfg_s {
    gw_redis_t *redis;     /* borrowed */
    gw_users_t *users;     /* borrowed */
    pl_metrics_t *metrics; /* borrowed */
    void *ud;
    /* Writes text (a msg frame) to every open session of user here. */
    void (*deliver)(void *ud, const char *user, const char *text, size_t len);
} gw_groups_cfg_t;

gw_groups_t *gw_groups_new(const gw_groups_cfg_t *cfg);
/* Frees the views; questions in flight are answered into nothing. Accepts NULL. */
void gw_groups_free(gw_groups_t **g);

/* A device (session id) of user opened here or was registered again: the first one fetches
 * the user's groups. */
void gw_groups_add(gw_groups_t *g, const char *user, uint64_t id);
/* A device of user here closed: after the last, the user leaves every view here. */
void gw_groups_del(gw_groups_t *g, const char *user, uint64_t id);

/* A committed group item from the router (borrowed). */
void gw_groups_push(gw_groups_t *g, json_t *rec);
/* An item of a local user's own stream (borrowed): "group_added" and "group_removed" update the
 * views at once, before the group's own push may come. */
void gw_groups_own_item(gw_groups_t *g, const pl_msg_t *m);

/* 1 when this gateway's view of conv holds user as a member now (a local user only). */
int gw_groups_is_member(gw_groups_t *g, const char *conv, const char *user);

/* Writes text (an ephemeral frame: a receipt, typing) to the local current members of conv
 * but skip and the users listed in except (a JSON array, may be NULL). No view: nothing. */
void gw_groups_send_members(gw_groups_t *g, const char *conv, const char *text, size_t len,
                            const char *skip, json_t *except);

/* Every 30 s, and when Redis came back: interest renewed, failed fetches asked again. */
void gw_groups_tick(gw_groups_t *g, int resync);

#endif
