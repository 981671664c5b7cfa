/*
 * What the parley command's modules share: the saved session, REST with token refresh, error
 * and item printing. parley.c owns the session; cli_groups.c holds the group commands. Not a
 * library for other programs: those use client.h.
 */
#ifndef PARLEY_CLI_H
#define PARLEY_CLI_H

#include "client.h"

#include <jansson.h>

/* A client for the saved server with the session's token; exits when not logged in. */
pc_client_t *cli_client(void);
/* The logged-in username, or NULL. */
const char *cli_me(void);
/* pc_rest, refreshing the access token once on 401. */
int cli_rest(pc_client_t *c, const char *method, const char *path, json_t *body, int *status,
             json_t **out);
/* The API's error message (or the status) on stderr. */
void cli_print_error(int status, json_t *resp);

/* parley group create|add|remove|leave|members|list …; argv starts after "group". */
int cli_group(int argc, char **argv);

#endif
