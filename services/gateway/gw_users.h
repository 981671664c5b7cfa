/*
 * Does a recipient exist? The gateway links no MongoDB driver, so it asks parley-auth from a
 * worker thread and caches the answers on the loop. Questions about one name in flight share
 * one lookup; their answers come back in the order asked. Knows nothing of sends or sessions:
 * each question carries an opaque argument back to its answer. Loop thread only.
 */
#ifndef PARLEY_GW_USERS_H
#define PARLEY_GW_USERS_H

#include "gw_loop.h"

typedef struct gw_users_s gw_users_t;

/* The answer: rc is PL_OK (exists), PL_ERR_NOTFOUND or PL_ERR_UNAVAIL; arg as given. */
typedef void (*gw_users_answer_fn)(void *arg, int rc);

/* Starts the worker asking parley-auth at host:port. NULL on failure. */
gw_users_t *gw_users_new(gw_loop_t *loop, const char *host, int port);
/* Stops the worker; every question still open is answered PL_ERR_UNAVAIL first (so its arg
 * can be released); sets *u to NULL. Accepts NULL. */
void gw_users_free(gw_users_t **u);
/* Asks whether name exists; fn(arg, rc) runs during the call when the cache knows, else on a
 * later loop turn. */
void gw_users_ask(gw_users_t *u, const char *name, gw_users_answer_fn fn, void *arg);
/* Forgets what the cache knows of name (its account was disabled): the next question asks. */
void gw_users_forget(gw_users_t *u, const char *name);

#endif
