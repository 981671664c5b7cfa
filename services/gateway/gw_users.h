/*
 * May a sender write to a recipient (the recipient exists, is not disabled, and takes messages
 * from the sender: DESIGN 7.2)? The gateway links no MongoDB driver, so it asks parley-auth
 * from a worker thread and caches the answers on the loop. Questions about one pair in flight
 * share one lookup; their answers come back in the order asked. Knows nothing of sends or sessions:
 * each question carries an opaque argument back to its answer. Loop thread only.
 */
#ifndef PARLEY_GW_USERS_H
#define PARLEY_GW_USERS_H

#include "gw_loop.h"

#include <jansson.h>

typedef struct gw_users_s gw_users_t;

/* The answer: rc is PL_OK (may write), PL_ERR_NOTFOUND, PL_ERR_FORBIDDEN or PL_ERR_UNAVAIL;
 * arg as given. */
typedef void (*gw_users_answer_fn)(void *arg, int rc);

/* Starts the worker asking parley-auth at host:port. NULL on failure. */
gw_users_t *gw_users_new(gw_loop_t *loop, const char *host, int port);
/* Stops the worker; every question still open is answered PL_ERR_UNAVAIL first (so its arg
 * can be released); sets *u to NULL. Accepts NULL. */
void gw_users_free(gw_users_t **u);
/* Asks whether from may write to name; fn(arg, rc) runs during the call when the cache
 * knows, else on a later loop turn. */
void gw_users_ask(gw_users_t *u, const char *name, const char *from, gw_users_answer_fn fn,
                  void *arg);
/* The answer to gw_users_presence: rc PL_OK with viewers (a JSON array of usernames, borrowed
 * for the call), else NULL. */
typedef void (*gw_users_viewers_fn)(void *arg, int rc, json_t *viewers);
/* A presence change of user ("online"/"offline" at at_ms) is about to be announced: asks
 * parley-auth who may see it (an offline change also keeps last_seen there). fn(arg, …) runs
 * on a later loop turn, or with PL_ERR_UNAVAIL at gw_users_free(). */
void gw_users_presence(gw_users_t *u, const char *user, const char *status, long long at_ms,
                       gw_users_viewers_fn fn, void *arg);
/* Asks parley-auth method path with body (stolen; may be NULL): fn(arg, rc, answer) on a later
 * loop turn, answer the JSON of a 200 (borrowed for the call); rc PL_ERR_NOTFOUND,
 * PL_ERR_FORBIDDEN or PL_ERR_UNAVAIL otherwise (also at gw_users_free()). */
void gw_users_call(gw_users_t *u, const char *method, const char *path, json_t *body,
                   gw_users_viewers_fn fn, void *arg);
/* Forgets what the cache knows of messages to name (its account was disabled, or a contact,
 * block or setting of it changed): the next question about it asks. */
void gw_users_forget(gw_users_t *u, const char *name);

#endif
