/*
 * Typing indicators (DESIGN 7.5) on a gateway: never stored, never in Kafka. A local user's
 * typing frame goes to those who may know: parley-auth names them (GET /internal/typing: the
 * other member of a 1:1 conversation with no block and who takes messages from the typist, or
 * a group's current members but the typist and those with a block either way, none in a group
 * over 100 members), the answer is cached for TYPING_CACHE_MS, and one Redis script publishes
 * the frame once to each live gateway holding one of their devices. A gateway that hears one
 * writes it to its local recipients, and a "start" not refreshed or stopped within 10 s ends
 * with a "stop" made here, so a typist whose gateway died stops showing. Loop thread only.
 */
#ifndef PARLEY_GW_TYPING_H
#define PARLEY_GW_TYPING_H

#include "gw_redis.h"
#include "gw_users.h"
#include "parley/metrics.h"

#include <jansson.h>
#include <stddef.h>

#define GW_TYPING_EXPIRE_MS 10000

typedef struct gw_typing_s gw_typing_t;

typedef struct gw_typing_cfg_s {
    gw_redis_t *redis;     /* borrowed */
    gw_users_t *users;     /* borrowed */
    pl_metrics_t *metrics; /* borrowed */
    void *ud;
    /* Writes text to every open session of user here (none: nothing). */
    void (*deliver)(void *ud, const char *user, const char *text, size_t len);
} gw_typing_cfg_t;

/* The answer to gw_typing_send: rc PL_OK, PL_ERR_FORBIDDEN (not a member) or PL_ERR_UNAVAIL. */
typedef void (*gw_typing_done_fn)(void *arg, int rc);

gw_typing_t *gw_typing_new(const gw_typing_cfg_t *cfg);
/* Frees the tables; questions in flight are answered into nothing. Accepts NULL. */
void gw_typing_free(gw_typing_t **t);

/* user started (start 1) or stopped typing in conv. done(arg, rc) during the call or later. */
void gw_typing_send(gw_typing_t *t, const char *user, const char *conv, int start,
                    gw_typing_done_fn done, void *arg);
/* A typing envelope from a gateway ({type, conv, user, state, to}, borrowed). */
void gw_typing_heard(gw_typing_t *t, json_t *rec);
/* Every second: starts not refreshed within GW_TYPING_EXPIRE_MS end with a stop. */
void gw_typing_tick(gw_typing_t *t);

#endif
