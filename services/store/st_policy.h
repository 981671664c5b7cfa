/*
 * Who may write to whom (DESIGN 7.2), decided by the store just before a message takes a
 * seq: after a block or a settings change has been answered to the user who made it, no
 * message that the change forbids is numbered, stored or delivered, whatever the gateways
 * knew. The answer for (sender, receiver) depends on the pair's contacts document and the
 * receiver's settings only; parley-auth changes the receiver's token parley:policy:<user>
 * after every change of either, so an answer is cached under the token it was read with and
 * re-read from MongoDB once the token moves. Without Redis, every answer is read. Consumer
 * thread only.
 */
#ifndef PARLEY_ST_POLICY_H
#define PARLEY_ST_POLICY_H

#include "parley/mongo.h"
#include "parley/proto.h"
#include "parley/redis.h"
#include "st_seq.h"

#include <stddef.h>

typedef struct st_policy_s st_policy_t;

/* Creates the checker over mg and rd (borrowed), caching at most max answers. */
st_policy_t *st_policy_new(pl_mongo_t *mg, pl_redis_t *rd, size_t max);
void st_policy_free(st_policy_t **p);

/*
 * Decides every first text record of recs in a 1:1 conversation with two members: a refused
 * one gets refused = 1 and first = 0 (it takes no seq). Returns PL_OK, or PL_ERR_UNAVAIL when
 * MongoDB does not answer (retry the batch).
 */
int st_policy_check(st_policy_t *p, st_rec_t *recs, size_t n);

#endif
