/*
 * Who may message whom, read from the documents that decide it (DESIGN 7.2): the pair's
 * `contacts` document (_id = the pair's 1:1 conversation id: state, blocks) and the receiver's
 * `users` document (settings.who_can_message). Shared by the store, which decides before a
 * message takes a seq, and parley-auth, which answers the gateways' question before they
 * produce. Both are lookups by _id. Thread-safe (the pool is).
 */
#ifndef PARLEY_POLICY_H
#define PARLEY_POLICY_H

#include "parley/mongo.h"
#include "parley/proto.h"

/* Fills f for a message from sender to receiver. PL_OK, or the database's error. */
int pl_policy_read(pl_mongo_t *m, const char *sender, const char *receiver, pl_policy_facts_t *f);

#endif
